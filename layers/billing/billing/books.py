"""What the money use cases need from storage: consistent reads by id, and one way to commit.

Every read here is strongly consistent (never an eventually consistent index), because each use case decides
what to write from what it reads. A client's open invoices and its payments holding credit are kept on the
client itself, moved by the same transactions that move money, so they can be read consistently too.
"""

from dataclasses import dataclass
from typing import Protocol

from billing.calendar import Appointment
from billing.cards import Card
from billing.clients import Client
from billing.errors import existing
from billing.invoices import Invoice
from billing.payments import IdempotencyRecord, Payment, ProcessorRefundLink, Refund
from billing.practices import Practice
from billing.schema import Model
from billing.unit_of_work import UnitOfWork


class Account(Model):
    """Running totals kept on the client, changed only inside the transactions that move money.

    Balance = Σ live invoice totals - Σ succeeded payments + Σ refunds (negative means credit)."""

    invoiced_cents: int = 0
    paid_cents: int = 0
    refunded_cents: int = 0
    unallocated_credit_cents: int = 0

    @property
    def balance_cents(self) -> int:
        return self.invoiced_cents - self.paid_cents + self.refunded_cents


@dataclass(frozen=True)
class ClientLedger:
    """One consistent read of a client: who they are, their totals, and the lists the money transactions keep
    on them."""

    client: Client
    account: Account
    open_invoice_ids: list[str]
    credit_payment_ids: list[str]
    card_ids: list[str]


class Books(Protocol):
    def get_practice(self, practice_id: str) -> Practice | None: ...

    def get_client(self, practice_id: str, client_id: str) -> Client | None: ...

    def get_appointment(self, practice_id: str, appointment_id: str) -> Appointment | None: ...

    def appointments_by_id(self, practice_id: str, appointment_ids: list[str]) -> list[Appointment]: ...

    def get_invoice(self, practice_id: str, invoice_id: str) -> Invoice | None: ...

    def invoices_by_id(self, practice_id: str, invoice_ids: list[str]) -> list[Invoice]: ...

    def get_payment(self, practice_id: str, payment_id: str) -> Payment | None: ...

    def payments_by_id(self, practice_id: str, payment_ids: list[str]) -> list[Payment]: ...

    def get_refund(self, practice_id: str, refund_id: str) -> Refund | None: ...

    def get_idempotency_record(self, practice_id: str, key_digest: str) -> IdempotencyRecord | None: ...

    def get_refund_link(self, practice_id: str, processor_refund_id: str) -> ProcessorRefundLink | None: ...

    def client_ledger(self, practice_id: str, client_id: str) -> ClientLedger | None: ...

    def cards_by_id(self, practice_id: str, card_ids: list[str]) -> list[Card]:
        """Cards by id, oldest first."""
        ...

    def cards_of(self, practice_id: str, client_id: str) -> list[Card]: ...

    def commit(self, unit: UnitOfWork) -> None:
        """All of ``unit`` or nothing; StaleState when something it was planned from changed meanwhile."""
        ...


def require_ledger(books: Books, practice_id: str, client_id: str) -> ClientLedger:
    return existing(books.client_ledger(practice_id, client_id), "client", client_id)


def open_invoices(books: Books, practice_id: str, client_id: str, ledger: ClientLedger | None = None) -> list[Invoice]:
    """The client's live invoices that still owe something, oldest first (consistent reads; ``ledger``: the
    client as just read, saving a read)."""
    ledger = ledger or require_ledger(books, practice_id, client_id)
    invoices = books.invoices_by_id(practice_id, ledger.open_invoice_ids)
    return sorted((i for i in invoices if i.is_open), key=lambda i: (i.issue_date, i.sequence))


def open_credit(books: Books, practice_id: str, client_id: str) -> list[Payment]:
    """The client's payments with unallocated money, oldest first (consistent reads)."""
    payments = books.payments_by_id(practice_id, require_ledger(books, practice_id, client_id).credit_payment_ids)
    return sorted((p for p in payments if p.unallocated_cents > 0), key=lambda p: (p.created_at, p.payment_id))
