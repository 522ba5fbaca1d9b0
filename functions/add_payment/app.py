"""Payments: cards on file, payments (card through the processor, or recorded), time-of-service
"Create Invoice & Add Payment", refunds, and a client's payment history."""

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import autopay, cards, payment_service, refund_service
from billing.cards import Card, CardRequest
from billing.clients import require_client
from billing.invoices import Invoice
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

app = build_resolver()


def _accepted(status_code: int, body: Any) -> Response:
    """A 201 for a finished result, a 202 for one the processor has not finished yet."""
    return Response(status_code=status_code, content_type="application/json", body=body)


@app.post(
    "/payments",
    status_code=201,
    tags=["Payments"],
    summary="Take or record a payment",
    responses={
        201: {"description": "The payment succeeded", "content": {"application/json": {"model": Payment}}},
        202: {
            "description": "The charge is processing (not a decline)",
            "content": {"application/json": {"model": Payment}},
        },
    },
)
def post_payment(request: PaymentRequest) -> Response[Payment]:
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
)
def post_invoice_and_payment(
    appointment_id: PathId, request: AppointmentPaymentRequest
) -> Response[dict[str, Invoice | Payment]]:
    practice = wiring.practice(clinician(app).practice_id)
    key = idempotency_key(app)
    done = payment_service.invoice_and_pay(
        wiring.store(), wiring.gateway(), wiring.clock, practice, appointment_id, request, key
    )
    metrics.add_metric(name="TimeOfServicePayments", unit="Count", value=1)
    processing = done.payment.status is PaymentStatus.PROCESSING
    return _accepted(202 if processing else 201, {"invoice": done.invoice, "payment": done.payment})


@app.get("/clients/<client_id>/payments", tags=["Payments"], summary="A client's payments, newest first")
def list_payments(client_id: PathId) -> dict[str, list[Payment]]:
    practice_id = clinician(app).practice_id
    require_client(wiring.store(), practice_id, client_id)
    payments = sorted(wiring.store().payments_of(practice_id, client_id), key=lambda p: p.created_at, reverse=True)
    return {"payments": payments}


@app.post("/payments/<payment_id>/refunds", status_code=201, tags=["Payments"], summary="Refund all or part")
def post_refund(payment_id: PathId, request: RefundRequest) -> Response[Refund]:
    practice_id = clinician(app).practice_id
    key = idempotency_key(app)
    refund = refund_service.refund_payment(
        wiring.store(), wiring.gateway(), wiring.clock, practice_id, payment_id, request.amount_cents, key
    )
    return _accepted(202 if refund.status is RefundStatus.PENDING else 201, refund)


@app.post("/clients/<client_id>/cards", status_code=201, tags=["Cards"], summary="Put a card on file")
def post_card(client_id: PathId, request: CardRequest) -> Card:
    practice_id = clinician(app).practice_id
    return cards.add_card(wiring.store(), wiring.gateway(), wiring.clock, practice_id, client_id, request)


@app.delete("/clients/<client_id>/cards/<card_id>", tags=["Cards"], summary="Remove a card on file")
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
