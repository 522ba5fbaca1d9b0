"""Taking payments, exactly once: reserve, then charge, then settle.

1. **Reserve.** One transaction records the Idempotency-Key, the payment (``pending``, with the card it will
   charge) and a hold on every invoice it pays for what it claims there — at most what each still has
   available. Concurrent payments can therefore never together charge more than is owed: a loser gets 409
   before anything is charged. Payments over many invoices place their holds in further bounded steps.
2. **Charge.** Only a payment whose holds are all placed is charged, with a processor idempotency key derived
   from its id. A retry first looks for the charge (the stored PaymentIntent, then a search by metadata) and
   only then charges, so even after the processor forgot the key (24 h) nothing is charged twice.
3. **Settle.** The processor's answer turns the holds into allocations (succeeded), releases them (declined),
   or leaves them while the charge is ``processing``. Settling is bounded steps too, each resumable.

A request that dies half-way leaves a ``pending`` payment with a lease. Until the lease ends only that request
(or its retry, which renews the lease) may send the charge; after it, whoever finds the holds — the retry, the
webhook, a void, another payment — resolves the payment from the processor's state (`resolve_payment`).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from billing.allocation import payable_invoices, plan_claims
from billing.books import Books, open_invoices, require_ledger
from billing.calendar import Appointment, require_appointment
from billing.cards import Card
from billing.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PaymentDeclined,
    ProcessorUnavailable,
    StaleState,
    existing,
)
from billing.gateway import CHARGE_FAILED, CHARGE_PROCESSING, CHARGE_SUCCEEDED, ChargeResult, PaymentGateway
from billing.invoice_service import create_invoice
from billing.invoices import Invoice, InvoiceRequest, require_invoice
from billing.localtime import Clock, local_date
from billing.money import minimum_charge_cents
from billing.payments import (
    IN_FLIGHT,
    AppointmentPaymentRequest,
    IdempotencyRecord,
    Payment,
    PaymentAllocation,
    PaymentMethod,
    PaymentRequest,
    PaymentStatus,
    check_replay,
    idempotent_id,
    key_digest,
    processor_idempotency_key,
    request_fingerprint,
)
from billing.practices import Practice
from billing.retry import optimistic
from billing.unit_of_work import MAX_ITEMS, UnitOfWork

# The request that reserved may send the charge until its lease ends. It is longer than the payment function's
# Timeout (15 s) plus the processor's time budget, so when it has ended that request cannot be sending a charge.
LEASE = timedelta(seconds=60)
# Invoices one step may touch: the rest of the transaction is the payment, the key record and the account.
INVOICES_PER_STEP = MAX_ITEMS - 3
PAYMENT_ROUTE = "POST /payments"


def choose_card(cards: list[Card], card_id: str | None) -> Card:
    """Among the client's ``cards``: the named card, else the default card; 409 when the client has none."""
    if card_id is not None:
        for card in cards:
            if card.card_id == card_id:
                return card
        raise NotFound("card", card_id)
    for card in cards:
        if card.is_default:
            return card
    raise Conflict("the client has no card on file", code="no_card_on_file")


def _stored(books: Books, practice_id: str, payment_id: str) -> Payment:
    return existing(books.get_payment(practice_id, payment_id), "payment", payment_id)


def answer(payment: Payment) -> Payment:
    """A payment as its request is answered: a decline is a 402, a cancel a 409, an unknown outcome a 503."""
    if payment.status is PaymentStatus.FAILED:
        raise PaymentDeclined(
            payment.failure_message or "the card was declined",
            decline_code=payment.decline_code or "generic_decline",
            payment=payment.model_dump(mode="json"),
        )
    if payment.status is PaymentStatus.CANCELED:
        raise Conflict(payment.failure_message or "the payment was canceled before any charge", code="payment_canceled")
    if payment.status is PaymentStatus.PENDING:
        raise ProcessorUnavailable(
            "the card processor has not confirmed the charge yet; retry with the same Idempotency-Key"
        )
    return payment


def take_payment(
    books: Books,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    request: PaymentRequest,
    idempotency_key: str,
    *,
    route: str = PAYMENT_ROUTE,
    fingerprint: str | None = None,
    prepay: bool = True,
) -> Payment:
    """Take (or record) a payment and allocate it, at most once per Idempotency-Key.

    The same key with the same route and body returns the first result (a decline again as 402); with another
    route or body it is a 409. A ``processing`` charge is returned as such (it is not a decline). ``prepay``
    False: the amount is meant to be what is owed, and nothing may become credit (409 if less is owed now)."""
    practice_id = practice.practice_id
    fingerprint = fingerprint or request_fingerprint(request.model_dump(mode="json"))
    digest = key_digest(practice_id, idempotency_key)
    key_record = IdempotencyRecord(
        key_digest=digest,
        route=route,
        fingerprint=fingerprint,
        object_id=idempotent_id("pay", practice_id, idempotency_key),
        created_at=clock.now(),
    )
    payment = _reserve(books, gateway, clock, practice, request, key_record, prepay)
    if payment is None:  # the key was used before: this is a retry or a duplicate
        recorded = existing(books.get_idempotency_record(practice_id, digest), "idempotency_key", digest)
        check_replay(recorded, route, fingerprint)
        return answer(
            _complete(books, gateway, clock, practice_id, _stored(books, practice_id, recorded.object_id), True)
        )
    return answer(_complete(books, gateway, clock, practice_id, payment, False))


def _reserve(
    books: Books,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    request: PaymentRequest,
    key_record: IdempotencyRecord,
    prepay: bool,
) -> Payment | None:
    """Record the pending payment with its key and its first holds, atomically; None if the key is taken."""
    practice_id = practice.practice_id
    read = [require_ledger(books, practice_id, request.client_id)]  # one read: the client, its cards and invoices
    client = read[0].client
    by_card = _by_card(request.method)
    card = choose_card(books.cards_by_id(practice_id, read[0].card_ids), request.card_id) if by_card else None
    minimum = minimum_charge_cents(practice.currency)
    if card is not None and request.amount_cents < minimum:
        raise InvalidRequest(
            f"a card can be charged {minimum} cents or more; record smaller amounts another way",
            code="amount_below_minimum_charge",
            details=[{"minimum_charge_cents": minimum}],
        )

    def attempt() -> Payment | None:
        if books.get_idempotency_record(practice_id, key_record.key_digest) is not None:
            return None
        now = clock.now()
        ledger = read.pop() if read else None  # a retry after a lost race reads the client again
        targets = payable_invoices(open_invoices(books, practice_id, client.client_id, ledger), request.invoice_ids)
        _resolve_stale_holds(books, gateway, clock, practice_id, targets)
        claims = plan_claims(request.amount_cents, targets, bool(request.invoice_ids), prepay)
        payment = Payment(
            payment_id=key_record.object_id,
            client_id=client.client_id,
            amount_cents=request.amount_cents,
            currency=practice.currency,
            method=request.method,
            status=PaymentStatus.PENDING,
            reference=request.reference,
            card_id=card.card_id if card else None,
            payment_method_id=card.payment_method_id if card else None,
            processor_customer_id=client.processor_customer_id if card else None,
            requested_invoice_ids=request.invoice_ids,
            idempotency_key_digest=key_record.key_digest,
            claims=claims,
            claims_held=min(len(claims), INVOICES_PER_STEP),
            lease_expires_at=now + LEASE,
            created_at=now,
        )
        unit = UnitOfWork(practice_id).create(key_record).create(payment)
        by_id = {i.invoice_id: i for i in targets}
        for claim in claims[: payment.claims_held]:
            invoice = by_id[claim.invoice_id]
            unit.change(invoice, invoice.with_hold(payment.payment_id, claim.amount_cents))
        books.commit(unit)
        return payment

    payment = optimistic(attempt)
    while payment is not None and payment.claims_held < len(payment.claims):
        payment = _hold_more(books, practice_id, payment.payment_id)
    return payment


def _hold_more(books: Books, practice_id: str, payment_id: str) -> Payment:
    """Place the next step of a payment's holds; if an invoice no longer has room, cancel it (409)."""

    def attempt() -> Payment:
        payment = _stored(books, practice_id, payment_id)
        if payment.status is not PaymentStatus.PENDING or payment.claims_held >= len(payment.claims):
            return payment
        step = payment.claims[payment.claims_held : payment.claims_held + INVOICES_PER_STEP]
        invoices = {i.invoice_id: i for i in books.invoices_by_id(practice_id, [c.invoice_id for c in step])}
        unit = UnitOfWork(practice_id)
        for claim in step:
            invoice = invoices.get(claim.invoice_id)
            if invoice is None or invoice.voided or invoice.available_cents < claim.amount_cents:
                return _cancel(books, practice_id, payment, "an invoice it pays changed before the charge")
            unit.change(invoice, invoice.with_hold(payment_id, claim.amount_cents))
        after = payment.next(claims_held=payment.claims_held + len(step))
        books.commit(unit.change(payment, after))
        return after

    payment = optimistic(attempt)
    if payment.status is PaymentStatus.CANCELED:
        raise Conflict("invoices this payment pays changed while it was reserved; retry", code="payment_in_progress")
    return payment


def _by_card(method: PaymentMethod) -> bool:
    return method is PaymentMethod.CARD_ON_FILE


def _complete(
    books: Books, gateway: PaymentGateway, clock: Clock, practice_id: str, payment: Payment, resumed: bool
) -> Payment:
    """Drive a payment to its outcome; safe to run again for the same payment (a retry resumes here)."""
    if payment.status not in IN_FLIGHT:
        return finish_claims(books, practice_id, payment)
    if payment.claims_held < len(payment.claims):
        payment = _hold_more(books, practice_id, payment.payment_id)
    if not _by_card(payment.method):
        return apply_charge(books, practice_id, payment.payment_id, None)
    result: ChargeResult | None = None
    if resumed or payment.status is PaymentStatus.PROCESSING:
        payment = _renew_lease(books, clock, practice_id, payment)
        if payment.status not in IN_FLIGHT:
            return finish_claims(books, practice_id, payment)
        result = look_up_charge(gateway, payment)
    if result is None:
        try:
            result = _charge(gateway, practice_id, payment)
        except (InvalidRequest, Conflict) as refused:  # the processor refused it outright: nothing was charged
            _release_refused(books, practice_id, payment.payment_id, refused.message)
            raise
    return apply_charge(books, practice_id, payment.payment_id, result)


def _release_refused(books: Books, practice_id: str, payment_id: str, reason: str) -> None:
    """Cancel a payment the processor refused to charge, and release its holds."""

    def attempt() -> Payment:
        current = _stored(books, practice_id, payment_id)
        if current.status is not PaymentStatus.PENDING:
            return current
        return _cancel(books, practice_id, current, reason)

    finish_claims(books, practice_id, optimistic(attempt))


def _renew_lease(books: Books, clock: Clock, practice_id: str, payment: Payment) -> Payment:
    """Take the right to send the charge again (a retry). Only one holder at a time: the loser waits its turn."""
    renewed = payment.next(lease_expires_at=clock.now() + LEASE)
    try:
        books.commit(UnitOfWork(practice_id).change(payment, renewed))
    except StaleState:
        current = _stored(books, practice_id, payment.payment_id)
        if current.status in IN_FLIGHT:
            raise Conflict(
                "this payment is being completed by another request; retry in a moment", code="payment_in_progress"
            ) from None
        return current
    return renewed


def look_up_charge(gateway: PaymentGateway, payment: Payment) -> ChargeResult | None:
    """The processor's charge for this payment, if it made one: by the stored PaymentIntent, else by search."""
    if payment.processor_payment_id is not None:
        return gateway.retrieve_payment_intent(payment.processor_payment_id)
    if payment.processor_customer_id is None:
        return None
    return gateway.find_charge(processor_idempotency_key(payment.payment_id), payment.processor_customer_id)


def _charge(gateway: PaymentGateway, practice_id: str, payment: Payment) -> ChargeResult:
    """Charge the card recorded with the pending payment, with the key derived from its id (a retry replays)."""
    customer_id, payment_method_id = payment.processor_customer_id, payment.payment_method_id
    if customer_id is None or payment_method_id is None:
        raise Conflict("the client has no card on file", code="no_card_on_file")
    # An unknown outcome (ProcessorUnavailable) is not looked up here: the processor's time budget for one
    # call already fills most of the function's Timeout. The payment stays pending with its holds; the retry
    # (same Idempotency-Key), the webhook or the sweeper looks for the charge before anything is charged again.
    return gateway.charge(
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount_cents=payment.amount_cents,
        currency=payment.currency,
        idempotency_key=processor_idempotency_key(payment.payment_id),
        metadata={"practice_id": practice_id, "client_id": payment.client_id, "payment_id": payment.payment_id},
    )


def apply_charge(books: Books, practice_id: str, payment_id: str, result: ChargeResult | None) -> Payment:
    """Record what the processor says of a payment's charge (``None``: a recorded payment, money in hand).

    Succeeded: the payment's holds become allocations. Failed: they are released. Processing: nothing moves
    yet. A charge that succeeds for a payment already canceled or failed is money taken all the same: it is
    recorded, as the client's credit. Recording the same outcome again changes nothing."""

    def attempt() -> Payment:
        payment = _stored(books, practice_id, payment_id)
        if payment.status in (PaymentStatus.FAILED, PaymentStatus.CANCELED) and payment.claims_open:
            payment = finish_claims(books, practice_id, payment)  # release first: a late success is all credit
        status = CHARGE_SUCCEEDED if result is None else result.status
        processor = {} if result is None else _processor_fields(result)
        if payment.status is PaymentStatus.SUCCEEDED or (
            payment.status in (PaymentStatus.FAILED, PaymentStatus.CANCELED) and status != CHARGE_SUCCEEDED
        ):
            return payment
        if status == CHARGE_SUCCEEDED:
            late = payment.status not in IN_FLIGHT  # canceled or failed, yet charged: all of it is credit
            after = payment.next(
                status=PaymentStatus.SUCCEEDED,
                unallocated_cents=payment.amount_cents - (0 if late else payment.claimed_cents),
                decline_code=None,
                failure_message=None,
                **processor,
            )
        elif status == CHARGE_FAILED:
            assert result is not None
            after = payment.next(
                status=PaymentStatus.FAILED,
                decline_code=result.decline_code or "generic_decline",
                failure_message=result.failure_message,
                processor_payment_id=result.payment_intent_id,
            )
        elif status == CHARGE_PROCESSING:
            if payment.status is PaymentStatus.PROCESSING and payment.processor_payment_id:
                return payment
            after = payment.next(status=PaymentStatus.PROCESSING, **processor)
        else:
            raise ValueError(f"unknown charge status {status!r}")
        books.commit(_claims_step(books, practice_id, payment, after))
        return after

    return finish_claims(books, practice_id, optimistic(attempt))


def _processor_fields(result: ChargeResult) -> dict[str, object]:
    return {
        "processor_payment_id": result.payment_intent_id,
        "processor_charge_id": result.charge_id,
        "fee_cents": result.fee_cents,
    }


def _claims_step(books: Books, practice_id: str, before: Payment, after: Payment) -> UnitOfWork:
    """A unit moving ``before`` to ``after`` and, for a payment that is final, the next step of its claims:
    settled into allocations when it succeeded, released when it failed or was canceled."""
    unit = UnitOfWork(practice_id)
    if after.status in IN_FLIGHT or not after.claims_open:
        return unit.change(before, after)
    if after.claims_done >= after.claims_held:  # claims never held (a reservation cut short) have nothing to undo
        return unit.change(before, after.model_copy(update={"claims_done": len(after.claims)}))
    step = after.claims[after.claims_done : min(after.claims_held, after.claims_done + INVOICES_PER_STEP)]
    invoices = {i.invoice_id: i for i in books.invoices_by_id(practice_id, [c.invoice_id for c in step])}
    allocations = list(after.allocations)
    unallocated = after.unallocated_cents
    settle = after.status is PaymentStatus.SUCCEEDED
    for claim in step:
        invoice = invoices.get(claim.invoice_id)
        held = invoice.hold_of(after.payment_id) if invoice is not None else 0
        if invoice is not None and held:
            unit.change(
                invoice,
                invoice.with_hold_settled(after.payment_id) if settle else invoice.with_hold_released(after.payment_id),
            )
        if settle:
            if held:
                allocations.append(PaymentAllocation(invoice_id=claim.invoice_id, amount_cents=held))
            unallocated += claim.amount_cents - held  # a hold that is gone cannot be paid: it stays credit
    done = after.claims_done + len(step)
    if done >= after.claims_held:
        done = len(after.claims)
    stepped = after.model_copy(
        update={
            "claims_done": done,
            "allocations": allocations,
            "unallocated_cents": unallocated if settle else after.unallocated_cents,
        }
    )
    return unit.change(before, stepped)


def finish_claims(books: Books, practice_id: str, payment: Payment) -> Payment:
    """Settle or release what is left of a final payment's claims, one bounded step at a time."""
    payment_id = payment.payment_id

    def attempt() -> Payment:
        current = _stored(books, practice_id, payment_id)
        if current.status in IN_FLIGHT or not current.claims_open:
            return current
        unit = _claims_step(books, practice_id, current, current.next())
        books.commit(unit)
        stepped = unit.changed[-1]
        assert isinstance(stepped, Payment)
        return stepped

    while payment.status not in IN_FLIGHT and payment.claims_open:
        payment = optimistic(attempt)
    return payment


def _cancel(books: Books, practice_id: str, payment: Payment, reason: str) -> Payment:
    """Cancel a payment that was never charged, releasing the first step of its holds (the rest follow)."""
    after = payment.next(status=PaymentStatus.CANCELED, failure_message=f"canceled before any charge: {reason}")
    books.commit(_claims_step(books, practice_id, payment, after))
    return after


def resolve_payment(books: Books, gateway: PaymentGateway, clock: Clock, practice_id: str, payment_id: str) -> Payment:
    """Resolve a payment whose holds block someone (the sweeper's job, done by whoever is blocked).

    A final payment's leftover holds are settled or released. An in-flight one is settled from the processor's
    state — or, once its lease has ended and the processor has no charge for it, canceled and released. While
    its charge may still be sent (lease running) or is still processing, 409 ``payment_in_progress``."""
    payment = _stored(books, practice_id, payment_id)
    if payment.status not in IN_FLIGHT:
        return finish_claims(books, practice_id, payment)
    if payment.status is PaymentStatus.PENDING and not _lease_over(payment, clock.now()):
        raise Conflict(
            "a payment on this invoice is being charged right now; try again in a moment", code="payment_in_progress"
        )
    if not _by_card(payment.method):
        return apply_charge(books, practice_id, payment_id, None)
    result = look_up_charge(gateway, payment)
    if result is not None:
        payment = apply_charge(books, practice_id, payment_id, result)
    elif payment.status is PaymentStatus.PENDING:

        def attempt() -> Payment:
            current = _stored(books, practice_id, payment_id)
            if current.status is not PaymentStatus.PENDING or not _lease_over(current, clock.now()):
                return current
            return _cancel(books, practice_id, current, "the request that reserved it did not finish")

        payment = finish_claims(books, practice_id, optimistic(attempt))
    if payment.status in IN_FLIGHT:
        raise Conflict("a payment on this invoice is still processing; try again later", code="payment_in_progress")
    return payment


def _lease_over(payment: Payment, now: datetime) -> bool:
    return payment.lease_expires_at is None or payment.lease_expires_at <= now


def _resolve_stale_holds(
    books: Books, gateway: PaymentGateway, clock: Clock, practice_id: str, invoices: list[Invoice]
) -> None:
    """Before claiming, clear holds left behind by payments that ended or whose request died (the sweeper);
    raises StaleState after clearing any, so the caller reads the invoices again."""
    cleared = False
    for invoice in invoices:
        for hold in invoice.holds:
            holder = books.get_payment(practice_id, hold.payment_id)
            if holder is None:
                continue
            stale = holder.status not in IN_FLIGHT or (
                holder.status is PaymentStatus.PENDING and _lease_over(holder, clock.now())
            )
            if stale:
                try:
                    resolve_payment(books, gateway, clock, practice_id, hold.payment_id)
                except Conflict as error:
                    if error.code != "payment_in_progress":
                        raise
                cleared = True
    if cleared:
        raise StaleState("holds of finished payments were cleared; read the invoices again")


@dataclass
class InvoiceAndPayment:
    invoice: Invoice
    payment: Payment


def invoice_and_pay(
    books: Books,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    appointment_id: str,
    request: AppointmentPaymentRequest,
    idempotency_key: str,
) -> InvoiceAndPayment:
    """ "Create Invoice & Add Payment": invoice the appointment unless it already is, then pay what it still owes.

    The invoice is read back by id (consistently), never through an index that may lag behind the write."""
    practice_id = practice.practice_id
    route = f"POST /appointments/{appointment_id}/invoice-and-payment"
    fingerprint = request_fingerprint(request.model_dump(mode="json"))
    recorded = books.get_idempotency_record(practice_id, key_digest(practice_id, idempotency_key))
    if recorded is not None:
        check_replay(recorded, route, fingerprint)
        payment = _stored(books, practice_id, recorded.object_id)
        invoice_id = (payment.requested_invoice_ids or [""])[0]
        amount = payment.amount_cents
        client_id = payment.client_id
    else:
        appointment = require_appointment(books, practice_id, appointment_id)
        invoice = _invoice_of(books, clock, practice, appointment)
        if invoice.balance_cents <= 0:
            raise Conflict(f"invoice {invoice.invoice_id} is already paid", code="nothing_owed")
        invoice_id, amount, client_id = invoice.invoice_id, invoice.balance_cents, appointment.client_id
    payment_request = PaymentRequest(
        client_id=client_id,
        amount_cents=amount,
        method=request.method,
        card_id=request.card_id,
        reference=request.reference,
        invoice_ids=[invoice_id],
    )
    paid = take_payment(
        books, gateway, clock, practice, payment_request, idempotency_key, route=route, fingerprint=fingerprint
    )
    invoice = require_invoice(books, practice_id, invoice_id)
    return InvoiceAndPayment(invoice.reported_on(local_date(clock.now(), practice.timezone)), paid)


def _invoice_of(books: Books, clock: Clock, practice: Practice, appointment: Appointment) -> Invoice:
    """The appointment's invoice, creating it now if there is none (a concurrent creator wins and is reused)."""
    if appointment.invoice_id is None:
        request = InvoiceRequest(client_id=appointment.client_id, appointment_ids=[appointment.appointment_id])
        try:
            return create_invoice(books, clock, practice.practice_id, request)
        except Conflict as error:
            if error.code != "appointment_already_invoiced":
                raise
        appointment = require_appointment(books, practice.practice_id, appointment.appointment_id)
    if appointment.invoice_id is None:
        raise Conflict("the appointment's invoice was voided meanwhile; retry", code="concurrent_change")
    return require_invoice(books, practice.practice_id, appointment.invoice_id)
