"""Clients of a practice. Names, contact details, dates of birth and diagnoses are PHI."""

from datetime import datetime
from typing import Annotated, Protocol

from pydantic import ConfigDict, Field, StringConstraints

from billing.errors import existing
from billing.ids import new_id
from billing.localtime import Clock
from billing.schema import Address, BirthDate, Email, Name, Phone, RequestModel

# ICD-10-CM: a letter, a digit, a letter or digit, then optionally a dot and up to four more.
Icd10Code = Annotated[str, StringConstraints(pattern=r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")]


class ClientDetails(RequestModel):
    """Body of ``POST /clients``."""

    first_name: Name
    last_name: Name
    email: Email | None = None
    phone: Phone | None = None
    date_of_birth: BirthDate | None = None
    address: Address | None = None
    diagnosis_codes: Annotated[list[Icd10Code], Field(max_length=12)] = []


class Client(ClientDetails):
    model_config = ConfigDict(extra="ignore")

    client_id: str
    created_at: datetime
    processor_customer_id: str | None = Field(default=None, exclude=True)  # the Stripe Customer, made on first card


class ClientReader(Protocol):
    def get_client(self, practice_id: str, client_id: str) -> Client | None: ...


class ClientStore(ClientReader, Protocol):
    def add_client(self, practice_id: str, client: Client) -> None: ...


def add_client(store: ClientStore, clock: Clock, practice_id: str, details: ClientDetails) -> Client:
    """Register a new client of the practice."""
    client = Client(**details.model_dump(), client_id=new_id("cli"), created_at=clock.now())
    store.add_client(practice_id, client)
    return client


def require_client(store: ClientReader, practice_id: str, client_id: str) -> Client:
    """The practice's client, or NotFound (also for another practice's client)."""
    return existing(store.get_client(practice_id, client_id), "client", client_id)
