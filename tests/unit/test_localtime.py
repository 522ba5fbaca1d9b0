"""Local dates are computed in the practice's zone, correctly around midnight and on DST change days."""

from datetime import UTC, date, datetime

import pytest
from pydantic import TypeAdapter, ValidationError

from billing.localtime import TimezoneName, as_utc, local_date


@pytest.mark.parametrize(
    ("instant", "zone", "expected"),
    [
        # New York: 23:30 and 00:30 local around midnight, EST (-5).
        ("2026-01-16T04:30:00Z", "America/New_York", date(2026, 1, 15)),
        ("2026-01-16T05:30:00Z", "America/New_York", date(2026, 1, 16)),
        # New York spring forward (2026-03-08 02:00 -> 03:00): a 23-hour day.
        ("2026-03-08T04:59:00Z", "America/New_York", date(2026, 3, 7)),
        ("2026-03-08T05:00:00Z", "America/New_York", date(2026, 3, 8)),
        ("2026-03-09T03:59:00Z", "America/New_York", date(2026, 3, 8)),
        ("2026-03-09T04:00:00Z", "America/New_York", date(2026, 3, 9)),
        # New York fall back (2026-11-01): a 25-hour day; 23:30 on 11-01 is 04:30Z on 11-02.
        ("2026-11-02T04:30:00Z", "America/New_York", date(2026, 11, 1)),
        ("2026-11-02T05:30:00Z", "America/New_York", date(2026, 11, 2)),
        # Sydney: AEDT starts 2026-10-04 02:00 -> 03:00; ends 2026-04-05 03:00 -> 02:00.
        ("2026-10-03T13:30:00Z", "Australia/Sydney", date(2026, 10, 3)),  # 23:30 AEST
        ("2026-10-03T14:30:00Z", "Australia/Sydney", date(2026, 10, 4)),  # 00:30 AEST
        ("2026-04-04T12:30:00Z", "Australia/Sydney", date(2026, 4, 4)),  # 23:30 AEDT
        ("2026-04-04T13:30:00Z", "Australia/Sydney", date(2026, 4, 5)),  # 00:30 AEDT
        # Santiago: clocks jump at midnight (2026-09-06 00:00 -> 01:00), so 00:30 never happens that day.
        ("2026-09-06T03:30:00Z", "America/Santiago", date(2026, 9, 5)),  # 23:30 -04
        ("2026-09-06T04:30:00Z", "America/Santiago", date(2026, 9, 6)),  # 01:30 -03
        # Santiago fall back at midnight (2026-04-05 00:00 -> 2026-04-04 23:00): 23:30 happens twice.
        ("2026-04-05T02:30:00Z", "America/Santiago", date(2026, 4, 4)),  # 23:30 -03
        ("2026-04-05T03:30:00Z", "America/Santiago", date(2026, 4, 4)),  # 23:30 -04 (again)
        ("2026-04-05T04:30:00Z", "America/Santiago", date(2026, 4, 5)),  # 00:30 -04
    ],
)
def test_local_date_is_taken_in_the_practice_zone(instant: str, zone: str, expected: date) -> None:
    assert local_date(datetime.fromisoformat(instant), zone) == expected


def test_an_offset_instant_is_normalised_to_utc() -> None:
    assert as_utc(datetime.fromisoformat("2026-03-08T01:30:00-05:00")) == datetime(2026, 3, 8, 6, 30, tzinfo=UTC)


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="offset"):
        as_utc(datetime(2026, 3, 8, 1, 30))


@pytest.mark.parametrize("name", ["Mars/Olympus", "EST+5", "", "../../etc/passwd", "america/new_york", "X" * 300])
def test_unknown_time_zones_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(TimezoneName).validate_python(name)


@pytest.mark.parametrize("name", ["America/New_York", "Australia/Lord_Howe", "UTC", "Asia/Kathmandu"])
def test_iana_time_zones_are_accepted(name: str) -> None:
    assert TypeAdapter(TimezoneName).validate_python(name) == name
