"""Payments: cards on file, payments (card through the processor, or recorded), time-of-service
"Create Invoice & Add Payment", refunds, and a client's payment history."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import autopay, cards, payment_service, refund_service
from billing.cards import Card, CardRequest
from billing.clients import require_client
from billing.payment_service import InvoiceAndPayment
from billing.payments import (
    AppointmentPaymentRequest,
    Payment,
    PaymentRequest,
    PaymentStatus,
    Refund,
    RefundRequest,
    RefundStatus,
)
from billing_lambda import wiring
from billing_lambda.http import PathId, build_resolver, clinician, idempotency_key, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import (
    CARD_BODY,
    EVERY_ROUTE,
    IDEMPOTENCY_KEY,
    INVALID,
    PAYMENT_BODY,
    REFUND_BODY,
    TIME_OF_SERVICE_BODY,
    accepted,
    card_charge,
    created,
    no_content,
    ok,
    requires,
    responses,
)

app = build_resolver()
ALL_REFUNDABLE = RefundRequest()  # a refund sent without a body: everything still refundable


def _accepted(status_code: int, body: Any) -> Response:
    """A 201 for a finished result, a 202 for one the processor has not finished yet."""
    return Response(status_code=status_code, content_type="application/json", body=body)


@app.post(
    "/payments",
    status_code=201,
    tags=["Payments"],
    summary="Take or record a payment",
    description="`card_on_file` charges the client's card (the default one unless `card_id`) through the "
    "processor; other methods are recorded. What is paid goes to `invoice_ids`, else to the oldest unpaid invoices; "
    "the rest is credit. The amount is first reserved on those invoices, so concurrent payments never together "
    "charge more than is owed (409 `payment_in_progress` before any charge).",
    responses=card_charge(Payment, "The payment, succeeded"),
    openapi_extensions=requires(IDEMPOTENCY_KEY),
)
def post_payment(request: Annotated[PaymentRequest, PAYMENT_BODY]) -> Response[Payment]:
    practice = wiring.practice(clinician(app).practice_id)
    key = idempotency_key(app)
    store, gateway = wiring.store(), wiring.gateway()
    payment = payment_service.take_payment(store, gateway, wiring.clock, practice, request, key)
    logger.info("payment recorded", extra={"payment_id": payment.payment_id, "status": payment.status.value})
    return _accepted(202 if payment.status is PaymentStatus.PROCESSING else 201, payment)


@app.post(
    "/appointments/<appointment_id>/invoice-and-payment",
    status_code=201,
    tags=["Payments"],
    summary="Create Invoice & Add Payment for a calendar appointment",
    description="Invoices the appointment (or reuses its invoice) and pays what that invoice still owes, in one "
    "step (409 `nothing_owed` when it is paid).",
    responses=card_charge(InvoiceAndPayment, "The invoice and the succeeded payment"),
    openapi_extensions=requires(IDEMPOTENCY_KEY),
)
def post_invoice_and_payment(
    appointment_id: PathId, request: Annotated[AppointmentPaymentRequest, TIME_OF_SERVICE_BODY]
) -> Response[InvoiceAndPayment]:
    practice = wiring.practice(clinician(app).practice_id)
    key = idempotency_key(app)
    done = payment_service.invoice_and_pay(
        wiring.store(), wiring.gateway(), wiring.clock, practice, appointment_id, request, key
    )
    metrics.add_metric(name="TimeOfServicePayments", unit="Count", value=1)
    processing = done.payment.status is PaymentStatus.PROCESSING
    return _accepted(202 if processing else 201, done)


@app.get(
    "/clients/<client_id>/payments",
    tags=["Payments"],
    summary="A client's payments, newest first",
    responses=responses(ok('`{"payments": [...]}`'), *EVERY_ROUTE, 404, INVALID),
)
def list_payments(client_id: PathId) -> dict[str, list[Payment]]:
    practice_id = clinician(app).practice_id
    require_client(wiring.store(), practice_id, client_id)
    payments = sorted(wiring.store().payments_of(practice_id, client_id), key=lambda p: p.created_at, reverse=True)
    return {"payments": payments}


@app.post(
    "/payments/<payment_id>/refunds",
    status_code=201,
    tags=["Payments"],
    summary="Refund all or part",
    description="Without a body or `amount_cents`, everything still refundable. Card payments are refunded "
    "through the processor, others recorded; never more than was paid (409 `refund_exceeds_refundable`).",
    responses=responses(
        created("The refund, succeeded"),
        accepted(Refund, "The processor has not finished the refund yet (`pending`)"),
        *EVERY_ROUTE,
        404,
        409,
        INVALID,
    ),
    openapi_extensions=requires(IDEMPOTENCY_KEY),
)
def post_refund(
    payment_id: PathId, request: Annotated[RefundRequest, REFUND_BODY] = ALL_REFUNDABLE
) -> Response[Refund]:
    practice_id = clinician(app).practice_id
    key = idempotency_key(app)
    refund = refund_service.refund_payment(
        wiring.store(), wiring.gateway(), wiring.clock, practice_id, payment_id, request.amount_cents, key
    )
    return _accepted(202 if refund.status is RefundStatus.PENDING else 201, refund)


@app.post(
    "/clients/<client_id>/cards",
    status_code=201,
    tags=["Cards"],
    summary="Put a card on file",
    description="A Stripe PaymentMethod made by the client-side SDK (e.g. `pm_card_visa`); the first card is the "
    "default. 402 when the issuer refuses the card, 400 when it is unknown, used elsewhere or not a card.",
    responses=responses(created("The card (brand, last4 and expiry only)"), *EVERY_ROUTE, 402, 404, INVALID),
)
def post_card(client_id: PathId, request: Annotated[CardRequest, CARD_BODY]) -> Card:
    practice_id = clinician(app).practice_id
    return cards.add_card(wiring.store(), wiring.gateway(), wiring.clock, practice_id, client_id, request)


@app.delete(
    "/clients/<client_id>/cards/<card_id>",
    tags=["Cards"],
    summary="Remove a card on file",
    description="Removing the card AutoPay charges ends the enrolment.",
    responses=responses(no_content("Removed"), *EVERY_ROUTE, 404, 409, INVALID),
)
def delete_card(client_id: PathId, card_id: PathId):  # returns a bare Response: it is not a pydantic model
    practice_id = clinician(app).practice_id
    cards.remove_card(wiring.store(), wiring.gateway(), practice_id, client_id, card_id)
    autopay.card_removed(wiring.store(), practice_id, client_id, card_id)
    return Response(status_code=204)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
