"""Building blocks shared by the domain's pydantic models: strictness, visible text, and bounded dates.

Every rule here refuses rather than repairs: a value is stored as sent (only trimmed of surrounding spaces) or
answered 422 naming the field, so nothing a caller did not see is ever stored, printed or exported.
"""

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from billing.localtime import as_utc


class Model(BaseModel):
    """Every model of the project. Its validator and serializer are built when it is first used, not when its
    module is imported: a function's cold start then builds only the models its requests use, not every model
    its imports define (the shared store alone imports most of the domain)."""

    model_config = ConfigDict(defer_build=True)

    @classmethod
    def __pydantic_on_complete__(cls) -> None:
        """Build the models this one holds along with it. Its validator makes their instances without building
        their classes, and pydantic-core cannot serialize an instance of an unbuilt class where it infers the type
        (``to_jsonable_python``, ``Any`` fields): it would raise instead of building it."""
        for field in cls.__pydantic_fields__.values():
            for held in _models_in(field.annotation):
                if not held.__pydantic_complete__:
                    held.model_rebuild()


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models an annotation holds, however deep (``X | None``, ``list[X]``, ``dict[str, X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _models_in(argument)


class RequestModel(Model):
    """What a caller sends: unknown fields are rejected (a 422), surrounding whitespace trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Record(Model):
    """What the system stores and returns."""

    model_config = ConfigDict(extra="ignore")


# Control characters (C0, DEL, C1: NUL, tab, newline, escape...), the line and paragraph separators, the
# bidirectional embeddings, overrides and isolates that can make text read differently from what it holds
# (U+202A-U+202E, U+2066-U+2069), and unpaired surrogates (``"\ud800"`` in JSON, which no store can encode).
# The marks U+200E/U+200F stay allowed: they reorder nothing and right-to-left names legitimately use them.
_HIDDEN_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def refuse_hidden_characters(value: Any) -> Any:
    """Refuse text holding a control or direction-changing character. Runs before trimming, so such a
    character is refused even at either end instead of being silently stripped away."""
    if isinstance(value, str) and (hidden := _HIDDEN_CHARACTER.search(value)):
        raise ValueError(f"must not contain the control or direction-changing character U+{ord(hidden[0]):04X}")
    return value


# Placed after a str's constraints in ``Annotated[...]``, so it sees the raw input and the constraints keep
# their own messages. Every human-text field of a request carries it.
VisibleText = BeforeValidator(refuse_hidden_characters)

Name = Annotated[str, StringConstraints(min_length=1, max_length=200), VisibleText]
ShortText = Annotated[str, StringConstraints(max_length=200), VisibleText]
LongText = Annotated[str, StringConstraints(max_length=1000), VisibleText]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), VisibleText]
Phone = Annotated[str, StringConstraints(max_length=32, pattern=r"^\+?[0-9 ().-]{3,31}$")]
ObjectId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class Address(RequestModel):
    """A postal address (printed on invoices and superbills)."""

    line1: Name
    line2: ShortText | None = None
    city: Name
    state: ShortText | None = None
    postal_code: Annotated[str, StringConstraints(max_length=16), VisibleText] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "US"


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("ids must not repeat")
    return ids


# A short list of distinct object ids in a request (appointments to invoice, invoices to pay).
IdList = Annotated[list[ObjectId], Field(min_length=1, max_length=50), AfterValidator(_distinct)]


# Instants and dates a caller sends. JSON carries them as strings in one strict format (RFC 3339, the ISO-8601
# profile): an instant always with its offset, never an epoch number, a naive time or a date alone.
_INSTANT_FORMAT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_DATE_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# Sessions are billed from 2000 on and booked at most two years (a leap day included) ahead; dates of birth
# are from 1900 on. Outside these, a value is a typo, and years 1 and 9999 overflow local-date arithmetic.
EARLIEST_SERVICE_INSTANT = datetime(2000, 1, 1, tzinfo=UTC)
BOOKING_HORIZON = timedelta(days=731)
EARLIEST_BIRTH_DATE = date(1900, 1, 1)
# Civil time zones run from UTC-12 to UTC+14, so these are the local dates an allowed instant can fall on.
_WESTERNMOST, _EASTERNMOST = timedelta(hours=-12), timedelta(hours=14)
EARLIEST_SERVICE_DATE = (EARLIEST_SERVICE_INSTANT + _WESTERNMOST).date()


def _in_format(pattern: re.Pattern[str], example: str) -> BeforeValidator:
    """Only a string in ``pattern`` (or an already parsed date/datetime, from Python callers) gets parsed."""

    def check(value: Any) -> Any:
        if isinstance(value, date) or (isinstance(value, str) and pattern.fullmatch(value)):
            return value
        raise ValueError(f"must be a string like {example}")

    return BeforeValidator(check)


def _within(earliest: Callable[[], date], latest: Callable[[], date], window: str) -> AfterValidator:
    """Bounds read when each value is validated (the latest move with the clock); ``window`` says them."""

    def check(value: date) -> date:  # a datetime too (a subclass), then between datetimes
        if not earliest() <= value <= latest():
            raise ValueError(f"must be {window}")
        return value

    return AfterValidator(check)


def _booking_horizon() -> datetime:
    # An input bound, not business time: the domain's rules still take "now" from the Clock they are passed.
    return datetime.now(UTC) + BOOKING_HORIZON


def _latest_service_date() -> date:
    return (_booking_horizon() + _EASTERNMOST).date()


def _today_anywhere() -> date:
    """The latest date it is anywhere on Earth right now: a birth date after it is in the future."""
    return (datetime.now(UTC) + _EASTERNMOST).date()


# When a session happens, normalised to UTC.
ServiceInstant = Annotated[
    AwareDatetime,
    _in_format(_INSTANT_FORMAT, "2026-11-27T15:00:00Z or 2026-11-27T09:00:00-06:00"),
    _within(lambda: EARLIEST_SERVICE_INSTANT, _booking_horizon, "from 2000-01-01T00:00:00Z to two years ahead"),
    AfterValidator(as_utc),
]
# A practice-local date sessions can fall on (a day's calendar, AutoPay nights, statement and export ranges).
ServiceDate = Annotated[
    date,
    _in_format(_DATE_FORMAT, "2026-11-27"),
    _within(lambda: EARLIEST_SERVICE_DATE, _latest_service_date, f"from {EARLIEST_SERVICE_DATE} to two years ahead"),
]
BirthDate = Annotated[
    date,
    _in_format(_DATE_FORMAT, "1980-04-13"),
    _within(lambda: EARLIEST_BIRTH_DATE, _today_anywhere, f"from {EARLIEST_BIRTH_DATE} and not in the future"),
]
