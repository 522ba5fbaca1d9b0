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


class InvoiceHold(Record):
    """What an in-flight payment has claimed on this invoice: no other payment may claim it meanwhile."""

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
    holds: list[InvoiceHold] = Field(default=[], exclude=True)

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

    @property
    def is_open(self) -> bool:
        """Live and still owing something."""
        return not self.voided and self.balance_cents > 0

    @property
    def held_cents(self) -> int:
        return sum(h.amount_cents for h in self.holds)

    @property
    def available_cents(self) -> int:
        """What a new payment may still claim: the balance less what in-flight payments hold."""
        return max(0, self.balance_cents - self.held_cents)

    def allocation_of(self, payment_id: str) -> int:
        return sum(a.amount_cents for a in self.allocations if a.payment_id == payment_id)

    def hold_of(self, payment_id: str) -> int:
        return sum(h.amount_cents for h in self.holds if h.payment_id == payment_id)

    def with_hold(self, payment_id: str, amount_cents: int) -> "Invoice":
        """This invoice with ``amount_cents`` of what it owes held for the in-flight ``payment_id``."""
        if self.voided or not 0 < amount_cents <= self.available_cents or self.hold_of(payment_id):
            raise ValueError("a hold must fit in what the live invoice still has available")
        return self.model_copy(
            update={"holds": [*self.holds, InvoiceHold(payment_id=payment_id, amount_cents=amount_cents)]}
        ).next()

    def with_hold_settled(self, payment_id: str) -> "Invoice":
        """The payment's hold turned into an allocation (the payment succeeded)."""
        held = self.hold_of(payment_id)
        released = self.with_hold_released(payment_id)
        return released._reallocated(payment_id, held) if held else released

    def with_hold_released(self, payment_id: str) -> "Invoice":
        """The payment's hold dropped (it was declined or canceled): the amount is available again."""
        return self.model_copy(update={"holds": [h for h in self.holds if h.payment_id != payment_id]}).next()

    def next(self) -> "Invoice":
        return self.model_copy(update={"version": self.version + 1})

    def without_payment(self, payment_id: str, amount_cents: int) -> "Invoice":
        """This invoice with ``amount_cents`` of ``payment_id``'s allocation taken back (a refund)."""
        return self._reallocated(payment_id, -amount_cents).next()

    def _reallocated(self, payment_id: str, delta_cents: int) -> "Invoice":
        current = sum(a.amount_cents for a in self.allocations if a.payment_id == payment_id)
        others = [a for a in self.allocations if a.payment_id != payment_id]
        if current + delta_cents > 0:
            others.append(InvoiceAllocation(payment_id=payment_id, amount_cents=current + delta_cents))
        return self.model_copy(update={"allocations": others})

    def reported_on(self, today: date) -> "Invoice":
        """The same invoice with its status reported as of the practice-local ``today``."""
        return self.model_copy(update={"as_of": today})


class InvoiceRequest(RequestModel):
    """Body of ``POST /invoices``."""

    client_id: ObjectId
    appointment_ids: IdList


@dataclass
class NewInvoice:
    """An invoice as planned: the invoice, its appointments as they will be, the credit it consumes."""

    invoice: Invoice
    appointments: list[tuple[Appointment, Appointment]]  # (as read, as they will be: on the invoice)
    previous_sequence: int
    credit: list[CreditUse] = field(default_factory=list)


@dataclass
class VoidedInvoice:
    """A void as planned: the invoice void (its allocations still to hand back), its appointments freed, and
    the payments whose allocations return to them as credit (handed back in bounded steps)."""

    before: Invoice
    after: Invoice
    appointments: list[tuple[Appointment, Appointment]]  # (as read, free again)


class InvoiceReader(Protocol):
    def get_invoice(self, practice_id: str, invoice_id: str) -> Invoice | None: ...


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
    invoiced = [(a, a.model_copy(update={"invoice_id": invoice_id, "version": a.version + 1})) for a in ordered]
    return NewInvoice(invoice, invoiced, previous_sequence, uses)


def require_invoice(store: InvoiceReader, practice_id: str, invoice_id: str) -> Invoice:
    return existing(store.get_invoice(practice_id, invoice_id), "invoice", invoice_id)


def plan_void(invoice: Invoice, appointments: list[Appointment], now: datetime) -> VoidedInvoice:
    """Void keeps the number and frees the appointments; what was allocated to the invoice goes back to each
    payment as credit. No payment may be in flight on it (its holds are resolved first)."""
    if invoice.voided:
        raise Conflict(f"invoice {invoice.invoice_id} is already void", code="invoice_void")
    if invoice.holds:
        raise Conflict(
            f"a payment is being taken for invoice {invoice.invoice_id}; try again in a moment",
            code="payment_in_progress",
        )
    freed = [
        (a, a.model_copy(update={"invoice_id": None, "version": a.version + 1}))
        for a in appointments
        if a.invoice_id == invoice.invoice_id
    ]
    after = invoice.model_copy(update={"voided": True, "voided_at": now, "version": invoice.version + 1})
    return VoidedInvoice(invoice, after, freed)
