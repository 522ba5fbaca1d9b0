"""Where a payment's money goes: allocated to invoices, left as credit, or refunded.

Invariant for every succeeded payment: amount = Σ allocations + unallocated + refunded.
"""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing.errors import Conflict
from billing.invoices import Invoice
from billing.payments import Payment, PaymentAllocation, PaymentStatus
from billing.schema import Record


@dataclass
class SettledPayment:
    """The unit of work that settles a payment: the payment as it ends, and the invoices it pays."""

    practice_id: str
    payment: Payment
    invoices: list[Invoice] = field(default_factory=list)  # as they will be, version + 1


def allocate(
    practice_id: str, payment: Payment, open_invoices: list[Invoice], named: list[str] | None
) -> SettledPayment:
    """Allocate a succeeded payment to the named invoices in the order given, else to the oldest unpaid first.
    What is left over, including what a named invoice paid meanwhile no longer needs, stays as credit:
    money already taken is never refused here."""
    by_id = {i.invoice_id: i for i in open_invoices if i.balance_cents > 0}
    if named:
        targets = [by_id[i] for i in named if i in by_id]
    else:
        targets = sorted(by_id.values(), key=lambda i: (i.issue_date, i.sequence))
    remaining = payment.amount_cents
    allocations: list[PaymentAllocation] = []
    paid: list[Invoice] = []
    for invoice in targets:
        take = min(invoice.balance_cents, remaining)
        if take <= 0:
            continue
        allocations.append(PaymentAllocation(invoice_id=invoice.invoice_id, amount_cents=take))
        paid.append(invoice.with_payment(payment.payment_id, take))
        remaining -= take
    settled = payment.model_copy(
        update={
            "status": PaymentStatus.SUCCEEDED,
            "allocations": allocations,
            "unallocated_cents": remaining,
            "version": payment.version + 1,
        }
    )
    return SettledPayment(practice_id, settled, paid)


def check_payable(open_invoices: list[Invoice], named: list[str] | None) -> None:
    """Before any money is taken: every invoice the caller names must be an unpaid invoice of the client."""
    payable = {i.invoice_id for i in open_invoices if i.balance_cents > 0}
    missing = [i for i in named or [] if i not in payable]
    if missing:
        raise Conflict(f"invoice {missing[0]} is not an unpaid invoice of this client", code="invoice_not_open")


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"


class Refund(Record):
    refund_id: str
    payment_id: str
    client_id: str
    amount_cents: int
    status: RefundStatus
    processor_refund_id: str | None = None
    created_at: datetime
    version: int = 1


@dataclass
class RefundedPayment:
    """The unit of work that records a refund: the refund, the payment, the invoices it un-pays."""

    practice_id: str
    refund: Refund
    payment: Payment
    invoices: list[Invoice]
    from_credit_cents: int


def check_refundable(payment: Payment, amount_cents: int | None) -> int:
    """The amount to refund (default: all still refundable). Never more than was paid and not yet refunded."""
    amount = payment.refundable_cents if amount_cents is None else amount_cents
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise Conflict(f"payment {payment.payment_id} did not succeed; nothing to refund", code="not_refundable")
    if amount <= 0 or amount > payment.refundable_cents:
        raise Conflict(
            f"refund of {amount} exceeds the {payment.refundable_cents} still refundable on {payment.payment_id}",
            code="refund_exceeds_refundable",
            details=[{"refundable_cents": payment.refundable_cents}],
        )
    return amount


def plan_refund(practice_id: str, refund: Refund, payment: Payment, invoices: list[Invoice]) -> RefundedPayment:
    """Take the refund from the payment's unallocated credit first, then from its newest allocations, so the
    invoices it paid go back to unpaid or partially paid."""
    amount = check_refundable(payment, refund.amount_cents)
    from_credit = min(payment.unallocated_cents, amount)
    remaining = amount - from_credit
    by_id = {i.invoice_id: i for i in invoices}
    allocations = list(payment.allocations)
    changed: list[Invoice] = []
    for index in reversed(range(len(allocations))):
        if remaining <= 0:
            break
        allocation = allocations[index]
        take = min(allocation.amount_cents, remaining)
        changed.append(by_id[allocation.invoice_id].without_payment(payment.payment_id, take))
        allocations[index] = allocation.model_copy(update={"amount_cents": allocation.amount_cents - take})
        remaining -= take
    after = payment.model_copy(
        update={
            "allocations": [a for a in allocations if a.amount_cents > 0],
            "unallocated_cents": payment.unallocated_cents - from_credit,
            "refunded_cents": payment.refunded_cents + amount,
            "version": payment.version + 1,
        }
    )
    done = refund.model_copy(update={"status": RefundStatus.SUCCEEDED, "version": refund.version + 1})
    return RefundedPayment(practice_id, done, after, changed, from_credit)
