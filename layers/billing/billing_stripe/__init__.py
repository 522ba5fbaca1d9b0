"""Stripe adapter of the billing domain: customers, cards, off-session charges, refunds, webhooks.

Only opaque ids (practice_id, client_id, payment_id, ...) and amounts are ever sent to Stripe.
"""

from billing_stripe.gateway import (
    Card,
    ChargeOutcome,
    ChargeStatus,
    GatewayUnavailable,
    Refund,
    RefundStatus,
    StripeGateway,
    StripeSettings,
    current_gateway,
    load_stripe_settings,
    safe_metadata,
)

__all__ = [
    "Card",
    "ChargeOutcome",
    "ChargeStatus",
    "GatewayUnavailable",
    "Refund",
    "RefundStatus",
    "StripeGateway",
    "StripeSettings",
    "current_gateway",
    "load_stripe_settings",
    "safe_metadata",
]
