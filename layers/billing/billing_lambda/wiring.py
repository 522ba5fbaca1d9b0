"""Builds the domain's collaborators (store, schedules, clock) from the function's settings."""

from functools import cache
from typing import TYPE_CHECKING

from billing.errors import existing
from billing.localtime import SystemClock
from billing.nightly import NightlyJob
from billing.practices import Practice
from billing_aws.schedules import NightlySchedules
from billing_aws.store import BillingStore
from billing_lambda.aws_clients import client
from billing_lambda.config import CalendarSettings, FunctionSettings, load_settings

if TYPE_CHECKING:
    from billing_stripe.gateway import StripeGateway

clock = SystemClock()


@cache
def store() -> BillingStore:
    return BillingStore(client("dynamodb"), load_settings(FunctionSettings).table_name)


def practice(practice_id: str) -> Practice:
    """The caller's practice, or NotFound (its settings are needed for local dates)."""
    return existing(store().get_practice(practice_id), "practice", practice_id)


@cache
def nightly_schedules() -> NightlySchedules:
    settings = load_settings(CalendarSettings)
    return NightlySchedules(
        client("scheduler"),
        clock,
        group_name=settings.schedule_group_name,
        role_arn=settings.scheduler_role_arn,
        targets={
            NightlyJob.DAILY_INVOICES: settings.daily_invoices_function_arn,
            NightlyJob.AUTOPAY: settings.autopay_function_arn,
            NightlyJob.FINANCE_EXPORT: settings.finance_export_function_arn,
        },
        dead_letter_arn=settings.schedules_dlq_arn,
    )


def gateway() -> "StripeGateway":
    """The card processor; imported lazily so functions that never charge do not load the Stripe SDK.

    Not cached here: the same gateway is reused while the Stripe secret is unchanged, and a rotated secret
    is picked up within ``SECRET_MAX_AGE_SECONDS`` (``billing_stripe.gateway.current_gateway``)."""
    from billing_stripe.gateway import current_gateway

    return current_gateway()
