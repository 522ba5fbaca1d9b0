"""Billing documents: what an invoice, receipt, statement or superbill says, and the finance CSV rows.

Pure domain: the data each document shows is assembled here from domain objects (read consistently by the
caller); rendering to PDF and storage live in the render function. Money stays integer cents; a document's
``version_token`` changes exactly when what it shows changes, so a rendered PDF can be cached by it.
"""

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, Field, model_validator

from billing.calendar import Appointment, AppointmentStatus, Modality
from billing.cards import Card
from billing.clients import Client
from billing.errors import Conflict
from billing.invoices import Invoice, InvoiceStatus
from billing.localtime import local_date
from billing.payments import Payment, PaymentMethod, PaymentStatus, Refund, RefundStatus
from billing.practices import Practice
from billing.schema import Address, Record, RequestModel, ServiceDate

# Bump when a template's layout changes, so cached PDFs of unchanged documents are rendered again.
LAYOUT_REVISION = 1
MAX_RANGE_DAYS = 400  # a statement or export covers at most about a year (and a bit) of dates


class DocumentType(StrEnum):
    INVOICE = "invoice"
    RECEIPT = "receipt"
    STATEMENT = "statement"
    SUPERBILL = "superbill"


class DateRange(RequestModel):
    """Body of ``POST /clients/{id}/statements`` and ``/superbills`` and ``/exports/finance``: local dates."""

    start: ServiceDate = Field(alias="from")
    end: ServiceDate = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> "DateRange":
        if self.end < self.start:
            raise ValueError("'to' must not be before 'from'")
        if (self.end - self.start).days > MAX_RANGE_DAYS:
            raise ValueError(f"a range covers at most {MAX_RANGE_DAYS} days")
        return self

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.end


def _distinct_types(types: list[DocumentType]) -> list[DocumentType]:
    if len(set(types)) != len(types):
        raise ValueError("types must not repeat")
    return types


class ExportRequest(DateRange):
    """Body of ``POST /clients/{id}/billing-documents/export``."""

    types: Annotated[list[DocumentType], Field(min_length=1, max_length=4), AfterValidator(_distinct_types)]


class DocumentLink(Record):
    """Where a rendered document can be downloaded, for a few minutes."""

    url: str
    expires_at: datetime


class StatementLink(DocumentLink):
    opening_balance_cents: int
    closing_balance_cents: int


class ExportLink(DocumentLink):
    documents: int


class FinanceExportLinks(Record):
    invoices_url: str
    payments_url: str
    expires_at: datetime


def _digest(*parts: object) -> str:
    """A short, stable fingerprint of ids, versions and dates (never of names or other PHI)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


def _range_fingerprint(
    practice: Practice, client: Client, period: "DateRange", issued_on: date, versions: list[tuple[str, int]]
) -> str:
    """The version of a document over a date range: the ids and versions it was assembled from, never content."""
    return _digest(
        client.client_id, period.start, period.end, issued_on, sorted(versions), practice.updated_at, LAYOUT_REVISION
    )


def _address_lines(address: Address | None) -> list[str]:
    if address is None:
        return []
    city = address.city + ("," if address.state else "")
    place = " ".join(part for part in (city, address.state, address.postal_code) if part)
    lines = [address.line1, address.line2 or "", place, "" if address.country == "US" else address.country]
    return [line for line in lines if line]


@dataclass(frozen=True)
class Party:
    """Who issues or receives a document, as printed."""

    name: str
    address: list[str]
    phone: str | None = None
    email: str | None = None


def practice_party(practice: Practice) -> Party:
    return Party(practice.name, _address_lines(practice.address), practice.phone, practice.email)


def client_party(client: Client) -> Party:
    return Party(f"{client.first_name} {client.last_name}", _address_lines(client.address), client.phone, client.email)


# -- invoice ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceDocument:
    practice: Practice
    issuer: Party
    recipient: Party
    invoice: Invoice
    stamp: str | None  # "PAID" or "VOID" across the page, else nothing

    @property
    def version_token(self) -> str:
        return f"v{self.invoice.version}-{_digest(self.practice.updated_at, LAYOUT_REVISION)}"


def invoice_document(practice: Practice, client: Client, invoice: Invoice, today: date) -> InvoiceDocument:
    """The invoice as printed on the practice-local ``today``: PAID exactly when paid, VOID when void."""
    reported = invoice.reported_on(today)
    stamp = {InvoiceStatus.PAID: "PAID", InvoiceStatus.VOID: "VOID"}.get(reported.status)
    return InvoiceDocument(practice, practice_party(practice), client_party(client), reported, stamp)


# -- receipt ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptAllocation:
    invoice_number: str
    invoice_id: str
    amount_cents: int


@dataclass(frozen=True)
class ReceiptDocument:
    practice: Practice
    issuer: Party
    recipient: Party
    payment: Payment
    paid_on: date
    method: str  # "Visa •••• 4242", "Cash", "Check (ref 1042)"
    allocations: list[ReceiptAllocation]
    refunds: list[tuple[date, Refund]]

    @property
    def refunded_cents(self) -> int:
        return sum(r.amount_cents for _, r in self.refunds)

    @property
    def version_token(self) -> str:
        refunds = [(r.refund_id, r.version) for _, r in self.refunds]
        return f"v{self.payment.version}-{_digest(refunds, self.practice.updated_at, LAYOUT_REVISION)}"


_METHOD_NAMES = {
    PaymentMethod.CARD_ON_FILE: "Card on file",
    PaymentMethod.EXTERNAL_CARD: "Card (external terminal)",
    PaymentMethod.CASH: "Cash",
    PaymentMethod.CHECK: "Check",
    PaymentMethod.OTHER: "Other",
}


def method_label(payment: Payment, card: Card | None) -> str:
    """How the client paid, as people say it: brand and last four digits for a card on file."""
    if payment.method is PaymentMethod.CARD_ON_FILE and card is not None:
        return f"{card.brand.title()} ending {card.last4}"
    label = _METHOD_NAMES[payment.method]
    return f"{label} (ref {payment.reference})" if payment.reference else label


def receipt_document(
    practice: Practice,
    client: Client,
    payment: Payment,
    invoices: list[Invoice],
    card: Card | None,
    refunds: list[Refund],
) -> ReceiptDocument:
    """A receipt for a payment that went through; refunds listed are the succeeded ones of this payment."""
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise Conflict(f"payment {payment.payment_id} has not succeeded: no receipt", code="no_receipt")
    numbers = {i.invoice_id: i.number for i in invoices}
    allocations = [
        ReceiptAllocation(numbers.get(a.invoice_id, a.invoice_id), a.invoice_id, a.amount_cents)
        for a in payment.allocations
    ]
    kept = sorted(
        (
            (local_date(r.created_at, practice.timezone), r)
            for r in refunds
            if r.payment_id == payment.payment_id and r.status is RefundStatus.SUCCEEDED
        ),
        key=lambda pair: (pair[1].created_at, pair[1].refund_id),
    )
    return ReceiptDocument(
        practice,
        practice_party(practice),
        client_party(client),
        payment,
        local_date(payment.created_at, practice.timezone),
        method_label(payment, card),
        allocations,
        kept,
    )


# -- statement -------------------------------------------------------------------------------------------


class EntryKind(StrEnum):
    INVOICE = "invoice"
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True)
class StatementEntry:
    day: date
    kind: EntryKind
    reference: str  # invoice number, payment or refund id
    description: str
    charge_cents: int  # raises the balance (invoices, refunds)
    credit_cents: int  # lowers it (payments)
    balance_cents: int = 0  # the running balance after this entry


@dataclass(frozen=True)
class StatementDocument:
    practice: Practice
    issuer: Party
    recipient: Party
    client_id: str
    period: DateRange
    issued_on: date
    opening_balance_cents: int
    entries: list[StatementEntry]
    closing_balance_cents: int
    fingerprint: str = field(repr=False)

    @property
    def number(self) -> str:
        return f"ST-{self.issued_on:%Y%m%d}-{self.fingerprint[:6].upper()}"

    @property
    def version_token(self) -> str:
        return self.fingerprint

    @property
    def invoiced_cents(self) -> int:
        return sum(e.charge_cents for e in self.entries if e.kind is EntryKind.INVOICE)

    @property
    def paid_cents(self) -> int:
        return sum(e.credit_cents for e in self.entries)

    @property
    def refunded_cents(self) -> int:
        return sum(e.charge_cents for e in self.entries if e.kind is EntryKind.REFUND)


def ledger_entries(
    practice: Practice, invoices: list[Invoice], payments: list[Payment], refunds: list[Refund]
) -> list[StatementEntry]:
    """Every event that moves the balance, in date order: live invoices (by issue date), succeeded payments
    and succeeded refunds (by their local date). Their sum is the billing overview's balance:
    Σ live invoice totals - Σ succeeded payments + Σ refunds."""
    zone = practice.timezone
    entries = [
        (
            (i.issue_date, 0, f"{i.sequence:012d}", i.invoice_id),
            StatementEntry(i.issue_date, EntryKind.INVOICE, i.number, _invoice_summary(i), i.total_cents, 0),
        )
        for i in invoices
        if not i.voided
    ]
    entries += [
        (
            (local_date(p.created_at, zone), 1, p.created_at.isoformat(), p.payment_id),
            StatementEntry(
                local_date(p.created_at, zone), EntryKind.PAYMENT, p.payment_id, _payment_summary(p), 0, p.amount_cents
            ),
        )
        for p in payments
        if p.status is PaymentStatus.SUCCEEDED
    ]
    entries += [
        (
            (local_date(r.created_at, zone), 2, r.created_at.isoformat(), r.refund_id),
            StatementEntry(local_date(r.created_at, zone), EntryKind.REFUND, r.refund_id, "Refund", r.amount_cents, 0),
        )
        for r in refunds
        if r.status is RefundStatus.SUCCEEDED
    ]
    return [entry for _, entry in sorted(entries, key=lambda pair: pair[0])]


def _invoice_summary(invoice: Invoice) -> str:
    sessions = len(invoice.lines)
    return f"Invoice, {sessions} session{'s' if sessions != 1 else ''}"


def _payment_summary(payment: Payment) -> str:
    return f"Payment, {_METHOD_NAMES[payment.method].lower()}"


def statement_document(
    practice: Practice,
    client: Client,
    period: DateRange,
    issued_on: date,
    invoices: list[Invoice],
    payments: list[Payment],
    refunds: list[Refund],
) -> StatementDocument:
    """Opening balance (everything before ``period``), the entries in it with a running balance, and the
    closing balance; closing = opening + invoices - payments + refunds in the period, to the cent."""
    everything = ledger_entries(practice, invoices, payments, refunds)
    opening = sum(e.charge_cents - e.credit_cents for e in everything if e.day < period.start)
    running = opening
    shown = []
    for entry in everything:
        if period.covers(entry.day):
            running += entry.charge_cents - entry.credit_cents
            shown.append(StatementEntry(**{**entry.__dict__, "balance_cents": running}))
    fingerprint = _range_fingerprint(
        practice,
        client,
        period,
        issued_on,
        [(i.invoice_id, i.version) for i in invoices]
        + [(p.payment_id, p.version) for p in payments]
        + [(r.refund_id, r.version) for r in refunds],
    )
    return StatementDocument(
        practice,
        practice_party(practice),
        client_party(client),
        client.client_id,
        period,
        issued_on,
        opening,
        shown,
        running,
        fingerprint,
    )


# -- superbill -------------------------------------------------------------------------------------------

DIAGNOSIS_POINTERS = "ABCDEFGHIJKL"  # CMS-1500 box 21 letters
# Place of service for telehealth (CMS POS codes): 10 = in the patient's home, 02 = elsewhere.
_TELEHEALTH_POS = {Modality.TELEHEALTH_HOME: "10", Modality.TELEHEALTH_OTHER: "02"}
DEFAULT_PLACE_OF_SERVICE = "11"  # office


@dataclass(frozen=True)
class SuperbillLine:
    day: date
    place_of_service: str
    cpt_code: str
    modifiers: list[str]
    units: int
    pointers: str
    description: str
    fee_cents: int
    paid_cents: int


@dataclass(frozen=True)
class SuperbillDocument:
    practice: Practice
    issuer: Party
    recipient: Party
    date_of_birth: date | None
    diagnosis_codes: list[tuple[str, str]]  # (pointer letter, ICD-10 code)
    period: DateRange
    issued_on: date
    lines: list[SuperbillLine]
    fingerprint: str = field(repr=False)

    @property
    def total_fee_cents(self) -> int:
        return sum(line.fee_cents for line in self.lines)

    @property
    def total_paid_cents(self) -> int:
        return sum(line.paid_cents for line in self.lines)

    @property
    def version_token(self) -> str:
        return self.fingerprint


def superbill_gaps(practice: Practice, client: Client) -> list[str]:
    """What a payer needs that is missing: ``practice.npi``, ``practice.tax_id``, ``client.diagnosis_codes``."""
    missing = []
    if not practice.npi:
        missing.append("practice.npi")
    if not practice.tax_id:
        missing.append("practice.tax_id")
    if not client.diagnosis_codes:
        missing.append("client.diagnosis_codes")
    return missing


def require_superbill_details(practice: Practice, client: Client) -> None:
    """Conflict (409) naming exactly what is missing, instead of a superbill a payer would reject."""
    missing = superbill_gaps(practice, client)
    if missing:
        raise Conflict(
            "a superbill needs " + ", ".join(missing),
            code="superbill_details_missing",
            details=[{"field": name, "message": "required on a superbill"} for name in missing],
        )


def _paid_per_line(invoice: Invoice) -> dict[str, int]:
    """What the invoice's payments cover, line by line in order (a partial payment pays the earliest first)."""
    left = 0 if invoice.voided else invoice.paid_cents
    paid = {}
    for line in invoice.lines:
        paid[line.appointment_id] = min(left, line.amount_cents)
        left -= paid[line.appointment_id]
    return paid


def place_of_service(practice: Practice, appointment: Appointment) -> str:
    telehealth = _TELEHEALTH_POS.get(appointment.modality) if appointment.modality else None
    return telehealth or practice.place_of_service or DEFAULT_PLACE_OF_SERVICE


def superbill_document(
    practice: Practice,
    client: Client,
    period: DateRange,
    issued_on: date,
    invoices: list[Invoice],
    appointments: list[Appointment],
) -> SuperbillDocument:
    """Dates of service in ``period`` on the client's live invoices, without no-shows and late cancels."""
    require_superbill_details(practice, client)
    by_id = {a.appointment_id: a for a in appointments}
    codes = list(zip(DIAGNOSIS_POINTERS, client.diagnosis_codes, strict=False))
    pointers = "".join(letter for letter, _ in codes[:4])  # a CMS-1500 line points to at most four
    lines = []
    for invoice in invoices:
        if invoice.voided:
            continue
        paid = _paid_per_line(invoice)
        for line in invoice.lines:
            appointment = by_id.get(line.appointment_id)
            if appointment is None or not period.covers(line.date):
                continue
            if appointment.status in (AppointmentStatus.NO_SHOW, AppointmentStatus.LATE_CANCEL):
                continue
            lines.append(
                SuperbillLine(
                    line.date,
                    place_of_service(practice, appointment),
                    line.service_code,
                    list(appointment.modifiers),
                    appointment.units,
                    pointers,
                    line.description,
                    line.amount_cents,
                    paid[line.appointment_id],
                )
            )
    lines.sort(key=lambda line: (line.day, line.cpt_code))
    fingerprint = _range_fingerprint(
        practice,
        client,
        period,
        issued_on,
        [(i.invoice_id, i.version) for i in invoices] + [(a.appointment_id, a.version) for a in appointments],
    )
    return SuperbillDocument(
        practice,
        practice_party(practice),
        client_party(client),
        client.date_of_birth,
        codes,
        period,
        issued_on,
        lines,
        fingerprint,
    )


# -- series ----------------------------------------------------------------------------------------------

Document = InvoiceDocument | ReceiptDocument | StatementDocument | SuperbillDocument


def document_date(document: Document) -> date:
    if isinstance(document, InvoiceDocument):
        return document.invoice.issue_date
    if isinstance(document, ReceiptDocument):
        return document.paid_on
    return document.period.end


def in_date_order(documents: list[Document]) -> list[Document]:
    """A series in date order; on one date invoices come before receipts, then the statement and superbill."""
    rank = {InvoiceDocument: 0, ReceiptDocument: 1, StatementDocument: 2, SuperbillDocument: 3}
    return sorted(documents, key=lambda d: (document_date(d), rank[type(d)]))


def series_version(documents: list[Document]) -> str:
    return _digest([(type(d).__name__, d.version_token) for d in documents])


# -- time ------------------------------------------------------------------------------------------------


def utc_bounds(period: DateRange, timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants at which the period's first local day starts and the day after its last starts."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(period.start, time(0), zone).astimezone(UTC)
    end = datetime.combine(period.end + timedelta(days=1), time(0), zone).astimezone(UTC)
    return start, end


# -- finance CSVs ----------------------------------------------------------------------------------------

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

INVOICE_COLUMNS = [
    "number",
    "invoice_id",
    "client_id",
    "client_name",
    "issue_date",
    "due_date",
    "total_cents",
    "paid_cents",
    "balance_cents",
    "status",
]
PAYMENT_COLUMNS = [
    "payment_id",
    "date",
    "client_id",
    "client_name",
    "method",
    "reference",
    "gross_cents",
    "fee_cents",
    "net_cents",
    "refunded_cents",
    "allocations",
    "processor_payment_id",
]


def neutralise(text: str) -> str:
    """A user-controlled cell a spreadsheet cannot take for a formula (OWASP CSV injection): prefix ``'``."""
    return f"'{text}" if text.startswith(FORMULA_TRIGGERS) else text


def _name(clients: dict[str, Client], client_id: str) -> str:
    client = clients.get(client_id)
    return neutralise(f"{client.first_name} {client.last_name}") if client else ""


def invoice_rows(invoices: list[Invoice], clients: dict[str, Client], today: date) -> list[list[str | int]]:
    """One row per invoice (void ones too: their numbers are used), in number order; money in cents."""
    rows: list[list[str | int]] = []
    for invoice in sorted(invoices, key=lambda i: i.sequence):
        reported = invoice.reported_on(today)
        rows.append(
            [
                reported.number,
                reported.invoice_id,
                reported.client_id,
                _name(clients, reported.client_id),
                reported.issue_date.isoformat(),
                reported.due_date.isoformat(),
                reported.total_cents,
                reported.paid_cents,
                reported.balance_cents,
                reported.status.value,
            ]
        )
    return rows


def payment_rows(
    payments: list[Payment], invoice_numbers: dict[str, str], clients: dict[str, Client], timezone: str
) -> list[list[str | int]]:
    """One row per succeeded payment, oldest first. Net = gross - processor fee (0 when not through Stripe)."""
    rows: list[list[str | int]] = []
    kept = [p for p in payments if p.status is PaymentStatus.SUCCEEDED]
    for payment in sorted(kept, key=lambda p: (p.created_at, p.payment_id)):
        fee = payment.fee_cents or 0
        allocations = ";".join(
            f"{invoice_numbers.get(a.invoice_id, a.invoice_id)}:{a.amount_cents}" for a in payment.allocations
        )
        rows.append(
            [
                payment.payment_id,
                local_date(payment.created_at, timezone).isoformat(),
                payment.client_id,
                _name(clients, payment.client_id),
                payment.method.value,
                neutralise(payment.reference or ""),
                payment.amount_cents,
                fee,
                payment.amount_cents - fee,
                payment.refunded_cents,
                allocations,
                payment.processor_payment_id or "",
            ]
        )
    return rows
