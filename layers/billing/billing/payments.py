"""Payments and refunds: what they are, their states, and the requests that make them.

A payment's money is always somewhere. For a succeeded payment
``amount = Σ allocations + Σ claims not yet settled + unallocated + refunded``; refunds still pending at the
processor are held back from what is refundable.
Before a card is charged the payment *claims* what it may pay on each invoice (a hold on the invoice), so
concurrent payments can never together charge more than the invoices owe; settling turns claims into
allocations, a decline or a cancel releases them.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from billing.errors import Conflict
from billing.money import PositiveCents
from billing.schema import IdList, ObjectId, Record, RequestModel, ShortText


class PaymentMethod(StrEnum):
    CARD_ON_FILE = "card_on_file"
    EXTERNAL_CARD = "external_card"
    CASH = "cash"
    CHECK = "check"
    OTHER = "other"


class PaymentStatus(StrEnum):
    PENDING = "pending"  # claims held; the charge not sent yet, or its outcome not known yet
    PROCESSING = "processing"  # the processor accepted the charge but has not finished it: not a decline
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # declined: no money moved
    CANCELED = "canceled"  # never charged (its invoice was voided first, or the request was abandoned)


IN_FLIGHT = frozenset({PaymentStatus.PENDING, PaymentStatus.PROCESSING})

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


class Claim(Record):
    """What an in-flight payment may pay on one invoice, held there before any money moves."""

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
    pending_refund_cents: int = 0
    reference: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    card_id: str | None = None
    processor_payment_id: str | None = None  # Stripe PaymentIntent
    processor_charge_id: str | None = None
    fee_cents: int | None = None
    disputed_cents: int = 0
    created_at: datetime
    version: int = 1
    # Bookkeeping of the exactly-once machinery; stored, never shown to API callers.
    claims: list[Claim] = Field(default=[], exclude=True)
    claims_held: int = Field(default=0, exclude=True)  # claims whose holds are placed (in order)
    claims_done: int = Field(default=0, exclude=True)  # claims settled into allocations or released (in order)
    lease_expires_at: datetime | None = Field(default=None, exclude=True)  # the charge may be sent until then
    processor_customer_id: str | None = Field(default=None, exclude=True)
    payment_method_id: str | None = Field(default=None, exclude=True)
    requested_invoice_ids: list[str] | None = Field(default=None, exclude=True)
    idempotency_key_digest: str | None = Field(default=None, exclude=True)

    @property
    def refundable_cents(self) -> int:
        if self.status is not PaymentStatus.SUCCEEDED:
            return 0
        return self.amount_cents - self.refunded_cents - self.pending_refund_cents

    @property
    def claimed_cents(self) -> int:
        return sum(c.amount_cents for c in self.claims)

    @property
    def claims_open(self) -> bool:
        """Holds of this payment may still sit on invoices."""
        return self.claims_done < len(self.claims)

    def next(self, **changes: object) -> "Payment":
        """This payment with ``changes`` as its next version."""
        return self.model_copy(update={**changes, "version": self.version + 1})

    def with_allocation(self, invoice_id: str, amount_cents: int) -> "Payment":
        """This payment with ``amount_cents`` of its credit applied to ``invoice_id``."""
        if not 0 < amount_cents <= self.unallocated_cents:
            raise ValueError("an allocation must come from the payment's unallocated amount")
        return self.next(
            allocations=_merged(self.allocations, invoice_id, amount_cents),
            unallocated_cents=self.unallocated_cents - amount_cents,
        )

    def with_allocation_returned(self, invoice_id: str) -> "Payment":
        """This payment with what it had allocated to ``invoice_id`` turned back into credit (a void)."""
        returned = sum(a.amount_cents for a in self.allocations if a.invoice_id == invoice_id)
        return self.next(
            allocations=[a for a in self.allocations if a.invoice_id != invoice_id],
            unallocated_cents=self.unallocated_cents + returned,
        )


def _merged(allocations: list[PaymentAllocation], invoice_id: str, amount_cents: int) -> list[PaymentAllocation]:
    already = sum(a.amount_cents for a in allocations if a.invoice_id == invoice_id)
    kept = [a for a in allocations if a.invoice_id != invoice_id]
    return [*kept, PaymentAllocation(invoice_id=invoice_id, amount_cents=already + amount_cents)]


class RefundStatus(StrEnum):
    PENDING = "pending"  # asked for; the money is not back with the client yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the processor could not return the money: nothing was refunded


class RefundTake(Record):
    """Part of a refund taken from one invoice's allocation (``invoice_id`` None: from the payment's credit)."""

    invoice_id: str | None
    amount_cents: int


class Refund(Record):
    refund_id: str
    payment_id: str
    client_id: str
    amount_cents: int
    status: RefundStatus
    processor_refund_id: str | None = None
    failure_reason: str | None = None
    created_at: datetime
    version: int = 1
    # How a succeeded refund is taken off the books, applied in bounded steps (``takes_done`` so far).
    takes: list[RefundTake] = Field(default=[], exclude=True)
    takes_done: int = Field(default=0, exclude=True)

    @property
    def applied_cents(self) -> int:
        """What of a succeeded refund is already off the books (its steps done so far)."""
        return sum(take.amount_cents for take in self.takes[: self.takes_done])

    def next(self, **changes: object) -> "Refund":
        return self.model_copy(update={**changes, "version": self.version + 1})


class IdempotencyRecord(Record):
    """An Idempotency-Key as first used: bound to one route and one body, naming the object it made."""

    key_digest: str
    route: str
    fingerprint: str
    object_id: str
    created_at: datetime


class ProcessorRefundLink(Record):
    """The one refund record of a processor refund id, whoever (the API or a webhook) saw it first."""

    processor_refund_id: str
    refund_id: str


@dataclass(frozen=True)
class CreditUse:
    """Part of a payment's credit consumed by a new invoice: ``payment`` is the payment as it will be after."""

    before: "Payment"
    payment: "Payment"
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
        if take <= 0 or payment.status is not PaymentStatus.SUCCEEDED:
            continue
        uses.append(CreditUse(payment, payment.with_allocation(invoice_id, take), take))
        remaining -= take
    return uses


def request_fingerprint(*parts: object) -> str:
    """A digest of what was asked, to tell a retry (same key, same request) from a misuse (same key, other request)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def key_digest(practice_id: str, idempotency_key: str) -> str:
    """The stored name of an Idempotency-Key (the key itself is the caller's text: it is never stored)."""
    return hashlib.sha256(f"{practice_id}\x00{idempotency_key}".encode()).hexdigest()[:40]


def idempotent_id(prefix: str, practice_id: str, idempotency_key: str) -> str:
    """The object id a keyed request creates: the same practice and key always give the same id (no PHI in it)."""
    digest = hashlib.sha256(f"{practice_id}\x00{idempotency_key}".encode()).hexdigest()[:32]
    return f"{prefix}_{digest}"


def processor_idempotency_key(object_id: str) -> str:
    """The key sent to the card processor for an object: derived from our id, stable across retries."""
    return f"tosb-{object_id}"


def check_replay(record: IdempotencyRecord, route: str, fingerprint: str) -> None:
    """A key is bound to the route and body it was first used with: anything else is a 409."""
    if record.route != route or record.fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used for a different request", code="idempotency_key_reused")
