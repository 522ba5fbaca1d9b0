"""A unit of work: one atomic change to the books, planned by the domain and committed by the store as one
DynamoDB transaction, or not at all.

Every object written is either new (written only if its id is unused) or the next version of what was read
(written only if the stored version is still the one read). The client's running totals (the account) and
its lists of open invoices and of payments with credit follow from the objects' transitions, computed here
once, so no use case adds money up by hand. A unit holds at most MAX_ITEMS objects (DynamoDB's limit); a
change that grows with the data is planned as several units, each complete on its own.
"""

from dataclasses import dataclass, field

from billing.calendar import Appointment
from billing.invoices import Invoice
from billing.payments import IdempotencyRecord, Payment, PaymentStatus, ProcessorRefundLink, Refund

MAX_ITEMS = 100  # DynamoDB: at most 100 items in one TransactWriteItems

Created = Payment | Refund | Invoice | IdempotencyRecord | ProcessorRefundLink
Changed = Payment | Refund | Invoice | Appointment


@dataclass
class AccountChange:
    """How one client's account moves: totals (cents) and membership of its open-invoice and credit lists."""

    invoiced_cents: int = 0
    paid_cents: int = 0
    refunded_cents: int = 0
    unallocated_credit_cents: int = 0
    opened: set[str] = field(default_factory=set)  # invoices that now owe something
    closed: set[str] = field(default_factory=set)  # invoices paid in full or voided
    credit_added: set[str] = field(default_factory=set)  # payments that now have unallocated money
    credit_removed: set[str] = field(default_factory=set)

    @property
    def totals(self) -> dict[str, int]:
        amounts = {
            "invoiced_cents": self.invoiced_cents,
            "paid_cents": self.paid_cents,
            "refunded_cents": self.refunded_cents,
            "unallocated_credit_cents": self.unallocated_credit_cents,
        }
        return {name: cents for name, cents in amounts.items() if cents}

    @property
    def empty(self) -> bool:
        return not (self.totals or self.opened or self.closed or self.credit_added or self.credit_removed)


def _live_total(invoice: Invoice | None) -> int:
    return 0 if invoice is None or invoice.voided else invoice.total_cents


def _is_open(invoice: Invoice | None) -> bool:
    return invoice is not None and invoice.is_open


def _credit(payment: Payment | None) -> int:
    return payment.unallocated_cents if payment is not None and payment.status is PaymentStatus.SUCCEEDED else 0


def _paid(payment: Payment | None) -> int:
    return payment.amount_cents if payment is not None and payment.status is PaymentStatus.SUCCEEDED else 0


def _refunded(payment: Payment | None) -> int:
    return payment.refunded_cents if payment is not None else 0


@dataclass
class UnitOfWork:
    practice_id: str
    created: list[Created] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)
    # The practice's invoice counter moves from the first to the second number (gapless numbering).
    invoice_sequence: tuple[int, int] | None = None
    accounts: dict[str, AccountChange] = field(default_factory=dict)

    def create(self, new: Created) -> "UnitOfWork":
        """Write ``new`` unless its id is taken (then the whole unit fails as stale)."""
        self.created.append(new)
        self._follow(None, new)
        return self

    def change(self, before: Changed, after: Changed) -> "UnitOfWork":
        """Write ``after`` (``before``'s next version) unless what is stored is no longer ``before``."""
        if after.version != before.version + 1:
            raise ValueError("a change writes the next version of what was read")
        self.changed.append(after)
        self._follow(before, after)
        return self

    def _follow(self, before: Created | Changed | None, after: Created | Changed) -> None:
        if isinstance(after, Invoice):
            self._follow_invoice(before if isinstance(before, Invoice) else None, after)
        elif isinstance(after, Payment):
            self._follow_payment(before if isinstance(before, Payment) else None, after)

    def account(self, client_id: str) -> AccountChange:
        return self.accounts.setdefault(client_id, AccountChange())

    def _follow_invoice(self, before: Invoice | None, after: Invoice) -> None:
        account = self.account(after.client_id)
        account.invoiced_cents += _live_total(after) - _live_total(before)
        if _is_open(after) and not _is_open(before):
            account.opened.add(after.invoice_id)
        elif _is_open(before) and not _is_open(after):
            account.closed.add(after.invoice_id)

    def _follow_payment(self, before: Payment | None, after: Payment) -> None:
        account = self.account(after.client_id)
        account.paid_cents += _paid(after) - _paid(before)
        account.refunded_cents += _refunded(after) - _refunded(before)
        account.unallocated_credit_cents += _credit(after) - _credit(before)
        if _credit(after) > 0 and _credit(before) <= 0:
            account.credit_added.add(after.payment_id)
        elif _credit(before) > 0 and _credit(after) <= 0:
            account.credit_removed.add(after.payment_id)

    @property
    def item_count(self) -> int:
        accounts = sum(1 for change in self.accounts.values() if not change.empty)
        return len(self.created) + len(self.changed) + (1 if self.invoice_sequence else 0) + accounts

    def fits(self, extra: int = 0) -> bool:
        """True when this unit, with ``extra`` more objects, is within one transaction's limit."""
        return self.item_count + extra <= MAX_ITEMS
