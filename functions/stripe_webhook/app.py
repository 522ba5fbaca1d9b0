"""Stripe webhooks: verify the signature on the raw body, handle each event id once, reconcile with the
PaymentIntent's current state (so duplicated, late or out-of-order deliveries all end the same way)."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

import base64
from collections.abc import Callable
from functools import cache
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import reconciliation
from billing_lambda import wiring
from billing_lambda.aws_clients import client
from billing_lambda.config import WebhookSettings, load_settings
from billing_lambda.http import build_resolver, error_response
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import JSON, STRIPE_SIGNATURE, requires, responses

app = build_resolver()
_once_per_event = IdempotencyConfig(event_key_jmespath="id", expires_after_seconds=30 * 24 * 3600)


def _raw_body() -> bytes:
    event = app.current_event
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode()


_CHARGE_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.canceled",
        "payment_intent.requires_action",
    }
)
_REFUND_EVENTS = frozenset(
    {"charge.refunded", "charge.refund.updated", "refund.created", "refund.updated", "refund.failed"}
)


def handle_event(stripe_event: dict[str, Any]) -> dict[str, str]:
    """Reconcile one verified event; the result is remembered under the event id. Events are hints: the current
    state is always read from Stripe, so duplicated, late, concurrent or out-of-order events end the same way."""
    kind = str(stripe_event.get("type"))
    source = (stripe_event.get("data") or {}).get("object") or {}
    payment_intent_id = source.get("id") if kind.startswith("payment_intent.") else source.get("payment_intent")
    if kind not in _CHARGE_EVENTS | _REFUND_EVENTS | {"charge.dispute.created"} or not payment_intent_id:
        return {"event": kind, "outcome": "ignored"}
    gateway = wiring.gateway()
    current = gateway.retrieve_payment_intent(str(payment_intent_id))
    practice_id, payment_id = current.metadata.get("practice_id"), current.metadata.get("payment_id")
    if not practice_id or not payment_id:
        return {"event": kind, "outcome": reconciliation.Reconciled.UNKNOWN_PAYMENT.value}
    store = wiring.store()
    if kind in _CHARGE_EVENTS:
        outcome = reconciliation.reconcile_charge(store, practice_id, payment_id, current)
    elif kind in _REFUND_EVENTS:
        outcome = reconciliation.reconcile_refunds(
            store, gateway, wiring.clock, practice_id, payment_id, str(payment_intent_id)
        )
    else:
        outcome = reconciliation.record_dispute(store, practice_id, payment_id, int(source.get("amount") or 0))
    logger.info("stripe event reconciled", extra={"event_type": kind, "payment_id": payment_id, "outcome": outcome})
    metrics.add_metric(name=f"Webhook_{outcome.value}", unit="Count", value=1)
    return {"event": kind, "outcome": outcome.value}


@cache
def _handled_once() -> Callable[..., dict[str, str]]:
    """`handle_event` behind one record per Stripe event id. Powertools deletes the record when handling raises,
    so Stripe's retry of a failed delivery is handled again; a concurrent duplicate gets 409 and Stripe retries
    it later. Made on the first event, not at import: it shares the function's DynamoDB client, which (as in
    every function) is made when first used, and a client of its own would load botocore's model again."""
    events = DynamoDBPersistenceLayer(
        table_name=load_settings(WebhookSettings).idempotency_table_name, boto3_client=client("dynamodb")
    )
    once = idempotent_function(data_keyword_argument="stripe_event", config=_once_per_event, persistence_store=events)
    return once(handle_event)


# The webhook's own contract: it reads the raw body (to verify its signature), so Powertools has no model of it.
_STRIPE_EVENT = {
    "description": "A Stripe event, as Stripe sends it (only its signature, id, type and object's id are read)",
    "required": True,
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["id", "type", "data"],
                "properties": {
                    "id": {"type": "string", "examples": ["evt_1PxYz"]},
                    "type": {"type": "string", "examples": ["payment_intent.succeeded"]},
                    "data": {"type": "object", "properties": {"object": {"type": "object"}}},
                },
            }
        }
    },
}
_HANDLED: OpenAPIResponse = {
    "description": "The event was verified and reconciled (or ignored: not an event this API acts on)",
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "required": ["event", "outcome"],
                "properties": {
                    "event": {"type": "string", "description": "The event's type"},
                    "outcome": {"type": "string", "enum": ["ignored", *reconciliation.Reconciled]},
                },
            }
        }
    },
}


@app.post(
    "/webhooks/stripe",
    tags=["Webhooks"],
    summary="Stripe events (signed; no JWT)",
    description="Verified with the `Stripe-Signature` header, handled once per event id, reconciled with the "
    "PaymentIntent's current state, so duplicated, late or out-of-order deliveries all end the same way. 409 "
    "while the same event is being handled (Stripe retries).",
    responses=responses({200: _HANDLED}, 400, 404, 409, 503),
    openapi_extensions={"security": [], "requestBody": _STRIPE_EVENT, **requires(STRIPE_SIGNATURE)},
)
def post_stripe_event():  # returns a bare Response: it is not a pydantic model
    stripe_event = wiring.gateway().parse_webhook(_raw_body(), app.current_event.headers.get("stripe-signature", ""))
    try:
        return _handled_once()(stripe_event=stripe_event)
    except IdempotencyAlreadyInProgressError:
        return error_response(HTTPStatus.CONFLICT, "event_in_progress", "this event is being handled; retry later")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _once_per_event.register_lambda_context(context)
    return app.resolve(event, context)


startup.ready()
