"""Which appointments are billable, and how money amounts are validated and printed."""

import pytest
from pydantic import TypeAdapter, ValidationError

from billing.calendar import AppointmentStatus, is_billable
from billing.money import Cents, format_amount


@pytest.mark.parametrize(
    ("status", "fee", "billable"),
    [
        (AppointmentStatus.SHOW, 15000, True),
        (AppointmentStatus.SHOW, 0, True),
        (AppointmentStatus.NO_SHOW, 0, False),
        (AppointmentStatus.NO_SHOW, 5000, True),
        (AppointmentStatus.LATE_CANCEL, 0, False),
        (AppointmentStatus.LATE_CANCEL, 2500, True),
        (AppointmentStatus.SCHEDULED, 15000, False),
        (AppointmentStatus.CANCELLED, 15000, False),
        (AppointmentStatus.CLINICIAN_CANCELLED, 15000, False),
    ],
)
def test_billable_statuses(status: AppointmentStatus, fee: int, billable: bool) -> None:
    assert is_billable(status, fee) is billable


@pytest.mark.parametrize("bad", [-1, 12.5, "1250", True, 10**12])
def test_cents_reject_negatives_floats_strings_and_absurd_amounts(bad: object) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Cents).validate_python(bad)


def test_amounts_print_with_the_currency_exponent() -> None:
    assert format_amount(123456, "usd") == "1,234.56 USD"
    assert format_amount(-1250, "usd") == "-12.50 USD"
    assert format_amount(5000, "jpy") == "5000 JPY"
