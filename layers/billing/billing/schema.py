"""Building blocks shared by the domain's pydantic models: strictness and bounded text."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class RequestModel(BaseModel):
    """What a caller sends: unknown fields are rejected (a 422), surrounding whitespace trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Record(BaseModel):
    """What the system stores and returns."""

    model_config = ConfigDict(extra="ignore")


Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ShortText = Annotated[str, StringConstraints(max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=1000)]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Phone = Annotated[str, StringConstraints(max_length=32, pattern=r"^\+?[0-9 ().-]{3,31}$")]
ObjectId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class Address(RequestModel):
    """A postal address (printed on invoices and superbills)."""

    line1: Name
    line2: ShortText | None = None
    city: Name
    state: ShortText | None = None
    postal_code: Annotated[str, StringConstraints(max_length=16)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "US"


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("ids must not repeat")
    return ids


# A short list of distinct object ids in a request (appointments to invoice, invoices to pay).
IdList = Annotated[list[ObjectId], Field(min_length=1, max_length=50), AfterValidator(_distinct)]
