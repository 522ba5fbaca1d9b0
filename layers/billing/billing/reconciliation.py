"""Reconciling what the card processor says happened with what we recorded.

Processor events are hints that can arrive twice, late or out of order: each rule here reads the object's
current state and moves our records toward it, and doing so again changes nothing.
"""

from datetime import datetime
from enum import StrEnum

from billing.allocation import Refund, RefundStatus, plan_refund
from billing.errors import StaleState
from billing.gateway import ChargeResult
from billing.invoices import require_invoice
from billing.invoicing import MAX_ATTEMPTS
from billing.paying import PaymentStore, settle
from billing.payments import Payment, PaymentStatus, idempotent_id


class Reconciled(StrEnum):
    UNKNOWN_PAYMENT = "unknown_payment"  # not one of ours (or another environment's)
    ALREADY_RECORDED = "already_recorded"
    SETTLED = "settled"
    MARKED_FAILED = "marked_failed"
    STILL_PENDING = "still_pending"
    MISMATCH = "mismatch"  # we recorded a failure the processor now reports as paid: needs a person
    REFUND_RECORDED = "refund_recorded"
    DISPUTE_RECORDED = "dispute_recorded"


def reconcile_charge(store: PaymentStore, practice_id: str, payment_id: str, current: ChargeResult) -> Reconciled:
    """Bring a payment in line with its PaymentIntent's current state (after a crash, a timeout, or a webhook)."""
    payment = store.get_payment(practice_id, payment_id)
    if payment is None:
        return Reconciled.UNKNOWN_PAYMENT
    if payment.status is PaymentStatus.PENDING:
        if current.status == "succeeded":
            settle(store, practice_id, payment.charged(current))
            return Reconciled.SETTLED
        if current.status == "failed":
            failed = payment.failed(current)
            try:
                store.save_payment(practice_id, failed)
            except StaleState:
                return Reconciled.ALREADY_RECORDED  # the request itself recorded the outcome meanwhile
            return Reconciled.MARKED_FAILED
        return Reconciled.STILL_PENDING
    if payment.status is PaymentStatus.FAILED and current.status == "succeeded":
        return Reconciled.MISMATCH
    return Reconciled.ALREADY_RECORDED


def reconcile_refunds(
    store: PaymentStore, practice_id: str, payment_id: str, processor_refunded_cents: int, event_id: str, now: datetime
) -> Reconciled:
    """Record refunds made at the processor outside this system (e.g. its dashboard) so balances stay true."""
    for _ in range(MAX_ATTEMPTS):
        payment = store.get_payment(practice_id, payment_id)
        if payment is None:
            return Reconciled.UNKNOWN_PAYMENT
        missing = processor_refunded_cents - payment.refunded_cents
        if missing <= 0:
            return Reconciled.ALREADY_RECORDED
        refund_id = idempotent_id("re", practice_id, f"{payment_id}:{event_id}")
        refund = store.get_refund(practice_id, refund_id)
        if refund is None:
            refund = Refund(
                refund_id=refund_id,
                payment_id=payment_id,
                client_id=payment.client_id,
                amount_cents=min(missing, payment.refundable_cents),
                status=RefundStatus.PENDING,
                created_at=now,
            )
            if not store.start_refund(practice_id, refund):
                continue  # the same event is being recorded concurrently: look again
        elif refund.status is RefundStatus.SUCCEEDED:
            return Reconciled.ALREADY_RECORDED
        invoices = [require_invoice(store, practice_id, a.invoice_id) for a in payment.allocations]
        try:
            store.commit_refund(plan_refund(practice_id, refund, payment, invoices))
            return Reconciled.REFUND_RECORDED
        except StaleState:
            continue
    return Reconciled.STILL_PENDING


def record_dispute(store: PaymentStore, practice_id: str, payment_id: str, disputed_cents: int) -> Reconciled:
    """Flag a disputed payment (the money is held by the processor until the dispute is decided)."""
    payment = store.get_payment(practice_id, payment_id)
    if payment is None:
        return Reconciled.UNKNOWN_PAYMENT
    if payment.disputed_cents >= disputed_cents:
        return Reconciled.ALREADY_RECORDED
    flagged: Payment = payment.model_copy(update={"disputed_cents": disputed_cents, "version": payment.version + 1})
    try:
        store.save_payment(practice_id, flagged)
    except StaleState:
        return record_dispute(store, practice_id, payment_id, disputed_cents)
    return Reconciled.DISPUTE_RECORDED
