"""Invoicing use cases: by hand, on the nightly run, and voids. Each plans from consistent reads and commits
one unit of work; a lost race reads again and plans again (`optimistic`), so concurrent staff, nightly runs and
retries never double-invoice."""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from billing.books import Books, open_credit
from billing.calendar import Appointment
from billing.errors import NotFound, StaleState, existing
from billing.invoices import Invoice, InvoiceRequest, NewInvoice, plan_invoice, plan_void, require_invoice
from billing.localtime import Clock, local_date
from billing.practices import InvoiceCreation, Practice
from billing.retry import optimistic
from billing.unit_of_work import MAX_ITEMS, UnitOfWork

MAX_LINES_PER_INVOICE = 80  # one invoice's unit: invoice, counter, lines, 15 credit sources, account <= 100


def _require_practice(books: Books, practice_id: str) -> Practice:
    return existing(books.get_practice(practice_id), "practice", practice_id)


def _issue(plan: NewInvoice, practice_id: str) -> UnitOfWork:
    """The unit that issues a planned invoice: all of it, or nothing."""
    unit = UnitOfWork(practice_id, invoice_sequence=(plan.previous_sequence, plan.invoice.sequence))
    unit.create(plan.invoice)
    for before, after in plan.appointments:
        unit.change(before, after)
    for use in plan.credit:
        unit.change(use.before, use.payment)
    return unit


def create_invoice(books: Books, clock: Clock, practice_id: str, request: InvoiceRequest) -> Invoice:
    """Invoice chosen appointments of one client now. 409 names an appointment already invoiced or not billable."""

    def attempt() -> Invoice:
        practice = _require_practice(books, practice_id)
        appointments = books.appointments_by_id(practice_id, request.appointment_ids)
        found = {a.appointment_id for a in appointments}
        missing = [i for i in request.appointment_ids if i not in found]
        if missing:
            raise NotFound("appointment", missing[0])
        now = clock.now()
        today = local_date(now, practice.timezone)
        credit = open_credit(books, practice_id, request.client_id)
        plan = plan_invoice(
            practice, practice.last_invoice_sequence, request.client_id, appointments, credit, today, now
        )
        books.commit(_issue(plan, practice_id))
        return plan.invoice.reported_on(today)

    return optimistic(attempt)


ResolveInFlight = Callable[[str], object]


def void_invoice(
    books: Books, clock: Clock, practice_id: str, invoice_id: str, resolve_in_flight: ResolveInFlight
) -> Invoice:
    """Void an invoice: its number stays used, its appointments can be invoiced again, its payments become credit.

    A payment in flight on the invoice is resolved first by ``resolve_in_flight(payment_id)`` (settled from the
    processor's state or released), or the void is refused with 409 while its charge may still be sent: a void
    and a charge are serialised, and nothing is charged for an invoice after its void. Handing the invoice's
    allocations back is done in bounded steps; calling again after a crash finishes it.
    """
    practice = _require_practice(books, practice_id)

    def attempt() -> Invoice:
        invoice = require_invoice(books, practice_id, invoice_id)
        if invoice.voided and invoice.allocations:
            return invoice  # voided before a crash: finish handing its allocations back below
        for hold in invoice.holds:
            resolve_in_flight(hold.payment_id)  # raises 409 while that charge may still be sent
        if invoice.holds:
            raise StaleState("in-flight payments were resolved; read the invoice again")
        appointments = books.appointments_by_id(practice_id, [line.appointment_id for line in invoice.lines])
        plan = plan_void(invoice, appointments, clock.now())
        unit = UnitOfWork(practice_id)
        for before, after in plan.appointments:
            unit.change(before, after)
        returned = _hand_back(books, unit, practice_id, invoice, plan.after, room=MAX_ITEMS - unit.item_count - 2)
        books.commit(unit)
        return returned

    voided = optimistic(attempt)
    while voided.allocations:
        voided = optimistic(lambda: _hand_back_step(books, practice_id, invoice_id))
    return voided.reported_on(local_date(clock.now(), practice.timezone))


def _hand_back(books: Books, unit: UnitOfWork, practice_id: str, before: Invoice, after: Invoice, room: int) -> Invoice:
    """Add to ``unit`` the void invoice ``after`` with up to ``room`` of its payments' allocations handed back."""
    chunk = [a.payment_id for a in after.allocations][: max(room, 0)]
    payments = books.payments_by_id(practice_id, chunk)
    remaining = after.model_copy(update={"allocations": [a for a in after.allocations if a.payment_id not in chunk]})
    unit.change(before, remaining)
    for payment in payments:
        unit.change(payment, payment.with_allocation_returned(before.invoice_id))
    return remaining


def _hand_back_step(books: Books, practice_id: str, invoice_id: str) -> Invoice:
    invoice = require_invoice(books, practice_id, invoice_id)
    if not invoice.allocations:
        return invoice
    unit = UnitOfWork(practice_id)
    returned = _hand_back(books, unit, practice_id, invoice, invoice.next(), room=MAX_ITEMS - 2)
    books.commit(unit)
    return returned


def client_invoices(books: "InvoiceLister", clock: Clock, practice: Practice, client_id: str) -> list[Invoice]:
    """The client's invoices, newest first, with status as of the practice's today."""
    today = local_date(clock.now(), practice.timezone)
    invoices = books.invoices_of(practice.practice_id, client_id)
    return sorted((i.reported_on(today) for i in invoices), key=lambda i: i.sequence, reverse=True)


class InvoiceLister(Protocol):
    def invoices_of(self, practice_id: str, client_id: str) -> list[Invoice]:
        """The client's invoices for display (an index read: may lag a moment behind the latest write)."""
        ...


@dataclass
class NightSummary:
    practice_id: str
    invoices_created: int = 0
    appointments_invoiced: int = 0
    skipped: str | None = None


def is_invoicing_night(practice: Practice, business_date: date) -> bool:
    """Whether the practice invoices on the night of ``business_date`` (daily: every night; monthly: the 1st)."""
    if practice.invoice_creation is InvoiceCreation.DAILY:
        return True
    return practice.invoice_creation is InvoiceCreation.MONTHLY and business_date.day == 1


class NightStore(Books, Protocol):
    def uninvoiced_appointments(
        self, practice_id: str, *, before: date | None = None, client_id: str | None = None
    ) -> list[Appointment]:
        """Appointments that may still be invoiced (an index read: each is re-read consistently before use)."""
        ...


def invoice_night(books: NightStore, clock: Clock, practice_id: str, business_date: date) -> NightSummary:
    """The nightly run for one practice: for each client, one invoice of its billable, uninvoiced appointments
    dated before ``business_date`` (so a missed night is caught up). Safe to run twice or concurrently."""
    summary = NightSummary(practice_id)
    practice = books.get_practice(practice_id)
    if practice is None or not is_invoicing_night(practice, business_date):
        summary.skipped = "not an invoicing night for this practice" if practice else "practice not found"
        return summary
    issue_date = business_date - timedelta(days=1)  # the day that just ended
    pending = books.uninvoiced_appointments(practice_id, before=business_date)
    for client_id, appointments in _billable_by_client(pending).items():
        for chunk in _chunks(appointments, MAX_LINES_PER_INVOICE):
            invoice = _invoice_chunk(books, clock, practice, client_id, chunk, issue_date)
            if invoice is not None:
                practice = practice.model_copy(update={"last_invoice_sequence": invoice.sequence})
                summary.invoices_created += 1
                summary.appointments_invoiced += len(invoice.lines)
    return summary


def _invoice_chunk(
    books: Books, clock: Clock, practice: Practice, client_id: str, appointment_ids: list[str], issue_date: date
) -> Invoice | None:
    """Invoice what is still uninvoiced and billable among ``appointment_ids`` (re-read consistently: the index
    that listed them may lag, and staff may have invoiced some by hand meanwhile). The practice's counter as
    last seen is tried first; after a lost race the practice is read again."""
    known = [practice]

    def attempt() -> Invoice | None:
        appointments = [
            a
            for a in books.appointments_by_id(practice.practice_id, appointment_ids)
            if a.invoice_id is None and a.billable and a.client_id == client_id
        ]
        if not appointments:
            return None
        credit = open_credit(books, practice.practice_id, client_id)
        current = known[-1]
        plan = plan_invoice(
            current, current.last_invoice_sequence, client_id, appointments, credit, issue_date, clock.now()
        )
        try:
            books.commit(_issue(plan, practice.practice_id))
        except StaleState:
            known.append(_require_practice(books, practice.practice_id))
            raise
        return plan.invoice

    return optimistic(attempt)


def _billable_by_client(appointments: list[Appointment]) -> dict[str, list[Appointment]]:
    grouped: dict[str, list[Appointment]] = defaultdict(list)
    for appointment in appointments:
        if appointment.billable and appointment.invoice_id is None:
            grouped[appointment.client_id].append(appointment)
    return grouped


def _chunks(appointments: list[Appointment], size: int) -> list[list[str]]:
    ordered = [a.appointment_id for a in sorted(appointments, key=lambda a: (a.starts_at, a.appointment_id))]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]
