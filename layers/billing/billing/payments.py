"""Payments and their allocation to invoices. What a payment has not allocated is the client's credit.

A payment's money is always somewhere: allocated to invoices, unallocated (credit), or refunded;
``amount = Σ allocations + unallocated + refunded`` for a succeeded payment.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from billing.errors import Conflict
from billing.gateway import ChargeResult
from billing.money import PositiveCents
from billing.schema import IdList, ObjectId, Record, RequestModel, ShortText


class PaymentMethod(StrEnum):
    CARD_ON_FILE = "card_on_file"
    EXTERNAL_CARD = "external_card"
    CASH = "cash"
    CHECK = "check"
    OTHER = "other"


class PaymentStatus(StrEnum):
    PENDING = "pending"  # recorded before the card is charged, so a crash cannot charge twice
    SUCCEEDED = "succeeded"
    FAILED = "failed"


IdempotencyKey = Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class PaymentRequest(RequestModel):
    """Body of ``POST /payments``."""

    client_id: ObjectId
    amount_cents: PositiveCents
    method: PaymentMethod
    card_id: ObjectId | None = None
    reference: ShortText | None = None
    invoice_ids: IdList | None = None


class AppointmentPaymentRequest(RequestModel):
    """Body of ``POST /appointments/{id}/invoice-and-payment``: the amount is what the invoice still owes."""

    method: PaymentMethod
    card_id: ObjectId | None = None
    reference: ShortText | None = None


class RefundRequest(RequestModel):
    """Body of ``POST /payments/{id}/refunds``; without an amount, everything still refundable."""

    amount_cents: PositiveCents | None = None


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
    failure_message: str | None = None
    card_id: str | None = None
    processor_payment_id: str | None = None  # Stripe PaymentIntent
    processor_charge_id: str | None = None
    fee_cents: int | None = None
    disputed_cents: int = 0
    # Kept with the payment from the moment it is first recorded, so a retry charges exactly the same way.
    requested_invoice_ids: list[str] | None = Field(default=None, exclude=True)
    fingerprint: str = Field(default="", exclude=True)  # the request this payment was made for (idempotency)
    processor_customer_id: str | None = Field(default=None, exclude=True)
    payment_method_id: str | None = Field(default=None, exclude=True)
    created_at: datetime
    version: int = 1

    @property
    def refundable_cents(self) -> int:
        return self.amount_cents - self.refunded_cents if self.status is PaymentStatus.SUCCEEDED else 0

    def failed(self, result: "ChargeResult") -> "Payment":
        """This pending payment as declined by the processor (no money moved, so no balance changes)."""
        return self.model_copy(
            update={
                "status": PaymentStatus.FAILED,
                "decline_code": result.decline_code or "generic_decline",
                "failure_message": result.failure_message,
                "processor_payment_id": result.payment_intent_id,
                "version": self.version + 1,
            }
        )

    def charged(self, result: "ChargeResult") -> "Payment":
        """This pending payment with the processor's record of the successful charge."""
        return self.model_copy(
            update={
                "processor_payment_id": result.payment_intent_id,
                "processor_charge_id": result.charge_id,
                "fee_cents": result.fee_cents,
            }
        )

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


MAX_CREDIT_SOURCES = 15  # payments drawn on by one invoice: keeps its transaction within DynamoDB's limit


def take_credit(credit: list[Payment], invoice_id: str, amount_cents: int) -> list[CreditUse]:
    """Apply the client's unallocated credit to a new invoice, oldest payment first, up to ``amount_cents``
    (from at most MAX_CREDIT_SOURCES payments; any further credit waits for the next invoice)."""
    uses: list[CreditUse] = []
    remaining = amount_cents
    for payment in sorted(credit, key=lambda p: (p.created_at, p.payment_id)):
        if remaining <= 0 or len(uses) == MAX_CREDIT_SOURCES:
            break
        take = min(payment.unallocated_cents, remaining)
        if take <= 0:
            continue
        uses.append(CreditUse(payment, payment.with_allocation(invoice_id, take), take))
        remaining -= take
    return uses


def request_fingerprint(*parts: object) -> str:
    """A digest of what was asked, to tell a retry (same key, same request) from a misuse (same key, other request)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def idempotent_id(prefix: str, practice_id: str, idempotency_key: str) -> str:
    """The object id a keyed request creates: the same practice and key always give the same id (no PHI in it)."""
    digest = hashlib.sha256(f"{practice_id}\x00{idempotency_key}".encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def processor_idempotency_key(object_id: str) -> str:
    """The key sent to the card processor for an object: derived from our id, stable across retries."""
    return f"tosb-{object_id}"


def check_replay(existing: Payment, fingerprint: str) -> None:
    if existing.fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used for a different request", code="idempotency_key_reused")
