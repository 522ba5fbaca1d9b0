"""Refunds, exactly once and recorded once per processor refund.

An API refund is recorded ``pending`` (with its Idempotency-Key, and the amount held back from what is
refundable) before the processor is asked, and carries our refund id in the processor's metadata. Whoever
sees a processor refund first — this API or a webhook — links its processor id to exactly one refund record
(a conditional write): ours when the metadata names it, else a new record for a refund made elsewhere (the
processor's dashboard). The books change only when the processor says the money went back; a refund that
fails there is released (or, if it had been counted, returned to the client as credit).
"""

from billing.allocation import check_refundable, plan_refund_takes
from billing.books import Books
from billing.errors import Conflict, existing
from billing.gateway import REFUND_FAILED, REFUND_PENDING, REFUND_SUCCEEDED, PaymentGateway, RefundResult
from billing.localtime import Clock
from billing.payments import (
    IdempotencyRecord,
    Payment,
    PaymentAllocation,
    PaymentMethod,
    ProcessorRefundLink,
    Refund,
    RefundStatus,
    check_replay,
    idempotent_id,
    key_digest,
    processor_idempotency_key,
    request_fingerprint,
)
from billing.retry import optimistic
from billing.unit_of_work import MAX_ITEMS, UnitOfWork

TAKES_PER_STEP = MAX_ITEMS - 3  # the refund, the payment and the account share each step's transaction


def _payment(books: Books, practice_id: str, payment_id: str) -> Payment:
    return existing(books.get_payment(practice_id, payment_id), "payment", payment_id)


def _refund(books: Books, practice_id: str, refund_id: str) -> Refund:
    return existing(books.get_refund(practice_id, refund_id), "refund", refund_id)


def refund_payment(
    books: Books,
    gateway: PaymentGateway,
    clock: Clock,
    practice_id: str,
    payment_id: str,
    amount_cents: int | None,
    idempotency_key: str,
) -> Refund:
    """Refund all or part of a payment (through the processor for card payments), once per Idempotency-Key.
    409 above what is refundable, or when the key was used for another request; a replay returns the first
    refund. The refund comes back ``succeeded``, or ``pending`` while the processor has not finished it."""
    route = f"POST /payments/{payment_id}/refunds"
    fingerprint = request_fingerprint({"amount_cents": amount_cents})
    digest = key_digest(practice_id, idempotency_key)
    refund_id = idempotent_id("re", practice_id, idempotency_key)

    def attempt() -> tuple[Refund, bool]:
        recorded = books.get_idempotency_record(practice_id, digest)
        if recorded is not None:
            check_replay(recorded, route, fingerprint)
            return _refund(books, practice_id, recorded.object_id), True
        payment = _payment(books, practice_id, payment_id)
        amount = check_refundable(payment, amount_cents)
        now = clock.now()
        refund = Refund(
            refund_id=refund_id,
            payment_id=payment_id,
            client_id=payment.client_id,
            amount_cents=amount,
            status=RefundStatus.PENDING,
            created_at=now,
        )
        unit = UnitOfWork(practice_id)
        unit.create(
            IdempotencyRecord(
                key_digest=digest, route=route, fingerprint=fingerprint, object_id=refund_id, created_at=now
            )
        )
        unit.create(refund)
        unit.change(payment, payment.next(pending_refund_cents=payment.pending_refund_cents + amount))
        books.commit(unit)
        return refund, False

    refund, resumed = optimistic(attempt)
    return _answer(_complete(books, gateway, clock, practice_id, refund, resumed))


def _answer(refund: Refund) -> Refund:
    if refund.status is RefundStatus.FAILED:
        raise Conflict(
            f"the card processor could not refund: {refund.failure_reason or 'refund failed'}",
            code="refund_failed",
            details=[{"refund_id": refund.refund_id, "failure_reason": refund.failure_reason}],
        )
    return refund


def _complete(
    books: Books, gateway: PaymentGateway, clock: Clock, practice_id: str, refund: Refund, resumed: bool
) -> Refund:
    if refund.status is not RefundStatus.PENDING and refund.takes_done >= len(refund.takes):
        return refund
    payment = _payment(books, practice_id, refund.payment_id)
    if payment.method is not PaymentMethod.CARD_ON_FILE:
        return apply_refund_status(books, practice_id, refund.refund_id, REFUND_SUCCEEDED)
    if refund.processor_refund_id is not None:
        return record_processor_refund(books, clock, practice_id, gateway.retrieve_refund(refund.processor_refund_id))
    assert payment.processor_payment_id is not None
    # A retry looks for the processor's refund first (an earlier attempt's answer may have been lost); an
    # unknown outcome now (ProcessorUnavailable, a 503) leaves the refund pending for the retry or a webhook.
    result = _find_processor_refund(gateway, payment.processor_payment_id, refund.refund_id) if resumed else None
    if result is None:
        try:
            result = gateway.refund(
                payment_intent_id=payment.processor_payment_id,
                amount_cents=refund.amount_cents,
                idempotency_key=processor_idempotency_key(refund.refund_id),
                metadata={"practice_id": practice_id, "payment_id": payment.payment_id, "refund_id": refund.refund_id},
            )
        except Conflict as refused:  # the processor refused it outright: nothing was refunded
            apply_refund_status(books, practice_id, refund.refund_id, REFUND_FAILED, refused.message)
            raise
    return record_processor_refund(books, clock, practice_id, result)


def _find_processor_refund(gateway: PaymentGateway, payment_intent_id: str, refund_id: str) -> RefundResult | None:
    """The processor's refund made for our ``refund_id`` (named in its metadata), if it made one."""
    for found in gateway.refunds_of(payment_intent_id):
        if found.metadata.get("refund_id") == refund_id:
            return found
    return None


def record_processor_refund(
    books: Books, clock: Clock, practice_id: str, result: RefundResult, payment_id: str | None = None
) -> Refund:
    """Bring the books in line with one processor refund (from the API's call or any webhook), once.

    The processor refund id is linked to exactly one refund record, whichever caller gets there first; a refund
    made outside this API becomes a new record. Then its status is applied (``pending`` changes nothing)."""
    payment_id = result.metadata.get("payment_id") or payment_id

    def attempt() -> Refund:
        link = books.get_refund_link(practice_id, result.refund_id)
        if link is not None:
            return _refund(books, practice_id, link.refund_id)
        ours_id = result.metadata.get("refund_id")
        ours = books.get_refund(practice_id, ours_id) if ours_id else None
        unit = UnitOfWork(practice_id)
        if ours is not None:
            refund = ours.next(processor_refund_id=result.refund_id)
            unit.change(ours, refund)
        else:
            if payment_id is None:
                raise ValueError("a processor refund without our payment id cannot be recorded")
            payment = _payment(books, practice_id, payment_id)
            refund = Refund(
                refund_id=idempotent_id("re", practice_id, f"processor:{result.refund_id}"),
                payment_id=payment.payment_id,
                client_id=payment.client_id,
                amount_cents=result.amount_cents,
                status=RefundStatus.PENDING,
                processor_refund_id=result.refund_id,
                created_at=clock.now(),
            )
            unit.create(refund)
            unit.change(payment, payment.next(pending_refund_cents=payment.pending_refund_cents + result.amount_cents))
        unit.create(ProcessorRefundLink(processor_refund_id=result.refund_id, refund_id=refund.refund_id))
        books.commit(unit)
        return refund

    refund = optimistic(attempt)
    return apply_refund_status(books, practice_id, refund.refund_id, result.status, result.failure_reason)


def apply_refund_status(
    books: Books, practice_id: str, refund_id: str, status: str, failure_reason: str | None = None
) -> Refund:
    """Move a refund to the processor's ``status``: succeeded takes it off the books (in bounded steps, each
    balanced), failed releases it — or, if it had been counted, gives the money back to the client as credit."""
    if status == REFUND_PENDING:
        return _refund(books, practice_id, refund_id)
    if status not in (REFUND_SUCCEEDED, REFUND_FAILED):
        raise ValueError(f"unknown refund status {status!r}")
    while True:
        refund = optimistic(lambda: _refund_step(books, practice_id, refund_id, status, failure_reason))
        if refund.status is not RefundStatus.PENDING or status == REFUND_FAILED:
            return refund


def _refund_step(books: Books, practice_id: str, refund_id: str, status: str, failure_reason: str | None) -> Refund:
    refund = _refund(books, practice_id, refund_id)
    if refund.status is RefundStatus.FAILED or (refund.status is RefundStatus.SUCCEEDED and status == REFUND_SUCCEEDED):
        return refund
    payment = _payment(books, practice_id, refund.payment_id)
    unit = UnitOfWork(practice_id)
    if status == REFUND_FAILED:
        unreleased = refund.amount_cents - refund.applied_cents
        after_payment = payment.next(
            pending_refund_cents=payment.pending_refund_cents
            - (unreleased if refund.status is RefundStatus.PENDING else 0),
            refunded_cents=payment.refunded_cents - refund.applied_cents,
            unallocated_cents=payment.unallocated_cents + refund.applied_cents,  # counted, yet never returned
        )
        after = refund.next(status=RefundStatus.FAILED, failure_reason=failure_reason or "refund failed")
        books.commit(unit.change(refund, after).change(payment, after_payment))
        return after
    takes = refund.takes or plan_refund_takes(payment, refund.amount_cents)
    step = takes[refund.takes_done : refund.takes_done + TAKES_PER_STEP]
    invoices = {
        i.invoice_id: i for i in books.invoices_by_id(practice_id, [t.invoice_id for t in step if t.invoice_id])
    }
    allocations = {a.invoice_id: a.amount_cents for a in payment.allocations}
    from_credit = 0
    for take in step:
        invoice = invoices.get(take.invoice_id) if take.invoice_id else None
        allocated = invoice.allocation_of(payment.payment_id) if invoice is not None else 0
        from_invoice = min(take.amount_cents, allocated)
        if invoice is not None and from_invoice > 0:
            unit.change(invoice, invoice.without_payment(payment.payment_id, from_invoice))
            allocations[invoice.invoice_id] = allocations.get(invoice.invoice_id, 0) - from_invoice
        from_credit += take.amount_cents - from_invoice  # what a void already turned into credit comes from there
    amount = sum(t.amount_cents for t in step)
    if from_credit > payment.unallocated_cents:
        raise Conflict(f"payment {payment.payment_id} no longer holds what this refund takes", code="refund_conflict")
    after_payment = payment.next(
        allocations=[PaymentAllocation(invoice_id=i, amount_cents=c) for i, c in allocations.items() if c > 0],
        unallocated_cents=payment.unallocated_cents - from_credit,
        refunded_cents=payment.refunded_cents + amount,
        pending_refund_cents=payment.pending_refund_cents - amount,
    )
    done = refund.takes_done + len(step)
    after = refund.next(
        takes=takes,
        takes_done=done,
        status=RefundStatus.SUCCEEDED if done >= len(takes) else RefundStatus.PENDING,
    )
    books.commit(unit.change(refund, after).change(payment, after_payment))
    return after
