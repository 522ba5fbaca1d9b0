"""The one way to turn UTC instants into practice-local dates (IANA zones via zoneinfo)."""

import re
from datetime import UTC, date, datetime
from functools import cache
from typing import Annotated, Protocol
from zoneinfo import ZoneInfo, available_timezones

from pydantic import AfterValidator, AwareDatetime, Field


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


# IANA region names, Area/Location[/Sub] in a continent or ocean. Not the legacy and system names zoneinfo also
# knows ("localtime", "Factory", "posixrules", "EST5EDT", "US/Eastern", "Etc/GMT+5", "posix/..."): they follow the
# host, carry no region, or read backwards, and a practice's zone must mean the same place everywhere.
_REGION_NAME = re.compile(
    r"(Africa|America|Antarctica|Arctic|Asia|Atlantic|Australia|Europe|Indian|Pacific)(/[A-Za-z][A-Za-z0-9_+-]*){1,2}"
)


def check_timezone(name: str) -> str:
    """Return ``name`` if it is ``UTC`` or an IANA region name zoneinfo knows, else raise ValueError (a 422)."""
    if name != "UTC" and not (_REGION_NAME.fullmatch(name) and name in _known_zones()):
        raise ValueError("must be an IANA time zone name like 'America/New_York', or 'UTC'")
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
