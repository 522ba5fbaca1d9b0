"""A practice: the tenant. Its time zone decides every local date; its settings drive invoicing."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Protocol

from pydantic import ConfigDict, Field, StringConstraints

from billing.localtime import Clock, TimezoneName
from billing.schema import Address, Email, Name, Phone, RequestModel


class PaperSize(StrEnum):
    LETTER = "letter"
    A4 = "a4"


class InvoiceCreation(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"
    MANUAL = "manual"


Currency = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
Npi = Annotated[str, StringConstraints(pattern=r"^[0-9]{10}$")]
TaxId = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}-?[0-9]{7}$")]
LicenseNumber = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9 ./-]+$")]
UsState = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True)]
PlaceOfService = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}$")]  # CMS place-of-service code, e.g. 11


class PracticeSettings(RequestModel):
    """Body of ``PUT /practice``."""

    name: Name
    timezone: TimezoneName
    currency: Currency = "usd"
    npi: Npi | None = None
    tax_id: TaxId | None = None
    license_number: LicenseNumber | None = None
    license_state: UsState | None = None
    place_of_service: PlaceOfService | None = None
    address: Address | None = None
    phone: Phone | None = None
    email: Email | None = None
    invoice_creation: InvoiceCreation
    invoice_due_days: Annotated[int, Field(strict=True, ge=0, le=365)] = 0
    autopay_enabled: bool = False
    paper_size: PaperSize = PaperSize.LETTER  # billing documents are printed on it


class Practice(PracticeSettings):
    model_config = ConfigDict(extra="ignore")

    practice_id: str
    created_at: datetime
    updated_at: datetime
    # The number of the last invoice issued (gapless); moved only by the transaction that issues one.
    last_invoice_sequence: int = Field(default=0, exclude=True)


class PracticeStore(Protocol):
    def get_practice(self, practice_id: str) -> Practice | None: ...

    def save_practice(self, practice: Practice) -> Practice: ...


class ScheduleRegistry(Protocol):
    """Makes sure the nightly schedules exist for a time zone (idempotent)."""

    def ensure_timezone(self, timezone: str) -> None: ...


def save_practice(
    store: PracticeStore, schedules: ScheduleRegistry, clock: Clock, practice_id: str, settings: PracticeSettings
) -> Practice:
    """Create the practice on first call, else replace its settings; the zone's schedules exist afterwards."""
    now = clock.now()
    current = store.get_practice(practice_id)
    practice = Practice(
        **settings.model_dump(),
        practice_id=practice_id,
        created_at=current.created_at if current else now,
        updated_at=now,
    )
    schedules.ensure_timezone(practice.timezone)
    return store.save_practice(practice)
