"""What the domain needs from a card processor (Stripe in production, the emulator locally, a fake in tests)."""

from collections.abc import Sequence
from typing import Protocol

# A charge's status, in the domain's terms.
CHARGE_SUCCEEDED = "succeeded"
CHARGE_FAILED = "failed"  # declined or canceled: no money moved, ``decline_code`` says why
CHARGE_PROCESSING = "processing"  # not final yet (processing, requires_action, ...): never a decline

# A refund's status, in the domain's terms (Stripe's own names).
REFUND_PENDING = "pending"  # asked for, not final: the money has not been returned yet
REFUND_SUCCEEDED = "succeeded"
REFUND_FAILED = "failed"  # the processor could not return the money (or canceled the refund)


class AttachedCard(Protocol):
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class ChargeResult(Protocol):
    status: str  # CHARGE_SUCCEEDED | CHARGE_FAILED | CHARGE_PROCESSING
    payment_intent_id: str
    charge_id: str | None
    decline_code: str | None
    failure_message: str | None
    fee_cents: int | None
    amount_cents: int | None
    metadata: dict[str, str]


class RefundResult(Protocol):
    refund_id: str
    status: str  # REFUND_PENDING | REFUND_SUCCEEDED | REFUND_FAILED
    amount_cents: int
    payment_intent_id: str | None
    metadata: dict[str, str]
    failure_reason: str | None  # why a failed refund failed (the processor's code)


class PaymentGateway(Protocol):
    """Ids and amounts only: nothing about the client's health or identity is ever sent.

    Methods that cannot know the outcome (network, 5xx, 429, the same key still in flight) raise
    ``billing.errors.ProcessorUnavailable``: the caller retries with the same idempotency key, or looks.
    """

    def create_customer(self, practice_id: str, client_id: str, idempotency_key: str) -> str: ...

    def attach_card(self, customer_id: str, payment_method_id: str) -> AttachedCard: ...

    def detach_card(self, payment_method_id: str) -> None: ...

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> ChargeResult: ...

    def find_charge(self, idempotency_key: str, customer_id: str) -> ChargeResult | None:
        """The charge made with ``idempotency_key`` (metadata) for the customer, or None: works after the
        processor has forgotten the idempotency key (Stripe: 24 hours)."""
        ...

    def retrieve_payment_intent(self, payment_intent_id: str) -> ChargeResult: ...

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundResult: ...

    def refunds_of(self, payment_intent_id: str) -> Sequence[RefundResult]:
        """Every refund of the PaymentIntent's charge, whoever made it (this API, a dashboard), any status."""
        ...

    def retrieve_refund(self, refund_id: str) -> RefundResult: ...
