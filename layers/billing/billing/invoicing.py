"""Invoicing use cases: by hand, on the nightly run, and voids. Each retries on a lost race and never
double-invoices: the store's transaction conditions decide, the code here just plans again."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from billing.calendar import Appointment
from billing.errors import Conflict, NotFound, StaleState, existing
from billing.invoices import (
    Invoice,
    InvoiceRequest,
    InvoiceStore,
    NewInvoice,
    plan_invoice,
    plan_void,
    require_invoice,
)
from billing.localtime import Clock, local_date
from billing.payments import Payment
from billing.practices import InvoiceCreation, Practice

MAX_ATTEMPTS = 8
MAX_LINES_PER_INVOICE = 80  # keeps one invoice's transaction well under DynamoDB's 100-item limit


def _require_practice(store: InvoiceStore, practice_id: str) -> Practice:
    return existing(store.get_practice(practice_id), "practice", practice_id)


def create_invoice(store: InvoiceStore, clock: Clock, practice_id: str, request: InvoiceRequest) -> Invoice:
    """Invoice chosen appointments of one client now. 409 names an appointment already invoiced or not billable."""
    for attempt in range(MAX_ATTEMPTS):
        practice = _require_practice(store, practice_id)
        appointments = store.appointments_by_id(practice_id, request.appointment_ids)
        found = {a.appointment_id for a in appointments}
        missing = [i for i in request.appointment_ids if i not in found]
        if missing:
            raise NotFound("appointment", missing[0])
        now = clock.now()
        today = local_date(now, practice.timezone)
        plan = plan_invoice(
            practice,
            practice.last_invoice_sequence,
            request.client_id,
            appointments,
            store.open_credit(practice_id, request.client_id),
            today,
            now,
        )
        try:
            store.commit_new_invoice(plan)
            return plan.invoice.reported_on(today)
        except StaleState:
            if attempt == MAX_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def void_invoice(store: InvoiceStore, clock: Clock, practice_id: str, invoice_id: str) -> Invoice:
    """Void an invoice: its number stays used, its appointments can be invoiced again, its payments become credit."""
    for attempt in range(MAX_ATTEMPTS):
        practice = _require_practice(store, practice_id)
        invoice = require_invoice(store, practice_id, invoice_id)
        appointments = store.appointments_by_id(practice_id, [line.appointment_id for line in invoice.lines])
        payments = [_require_payment(store, practice_id, a.payment_id) for a in invoice.allocations]
        now = clock.now()
        plan = plan_void(practice_id, invoice, appointments, payments, now)
        try:
            store.commit_void(plan)
            return plan.after.reported_on(local_date(now, practice.timezone))
        except StaleState:
            if attempt == MAX_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _require_payment(store: InvoiceStore, practice_id: str, payment_id: str) -> Payment:
    return existing(store.get_payment(practice_id, payment_id), "payment", payment_id)


def client_invoices(store: InvoiceStore, clock: Clock, practice: Practice, client_id: str) -> list[Invoice]:
    """The client's invoices, newest first, with status as of the practice's today."""
    today = local_date(clock.now(), practice.timezone)
    invoices = store.invoices_of(practice.practice_id, client_id)
    return sorted((i.reported_on(today) for i in invoices), key=lambda i: i.sequence, reverse=True)


@dataclass
class NightSummary:
    practice_id: str
    invoices_created: int = 0
    appointments_invoiced: int = 0
    skipped: str | None = None


def _is_invoicing_night(practice: Practice, business_date: date) -> bool:
    if practice.invoice_creation is InvoiceCreation.DAILY:
        return True
    return practice.invoice_creation is InvoiceCreation.MONTHLY and business_date.day == 1


def invoice_night(store: "NightStore", clock: Clock, practice_id: str, business_date: date) -> NightSummary:
    """The nightly run for one practice: for each client, one invoice of its billable, uninvoiced appointments
    dated before ``business_date`` (so a missed night is caught up). Safe to run twice or concurrently."""
    summary = NightSummary(practice_id)
    practice = store.get_practice(practice_id)
    if practice is None or not _is_invoicing_night(practice, business_date):
        summary.skipped = "not an invoicing night for this practice" if practice else "practice not found"
        return summary
    issue_date = business_date - timedelta(days=1)  # the day that just ended
    pending = store.uninvoiced_appointments(practice_id, before=business_date)
    credit = _by_client(store.open_credit(practice_id))
    sequence = practice.last_invoice_sequence
    for client_id, appointments in _billable_by_client(pending).items():
        for chunk in _chunks(appointments, MAX_LINES_PER_INVOICE):
            plan = _invoice_chunk(
                store, clock, practice, sequence, client_id, chunk, credit[client_id], issue_date, business_date
            )
            if plan is not None:
                sequence = plan.invoice.sequence
                summary.invoices_created += 1
                summary.appointments_invoiced += len(plan.invoice.lines)
                credit[client_id] = _credit_left(credit[client_id], plan)
    return summary


class NightStore(InvoiceStore, Protocol):
    def uninvoiced_appointments(
        self, practice_id: str, *, before: date | None = None, client_id: str | None = None
    ) -> list[Appointment]: ...


def _invoice_chunk(
    store: NightStore,
    clock: Clock,
    practice: Practice,
    sequence: int,
    client_id: str,
    appointments: list[Appointment],
    credit: list[Payment],
    issue_date: date,
    business_date: date,
) -> NewInvoice | None:
    """Commit one nightly invoice; after a lost race re-read just what changed and plan again."""
    for _ in range(MAX_ATTEMPTS):
        if not appointments:
            return None
        plan = plan_invoice(practice, sequence, client_id, appointments, credit, issue_date, clock.now())
        try:
            store.commit_new_invoice(plan)
            return plan
        except StaleState:
            # Someone else numbered an invoice or took one of these appointments (e.g. staff, by hand).
            practice = store.get_practice(practice.practice_id) or practice
            sequence = practice.last_invoice_sequence
            wanted = {a.appointment_id for a in appointments}
            appointments = [
                a
                for a in store.uninvoiced_appointments(practice.practice_id, before=business_date, client_id=client_id)
                if a.appointment_id in wanted and a.billable
            ]
            credit = store.open_credit(practice.practice_id, client_id)
    raise Conflict("could not invoice after repeated concurrent changes", code="concurrent_change")


def _billable_by_client(appointments: list[Appointment]) -> dict[str, list[Appointment]]:
    grouped: dict[str, list[Appointment]] = defaultdict(list)
    for appointment in appointments:
        if appointment.billable and appointment.invoice_id is None:
            grouped[appointment.client_id].append(appointment)
    return grouped


def _by_client(payments: list[Payment]) -> dict[str, list[Payment]]:
    grouped: dict[str, list[Payment]] = defaultdict(list)
    for payment in payments:
        grouped[payment.client_id].append(payment)
    return grouped


def _chunks(appointments: list[Appointment], size: int) -> list[list[Appointment]]:
    ordered = sorted(appointments, key=lambda a: (a.starts_at, a.appointment_id))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _credit_left(credit: list[Payment], plan: NewInvoice) -> list[Payment]:
    """The client's credit after ``plan`` consumed some of it (payments as they now are)."""
    after = {use.payment.payment_id: use.payment for use in plan.credit}
    return [p for p in (after.get(p.payment_id, p) for p in credit) if p.unallocated_cents > 0]
