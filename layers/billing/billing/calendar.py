"""The calendar: appointments (dates of service), their statuses, and which of them are billable."""

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Protocol

from pydantic import Field, StringConstraints, model_validator

from billing.errors import Conflict, existing
from billing.ids import new_id
from billing.localtime import Clock, UtcInstant, local_date
from billing.money import Cents
from billing.practices import Practice
from billing.schema import LongText, ObjectId, Record, RequestModel, ServiceInstant


class AppointmentStatus(StrEnum):
    SCHEDULED = "scheduled"
    SHOW = "show"
    NO_SHOW = "no_show"
    LATE_CANCEL = "late_cancel"
    CANCELLED = "cancelled"
    CLINICIAN_CANCELLED = "clinician_cancelled"


# CPT / HCPCS style service codes, e.g. 90837, 90791, H0031.
ServiceCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{4,10}$", to_upper=True)]
# CPT/HCPCS modifiers (two characters, e.g. 95, GT, HO); a CMS-1500 line carries at most four.
Modifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{2}$", to_upper=True)]
Modifiers = Annotated[list[Modifier], Field(max_length=4)]
Units = Annotated[int, Field(strict=True, ge=1, le=99)]


class Modality(StrEnum):
    """Where the session happened; telehealth sets the superbill's place of service (10 home, 02 elsewhere)."""

    IN_PERSON = "in_person"
    TELEHEALTH_HOME = "telehealth_home"
    TELEHEALTH_OTHER = "telehealth_other"


def is_billable(status: AppointmentStatus, fee_cents: int) -> bool:
    """Shows are billable; no-shows and late cancels only when they carry a fee; nothing else is."""
    if status is AppointmentStatus.SHOW:
        return True
    if status in (AppointmentStatus.NO_SHOW, AppointmentStatus.LATE_CANCEL):
        return fee_cents > 0
    return False


class AppointmentRequest(RequestModel):
    """Body of ``POST /appointments``."""

    client_id: ObjectId
    starts_at: ServiceInstant
    duration_minutes: Annotated[int, Field(strict=True, gt=0, le=24 * 60)]
    service_code: ServiceCode
    service_description: LongText | None = None
    fee_cents: Cents
    status: AppointmentStatus = AppointmentStatus.SCHEDULED
    modality: Modality | None = None
    modifiers: Modifiers = []
    units: Units = 1


class AppointmentChange(RequestModel):
    """Body of ``PATCH /appointments/{id}``: mark attendance, change the fee, or the claim details."""

    status: AppointmentStatus | None = None
    fee_cents: Cents | None = None
    modality: Modality | None = None
    modifiers: Modifiers | None = None
    units: Units | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> "AppointmentChange":
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("give status and/or fee_cents (or modality, modifiers, units)")
        return self


class Appointment(Record):
    appointment_id: str
    client_id: str
    starts_at: UtcInstant
    local_date: date
    duration_minutes: int
    service_code: str
    service_description: str | None = None
    fee_cents: int
    status: AppointmentStatus
    invoice_id: str | None = None
    billable: bool
    modality: Modality | None = None
    modifiers: list[str] = []
    units: int = 1
    created_at: datetime
    updated_at: datetime
    version: int = 1


class AppointmentReader(Protocol):
    def get_appointment(self, practice_id: str, appointment_id: str) -> Appointment | None: ...


class AppointmentStore(AppointmentReader, Protocol):
    def add_appointment(self, practice_id: str, appointment: Appointment) -> None: ...

    def replace_appointment(self, practice_id: str, appointment: Appointment, expected_version: int) -> None: ...

    def appointments_on(self, practice_id: str, day: date) -> list[Appointment]: ...


def schedule_appointment(
    store: AppointmentStore, clock: Clock, practice: Practice, request: AppointmentRequest
) -> Appointment:
    """Put an appointment on the calendar; its local date is taken in the practice's zone."""
    now = clock.now()
    appointment = Appointment(
        **request.model_dump(),
        appointment_id=new_id("apt"),
        local_date=local_date(request.starts_at, practice.timezone),
        billable=is_billable(request.status, request.fee_cents),
        created_at=now,
        updated_at=now,
    )
    store.add_appointment(practice.practice_id, appointment)
    return appointment


def require_appointment(store: AppointmentReader, practice_id: str, appointment_id: str) -> Appointment:
    return existing(store.get_appointment(practice_id, appointment_id), "appointment", appointment_id)


def change_appointment(
    store: AppointmentStore, clock: Clock, practice_id: str, appointment_id: str, change: AppointmentChange
) -> Appointment:
    """Apply a status/fee change. An invoiced appointment keeps its fee and stays billable (void first); its
    claim details (modality, modifiers, units) may change, as they do not change what is owed."""
    current = require_appointment(store, practice_id, appointment_id)
    status = change.status or current.status
    fee_cents = current.fee_cents if change.fee_cents is None else change.fee_cents
    billable = is_billable(status, fee_cents)
    if current.invoice_id is not None:
        if fee_cents != current.fee_cents:
            raise Conflict(
                f"appointment {appointment_id} is on invoice {current.invoice_id}; void it to change the fee",
                code="appointment_invoiced",
            )
        if not billable:
            raise Conflict(
                f"appointment {appointment_id} is on invoice {current.invoice_id}; void it before making "
                "the appointment non-billable",
                code="appointment_invoiced",
            )
    updated = current.model_copy(
        update={
            "status": status,
            "fee_cents": fee_cents,
            "billable": billable,
            **change.model_dump(include={"modality", "modifiers", "units"}, exclude_none=True),
            "updated_at": clock.now(),
            "version": current.version + 1,
        }
    )
    store.replace_appointment(practice_id, updated, expected_version=current.version)
    return updated
