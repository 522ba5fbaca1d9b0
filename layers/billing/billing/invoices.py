"""Invoices: immutable once issued, numbered without gaps per practice, corrected only by a void.

An appointment is on at most one live invoice, ever. Creating an invoice is planned here as one unit of
work (the invoice, its appointments, the practice's number counter, the client's account and any credit
it consumes); the store commits the plan atomically or not at all.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from pydantic import Field, computed_field

from billing.calendar import Appointment
from billing.errors import Conflict, existing
from billing.ids import new_id
from billing.payments import CreditUse, Payment, take_credit
from billing.practices import Practice
from billing.schema import IdList, ObjectId, Record, RequestModel


class InvoiceStatus(StrEnum):
    UNPAID = "unpaid"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    PAST_DUE = "past_due"
    VOID = "void"


def invoice_number(sequence: int) -> str:
    """The printed number: ``INV-000001`` for the practice's first invoice."""
    return f"INV-{sequence:06d}"


class InvoiceLine(Record):
    appointment_id: str
    date: date
    service_code: str
    description: str
    amount_cents: int


class InvoiceAllocation(Record):
    """Money of one payment applied to this invoice."""

    payment_id: str
    amount_cents: int


class Invoice(Record):
    invoice_id: str
    sequence: int = Field(exclude=True)
    client_id: str
    currency: str
    issue_date: date
    due_date: date
    lines: list[InvoiceLine]
    total_cents: int
    allocations: list[InvoiceAllocation] = []
    voided: bool = Field(default=False, exclude=True)
    voided_at: datetime | None = None
    created_at: datetime
    version: int = 1
    as_of: date | None = Field(default=None, exclude=True)  # the local "today" status is reported for

    @computed_field  # type: ignore[prop-decorator]
    @property
    def number(self) -> str:
        return invoice_number(self.sequence)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def paid_cents(self) -> int:
        return sum(a.amount_cents for a in self.allocations)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def balance_cents(self) -> int:
        return 0 if self.voided else self.total_cents - self.paid_cents

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> InvoiceStatus:
        if self.voided:
            return InvoiceStatus.VOID
        if self.balance_cents <= 0:
            return InvoiceStatus.PAID
        if self.as_of is not None and self.as_of > self.due_date:
            return InvoiceStatus.PAST_DUE
        return InvoiceStatus.PARTIALLY_PAID if self.paid_cents > 0 else InvoiceStatus.UNPAID

    @computed_field  # type: ignore[prop-decorator]
    @property
    def past_due(self) -> bool:
        return self.status is InvoiceStatus.PAST_DUE

    def with_payment(self, payment_id: str, amount_cents: int) -> "Invoice":
        """This invoice with ``amount_cents`` more of ``payment_id`` allocated to it."""
        if not 0 < amount_cents <= self.balance_cents:
            raise ValueError("an allocation cannot exceed what the invoice owes")
        return self._reallocated(payment_id, amount_cents)

    def without_payment(self, payment_id: str, amount_cents: int) -> "Invoice":
        """This invoice with ``amount_cents`` of ``payment_id``'s allocation taken back (a refund)."""
        return self._reallocated(payment_id, -amount_cents)

    def _reallocated(self, payment_id: str, delta_cents: int) -> "Invoice":
        current = sum(a.amount_cents for a in self.allocations if a.payment_id == payment_id)
        others = [a for a in self.allocations if a.payment_id != payment_id]
        if current + delta_cents > 0:
            others.append(InvoiceAllocation(payment_id=payment_id, amount_cents=current + delta_cents))
        return self.model_copy(update={"allocations": others, "version": self.version + 1})

    def reported_on(self, today: date) -> "Invoice":
        """The same invoice with its status reported as of the practice-local ``today``."""
        return self.model_copy(update={"as_of": today})


class InvoiceRequest(RequestModel):
    """Body of ``POST /invoices``."""

    client_id: ObjectId
    appointment_ids: IdList


@dataclass
class NewInvoice:
    """The unit of work that issues one invoice; every part is conditioned on the state it was planned from."""

    practice_id: str
    invoice: Invoice
    appointments: list[Appointment]  # as they will be: on the invoice, version + 1
    previous_sequence: int
    credit: list[CreditUse] = field(default_factory=list)


@dataclass
class VoidedInvoice:
    """The unit of work that voids an invoice: appointments freed, its allocations turned into credit."""

    practice_id: str
    before: Invoice
    after: Invoice
    appointments: list[Appointment]  # as they will be: free again, version + 1
    payments: list[Payment]  # as they will be: the returned amounts unallocated, version + 1


class InvoiceReader(Protocol):
    def get_invoice(self, practice_id: str, invoice_id: str) -> Invoice | None: ...


class InvoiceStore(InvoiceReader, Protocol):
    def get_practice(self, practice_id: str) -> Practice | None: ...

    def get_payment(self, practice_id: str, payment_id: str) -> Payment | None: ...

    def appointments_by_id(self, practice_id: str, appointment_ids: list[str]) -> list[Appointment]: ...

    def invoices_of(self, practice_id: str, client_id: str) -> list[Invoice]: ...

    def open_credit(self, practice_id: str, client_id: str | None = None) -> list[Payment]: ...

    def commit_new_invoice(self, plan: NewInvoice) -> None: ...

    def commit_void(self, plan: VoidedInvoice) -> None: ...


def plan_invoice(
    practice: Practice,
    previous_sequence: int,
    client_id: str,
    appointments: list[Appointment],
    credit: list[Payment],
    issue_date: date,
    now: datetime,
) -> NewInvoice:
    """Plan an invoice for ``appointments`` of one client. Raises Conflict naming any that cannot be billed."""
    for appointment in appointments:
        if appointment.client_id != client_id:
            raise Conflict(
                f"appointment {appointment.appointment_id} belongs to another client",
                code="appointment_of_another_client",
                details=[{"appointment_id": appointment.appointment_id}],
            )
        if appointment.invoice_id is not None:
            raise Conflict(
                f"appointment {appointment.appointment_id} is already on invoice {appointment.invoice_id}",
                code="appointment_already_invoiced",
                details=[{"appointment_id": appointment.appointment_id, "invoice_id": appointment.invoice_id}],
            )
        if not appointment.billable:
            raise Conflict(
                f"appointment {appointment.appointment_id} is not billable (status {appointment.status.value}, "
                f"fee {appointment.fee_cents})",
                code="appointment_not_billable",
                details=[{"appointment_id": appointment.appointment_id}],
            )
    ordered = sorted(appointments, key=lambda a: (a.starts_at, a.appointment_id))
    lines = [
        InvoiceLine(
            appointment_id=a.appointment_id,
            date=a.local_date,
            service_code=a.service_code,
            description=a.service_description or a.service_code,
            amount_cents=a.fee_cents,
        )
        for a in ordered
    ]
    total = sum(line.amount_cents for line in lines)
    invoice_id = new_id("inv")
    uses = take_credit(credit, invoice_id, total)
    invoice = Invoice(
        invoice_id=invoice_id,
        sequence=previous_sequence + 1,
        client_id=client_id,
        currency=practice.currency,
        issue_date=issue_date,
        due_date=issue_date + timedelta(days=practice.invoice_due_days),
        lines=lines,
        total_cents=total,
        allocations=[InvoiceAllocation(payment_id=u.payment.payment_id, amount_cents=u.amount_cents) for u in uses],
        created_at=now,
    )
    invoiced = [a.model_copy(update={"invoice_id": invoice_id, "version": a.version + 1}) for a in ordered]
    return NewInvoice(practice.practice_id, invoice, invoiced, previous_sequence, uses)


def require_invoice(store: InvoiceReader, practice_id: str, invoice_id: str) -> Invoice:
    return existing(store.get_invoice(practice_id, invoice_id), "invoice", invoice_id)


def plan_void(
    practice_id: str, invoice: Invoice, appointments: list[Appointment], payments: list[Payment], now: datetime
) -> VoidedInvoice:
    """Void keeps the number; what was allocated to the invoice returns to each payment as credit."""
    if invoice.voided:
        raise Conflict(f"invoice {invoice.invoice_id} is already void", code="invoice_void")
    freed = [
        a.model_copy(update={"invoice_id": None, "version": a.version + 1})
        for a in appointments
        if a.invoice_id == invoice.invoice_id
    ]
    returned = {a.payment_id: a.amount_cents for a in invoice.allocations}
    credited = [p.with_allocation_returned(invoice.invoice_id, returned[p.payment_id]) for p in payments]
    after = invoice.model_copy(
        update={"voided": True, "voided_at": now, "allocations": [], "version": invoice.version + 1}
    )
    return VoidedInvoice(practice_id, invoice, after, freed, credited)
