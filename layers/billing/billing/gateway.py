"""What the domain needs from a card processor (Stripe in production, the emulator locally)."""

from typing import Protocol


class AttachedCard(Protocol):
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class ChargeResult(Protocol):
    status: str  # "succeeded" | "failed" | "requires_action"
    payment_intent_id: str
    charge_id: str | None
    decline_code: str | None
    failure_message: str | None
    fee_cents: int | None


class RefundResult(Protocol):
    refund_id: str
    status: str
    amount_cents: int


class PaymentGateway(Protocol):
    """Ids and amounts only: nothing about the client's health or identity is ever sent."""

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

    def find_charge(self, idempotency_key: str, customer_id: str) -> ChargeResult | None: ...

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str, metadata: dict[str, str]
    ) -> RefundResult: ...
