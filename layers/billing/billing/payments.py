"""Payments and their allocation to invoices. What a payment has not allocated is the client's credit.

A payment's money is always somewhere: allocated to invoices, unallocated (credit), or refunded;
``amount = Σ allocations + unallocated + refunded`` for a succeeded payment.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing.schema import Record


class PaymentMethod(StrEnum):
    CARD_ON_FILE = "card_on_file"
    EXTERNAL_CARD = "external_card"
    CASH = "cash"
    CHECK = "check"
    OTHER = "other"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PaymentAllocation(Record):
    invoice_id: str
    amount_cents: int


class Payment(Record):
    payment_id: str
    client_id: str
    amount_cents: int
    currency: str
    method: PaymentMethod
    status: PaymentStatus
    allocations: list[PaymentAllocation] = []
    unallocated_cents: int = 0
    refunded_cents: int = 0
    reference: str | None = None
    decline_code: str | None = None
    created_at: datetime
    version: int = 1

    def with_allocation(self, invoice_id: str, amount_cents: int) -> "Payment":
        """This payment with ``amount_cents`` of its credit applied to ``invoice_id``."""
        if not 0 < amount_cents <= self.unallocated_cents:
            raise ValueError("an allocation must come from the payment's unallocated amount")
        allocations = [a for a in self.allocations if a.invoice_id != invoice_id]
        already = sum(a.amount_cents for a in self.allocations if a.invoice_id == invoice_id)
        allocations.append(PaymentAllocation(invoice_id=invoice_id, amount_cents=already + amount_cents))
        return self.model_copy(
            update={
                "allocations": allocations,
                "unallocated_cents": self.unallocated_cents - amount_cents,
                "version": self.version + 1,
            }
        )

    def with_allocation_returned(self, invoice_id: str, amount_cents: int) -> "Payment":
        """This payment with what it had allocated to ``invoice_id`` turned back into credit."""
        allocations = [a for a in self.allocations if a.invoice_id != invoice_id]
        return self.model_copy(
            update={
                "allocations": allocations,
                "unallocated_cents": self.unallocated_cents + amount_cents,
                "version": self.version + 1,
            }
        )


@dataclass(frozen=True)
class CreditUse:
    """Part of a payment's credit consumed by a new invoice: ``payment`` is the payment as it will be after."""

    before: Payment
    payment: Payment
    amount_cents: int


def take_credit(credit: list[Payment], invoice_id: str, amount_cents: int) -> list[CreditUse]:
    """Apply the client's unallocated credit to a new invoice, oldest payment first, up to ``amount_cents``."""
    uses = []
    remaining = amount_cents
    for payment in sorted(credit, key=lambda p: (p.created_at, p.payment_id)):
        if remaining <= 0:
            break
        take = min(payment.unallocated_cents, remaining)
        if take <= 0:
            continue
        uses.append(CreditUse(payment, payment.with_allocation(invoice_id, take), take))
        remaining -= take
    return uses
