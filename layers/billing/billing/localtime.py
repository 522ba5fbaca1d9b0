"""The one way to turn UTC instants into practice-local dates (IANA zones via zoneinfo)."""

from datetime import UTC, date, datetime
from functools import cache
from typing import Annotated, Protocol
from zoneinfo import ZoneInfo, available_timezones

from pydantic import AfterValidator, AwareDatetime, Field


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    """Return ``name`` if it is an IANA zone zoneinfo knows, else raise ValueError (a 422 at the edge)."""
    if name not in _known_zones():
        raise ValueError(f"unknown IANA time zone {name!r}; use a name like 'America/New_York'")
    return name


TimezoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_timezone)]


def as_utc(instant: datetime) -> datetime:
    """Normalise an aware instant to UTC; naive datetimes are refused because their zone is a guess."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError("instant must carry a UTC offset")
    return instant.astimezone(UTC)


def local_datetime(instant: datetime, timezone: str) -> datetime:
    """The wall-clock date and time at ``instant`` in ``timezone``."""
    return as_utc(instant).astimezone(ZoneInfo(timezone))


def local_date(instant: datetime, timezone: str) -> date:
    """The calendar date at ``instant`` in ``timezone`` (DST-correct: days may be 23 or 25 hours)."""
    return local_datetime(instant, timezone).date()


UtcInstant = Annotated[AwareDatetime, AfterValidator(as_utc)]


class Clock(Protocol):
    """Where the domain gets "now" from; tests pass a fixed clock."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
