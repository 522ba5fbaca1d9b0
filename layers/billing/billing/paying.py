"""Taking payments, exactly once: by card on file through the processor, or recorded (cash, check, ...).

Every keyed request first writes its payment as ``pending`` under an id derived from the practice and the
Idempotency-Key; only then is the card charged, with a processor idempotency key derived from that id. A
retry (or a concurrent duplicate) finds the pending payment and resumes it: the processor replays the same
charge, and the conditional write that settles the payment lets only one of them record it.
"""

import time
from dataclasses import dataclass
from typing import Protocol

from billing.allocation import (
    Refund,
    RefundedPayment,
    RefundStatus,
    SettledPayment,
    allocate,
    check_payable,
    check_refundable,
    plan_refund,
)
from billing.calendar import Appointment, require_appointment
from billing.cards import Card
from billing.clients import Client, require_client
from billing.errors import Conflict, NotFound, PaymentDeclined, ProcessorUnavailable, StaleState, existing
from billing.gateway import ChargeResult, PaymentGateway
from billing.ids import new_id
from billing.invoices import Invoice, InvoiceRequest, InvoiceStore, require_invoice
from billing.invoicing import MAX_ATTEMPTS, create_invoice
from billing.localtime import Clock, local_date
from billing.payments import (
    AppointmentPaymentRequest,
    Payment,
    PaymentMethod,
    PaymentRequest,
    PaymentStatus,
    check_replay,
    idempotent_id,
    processor_idempotency_key,
    request_fingerprint,
)
from billing.practices import Practice


class PaymentStore(InvoiceStore, Protocol):
    """What taking payments needs from storage, on top of invoicing's needs."""

    def get_client(self, practice_id: str, client_id: str) -> Client | None: ...

    def get_appointment(self, practice_id: str, appointment_id: str) -> Appointment | None: ...

    def start_payment(self, practice_id: str, payment: Payment) -> bool: ...

    def save_payment(self, practice_id: str, payment: Payment) -> None: ...

    def commit_settlement(self, plan: SettledPayment) -> None: ...

    def cards_of(self, practice_id: str, client_id: str) -> list[Card]: ...

    def get_refund(self, practice_id: str, refund_id: str) -> Refund | None: ...

    def start_refund(self, practice_id: str, refund: Refund) -> bool: ...

    def commit_refund(self, plan: RefundedPayment) -> None: ...


def choose_card(store: PaymentStore, practice_id: str, client_id: str, card_id: str | None) -> Card:
    """The named card, else the client's default card; 409 when the client has none."""
    cards = store.cards_of(practice_id, client_id)
    if card_id is not None:
        for card in cards:
            if card.card_id == card_id:
                return card
        raise NotFound("card", card_id)
    for card in cards:
        if card.is_default:
            return card
    raise Conflict("the client has no card on file", code="no_card_on_file")


def _declined(payment: Payment) -> PaymentDeclined:
    return PaymentDeclined(
        payment.failure_message or "the card was declined",
        decline_code=payment.decline_code or "generic_decline",
        payment=payment.model_dump(mode="json"),
    )


def _replay(payment: Payment) -> Payment:
    """Answer a repeated request exactly as the first one was answered."""
    if payment.status is PaymentStatus.FAILED:
        raise _declined(payment)
    return payment


def take_payment(
    store: PaymentStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    request: PaymentRequest,
    idempotency_key: str,
    fingerprint: str | None = None,
) -> Payment:
    """Take (or record) a payment and allocate it. Declines raise PaymentDeclined after recording a failed payment.
    The same key with the same request returns the first result; with another request it is a 409."""
    practice_id = practice.practice_id
    payment_id = idempotent_id("pay", practice_id, idempotency_key)
    fingerprint = fingerprint or request_fingerprint("payment", request.model_dump(mode="json"))
    payment = store.get_payment(practice_id, payment_id)
    if payment is None:
        client = require_client(store, practice_id, request.client_id)
        check_payable(store.invoices_of(practice_id, request.client_id), request.invoice_ids)
        card = choose_card(store, practice_id, request.client_id, request.card_id) if _by_card(request) else None
        payment = Payment(
            payment_id=payment_id,
            client_id=request.client_id,
            amount_cents=request.amount_cents,
            currency=practice.currency,
            method=request.method,
            status=PaymentStatus.PENDING,
            reference=request.reference,
            card_id=card.card_id if card else None,
            payment_method_id=card.payment_method_id if card else None,
            processor_customer_id=client.processor_customer_id if card else None,
            requested_invoice_ids=request.invoice_ids,
            fingerprint=fingerprint,
            created_at=clock.now(),
        )
        if not store.start_payment(practice_id, payment):
            payment = _stored_payment(store, practice_id, payment_id)
    check_replay(payment, fingerprint)
    if payment.status is not PaymentStatus.PENDING:
        return _replay(payment)
    return _complete(store, gateway, practice_id, payment)


def _by_card(request: PaymentRequest) -> bool:
    return request.method is PaymentMethod.CARD_ON_FILE


def _stored_payment(store: PaymentStore, practice_id: str, payment_id: str) -> Payment:
    return existing(store.get_payment(practice_id, payment_id), "payment", payment_id)


def _complete(store: PaymentStore, gateway: PaymentGateway, practice_id: str, payment: Payment) -> Payment:
    """Charge (if by card) and settle a pending payment; safe to run again for the same payment."""
    if payment.method is PaymentMethod.CARD_ON_FILE and payment.processor_payment_id is None:
        result = _charge(gateway, practice_id, payment)
        if result.status != "succeeded":
            failed = payment.failed(result)
            try:
                store.save_payment(practice_id, failed)
            except StaleState:
                return _replay(_stored_payment(store, practice_id, payment.payment_id))
            raise _declined(failed)
        payment = payment.charged(result)
    return settle(store, practice_id, payment)


def _charge(gateway: PaymentGateway, practice_id: str, payment: Payment) -> ChargeResult:
    """Charge the card recorded with the pending payment, with the key derived from its id (a retry replays)."""
    customer_id, payment_method_id = payment.processor_customer_id, payment.payment_method_id
    if customer_id is None or payment_method_id is None:
        raise Conflict("the client has no card on file", code="no_card_on_file")
    key = processor_idempotency_key(payment.payment_id)
    try:
        return gateway.charge(
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            amount_cents=payment.amount_cents,
            currency=payment.currency,
            idempotency_key=key,
            metadata={"practice_id": practice_id, "client_id": payment.client_id, "payment_id": payment.payment_id},
        )
    except ProcessorUnavailable:
        # The charge may have gone through before the connection dropped: look before giving up.
        found = gateway.find_charge(key, customer_id)
        if found is None:
            raise
        return found


def settle(store: PaymentStore, practice_id: str, payment: Payment) -> Payment:
    """Record a succeeded payment with its allocations and the client's new totals, in one transaction.
    If another request settled it first, that result is returned (it is recorded exactly once)."""
    for _ in range(MAX_ATTEMPTS):
        open_invoices = [i for i in store.invoices_of(practice_id, payment.client_id) if i.balance_cents > 0]
        plan = allocate(practice_id, payment, open_invoices, payment.requested_invoice_ids)
        try:
            store.commit_settlement(plan)
            return plan.payment
        except StaleState:
            current = _stored_payment(store, practice_id, payment.payment_id)
            if current.status is not PaymentStatus.PENDING:
                return _replay(current)
            time.sleep(0.01)
    raise Conflict("could not record the payment after repeated concurrent changes; retry", code="concurrent_change")


@dataclass
class InvoiceAndPayment:
    invoice: Invoice
    payment: Payment


def invoice_and_pay(
    store: PaymentStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    appointment_id: str,
    request: AppointmentPaymentRequest,
    idempotency_key: str,
) -> InvoiceAndPayment:
    """ "Create Invoice & Add Payment": invoice the appointment unless it already is, then pay what it still owes."""
    practice_id = practice.practice_id
    fingerprint = request_fingerprint("appointment", appointment_id, request.model_dump(mode="json"))
    existing = store.get_payment(practice_id, idempotent_id("pay", practice_id, idempotency_key))
    appointment = require_appointment(store, practice_id, appointment_id)
    if existing is None:
        invoice = _invoice_of(store, clock, practice, appointment)
        if invoice.balance_cents <= 0:
            raise Conflict(f"invoice {invoice.invoice_id} is already paid", code="nothing_owed")
        amount, invoice_id = invoice.balance_cents, invoice.invoice_id
    else:
        amount, invoice_id = existing.amount_cents, (existing.requested_invoice_ids or [""])[0]
    payment_request = PaymentRequest(
        client_id=appointment.client_id,
        amount_cents=amount,
        method=request.method,
        card_id=request.card_id,
        reference=request.reference,
        invoice_ids=[invoice_id],
    )
    payment = take_payment(store, gateway, clock, practice, payment_request, idempotency_key, fingerprint)
    invoice = require_invoice(store, practice_id, invoice_id)
    return InvoiceAndPayment(invoice.reported_on(local_date(clock.now(), practice.timezone)), payment)


def _invoice_of(store: PaymentStore, clock: Clock, practice: Practice, appointment: Appointment) -> Invoice:
    """The appointment's invoice, creating it now if there is none (a concurrent creator wins and is reused)."""
    if appointment.invoice_id is None:
        request = InvoiceRequest(client_id=appointment.client_id, appointment_ids=[appointment.appointment_id])
        try:
            return create_invoice(store, clock, practice.practice_id, request)
        except Conflict as error:
            if error.code != "appointment_already_invoiced":
                raise
        appointment = require_appointment(store, practice.practice_id, appointment.appointment_id)
    assert appointment.invoice_id is not None
    return require_invoice(store, practice.practice_id, appointment.invoice_id)


def refund_payment(
    store: PaymentStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice_id: str,
    payment_id: str,
    amount_cents: int | None,
    idempotency_key: str | None,
) -> Refund:
    """Refund all or part of a payment (through the processor for card payments). 409 above what is refundable."""
    payment = _stored_payment(store, practice_id, payment_id)
    refund_id = idempotent_id("re", practice_id, f"{payment_id}:{idempotency_key}") if idempotency_key else new_id("re")
    existing = store.get_refund(practice_id, refund_id)
    if existing is not None and existing.status is RefundStatus.SUCCEEDED:
        return existing
    refund = existing or Refund(
        refund_id=refund_id,
        payment_id=payment_id,
        client_id=payment.client_id,
        amount_cents=check_refundable(payment, amount_cents),
        status=RefundStatus.PENDING,
        created_at=clock.now(),
    )
    if existing is None and not store.start_refund(practice_id, refund):
        refund = store.get_refund(practice_id, refund_id) or refund
    if payment.method is PaymentMethod.CARD_ON_FILE and refund.processor_refund_id is None:
        assert payment.processor_payment_id is not None
        result = gateway.refund(
            payment_intent_id=payment.processor_payment_id,
            amount_cents=refund.amount_cents,
            idempotency_key=processor_idempotency_key(refund_id),
            metadata={"practice_id": practice_id, "payment_id": payment_id, "refund_id": refund_id},
        )
        refund = refund.model_copy(update={"processor_refund_id": result.refund_id})
    for _ in range(MAX_ATTEMPTS):
        invoices = [require_invoice(store, practice_id, a.invoice_id) for a in payment.allocations]
        plan = plan_refund(practice_id, refund, payment, invoices)
        try:
            store.commit_refund(plan)
            return plan.refund
        except StaleState:
            done = store.get_refund(practice_id, refund_id)
            if done is not None and done.status is RefundStatus.SUCCEEDED:
                return done
            payment = _stored_payment(store, practice_id, payment_id)
    raise Conflict("could not record the refund after repeated concurrent changes; retry", code="concurrent_change")
