"""The Stripe gateway against the local Stripe emulator, through the real ``stripe`` SDK."""

import itertools
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import stripe
from moto import mock_aws
from pydantic import SecretStr

from billing.errors import Conflict, InvalidRequest, NotFound, PaymentDeclined, ProcessorUnavailable
from billing_stripe import gateway as gateway_module
from billing_stripe.gateway import (
    Card,
    ChargeOutcome,
    GatewayUnavailable,
    StripeGateway,
    StripeSettings,
    current_gateway,
    load_stripe_settings,
)
from local.stripe_emulator import StripeEmulator, stripe_fee

WHSEC = "whsec_gateway_test"
ATTEMPTS = 1 + gateway_module.MAX_NETWORK_RETRIES
PRACTICE_ID = "prac_0f3a9c"
CLIENT_ID = "cli_7b21e4"


@pytest.fixture(scope="module")
def emulator() -> Iterator[StripeEmulator]:
    emulator = StripeEmulator(webhook_url=None, webhook_secret=WHSEC)
    emulator.start(port=0)
    yield emulator
    emulator.stop()


@pytest.fixture
def gateway(emulator: StripeEmulator) -> StripeGateway:
    emulator.reset()  # each test counts its own PaymentIntents and requests
    settings = StripeSettings(
        secret_key=SecretStr("sk_test_gateway"), webhook_secret=SecretStr(WHSEC), api_base=emulator.url
    )
    return StripeGateway(settings)


def _customer_with(gateway: StripeGateway, token: str = "pm_card_visa", key: str = "cus-key-1") -> tuple[str, Card]:
    customer_id = gateway.create_customer(PRACTICE_ID, CLIENT_ID, idempotency_key=key)
    return customer_id, gateway.attach_card(customer_id, token)


def _charge(gateway: StripeGateway, customer_id: str, card: Card, key: str, amount: int = 15000) -> ChargeOutcome:
    return gateway.charge(
        customer_id=customer_id,
        payment_method_id=card.payment_method_id,
        amount_cents=amount,
        currency="usd",
        idempotency_key=key,
        metadata={"practice_id": PRACTICE_ID, "client_id": CLIENT_ID, "payment_id": "pay_01"},
    )


def test_customer_and_card_on_file(gateway: StripeGateway) -> None:
    customer_id, card = _customer_with(gateway)

    assert customer_id.startswith("cus_")
    assert card.payment_method_id.startswith("pm_")
    assert (card.brand, card.last4, card.exp_month) == ("visa", "4242", 12)
    assert card.exp_year > 2000


def test_same_key_makes_one_customer(gateway: StripeGateway) -> None:
    first = gateway.create_customer(PRACTICE_ID, CLIENT_ID, idempotency_key="cus-same")
    assert gateway.create_customer(PRACTICE_ID, CLIENT_ID, idempotency_key="cus-same") == first


def test_attach_unknown_payment_method_is_invalid(gateway: StripeGateway) -> None:
    customer_id = gateway.create_customer(PRACTICE_ID, CLIENT_ID, idempotency_key="cus-unknown")

    with pytest.raises(InvalidRequest) as raised:
        gateway.attach_card(customer_id, "pm_does_not_exist")
    assert "No such PaymentMethod" in raised.value.message


def test_attach_card_declined_at_attach(gateway: StripeGateway) -> None:
    customer_id = gateway.create_customer(PRACTICE_ID, CLIENT_ID, idempotency_key="cus-attach-decline")
    with pytest.raises(PaymentDeclined) as raised:
        gateway.attach_card(customer_id, "pm_card_chargeCustomerFail")
    assert raised.value.decline_code == "generic_decline"


def test_detach_twice_is_fine(gateway: StripeGateway) -> None:
    _, card = _customer_with(gateway)

    gateway.detach_card(card.payment_method_id)
    gateway.detach_card(card.payment_method_id)


def test_charge_succeeds_with_fee(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)

    outcome = _charge(gateway, customer_id, card, "charge-ok", amount=15000)

    assert outcome.status == "succeeded"
    assert outcome.payment_intent_id.startswith("pi_")
    assert outcome.charge_id is not None and outcome.charge_id.startswith("ch_")
    assert outcome.fee_cents == stripe_fee(15000)
    assert outcome.decline_code is None
    assert outcome.metadata["idempotency_key"] == "charge-ok"
    assert outcome.metadata["payment_id"] == "pay_01"
    assert gateway.retrieve_payment_intent(outcome.payment_intent_id) == outcome


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedLostCard", "lost_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_authenticationRequired", "authentication_required"),
    ],
)
def test_declines_are_failed_outcomes(gateway: StripeGateway, token: str, decline_code: str) -> None:
    customer_id, card = _customer_with(gateway, token)

    outcome = _charge(gateway, customer_id, card, f"decline-{token}")

    assert outcome.status == "failed"
    assert outcome.decline_code == decline_code
    assert outcome.payment_intent_id.startswith("pi_")
    assert outcome.failure_message
    assert outcome.fee_cents is None
    # The webhook path reads the same state back.
    current = gateway.retrieve_payment_intent(outcome.payment_intent_id)
    assert (current.status, current.decline_code) == ("failed", decline_code)


def test_same_key_twice_is_one_payment_intent(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)

    first = _charge(gateway, customer_id, card, "charge-twice")
    second = _charge(gateway, customer_id, card, "charge-twice")

    assert second.payment_intent_id == first.payment_intent_id
    assert second == first
    assert len(emulator.payment_intents()) == 1


def test_same_key_with_other_parameters_is_a_conflict(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    _charge(gateway, customer_id, card, "charge-reused", amount=15000)

    with pytest.raises(Conflict) as raised:
        _charge(gateway, customer_id, card, "charge-reused", amount=9000)
    assert raised.value.code == "idempotency_key_reused"
    assert len(emulator.payment_intents()) == 1


def test_lost_answer_is_recovered_by_the_sdk_retry(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    emulator.fail_after_success(times=1)

    outcome = _charge(gateway, customer_id, card, "charge-lost-once")

    # MAX_NETWORK_RETRIES=1: the SDK resends once with the same key and Stripe replays the success.
    assert outcome.status == "succeeded"
    assert len(emulator.payment_intents()) == 1
    replays = [entry for entry in emulator.request_log() if entry["path"] == "/v1/payment_intents"]
    assert [(entry["dropped"], entry["replayed"]) for entry in replays] == [(True, False), (False, True)]


def test_every_answer_lost_is_unavailable_and_find_charge_recovers(
    gateway: StripeGateway, emulator: StripeEmulator
) -> None:
    customer_id, card = _customer_with(gateway)
    emulator.fail_after_success(times=ATTEMPTS)  # the first attempt and the SDK's retry

    with pytest.raises(GatewayUnavailable) as raised:
        _charge(gateway, customer_id, card, "charge-lost")
    assert isinstance(raised.value, ProcessorUnavailable)  # what the payments domain recovers from

    assert len(emulator.payment_intents()) == 1
    found = gateway.find_charge("charge-lost", customer_id)
    assert found is not None
    assert found.status == "succeeded"
    assert found.payment_intent_id == emulator.payment_intents()[0]["id"]
    assert found.fee_cents == stripe_fee(15000)
    # The caller's retry with the same key is the same charge, not a second one.
    assert _charge(gateway, customer_id, card, "charge-lost").payment_intent_id == found.payment_intent_id
    assert len(emulator.payment_intents()) == 1


def test_find_charge_falls_back_to_listing(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    made = _charge(gateway, customer_id, card, "charge-listed")
    _charge(gateway, customer_id, card, "charge-other")
    emulator.fail_next_request(path_prefix="/v1/payment_intents/search", times=1, status=400, method="GET")

    found = gateway.find_charge("charge-listed", customer_id)

    assert found is not None and found.payment_intent_id == made.payment_intent_id
    paths = [entry["path"] for entry in emulator.request_log()]
    assert paths[-2:] == ["/v1/payment_intents/search", "/v1/payment_intents"]


def test_find_charge_finds_declines_and_nothing_else(gateway: StripeGateway) -> None:
    customer_id, card = _customer_with(gateway, "pm_card_chargeDeclinedInsufficientFunds")
    _charge(gateway, customer_id, card, "charge-declined")

    found = gateway.find_charge("charge-declined", customer_id)
    assert found is not None and (found.status, found.decline_code) == ("failed", "insufficient_funds")
    assert gateway.find_charge("never-sent", customer_id) is None
    assert gateway.find_charge("charge-declined", "cus_someone_else") is None


def test_refund_partial_then_rest_then_too_much(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    charged = _charge(gateway, customer_id, card, "charge-refunded", amount=10000)
    metadata = {"practice_id": PRACTICE_ID, "payment_id": "pay_01"}

    partial = gateway.refund(
        payment_intent_id=charged.payment_intent_id, amount_cents=4000, idempotency_key="ref-1", metadata=metadata
    )
    again = gateway.refund(
        payment_intent_id=charged.payment_intent_id, amount_cents=4000, idempotency_key="ref-1", metadata=metadata
    )
    rest = gateway.refund(
        payment_intent_id=charged.payment_intent_id, amount_cents=6000, idempotency_key="ref-2", metadata=metadata
    )

    assert (partial.status, partial.amount_cents) == ("succeeded", 4000)
    assert again == partial  # the same key is the same refund
    assert (rest.status, rest.amount_cents) == ("succeeded", 6000)
    assert len(emulator.refunds()) == 2
    with pytest.raises(Conflict) as raised:
        gateway.refund(
            payment_intent_id=charged.payment_intent_id, amount_cents=1, idempotency_key="ref-3", metadata=metadata
        )
    assert "already been refunded" in raised.value.message


def test_refund_more_than_paid_is_a_conflict(gateway: StripeGateway) -> None:
    customer_id, card = _customer_with(gateway)
    charged = _charge(gateway, customer_id, card, "charge-overrefund", amount=10000)

    with pytest.raises(Conflict) as raised:
        gateway.refund(
            payment_intent_id=charged.payment_intent_id, amount_cents=10001, idempotency_key="ref-big", metadata={}
        )
    assert "greater than unrefunded amount" in raised.value.message


def _signed_event(emulator: StripeEmulator, gateway: StripeGateway) -> str:
    customer_id, card = _customer_with(gateway)
    _charge(gateway, customer_id, card, "charge-webhook")
    (event,) = emulator.events("payment_intent.succeeded")
    return json.dumps(event, indent=2)


def test_parse_webhook_accepts_a_signed_event(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    payload = _signed_event(emulator, gateway)

    event = gateway.parse_webhook(payload.encode(), emulator.signature_header(payload))

    assert event == json.loads(payload)
    assert event["type"] == "payment_intent.succeeded"
    assert event["data"]["object"]["metadata"]["idempotency_key"] == "charge-webhook"


def test_parse_webhook_rejects_a_wrong_signature(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    payload = _signed_event(emulator, gateway)

    for header in (emulator.signature_header(payload, secret="whsec_other"), "", "garbage"):
        with pytest.raises(InvalidRequest) as raised:
            gateway.parse_webhook(payload.encode(), header)
        assert raised.value.code == "invalid_signature"
    tampered = payload.replace("succeeded", "canceled", 1)
    with pytest.raises(InvalidRequest) as raised:
        gateway.parse_webhook(tampered.encode(), emulator.signature_header(payload))
    assert raised.value.code == "invalid_signature"


def test_parse_webhook_rejects_a_stale_timestamp(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    payload = _signed_event(emulator, gateway)
    now = int(time.time())

    with pytest.raises(InvalidRequest) as raised:
        gateway.parse_webhook(payload.encode(), emulator.signature_header(payload, timestamp=now - 301))
    assert raised.value.code == "invalid_signature"
    # Just inside the tolerance is still fine.
    assert gateway.parse_webhook(payload.encode(), emulator.signature_header(payload, timestamp=now - 290))


def test_load_stripe_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_env")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_env")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111")
    monkeypatch.setenv("STRIPE_SECRET_ID", "ignored-when-the-key-is-set")

    settings = load_stripe_settings()

    assert settings.secret_key.get_secret_value() == "sk_test_env"
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == "whsec_env"
    assert settings.api_base == "http://127.0.0.1:12111"
    assert "sk_test_env" not in repr(settings)
    assert load_stripe_settings() == settings
    assert current_gateway() is current_gateway()  # one client while the settings are the same


@pytest.fixture
def secrets_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process Secrets Manager (moto) holding the Stripe secret, read the way a deployed function does."""
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("STRIPE_SECRET_ID", "billing/stripe")
    with mock_aws():
        gateway_module._secrets.cache_clear()  # the provider's client must be made inside the mock
        gateway_module._gateway_for.cache_clear()
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(
            Name="billing/stripe", SecretString=json.dumps({"secret_key": "sk_test_old", "webhook_secret": "whsec_1"})
        )
        try:
            yield client
        finally:
            gateway_module._secrets.cache_clear()
            gateway_module._gateway_for.cache_clear()


def test_load_stripe_settings_from_secrets_manager(secrets_manager: Any) -> None:
    settings = load_stripe_settings()

    assert settings.secret_key.get_secret_value() == "sk_test_old"
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == "whsec_1"
    assert settings.api_base is None


def test_a_rotated_secret_is_used_after_max_age(secrets_manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "SECRET_MAX_AGE_SECONDS", 1)
    before = current_gateway()
    assert before.settings.secret_key.get_secret_value() == "sk_test_old"

    secrets_manager.put_secret_value(
        SecretId="billing/stripe", SecretString=json.dumps({"secret_key": "sk_test_new", "webhook_secret": "whsec_2"})
    )
    # Within max age the cached secret (and the same client) is still used: no Secrets Manager call per request.
    assert current_gateway() is before
    time.sleep(1.2)

    after = current_gateway()
    assert after is not before
    assert after.settings.secret_key.get_secret_value() == "sk_test_new"
    assert after.settings.webhook_secret is not None and after.settings.webhook_secret.get_secret_value() == "whsec_2"
    assert current_gateway() is after


def test_the_lambda_wiring_follows_the_rotation(secrets_manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from billing_lambda import wiring

    monkeypatch.setattr(gateway_module, "SECRET_MAX_AGE_SECONDS", 1)
    first = wiring.gateway()
    assert wiring.gateway() is first
    secrets_manager.put_secret_value(
        SecretId="billing/stripe", SecretString=json.dumps({"secret_key": "sk_test_rotated", "webhook_secret": "w"})
    )
    time.sleep(1.2)

    assert wiring.gateway().settings.secret_key.get_secret_value() == "sk_test_rotated"


def test_phi_like_metadata_is_refused_before_stripe(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    sent_before = len(emulator.request_log())

    for metadata in ({"client_name": "Jane Doe"}, {"client_id": "Jane Doe"}, {"email": "jane@example.com"}):
        with pytest.raises(ValueError):
            gateway.charge(
                customer_id=customer_id,
                payment_method_id=card.payment_method_id,
                amount_cents=1000,
                currency="usd",
                idempotency_key="charge-phi",
                metadata=metadata,
            )
    assert len(emulator.request_log()) == sent_before


_ALLOWED_PARAMS = {
    "amount",
    "automatic_payment_methods",
    "confirm",
    "currency",
    "customer",
    "expand",
    "limit",
    "metadata",
    "off_session",
    "payment_intent",
    "payment_method",
    "query",
}
_OPAQUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")


def test_no_request_carries_phi(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    charged = _charge(gateway, customer_id, card, "charge-audit")
    declined_customer, declined_card = _customer_with(gateway, "pm_card_chargeDeclined", key="cus-key-2")
    _charge(gateway, declined_customer, declined_card, "charge-audit-declined")
    gateway.refund(
        payment_intent_id=charged.payment_intent_id,
        amount_cents=500,
        idempotency_key="ref-audit",
        metadata={"payment_id": "pay_01"},
    )
    gateway.find_charge("charge-audit", customer_id)
    gateway.detach_card(card.payment_method_id)

    log = emulator.request_log()
    assert {entry["path"].split("/")[2] for entry in log} == {
        "customers",
        "payment_methods",
        "payment_intents",
        "refunds",
    }
    for entry in log:
        params = entry["params"]
        assert set(params) <= _ALLOWED_PARAMS, entry
        for key, value in params.get("metadata", {}).items():
            assert key.endswith("_id") or key == "idempotency_key", entry
            assert _OPAQUE.match(value), entry
        for forbidden in ("name", "email", "phone", "address", "description", "receipt_email", "shipping"):
            assert forbidden not in json.dumps(params), entry
        if entry["method"] == "POST":
            assert entry["idempotency_key"], entry  # every write is safe to retry


# ---- charges that are not final ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stripe_status", "status"),
    [
        ("succeeded", "succeeded"),
        ("processing", "processing"),
        ("requires_action", "processing"),
        ("requires_confirmation", "processing"),
        ("requires_capture", "processing"),
        ("requires_payment_method", "failed"),
        ("canceled", "failed"),
    ],
)
def test_payment_intent_statuses_in_the_domain_terms(stripe_status: str, status: str) -> None:
    intent = stripe.PaymentIntent.construct_from(
        {
            "id": "pi_1",
            "object": "payment_intent",
            "amount": 1000,
            "currency": "usd",
            "status": stripe_status,
            "latest_charge": None,
            "last_payment_error": None,
            "cancellation_reason": "abandoned" if stripe_status == "canceled" else None,
            "metadata": {"payment_id": "pay_1"},
        },
        "sk_test_x",
    )

    outcome = gateway_module._outcome(intent)

    assert (outcome.status, outcome.stripe_status, outcome.amount_cents) == (status, stripe_status, 1000)
    assert outcome.decline_code is None  # only a decline has a decline code
    assert outcome.metadata == {"payment_id": "pay_1"}


def test_a_processing_charge_is_not_a_decline_until_it_settles(
    gateway: StripeGateway, emulator: StripeEmulator
) -> None:
    customer_id, card = _customer_with(gateway)
    emulator.process_next_charge()

    pending = _charge(gateway, customer_id, card, "charge-processing")

    assert (pending.status, pending.stripe_status) == ("processing", "processing")
    assert (pending.decline_code, pending.fee_cents) == (None, None)
    assert pending.amount_cents == 15000
    # The same key replays the original answer (Stripe's replay), even once it has settled.
    emulator.settle_payment_intent(pending.payment_intent_id, succeeded=True)
    assert _charge(gateway, customer_id, card, "charge-processing").status == "processing"
    settled = gateway.retrieve_payment_intent(pending.payment_intent_id)
    assert (settled.status, settled.fee_cents) == ("succeeded", stripe_fee(15000))
    assert gateway.find_charge("charge-processing", customer_id) == settled
    assert [event["type"] for event in emulator.events()] == ["payment_intent.processing", "payment_intent.succeeded"]


def test_a_processing_charge_that_fails_is_a_decline_then(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway, "pm_card_processing")
    pending = _charge(gateway, customer_id, card, "charge-processing-fails")
    assert pending.status == "processing"

    emulator.settle_payment_intent(pending.payment_intent_id, succeeded=False, decline_code="insufficient_funds")

    failed = gateway.retrieve_payment_intent(pending.payment_intent_id)
    assert (failed.status, failed.decline_code, failed.fee_cents) == ("failed", "insufficient_funds", None)
    assert emulator.events()[-1]["type"] == "payment_intent.payment_failed"
    with pytest.raises(Conflict):  # nothing was paid, so nothing can be refunded
        gateway.refund(
            payment_intent_id=pending.payment_intent_id, amount_cents=100, idempotency_key="ref-none", metadata={}
        )


# ---- outages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "times"), [(500, ATTEMPTS), (503, ATTEMPTS), (429, 1)])
def test_errors_before_stripe_acts_are_unavailable_and_charge_nothing(
    gateway: StripeGateway, emulator: StripeEmulator, status: int, times: int
) -> None:
    customer_id, card = _customer_with(gateway)
    # The SDK retries 5xx (with the same key) but not a 429 without Stripe-Should-Retry.
    emulator.fail_next_request("/v1/payment_intents", times=times, status=status)

    with pytest.raises(GatewayUnavailable):
        _charge(gateway, customer_id, card, f"charge-{status}")

    assert emulator.payment_intents() == []
    assert gateway.find_charge(f"charge-{status}", customer_id) is None
    assert _charge(gateway, customer_id, card, f"charge-{status}").status == "succeeded"
    assert len(emulator.payment_intents()) == 1


def test_the_same_key_still_in_flight_is_unavailable(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    customer_id, card = _customer_with(gateway)
    emulator.key_in_use_next("/v1/payment_intents", times=ATTEMPTS)

    with pytest.raises(GatewayUnavailable) as raised:
        _charge(gateway, customer_id, card, "charge-in-use")

    # Stripe answers 409 idempotency_key_in_use (the SDK raises it as an APIError after its retry).
    cause = raised.value.__cause__
    assert isinstance(cause, stripe.StripeError)
    assert cause.http_status == 409
    assert cause.json_body is not None and cause.json_body["error"]["code"] == "idempotency_key_in_use"
    assert emulator.payment_intents() == []
    assert _charge(gateway, customer_id, card, "charge-in-use").status == "succeeded"


def test_a_slow_stripe_gives_up_in_bounded_time_and_the_charge_is_found_later(emulator: StripeEmulator) -> None:
    emulator.reset()
    settings = StripeSettings(secret_key=SecretStr("sk_test_slow"), api_base=emulator.url)
    impatient = StripeGateway(settings, connect_timeout_seconds=0.5, read_timeout_seconds=0.3)
    customer_id, card = _customer_with(impatient)
    emulator.set_latency(1.0, "/v1/payment_intents", "POST")
    try:
        started = time.monotonic()
        with pytest.raises(GatewayUnavailable):
            # The attempt times out; the SDK's retry meets the first request still running (409 in use).
            _charge(impatient, customer_id, card, "charge-slow")
        elapsed = time.monotonic() - started
    finally:
        emulator.set_latency(0, "/v1/payment_intents", "POST")
    assert elapsed < ATTEMPTS * (0.5 + 0.3) + 0.5 + 0.5  # attempts x timeouts + backoff + slack
    time.sleep(1.0)  # Stripe finishes the first request on its own
    found = impatient.find_charge("charge-slow", customer_id)
    assert found is not None and found.status == "succeeded"
    assert len(emulator.payment_intents()) == 1


# ---- after Stripe forgot the idempotency key (24 hours) --------------------------------------------


def test_after_stripe_forgot_the_key_looking_first_charges_once(
    gateway: StripeGateway, emulator: StripeEmulator
) -> None:
    customer_id, card = _customer_with(gateway)
    emulator.fail_after_success(times=ATTEMPTS)
    with pytest.raises(GatewayUnavailable):
        _charge(gateway, customer_id, card, "charge-yesterday")
    assert emulator.forget_idempotency_keys() >= 1

    found = gateway.find_charge("charge-yesterday", customer_id)  # what the caller does before charging again

    assert found is not None and found.status == "succeeded"
    assert len(emulator.payment_intents()) == 1
    # Why it must look first: the same key is a new request to Stripe now, and would charge again.
    again = _charge(gateway, customer_id, card, "charge-yesterday")
    assert again.payment_intent_id != found.payment_intent_id
    assert len(emulator.payment_intents()) == 2


def test_find_charge_prefers_the_success_when_one_key_made_two_intents(
    gateway: StripeGateway, emulator: StripeEmulator
) -> None:
    customer_id, card = _customer_with(gateway)
    paid = _charge(gateway, customer_id, card, "charge-twice-over-days")
    emulator.forget_idempotency_keys()
    emulator.decline_next_charge("insufficient_funds")
    declined = _charge(gateway, customer_id, card, "charge-twice-over-days")
    assert declined.status == "failed"

    found = gateway.find_charge("charge-twice-over-days", customer_id)

    assert found is not None and found.payment_intent_id == paid.payment_intent_id


def test_find_charge_scans_every_page_when_search_fails(
    gateway: StripeGateway, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "_PAGE_SIZE", 2)
    customer_id, card = _customer_with(gateway)
    oldest = _charge(gateway, customer_id, card, "charge-oldest", amount=1000)
    for index in range(4):
        _charge(gateway, customer_id, card, f"charge-newer-{index}", amount=1000)
    emulator.fail_next_request("/v1/payment_intents/search", times=1, status=400, method="GET")

    found = gateway.find_charge("charge-oldest", customer_id)

    assert found is not None and found.payment_intent_id == oldest.payment_intent_id
    lists = [entry for entry in emulator.request_log() if entry["path"] == "/v1/payment_intents"]
    assert [entry["params"].get("starting_after") is not None for entry in lists if entry["method"] == "GET"] == [
        False,
        True,
        True,
    ]


def test_find_charge_never_answers_none_when_it_could_not_look_everywhere(
    gateway: StripeGateway, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "_PAGE_SIZE", 1)
    monkeypatch.setattr(gateway_module, "PAGING_DEADLINE_SECONDS", 1.5)
    customer_id, card = _customer_with(gateway)
    newest_first = [_charge(gateway, customer_id, card, f"charge-page-{index}", amount=1000) for index in range(3)]
    ticks: Iterator[float] = itertools.count()
    monkeypatch.setattr(gateway_module, "_clock", lambda: float(next(ticks)))  # each look at the clock: +1 s

    # Search knows nothing yet (its index lags); the scan reads one page, then time is up: unknown, not None.
    emulator.fail_next_request("/v1/payment_intents/search", times=1, status=400, method="GET")
    with pytest.raises(GatewayUnavailable):
        gateway.find_charge("never-sent", customer_id)
    # What the pages read in time hold is still found.
    ticks = itertools.count()
    emulator.fail_next_request("/v1/payment_intents/search", times=1, status=400, method="GET")
    found = gateway.find_charge("charge-page-2", customer_id)
    assert found is not None and found.payment_intent_id == newest_first[2].payment_intent_id
    # Only the operation's first request may start after the deadline: search, then no list at all.
    ticks = itertools.chain([0.0], itertools.repeat(100.0))  # the search itself outlasts the deadline
    before = len(emulator.request_log())
    emulator.fail_next_request("/v1/payment_intents/search", times=1, status=400, method="GET")
    with pytest.raises(GatewayUnavailable):
        gateway.find_charge("never-sent", customer_id)
    assert [entry["path"] for entry in emulator.request_log()[before:]] == ["/v1/payment_intents/search"]


# ---- refunds ---------------------------------------------------------------------------------------

_REFUND_METADATA = {"practice_id": PRACTICE_ID, "payment_id": "pay_01"}


def _charged(gateway: StripeGateway, key: str, amount: int = 10000) -> ChargeOutcome:
    customer_id, card = _customer_with(gateway, key=f"cus-{key}")
    return _charge(gateway, customer_id, card, key, amount=amount)


def test_a_pending_refund_succeeds_later(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    charged = _charged(gateway, "charge-refund-pending")
    emulator.pend_next_refund()

    pending = gateway.refund(
        payment_intent_id=charged.payment_intent_id,
        amount_cents=2500,
        idempotency_key="ref-pending",
        metadata=_REFUND_METADATA,
    )

    assert (pending.status, pending.stripe_status, pending.amount_cents) == ("pending", "pending", 2500)
    assert pending.payment_intent_id == charged.payment_intent_id
    assert pending.metadata == {**_REFUND_METADATA, "idempotency_key": "ref-pending"}
    assert gateway.retrieve_refund(pending.refund_id) == pending
    emulator.settle_refund(pending.refund_id)
    settled = gateway.retrieve_refund(pending.refund_id)
    assert (settled.status, settled.failure_reason) == ("succeeded", None)
    assert [event["type"] for event in emulator.events()][-2:] == ["charge.refund.updated", "refund.updated"]


def test_a_refund_that_fails_gives_the_money_back_to_refund(gateway: StripeGateway, emulator: StripeEmulator) -> None:
    charged = _charged(gateway, "charge-refund-fails")
    emulator.fail_next_refund("expired_or_canceled_card")
    first = gateway.refund(
        payment_intent_id=charged.payment_intent_id,
        amount_cents=10000,
        idempotency_key="ref-fails",
        metadata=_REFUND_METADATA,
    )
    assert first.status == "pending"

    emulator.settle_refund(first.refund_id)

    failed = gateway.retrieve_refund(first.refund_id)
    assert (failed.status, failed.stripe_status, failed.failure_reason) == (
        "failed",
        "failed",
        "expired_or_canceled_card",
    )
    assert [event["type"] for event in emulator.events()][-3:] == [
        "charge.refund.updated",
        "refund.updated",
        "refund.failed",
    ]
    # The whole charge can be refunded again (with a new key).
    second = gateway.refund(
        payment_intent_id=charged.payment_intent_id,
        amount_cents=10000,
        idempotency_key="ref-again",
        metadata=_REFUND_METADATA,
    )
    assert second.status == "succeeded"
    assert [(refund.refund_id, refund.status) for refund in gateway.refunds_of(charged.payment_intent_id)] == [
        (second.refund_id, "succeeded"),
        (first.refund_id, "failed"),
    ]


def test_refunds_of_lists_every_refund_on_every_page(
    gateway: StripeGateway, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "_PAGE_SIZE", 2)
    charged = _charged(gateway, "charge-many-refunds")
    other = _charged(gateway, "charge-other-refunds")
    gateway.refund(payment_intent_id=other.payment_intent_id, amount_cents=100, idempotency_key="ref-x", metadata={})
    made = [
        gateway.refund(
            payment_intent_id=charged.payment_intent_id,
            amount_cents=100 * (index + 1),
            idempotency_key=f"ref-many-{index}",
            metadata=_REFUND_METADATA,
        )
        for index in range(5)
    ]

    listed = gateway.refunds_of(charged.payment_intent_id)

    assert [refund.refund_id for refund in listed] == [refund.refund_id for refund in reversed(made)]
    assert [refund.metadata["idempotency_key"] for refund in listed] == [f"ref-many-{i}" for i in range(4, -1, -1)]
    assert gateway.refunds_of(_charged(gateway, "charge-no-refunds").payment_intent_id) == []


def test_unknown_payment_intents_and_refunds_are_not_found(gateway: StripeGateway) -> None:
    with pytest.raises(NotFound) as refund_missing:
        gateway.retrieve_refund("re_missing")
    assert refund_missing.value.code == "refund_not_found"
    with pytest.raises(NotFound):
        gateway.refunds_of("pi_missing")
    with pytest.raises(NotFound):
        gateway.retrieve_payment_intent("pi_missing")
    with pytest.raises(NotFound):
        gateway.refund(payment_intent_id="pi_missing", amount_cents=100, idempotency_key="ref-missing", metadata={})


def test_a_refund_key_reused_for_another_amount_is_a_conflict(gateway: StripeGateway) -> None:
    charged = _charged(gateway, "charge-refund-reuse")
    gateway.refund(payment_intent_id=charged.payment_intent_id, amount_cents=100, idempotency_key="ref-r", metadata={})

    with pytest.raises(Conflict) as raised:
        gateway.refund(
            payment_intent_id=charged.payment_intent_id, amount_cents=200, idempotency_key="ref-r", metadata={}
        )
    assert raised.value.code == "idempotency_key_reused"
