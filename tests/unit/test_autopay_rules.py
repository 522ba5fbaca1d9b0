"""AutoPay rules that need no storage: when a card counts as expiring, and when a night may charge."""

from datetime import UTC, date, datetime

import pytest

from billing.autopay import card_expires_soon, in_window
from billing.cards import Card

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _card(month: int, year: int) -> Card:
    return Card(
        payment_method_id="pm_x",
        brand="visa",
        last4="4242",
        exp_month=month,
        exp_year=year,
        card_id="card_1",
        client_id="cli_1",
        is_default=True,
        created_at=NOW,
    )


@pytest.mark.parametrize(
    ("month", "year", "today", "soon"),
    [
        (11, 2026, date(2026, 11, 28), True),
        (12, 2026, date(2026, 11, 28), False),  # good through December 31st: 33 days
        (12, 2026, date(2026, 12, 2), True),
        (12, 2030, date(2026, 11, 28), False),
    ],
)
def test_a_card_expires_soon_when_its_last_good_day_is_within_30_days(
    month: int, year: int, today: date, soon: bool
) -> None:
    assert card_expires_soon(_card(month, year), today) is soon


@pytest.mark.parametrize(
    ("instant", "inside"),
    [
        (datetime(2026, 11, 28, 6, 0, tzinfo=UTC), True),  # 00:00 in Chicago
        (datetime(2026, 11, 28, 9, 30, tzinfo=UTC), True),  # 03:30
        (datetime(2026, 11, 28, 11, 59, tzinfo=UTC), True),  # 05:59
        (datetime(2026, 11, 28, 12, 0, tzinfo=UTC), False),  # 06:00: the window has closed
        (datetime(2026, 11, 28, 5, 59, tzinfo=UTC), False),  # 23:59 the evening before
        (datetime(2026, 11, 29, 9, 30, tzinfo=UTC), False),  # the next night is another business date
    ],
)
def test_a_night_may_charge_only_between_midnight_and_six_local_on_its_business_date(
    instant: datetime, inside: bool
) -> None:
    assert in_window(instant, "America/Chicago", date(2026, 11, 28)) is inside
