"""Reconciling what the card processor says happened with what we recorded.

Processor events are hints that can arrive twice, late, concurrently or out of order: each rule here reads
the object's current state from the processor and moves our records toward it, and doing so again changes
nothing.
"""

from enum import StrEnum

from billing import autopay
from billing.autopay import AutoPayStore
from billing.books import Books
from billing.gateway import ChargeResult, PaymentGateway
from billing.localtime import Clock
from billing.payment_service import apply_charge
from billing.payments import PaymentStatus
from billing.refund_service import record_processor_refund
from billing.retry import optimistic
from billing.unit_of_work import UnitOfWork


class Reconciled(StrEnum):
    UNKNOWN_PAYMENT = "unknown_payment"  # not one of ours (or another environment's)
    ALREADY_RECORDED = "already_recorded"
    RECORDED = "recorded"
    STILL_PROCESSING = "still_processing"
    REFUNDS_RECORDED = "refunds_recorded"
    DISPUTE_RECORDED = "dispute_recorded"


def reconcile_charge(books: Books, practice_id: str, payment_id: str, current: ChargeResult) -> Reconciled:
    """Bring a payment in line with its PaymentIntent's current state (after a crash, a timeout, or a webhook)."""
    before = books.get_payment(practice_id, payment_id)
    if before is None:
        return Reconciled.UNKNOWN_PAYMENT
    after = apply_charge(books, practice_id, payment_id, current)
    if after.status is PaymentStatus.PROCESSING:
        return Reconciled.STILL_PROCESSING
    return Reconciled.ALREADY_RECORDED if after.version == before.version else Reconciled.RECORDED


def reconcile_refunds(
    books: Books, gateway: PaymentGateway, clock: Clock, practice_id: str, payment_id: str, payment_intent_id: str
) -> Reconciled:
    """Record every refund the processor has for the payment's charge — made by this API or elsewhere, in any
    state — each under exactly one refund record."""
    if books.get_payment(practice_id, payment_id) is None:
        return Reconciled.UNKNOWN_PAYMENT
    for found in gateway.refunds_of(payment_intent_id):
        if found.metadata.get("payment_id") in (None, payment_id):
            record_processor_refund(books, clock, practice_id, found, payment_id=payment_id)
    return Reconciled.REFUNDS_RECORDED


def record_dispute(books: AutoPayStore, practice_id: str, payment_id: str, disputed_cents: int) -> Reconciled:
    """Flag a disputed payment (the money is held by the processor until the dispute is decided); a dispute
    ends the client's AutoPay at once."""
    disputed = books.get_payment(practice_id, payment_id)
    payment_client = disputed.client_id if disputed is not None else None

    def attempt() -> Reconciled:
        payment = books.get_payment(practice_id, payment_id)
        if payment is None:
            return Reconciled.UNKNOWN_PAYMENT
        if payment.disputed_cents >= disputed_cents:
            return Reconciled.ALREADY_RECORDED
        books.commit(UnitOfWork(practice_id).change(payment, payment.next(disputed_cents=disputed_cents)))
        return Reconciled.DISPUTE_RECORDED

    outcome = optimistic(attempt)
    if outcome is Reconciled.DISPUTE_RECORDED and payment_client is not None:
        autopay.end_enrolment(books, practice_id, payment_client, "a payment was disputed")
    return outcome
