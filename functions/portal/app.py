"""The client portal: a client's own invoices and balance, paying by card, their cards and AutoPay.

Every route acts for the client the verified token names (``custom:client_id``); clinician tokens get 403."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import autopay, cards, portal
from billing.autopay import AutoPayRequest, AutoPayView
from billing.cards import Card, CardRequest
from billing.clients import require_client
from billing.payments import Payment, PaymentStatus
from billing.portal import PortalAccount, PortalPaymentRequest
from billing_lambda import wiring
from billing_lambda.http import PathId, Tenant, build_resolver, idempotency_key, portal_client, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import (
    AUTOPAY_BODY,
    CARD_BODY,
    EVERY_ROUTE,
    IDEMPOTENCY_KEY,
    INVALID,
    PORTAL_PAYMENT_BODY,
    card_charge,
    created,
    no_content,
    ok,
    requires,
    responses,
)

app = build_resolver()


def _caller() -> Tenant:
    """The calling client, who must exist in the token's practice."""
    caller = portal_client(app)
    assert caller.client_id is not None
    require_client(wiring.store(), caller.practice_id, caller.client_id)
    return caller


@app.get(
    "/portal/invoices",
    tags=["Portal"],
    summary="My invoices, balance, credit and next AutoPay charge",
    responses=responses(ok("The calling client's account"), *EVERY_ROUTE, 404),
)
def get_my_account() -> PortalAccount:
    caller = _caller()
    practice = wiring.practice(caller.practice_id)
    assert caller.client_id is not None
    return portal.account(wiring.store(), wiring.clock, practice, caller.client_id)


@app.post(
    "/portal/payments",
    status_code=201,
    tags=["Portal"],
    summary="Pay my balance or chosen invoices",
    description="Without `amount_cents` or `invoice_ids`, the whole balance (409 `nothing_owed` when there is "
    "none). By a saved card (`card_id`, else the default) or a new one (`payment_method_id`, kept with "
    "`save_card`), through the same reserved path as staff payments.",
    responses=card_charge(Payment, "The payment, succeeded"),
    openapi_extensions=requires(IDEMPOTENCY_KEY),
)
def post_my_payment(request: Annotated[PortalPaymentRequest, PORTAL_PAYMENT_BODY]) -> Response[Payment]:
    caller = _caller()
    practice = wiring.practice(caller.practice_id)
    key = idempotency_key(app)
    assert caller.client_id is not None
    payment = portal.pay(wiring.store(), wiring.gateway(), wiring.clock, practice, caller.client_id, request, key)
    metrics.add_metric(name="PortalPayments", unit="Count", value=1)
    logger.info("portal payment", extra={"payment_id": payment.payment_id, "status": payment.status.value})
    status = 202 if payment.status is PaymentStatus.PROCESSING else 201
    return Response(status_code=status, content_type="application/json", body=payment)


@app.get(
    "/portal/cards",
    tags=["Portal"],
    summary="My cards on file",
    responses=responses(ok('`{"cards": [...]}`'), *EVERY_ROUTE, 404),
)
def get_my_cards() -> dict[str, list[Card]]:
    caller = _caller()
    assert caller.client_id is not None
    return {"cards": wiring.store().cards_of(caller.practice_id, caller.client_id)}


@app.post(
    "/portal/cards",
    status_code=201,
    tags=["Portal"],
    summary="Put a card on file (a Stripe PaymentMethod)",
    responses=responses(created("The card (brand, last4 and expiry only)"), *EVERY_ROUTE, 402, 404, INVALID),
)
def post_my_card(request: Annotated[CardRequest, CARD_BODY]) -> Card:
    caller = _caller()
    assert caller.client_id is not None
    return cards.add_card(wiring.store(), wiring.gateway(), wiring.clock, caller.practice_id, caller.client_id, request)


@app.delete(
    "/portal/cards/<card_id>",
    tags=["Portal"],
    summary="Remove one of my cards",
    responses=responses(no_content("Removed"), *EVERY_ROUTE, 404, 409, INVALID),
)
def delete_my_card(card_id: PathId):  # returns a bare Response: it is not a pydantic model
    caller = _caller()
    assert caller.client_id is not None
    cards.remove_card(wiring.store(), wiring.gateway(), caller.practice_id, caller.client_id, card_id)
    autopay.card_removed(wiring.store(), caller.practice_id, caller.client_id, card_id)
    return Response(status_code=204)


@app.put(
    "/portal/autopay",
    tags=["Portal"],
    summary="Turn AutoPay on (with my consent) or off",
    description="409 when there is no card on file or AutoPay is off for the practice.",
    responses=responses(ok("The AutoPay state, with the consent recorded"), *EVERY_ROUTE, 404, 409, INVALID),
)
def put_my_autopay(request: Annotated[AutoPayRequest, AUTOPAY_BODY]) -> AutoPayView:
    caller = _caller()
    practice = wiring.practice(caller.practice_id)
    assert caller.client_id is not None
    return autopay.set_autopay(wiring.store(), wiring.clock, practice, caller.client_id, request, caller.user_id)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
