"""Every Stripe call gives up in time for the calling Lambda to record what happened.

The budget (written out in ``billing_stripe/gateway.py``): a Stripe request is tried 1 + MAX_NETWORK_RETRIES
times, each attempt bounded by the connect and read timeouts, with the SDK's backoff in between; paged lookups
start no further page after PAGING_DEADLINE_SECONDS; the Stripe secret is read in one bounded attempt. All of
that plus RECORDING_MARGIN_SECONDS must fit in the Timeout (template.yaml) of every function that talks to
Stripe, i.e. every function given STRIPE_SECRET_ID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import stripe
from cfnlint.decode import cfn_yaml
from pydantic import SecretStr

from billing_stripe import gateway as stripe_gateway
from billing_stripe.gateway import StripeGateway, StripeSettings

ROOT = Path(__file__).resolve().parents[2]
LAMBDA_DEFAULT_TIMEOUT = 3  # seconds, when neither the function nor Globals set one


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(str(ROOT / "template.yaml"))


def stripe_function_timeouts(template: dict[str, Any]) -> dict[str, float]:
    """Logical id -> effective Timeout of every function that reads the Stripe secret."""
    default = template.get("Globals", {}).get("Function", {}).get("Timeout", LAMBDA_DEFAULT_TIMEOUT)
    timeouts = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        variables = properties.get("Environment", {}).get("Variables", {})
        if "STRIPE_SECRET_ID" in variables:
            timeouts[name] = float(properties.get("Timeout", default))
    return timeouts


def secret_read_worst_case_seconds() -> float:
    config = stripe_gateway._secrets().client.meta.config
    attempts = config.retries.get("total_max_attempts", 1)
    assert attempts == 1, "a retried secret read needs its backoff counted here"
    return float(config.connect_timeout + config.read_timeout)


def test_one_request_is_bounded_as_written_down() -> None:
    # 2 attempts x (1.0 s connect + 3.0 s read) + 0.5 s backoff before the retry.
    assert stripe_gateway.MAX_NETWORK_RETRIES == 1
    assert (stripe_gateway.CONNECT_TIMEOUT_SECONDS, stripe_gateway.READ_TIMEOUT_SECONDS) == (1.0, 3.0)
    assert stripe_gateway.request_worst_case_seconds() == 2 * (1.0 + 3.0) + 0.5 == 8.5


def test_the_gateway_gives_the_sdk_those_limits() -> None:
    gateway = StripeGateway(StripeSettings(secret_key=SecretStr("sk_test_budget")))
    requestor = gateway._client._requestor

    assert requestor._options.max_network_retries == stripe_gateway.MAX_NETWORK_RETRIES
    assert requestor._client._timeout == (stripe_gateway.CONNECT_TIMEOUT_SECONDS, stripe_gateway.READ_TIMEOUT_SECONDS)


def test_the_sdk_backoff_is_no_longer_than_counted() -> None:
    client = stripe.RequestsClient()
    for retry in range(1, stripe_gateway.MAX_NETWORK_RETRIES + 1):
        counted = min(stripe.HTTPClient.INITIAL_DELAY * 2 ** (retry - 1), stripe.HTTPClient.MAX_DELAY)
        # The SDK jitters each sleep into [counted / 2, counted] (never below INITIAL_DELAY).
        assert max(client._sleep_time_seconds(retry) for _ in range(200)) <= counted


def test_the_secret_read_is_bounded() -> None:
    assert secret_read_worst_case_seconds() == 2.0


def test_stripe_calls_fit_in_every_function_that_makes_them(template: dict[str, Any]) -> None:
    timeouts = stripe_function_timeouts(template)
    assert {"AddPaymentFunction", "StripeWebhookFunction"} <= set(timeouts)

    worst_stripe = stripe_gateway.PAGING_DEADLINE_SECONDS + stripe_gateway.request_worst_case_seconds()
    worst_invocation = secret_read_worst_case_seconds() + worst_stripe + stripe_gateway.RECORDING_MARGIN_SECONDS

    assert worst_invocation == 2.0 + (2.0 + 8.5) + 2.0 == 14.5
    for function, timeout in timeouts.items():
        assert worst_invocation <= timeout, f"{function}: Timeout {timeout} s < {worst_invocation} s of Stripe"
