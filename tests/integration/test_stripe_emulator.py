"""The local Stripe emulator, driven by the real ``stripe`` SDK (16.x) the billing code uses."""

import http.server
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `make` sets PYTHONPATH; plain `pytest` runs need the repo root
    sys.path.insert(0, str(ROOT))

from local.stripe_emulator import StripeEmulator, StripeEmulatorError, parse_form, stripe_fee  # noqa: E402

WHSEC = "whsec_emulator_test"
DECLINES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
    ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
    ("pm_card_authenticationRequiredOnSetup", "authentication_required", "authentication_required"),
]


class Receiver:
    """A webhook endpoint that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._cond:
                    receiver.received.append((body, self.headers.get("Stripe-Signature", "")))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[bytes, str]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def types(self) -> list[str]:
        return [json.loads(body)["type"] for body, _ in self.received]

    def clear(self) -> None:
        with self._cond:
            self.received.clear()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def emulator(receiver):
    emulator = StripeEmulator(webhook_url=receiver.url, webhook_secret=WHSEC)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def fresh(emulator, receiver):
    emulator.wait_for_webhooks()
    emulator.reset()
    receiver.clear()


@pytest.fixture
def client(emulator):
    return stripe.StripeClient("sk_test_local", base_addresses={"api": emulator.url}, max_network_retries=0)


def customer_with_card(client, token="pm_card_visa"):
    customer = client.v1.customers.create({"metadata": {"client_id": "cli_1"}})
    card = client.v1.payment_methods.attach(token, {"customer": customer.id})
    return customer, card


def charge_params(customer, card, amount=5000, **extra):
    return {
        "amount": amount,
        "currency": "usd",
        "customer": customer.id,
        "payment_method": card.id,
        "confirm": True,
        "off_session": True,
        **extra,
    }


def latest_charge(client, intent):
    """The PaymentIntent's charge as it is now (the way the gateway reads it: expanded)."""
    return client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge"]}).latest_charge


def test_form_decoding_matches_the_sdk_encoding():
    decoded = parse_form("metadata[a]=1&metadata[b]=&expand[0]=x&expand[1]=y&items[0][price]=p&tags[]=t&confirm=true")
    assert decoded == {
        "metadata": {"a": "1", "b": ""},
        "expand": ["x", "y"],
        "items": [{"price": "p"}],
        "tags": ["t"],
        "confirm": "true",
    }


def test_customer_create(client):
    customer = client.v1.customers.create({"metadata": {"practice_id": "prac_1", "client_id": "cli_1"}})
    assert customer.id.startswith("cus_")
    assert customer.object == "customer"
    assert customer.livemode is False
    assert isinstance(customer.created, int)
    assert customer.metadata.to_dict() == {"practice_id": "prac_1", "client_id": "cli_1"}
    assert (customer.email, customer.name) == (None, None)

    with pytest.raises(stripe.InvalidRequestError) as too_long:
        client.v1.customers.create({"metadata": {"k" * 41: "v"}})
    assert (too_long.value.http_status, too_long.value.param) == (400, f"metadata[{'k' * 41}]")


def test_api_key_is_required(emulator):
    no_key = requests.post(f"{emulator.url}/v1/customers", timeout=5)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    live = requests.get(
        f"{emulator.url}/v1/payment_intents/pi_x", headers={"Authorization": "Bearer sk_live_abc"}, timeout=5
    )
    assert live.status_code == 401

    bad = stripe.StripeClient("not_a_key", base_addresses={"api": emulator.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.create({})


@pytest.mark.parametrize(
    ("token", "brand", "last4", "funding"),
    [
        ("pm_card_visa", "visa", "4242", "credit"),
        ("pm_card_mastercard", "mastercard", "4444", "credit"),
    ],
)
def test_attach_clones_the_test_card_into_a_new_payment_method(client, token, brand, last4, funding):
    customer, card = customer_with_card(client, token)
    assert card.id.startswith("pm_") and card.id != token
    assert card.customer == customer.id
    assert (card.card.brand, card.card.last4, card.card.funding) == (brand, last4, funding)
    assert card.card.exp_month == 12
    assert card.card.exp_year == time.gmtime().tm_year + 3
    again = client.v1.payment_methods.attach(token, {"customer": customer.id})
    assert again.id != card.id


def test_attach_is_refused_for_unknown_customers_and_cards_of_others(client):
    customer, card = customer_with_card(client)
    other = client.v1.customers.create({})
    assert client.v1.payment_methods.attach(card.id, {"customer": customer.id}).id == card.id  # already theirs
    with pytest.raises(stripe.InvalidRequestError) as taken:
        client.v1.payment_methods.attach(card.id, {"customer": other.id})
    assert "already been attached" in taken.value.user_message
    with pytest.raises(stripe.InvalidRequestError) as no_customer:
        client.v1.payment_methods.attach("pm_card_visa", {"customer": "cus_missing"})
    assert (no_customer.value.http_status, no_customer.value.param) == (400, "customer")
    with pytest.raises(stripe.InvalidRequestError) as no_card:
        client.v1.payment_methods.attach("pm_missing", {"customer": customer.id})
    assert (no_card.value.http_status, no_card.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as not_theirs:
        client.v1.payment_intents.create(charge_params(other, card))
    assert not_theirs.value.param == "payment_method"


def test_detach(client):
    customer, card = customer_with_card(client)

    detached = client.v1.payment_methods.detach(card.id)

    assert (detached.id, detached.customer) == (card.id, None)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_methods.detach(card.id)
    with pytest.raises(stripe.InvalidRequestError):  # a detached card can never be used again
        client.v1.payment_intents.create(charge_params(customer, card))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_methods.attach(card.id, {"customer": customer.id})


def test_off_session_payment_succeeds_with_fee_details(emulator, client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1234, metadata={"invoice": "inv_1"}))
    assert intent.id.startswith("pi_")
    assert (intent.status, intent.amount_received) == ("succeeded", 1234)
    assert intent.latest_charge.startswith("ch_")
    assert intent.metadata["invoice"] == "inv_1"

    expanded = client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge.balance_transaction"]})
    charge = expanded.latest_charge
    assert (charge.id, charge.amount, charge.paid, charge.refunded) == (intent.latest_charge, 1234, True, False)
    assert charge.payment_method_details.card.last4 == "4242"
    fee = charge.balance_transaction.fee
    assert fee == stripe_fee(1234) == 36 + 30
    assert charge.balance_transaction.net == 1234 - fee
    assert stripe_fee(500) == 45  # 14.5 rounds half up
    assert client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge"]}).latest_charge.object == "charge"
    assert [event["type"] for event in emulator.events()] == ["payment_intent.succeeded"]


def test_payment_intents_are_confirmed_off_session_when_created(emulator, client):
    customer, card = customer_with_card(client)
    unconfirmed = {"amount": 2000, "currency": "usd", "customer": customer.id, "payment_method": card.id}
    with pytest.raises(stripe.InvalidRequestError) as not_confirmed:
        client.v1.payment_intents.create(unconfirmed)
    assert not_confirmed.value.param == "confirm"
    with pytest.raises(stripe.InvalidRequestError) as on_session:
        client.v1.payment_intents.create({**unconfirmed, "confirm": True})
    assert on_session.value.param == "off_session"
    with pytest.raises(stripe.InvalidRequestError) as no_card:
        client.v1.payment_intents.create(
            {"amount": 2000, "currency": "usd", "customer": customer.id, "confirm": True, "off_session": True}
        )
    assert (no_card.value.code, no_card.value.param) == ("payment_intent_unexpected_state", "payment_method")
    assert emulator.payment_intents() == []


def test_global_api_base_style(emulator, monkeypatch):
    monkeypatch.setattr(stripe, "api_key", "sk_test_global")
    monkeypatch.setattr(stripe, "api_base", emulator.url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    customer = stripe.Customer.create(metadata={"client_id": "cli_1"})
    intent = stripe.PaymentIntent.create(
        amount=990, currency="usd", customer=customer.id, payment_method="pm_card_visa", confirm=True, off_session=True
    )
    assert intent.status == "succeeded"
    assert stripe.PaymentIntent.retrieve(intent.id, expand=["latest_charge"]).latest_charge.amount == 990


@pytest.mark.parametrize(("token", "code", "decline_code"), DECLINES)
def test_declining_cards_attach_then_decline_at_charge(emulator, client, token, code, decline_code):
    customer, card = customer_with_card(client, token)
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(charge_params(customer, card))
    error = declined.value
    assert error.http_status == 402
    assert error.code == code
    assert error.error.type == "card_error"
    assert error.error.decline_code == decline_code
    assert error.error.payment_method.id == card.id
    assert error.error.charge.startswith("ch_")
    assert error.error.payment_intent.status == "requires_payment_method"

    intent = client.v1.payment_intents.retrieve(error.error.payment_intent.id)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error.decline_code == decline_code
    assert intent.payment_method is None
    assert [event["type"] for event in emulator.events()] == ["payment_intent.payment_failed"]


def test_forced_decline_for_codes_without_a_test_card(emulator, client):
    customer, card = customer_with_card(client)
    emulator.decline_next_charge("pickup_card")
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(charge_params(customer, card))
    assert declined.value.error.decline_code == "pickup_card"
    assert client.v1.payment_intents.create(charge_params(customer, card)).status == "succeeded"


def test_the_customer_fail_card_is_refused_when_attached(client):
    customer = client.v1.customers.create({})
    with pytest.raises(stripe.CardError) as at_attach:
        client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    assert (at_attach.value.http_status, at_attach.value.error.decline_code) == (402, "generic_decline")


def test_idempotent_replay_returns_the_original_payment_intent(emulator, client):
    customer, card = customer_with_card(client)
    params = charge_params(customer, card, metadata={"attempt": "a1"})
    first = client.v1.payment_intents.create(params, {"idempotency_key": "pay-1"})
    second = client.v1.payment_intents.create(params, {"idempotency_key": "pay-1"})
    assert second.id == first.id
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(emulator.payment_intents()) == 1

    with pytest.raises(stripe.IdempotencyError) as mismatch:
        client.v1.payment_intents.create({**params, "amount": 6000}, {"idempotency_key": "pay-1"})
    assert mismatch.value.http_status == 400
    assert len(emulator.payment_intents()) == 1

    other_account = stripe.StripeClient("sk_test_other", base_addresses={"api": emulator.url}, max_network_retries=0)
    third = other_account.v1.payment_intents.create(
        {"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "off_session": True},
        {"idempotency_key": "pay-1"},
    )
    assert third.id != first.id  # keys are scoped per API key


def test_declines_are_replayed_too(emulator, client):
    customer, card = customer_with_card(client, "pm_card_chargeDeclinedInsufficientFunds")
    for _ in range(2):
        with pytest.raises(stripe.CardError) as declined:
            client.v1.payment_intents.create(charge_params(customer, card), {"idempotency_key": "decline-1"})
        assert declined.value.error.decline_code == "insufficient_funds"
    assert len(emulator.payment_intents()) == 1


def test_concurrent_requests_with_one_key_create_one_payment_intent(emulator, client):
    customer, card = customer_with_card(client)
    params = charge_params(customer, card)
    emulator.set_latency(0.3, "/v1/payment_intents", "POST")

    def run(make_client, key):
        barrier = threading.Barrier(5)
        ids, errors = [], []

        def call():
            barrier.wait()
            try:
                ids.append(make_client().v1.payment_intents.create(params, {"idempotency_key": key}).id)
            except stripe.StripeError as error:
                errors.append(error)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return ids, errors

    ids, errors = run(lambda: client, "same-key")
    assert len(ids) + len(errors) == 5
    assert len(set(ids)) == 1
    assert errors, "the requests overlapped, so some met the in-progress key"
    assert all(error.http_status == 409 and error.error.code == "idempotency_key_in_use" for error in errors)
    assert len(emulator.payment_intents()) == 1

    def retrying():
        return stripe.StripeClient("sk_test_local", base_addresses={"api": emulator.url}, max_network_retries=3)

    ids, errors = run(retrying, "retried-key")  # the SDK retries 409s; every caller gets the one intent
    assert errors == []
    assert len(ids) == 5 and len(set(ids)) == 1
    assert len(emulator.payment_intents()) == 2


def test_list_filters_by_customer_and_paginates(client):
    customer, card = customer_with_card(client)
    other, other_card = customer_with_card(client)
    created = [client.v1.payment_intents.create(charge_params(customer, card)).id for _ in range(3)]
    client.v1.payment_intents.create(charge_params(other, other_card))

    page = client.v1.payment_intents.list({"customer": customer.id, "limit": 2})
    assert [pi.id for pi in page.data] == created[::-1][:2]
    assert page.has_more is True
    rest = client.v1.payment_intents.list({"customer": customer.id, "limit": 2, "starting_after": page.data[-1].id})
    assert [pi.id for pi in rest.data] == [created[0]]
    assert rest.has_more is False
    assert len(client.v1.payment_intents.list({"limit": 100}).data) == 4


def test_search_by_metadata(client):
    customer, card = customer_with_card(client)
    intents = {
        invoice: client.v1.payment_intents.create(
            charge_params(customer, card, metadata={"invoice_id": invoice, "practice_id": "prac_1"})
        )
        for invoice in ("inv_1", "inv_2", "inv_3")
    }
    found = client.v1.payment_intents.search({"query": "metadata['invoice_id']:'inv_2'"})
    assert found.object == "search_result"
    assert [pi.id for pi in found.data] == [intents["inv_2"].id]
    assert found.has_more is False and found.next_page is None

    both = client.v1.payment_intents.search(
        {"query": f"metadata['practice_id']:'prac_1' AND customer:'{customer.id}'", "limit": 2}
    )
    assert [pi.id for pi in both.data] == [intents["inv_3"].id, intents["inv_2"].id]
    assert both.has_more is True
    assert client.v1.payment_intents.search({"query": "customer:'cus_someone_else'"}).data == []
    assert client.v1.payment_intents.search({"query": "metadata['invoice_id']:'nope'"}).data == []
    quoted = client.v1.payment_intents.create(charge_params(customer, card, metadata={"invoice_id": "it's"}))
    found = client.v1.payment_intents.search({"query": "metadata['invoice_id']:'it\\'s'"})
    assert [pi.id for pi in found.data] == [quoted.id]
    with pytest.raises(stripe.InvalidRequestError) as bad:
        client.v1.payment_intents.search({"query": "metadata[invoice_id]=inv_1"})
    assert bad.value.param == "query"


def test_full_refund_then_already_refunded(emulator, client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    refund = client.v1.refunds.create({"payment_intent": intent.id})
    assert (refund.object, refund.amount, refund.status, refund.charge) == (
        "refund",
        1000,
        "succeeded",
        intent.latest_charge,
    )
    assert client.v1.refunds.retrieve(refund.id).payment_intent == intent.id
    charge = latest_charge(client, intent)
    assert (charge.amount_refunded, charge.refunded) == (1000, True)

    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create({"payment_intent": intent.id})
    assert (again.value.http_status, again.value.code) == (400, "charge_already_refunded")
    assert [event["type"] for event in emulator.events()][-2:] == ["charge.refunded", "refund.created"]


def test_partial_refunds_never_exceed_the_charge(client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    assert client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}).amount == 300
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 800})
    assert too_much.value.code == "amount_too_large"
    assert "$8.00" in too_much.value.user_message and "$7.00" in too_much.value.user_message
    rest = client.v1.refunds.create({"payment_intent": intent.id})
    assert rest.amount == 700
    charge = latest_charge(client, intent)
    assert (charge.amount_refunded, charge.refunded) == (1000, True)


def test_error_shapes(emulator, client):
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.create({"currency": "usd"})
    assert (missing.value.http_status, missing.value.code, missing.value.param) == (400, "parameter_missing", "amount")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.payment_intents.create({"amount": 100, "currency": "usd", "colour": "red"})
    assert (unknown.value.code, unknown.value.param) == ("parameter_unknown", "colour")
    with pytest.raises(stripe.InvalidRequestError) as no_such:
        client.v1.payment_intents.retrieve("pi_missing")
    assert (no_such.value.http_status, no_such.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as bad_customer:
        client.v1.payment_intents.create(
            {"amount": 100, "currency": "usd", "customer": "cus_nope", "payment_method": "pm_card_visa"}
        )
    assert (bad_customer.value.http_status, bad_customer.value.param) == (400, "customer")
    with pytest.raises(stripe.InvalidRequestError) as too_small:
        client.v1.payment_intents.create({"amount": 49, "currency": "usd"})
    assert (too_small.value.code, too_small.value.param) == ("amount_too_small", "amount")
    with pytest.raises(stripe.InvalidRequestError) as bad_expand:
        client.v1.payment_intents.retrieve("pi_missing", {"expand": ["customer"]})
    assert (bad_expand.value.http_status, bad_expand.value.param) == (400, "expand")
    with pytest.raises(stripe.InvalidRequestError) as bad_refund:
        client.v1.refunds.create({"payment_intent": "pi_missing"})
    assert bad_refund.value.code == "resource_missing"

    unrouted = requests.get(f"{emulator.url}/v1/invoices", headers={"Authorization": "Bearer sk_test_x"}, timeout=5)
    assert unrouted.status_code == 404
    assert unrouted.json()["error"]["type"] == "invalid_request_error"


def test_webhooks_are_signed_like_stripe(emulator, client, receiver):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    client.v1.refunds.create({"payment_intent": intent.id, "amount": 400})
    dispute = emulator.create_dispute(intent.latest_charge)
    assert (dispute["id"][:3], dispute["amount"], dispute["payment_intent"]) == ("du_", 600, intent.id)
    assert emulator.wait_for_webhooks()

    received = receiver.wait_for(4)
    assert receiver.types() == [
        "payment_intent.succeeded",
        "charge.refunded",
        "refund.created",
        "charge.dispute.created",
    ]
    body, signature = received[0]
    event = stripe.Webhook.construct_event(body, signature, WHSEC)
    assert event.id.startswith("evt_")
    assert (event.type, event.livemode, event.data.object.id) == ("payment_intent.succeeded", False, intent.id)
    assert event.api_version and event.created
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signature, "whsec_wrong")
    refunded = stripe.Webhook.construct_event(*received[1], WHSEC)
    assert refunded.data.object.amount_refunded == 400
    assert refunded.data.previous_attributes.amount_refunded == 0
    with pytest.raises(stripe.InvalidRequestError) as disputed:
        client.v1.refunds.create({"payment_intent": intent.id})
    assert disputed.value.code == "charge_disputed"


def test_duplicate_and_out_of_order_deliveries(emulator, client, receiver):
    customer, card = customer_with_card(client)
    client.v1.payment_intents.create(charge_params(customer, card))
    emulator.wait_for_webhooks()
    receiver.wait_for(1)
    original = emulator.events()[0]

    assert emulator.resend(original["id"]) == 200
    received = receiver.wait_for(2)
    duplicate = stripe.Webhook.construct_event(*received[1], WHSEC)
    assert duplicate.id == original["id"]
    assert [(d["event_id"], d["status"]) for d in emulator.webhook_deliveries()] == [(original["id"], 200)] * 2

    receiver.clear()
    emulator.deliver_webhooks = False
    try:
        intent = client.v1.payment_intents.create(charge_params(customer, card, amount=900))
        client.v1.refunds.create({"payment_intent": intent.id})
    finally:
        emulator.deliver_webhooks = True
    assert receiver.received == []
    later = emulator.events()[1:]
    for event in reversed(later):
        emulator.resend(event["id"])
    assert receiver.types() == ["refund.created", "charge.refunded", "payment_intent.succeeded"]


def test_no_webhook_url_records_events_only():
    quiet = StripeEmulator()
    quiet_client = stripe.StripeClient("sk_test_x", base_addresses={"api": quiet.start()}, max_network_retries=0)
    try:
        quiet_client.v1.payment_intents.create(
            {"amount": 700, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "off_session": True}
        )
        assert [event["type"] for event in quiet.events()] == ["payment_intent.succeeded"]
        assert quiet.events()[0]["pending_webhooks"] == 0
        assert quiet.webhook_deliveries() == []
    finally:
        quiet.stop()


def test_fail_after_success_leaves_the_charge_and_replays_on_retry(emulator, client):
    customer, card = customer_with_card(client)
    params = charge_params(customer, card, metadata={"payment_id": "pay_123"})
    emulator.fail_after_success("/v1/payment_intents", times=1)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.create(params, {"idempotency_key": "crash-1"})
    intents = emulator.payment_intents()
    assert [(pi["status"], pi["metadata"]["payment_id"]) for pi in intents] == [("succeeded", "pay_123")]
    found = client.v1.payment_intents.search({"query": "metadata['payment_id']:'pay_123'"})
    assert [pi.id for pi in found.data] == [intents[0]["id"]]

    retried = client.v1.payment_intents.create(params, {"idempotency_key": "crash-1"})
    assert retried.id == intents[0]["id"]
    assert len(emulator.payment_intents()) == 1

    emulator.fail_after_success("/v1/payment_intents", times=1)
    sdk_retries = stripe.StripeClient("sk_test_local", base_addresses={"api": emulator.url}, max_network_retries=1)
    recovered = sdk_retries.v1.payment_intents.create(charge_params(customer, card, amount=777))
    assert recovered.status == "succeeded"
    assert len(emulator.payment_intents()) == 2
    assert [entry["dropped"] for entry in emulator.request_log()[-2:]] == [True, False]


def test_a_charge_can_end_in_processing_and_settle_later(emulator, client, receiver):
    customer, card = customer_with_card(client)
    emulator.process_next_charge()
    params = charge_params(customer, card, amount=2000)

    intent = client.v1.payment_intents.create(params, {"idempotency_key": "processing-1"})

    assert intent.status == "processing"
    charge = latest_charge(client, intent)
    assert (charge.status, charge.paid, charge.balance_transaction) == ("pending", False, None)
    with pytest.raises(stripe.InvalidRequestError):  # nothing was paid yet
        client.v1.refunds.create({"payment_intent": intent.id})
    settled = emulator.settle_payment_intent(intent.id, succeeded=True)
    assert (settled["status"], settled["amount_received"]) == ("succeeded", 2000)
    expanded = client.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge.balance_transaction"]})
    assert expanded.latest_charge.paid is True
    assert expanded.latest_charge.balance_transaction.fee == stripe_fee(2000)
    # The same key replays the first answer, as Stripe does.
    assert client.v1.payment_intents.create(params, {"idempotency_key": "processing-1"}).status == "processing"
    assert emulator.wait_for_webhooks()
    assert receiver.wait_for(2) and receiver.types() == ["payment_intent.processing", "payment_intent.succeeded"]
    # The next charge is an ordinary one again.
    assert client.v1.payment_intents.create(charge_params(customer, card)).status == "succeeded"


def test_a_processing_charge_can_be_declined_when_it_settles(emulator, client):
    customer, card = customer_with_card(client, "pm_card_processing")
    intent = client.v1.payment_intents.create(charge_params(customer, card))
    assert intent.status == "processing"
    assert client.v1.payment_intents.create(charge_params(customer, card)).status == "processing"

    declined = emulator.settle_payment_intent(intent.id, succeeded=False, decline_code="expired_card")

    assert declined["status"] == "requires_payment_method"
    assert (declined["last_payment_error"]["code"], declined["last_payment_error"]["decline_code"]) == (
        "expired_card",
        "expired_card",
    )
    assert latest_charge(client, intent).status == "failed"
    assert emulator.events()[-1]["type"] == "payment_intent.payment_failed"
    with pytest.raises(StripeEmulatorError):
        emulator.settle_payment_intent(intent.id, succeeded=True)  # only a processing PaymentIntent settles
    with pytest.raises(StripeEmulatorError) as missing:
        emulator.settle_payment_intent("pi_missing", succeeded=True)
    assert missing.value.status == 404


def test_a_pending_refund_succeeds_when_settled(emulator, client, receiver):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    emulator.pend_next_refund()

    refund = client.v1.refunds.create({"payment_intent": intent.id, "amount": 400})

    assert refund.status == "pending"
    assert latest_charge(client, intent).amount_refunded == 400
    settled = emulator.settle_refund(refund.id)
    assert settled["status"] == "succeeded"
    assert client.v1.refunds.retrieve(refund.id).status == "succeeded"
    assert emulator.wait_for_webhooks()
    receiver.wait_for(5)
    assert receiver.types() == [
        "payment_intent.succeeded",
        "charge.refunded",
        "refund.created",
        "charge.refund.updated",
        "refund.updated",
    ]
    updated = emulator.events("refund.updated")[0]["data"]
    assert (updated["object"]["status"], updated["previous_attributes"]) == ("succeeded", {"status": "pending"})


def test_a_failing_refund_fails_when_settled_and_the_charge_can_be_refunded_again(emulator, client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    emulator.fail_next_refund("lost_or_stolen_card")
    refund = client.v1.refunds.create({"payment_intent": intent.id})
    assert refund.status == "pending"
    assert latest_charge(client, intent).refunded is True

    failed = emulator.settle_refund(refund.id)

    assert (failed["id"], failed["status"], failed["failure_reason"]) == (refund.id, "failed", "lost_or_stolen_card")
    fetched = client.v1.refunds.retrieve(refund.id)
    assert fetched.failure_reason == "lost_or_stolen_card"
    assert fetched.failure_balance_transaction.startswith("txn_")
    charge = latest_charge(client, intent)
    assert (charge.amount_refunded, charge.refunded) == (0, False)
    assert [event["type"] for event in emulator.events()][-3:] == [
        "charge.refund.updated",
        "refund.updated",
        "refund.failed",
    ]
    assert client.v1.refunds.create({"payment_intent": intent.id}).status == "succeeded"
    with pytest.raises(StripeEmulatorError):
        emulator.settle_refund(refund.id)  # only a pending refund settles
    with pytest.raises(ValueError):
        emulator.fail_next_refund("because")


def test_a_pending_refund_can_be_told_how_to_end(emulator, client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    emulator.pend_next_refund()
    emulator.fail_next_refund("declined")
    first = client.v1.refunds.create({"payment_intent": intent.id, "amount": 100})
    second = client.v1.refunds.create({"payment_intent": intent.id, "amount": 200})

    assert emulator.settle_refund(first.id, succeeded=False)["failure_reason"] == "unknown"
    assert emulator.settle_refund(second.id, succeeded=True)["status"] == "succeeded"
    assert client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}).status == "succeeded"


def test_refunds_are_listed_by_payment_intent(client):
    customer, card = customer_with_card(client)
    intent = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    other = client.v1.payment_intents.create(charge_params(customer, card, amount=1000))
    made = [client.v1.refunds.create({"payment_intent": intent.id, "amount": 100}).id for _ in range(3)]
    client.v1.refunds.create({"payment_intent": other.id, "amount": 100})

    page = client.v1.refunds.list({"payment_intent": intent.id, "limit": 2})
    assert [refund.id for refund in page.data] == made[::-1][:2]
    assert page.has_more is True
    rest = client.v1.refunds.list({"payment_intent": intent.id, "starting_after": page.data[-1].id})
    assert ([refund.id for refund in rest.data], rest.has_more) == ([made[0]], False)
    assert len(client.v1.refunds.list().data) == 4
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.refunds.list({"payment_intent": "pi_missing"})
    assert (missing.value.http_status, missing.value.code, missing.value.param) == (
        400,
        "resource_missing",
        "payment_intent",
    )


def test_key_in_use_answers_409_and_does_nothing(emulator, client):
    customer, card = customer_with_card(client)
    emulator.key_in_use_next("/v1/payment_intents")

    with pytest.raises(stripe.StripeError) as in_use:
        client.v1.payment_intents.create(charge_params(customer, card), {"idempotency_key": "busy-1"})

    assert in_use.value.http_status == 409
    assert in_use.value.json_body["error"]["code"] == "idempotency_key_in_use"
    assert emulator.payment_intents() == []
    assert client.v1.payment_intents.create(charge_params(customer, card), {"idempotency_key": "busy-1"}).id


def test_forgotten_idempotency_keys_run_the_request_again(emulator, client):
    customer, card = customer_with_card(client)
    params = charge_params(customer, card, metadata={"idempotency_key": "day-1"})
    first = client.v1.payment_intents.create(params, {"idempotency_key": "day-1"})
    assert client.v1.payment_intents.create(params, {"idempotency_key": "day-1"}).id == first.id

    assert emulator.forget_idempotency_keys() == 3  # customer, attach, charge

    second = client.v1.payment_intents.create(params, {"idempotency_key": "day-1"})
    assert second.id != first.id
    assert "Idempotent-Replayed" not in second.last_response.headers
    # Metadata search still finds both: it is what a caller looks with once the key is forgotten.
    found = client.v1.payment_intents.search({"query": "metadata['idempotency_key']:'day-1'"})
    assert {pi.id for pi in found.data} == {first.id, second.id}
    # Other parameters with a forgotten key are simply a new request too.
    assert emulator.forget_idempotency_keys() == 1
    assert client.v1.payment_intents.create({**params, "amount": 6000}, {"idempotency_key": "day-1"}).amount == 6000


def test_forgetting_keeps_the_keys_of_requests_still_running(emulator, client):
    customer, card = customer_with_card(client)
    params = charge_params(customer, card)
    emulator.set_latency(0.5, "/v1/payment_intents", "POST")
    ids = []
    try:
        thread = threading.Thread(
            target=lambda: ids.append(client.v1.payment_intents.create(params, {"idempotency_key": "slow-1"}).id)
        )
        thread.start()
        time.sleep(0.2)
        emulator.forget_idempotency_keys()
        with pytest.raises(stripe.StripeError) as in_use:
            client.v1.payment_intents.create(params, {"idempotency_key": "slow-1"})
        assert in_use.value.http_status == 409
        thread.join(5)
    finally:
        emulator.set_latency(0, "/v1/payment_intents", "POST")
    assert len(ids) == 1
    assert client.v1.payment_intents.create(params, {"idempotency_key": "slow-1"}).id == ids[0]
