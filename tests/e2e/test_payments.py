"""Payments over real HTTP with the Stripe emulator: time-of-service payments, exactly-once, refunds, webhooks."""

import json
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book, idempotency_key, refund_at_stripe


def _practice(api: Api, creation: str = "manual") -> ApiSession:
    session = api.as_practice()
    settings = {"name": "Pay Practice", "timezone": "America/Chicago", "invoice_creation": creation}
    assert session.put("/practice", json=settings).status_code == 200
    return session


def _client(session: ApiSession, card: str | None = None) -> str:
    client_id = str(session.post("/clients", json={"first_name": "Pat", "last_name": "Client"}).json()["client_id"])
    if card:
        response = session.post(f"/clients/{client_id}/cards", json={"payment_method_id": card})
        assert response.status_code == 201, response.text
    return client_id


def _appointment(session: ApiSession, client_id: str, fee: int = 15000, day: int = 20) -> str:
    response = book(session, client_id, starts_at=f"2026-11-{day:02d}T16:00:00Z", fee_cents=fee, status="show")
    return str(response.json()["appointment_id"])


def _invoice(session: ApiSession, client_id: str, fee: int, day: int = 20) -> dict[str, Any]:
    appointment = _appointment(session, client_id, fee, day)
    response = session.post("/invoices", json={"client_id": client_id, "appointment_ids": [appointment]})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _overview(session: ApiSession, client_id: str) -> dict[str, Any]:
    return dict(session.get(f"/clients/{client_id}/billing-overview").json())


def _intents_for(stack: LocalStack, payment_id: str) -> list[dict[str, Any]]:
    assert stack.stripe is not None
    return [pi for pi in stack.stripe.payment_intents() if pi.get("metadata", {}).get("payment_id") == payment_id]


def test_cards_on_file_store_only_brand_last4_and_expiry(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    first = session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_visa"}).json()
    second = session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_mastercard"}).json()
    assert (first["brand"], first["last4"], first["is_default"]) == ("visa", "4242", True)
    assert (second["brand"], second["is_default"]) == ("mastercard", False)
    assert session.delete(f"/clients/{client_id}/cards/{first['card_id']}").status_code == 204
    cards = _overview(session, client_id)["cards"]
    assert [(c["card_id"], c["is_default"]) for c in cards] == [(second["card_id"], True)]
    assert session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "tok_visa"}).status_code == 422


def test_create_invoice_and_charge_the_card_on_file(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, card="pm_card_visa")
    appointment = _appointment(session, client_id)
    response = session.post(
        f"/appointments/{appointment}/invoice-and-payment", json={"method": "card_on_file"}, headers=idempotency_key()
    )
    assert response.status_code == 201, response.text
    invoice, payment = response.json()["invoice"], response.json()["payment"]
    assert invoice["status"] == "paid" and invoice["balance_cents"] == 0 and invoice["paid_cents"] == 15000
    assert payment["status"] == "succeeded" and payment["amount_cents"] == 15000
    assert payment["allocations"] == [{"invoice_id": invoice["invoice_id"], "amount_cents": 15000}]
    assert len(_intents_for(stack, payment["payment_id"])) == 1
    assert _overview(session, client_id)["balance_cents"] == 0


def test_create_invoice_and_record_cash_without_stripe(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session)
    appointment = _appointment(session, client_id, fee=9000)
    response = session.post(
        f"/appointments/{appointment}/invoice-and-payment", json={"method": "cash"}, headers=idempotency_key()
    )
    assert response.status_code == 201, response.text
    assert response.json()["invoice"]["status"] == "paid"
    assert _intents_for(stack, response.json()["payment"]["payment_id"]) == []
    assert _overview(session, client_id)["balance_cents"] == 0


@pytest.mark.parametrize(
    ("card", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_authenticationRequired", "authentication_required"),
    ],
)
def test_a_declined_card_is_402_with_the_decline_code_and_changes_no_balance(
    api: Api, card: str, decline_code: str
) -> None:
    session = _practice(api)
    client_id = _client(session, card=card)
    appointment = _appointment(session, client_id)
    response = session.post(
        f"/appointments/{appointment}/invoice-and-payment", json={"method": "card_on_file"}, headers=idempotency_key()
    )
    assert response.status_code == 402
    assert response.json()["decline_code"] == decline_code
    invoices = session.get(f"/clients/{client_id}/invoices").json()["invoices"]
    assert [i["status"] for i in invoices] == ["unpaid"]
    payments = session.get(f"/clients/{client_id}/payments").json()["payments"]
    assert [(p["status"], p["decline_code"]) for p in payments] == [("failed", decline_code)]
    assert _overview(session, client_id)["balance_cents"] == 15000


def test_payments_need_an_idempotency_key_and_a_reused_key_must_match(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    body = {"client_id": client_id, "amount_cents": 1000, "method": "cash"}
    missing = session.post("/payments", json=body)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "idempotency_key_required"
    key = idempotency_key()
    assert session.post("/payments", json=body, headers=key).status_code == 201
    reused = session.post("/payments", json=body | {"amount_cents": 2000}, headers=key)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_the_same_payment_sent_five_times_charges_once(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, card="pm_card_visa")
    _invoice(session, client_id, 15000)
    body = {"client_id": client_id, "amount_cents": 15000, "method": "card_on_file"}
    sequential = idempotency_key()
    answers = [session.post("/payments", json=body, headers=sequential) for _ in range(5)]
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["payment_id"] for a in answers}) == 1

    concurrent = idempotency_key()
    _invoice(session, client_id, 15000, day=21)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def send() -> None:
        own = ApiSession(session.base_url)
        own.headers.update(session.headers)
        response = own.post("/payments", json=body, headers=concurrent)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [r for r in results if r.status_code == 201]
    assert ok and all(r.status_code in (201, 409) for r in results), [r.text for r in results]
    assert len({r.json()["payment_id"] for r in ok}) == 1
    for answer in (answers[0], ok[0]):
        assert len(_intents_for(stack, answer.json()["payment_id"])) == 1
    payments = session.get(f"/clients/{client_id}/payments").json()["payments"]
    assert len(payments) == 2 and _overview(session, client_id)["balance_cents"] == 0


def test_a_charge_whose_answer_was_lost_is_found_at_stripe_and_recorded_once(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, card="pm_card_visa")
    invoice = _invoice(session, client_id, 12000)
    assert stack.stripe is not None
    # Stripe charges, then every answer (the SDK's retries too) is lost: the outcome is unknown to the caller.
    stack.stripe.fail_after_success("/v1/payment_intents", times=2)
    body = {"client_id": client_id, "amount_cents": 12000, "method": "card_on_file"}
    key = idempotency_key()
    first = session.post("/payments", json=body, headers=key)
    assert first.status_code in (201, 503), first.text
    retry = session.post("/payments", json=body, headers=key)
    assert retry.status_code == 201, retry.text
    payment_id = retry.json()["payment_id"]
    assert len(_intents_for(stack, payment_id)) == 1
    assert [p["payment_id"] for p in session.get(f"/clients/{client_id}/payments").json()["payments"]] == [payment_id]
    assert session.get(f"/invoices/{invoice['invoice_id']}").json()["status"] == "paid"


def test_partial_payments_overpayment_credit_and_refunds_keep_the_balance_formula(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session, card="pm_card_visa")
    first = _invoice(session, client_id, 10000, day=10)
    part = session.post(
        "/payments", json={"client_id": client_id, "amount_cents": 4000, "method": "check"}, headers=idempotency_key()
    ).json()
    assert session.get(f"/invoices/{first['invoice_id']}").json()["status"] == "partially_paid"
    over = session.post(
        "/payments",
        json={"client_id": client_id, "amount_cents": 9000, "method": "card_on_file"},
        headers=idempotency_key(),
    ).json()
    assert over["unallocated_cents"] == 3000
    overview = _overview(session, client_id)
    assert overview["balance_cents"] == -3000 and overview["unallocated_credit_cents"] == 3000
    second = _invoice(session, client_id, 5000, day=11)
    assert second["paid_cents"] == 3000 and second["status"] == "partially_paid"  # credit applied at once
    refund = session.post(
        f"/payments/{over['payment_id']}/refunds", json={"amount_cents": 2000}, headers=idempotency_key()
    )
    assert refund.status_code == 201, refund.text
    assert session.get(f"/invoices/{second['invoice_id']}").json()["balance_cents"] == 4000
    rest = session.post(f"/payments/{over['payment_id']}/refunds", json={}, headers=idempotency_key())
    assert rest.status_code == 201 and rest.json()["amount_cents"] == 7000
    too_much = session.post(
        f"/payments/{part['payment_id']}/refunds", json={"amount_cents": 4001}, headers=idempotency_key()
    )
    assert too_much.status_code == 409 and too_much.json()["error"]["code"] == "refund_exceeds_refundable"
    overview = _overview(session, client_id)
    # balance = Σ live invoice totals - Σ succeeded payments + Σ refunds
    assert overview["balance_cents"] == 15000 - 13000 + 9000
    assert overview["balance_cents"] == overview["unpaid_invoices_cents"] - overview["unallocated_credit_cents"]
    assert session.get(f"/invoices/{first['invoice_id']}").json()["status"] == "partially_paid"


def _signed(stack: LocalStack, event: dict[str, Any], timestamp: int | None = None, secret: str | None = None):
    payload = json.dumps(event)
    header = stack.stripe.signature_header(payload, timestamp or int(time.time()), secret)  # type: ignore[union-attr]
    return payload, {"Stripe-Signature": header, "content-type": "application/json"}


def _event(kind: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "api_version": "2024-06-20",
        "livemode": False,
        "data": {"object": source},
    }


def _invoice_paid_by_card(
    api: Api, stack: LocalStack, amount: int
) -> tuple[ApiSession, str, dict[str, Any], dict[str, Any]]:
    """A new practice whose client's invoice of ``amount`` is paid by card: session, client, invoice, intent."""
    session = _practice(api)
    client_id = _client(session, card="pm_card_visa")
    invoice = _invoice(session, client_id, amount)
    payment = session.post(
        "/payments",
        json={"client_id": client_id, "amount_cents": amount, "method": "card_on_file"},
        headers=idempotency_key(),
    ).json()
    return session, client_id, invoice, _intents_for(stack, payment["payment_id"])[0]


def test_webhooks_are_verified_deduplicated_and_reconciled_from_current_state(api: Api, stack: LocalStack) -> None:
    session, _, invoice, intent = _invoice_paid_by_card(api, stack, 8000)
    succeeded = _event("payment_intent.succeeded", intent)
    body, headers = _signed(stack, succeeded)
    first = api.post("/webhooks/stripe", data=body, headers=headers)
    assert first.status_code == 200 and first.json()["outcome"] == "already_recorded"
    duplicate = api.post("/webhooks/stripe", data=body, headers=headers)
    assert duplicate.status_code == 200 and duplicate.json() == first.json()
    # A late "payment_failed" for the same intent: the intent's current state says succeeded; nothing changes.
    late_failure = _event("payment_intent.payment_failed", intent | {"status": "requires_payment_method"})
    body, headers = _signed(stack, late_failure)
    assert api.post("/webhooks/stripe", data=body, headers=headers).json()["outcome"] == "already_recorded"
    assert session.get(f"/invoices/{invoice['invoice_id']}").json()["status"] == "paid"
    # Forged and stale signatures are refused and change nothing.
    body, headers = _signed(stack, _event("charge.refunded", {"payment_intent": intent["id"]}), secret="whsec_forged")
    assert api.post("/webhooks/stripe", data=body, headers=headers).status_code == 400
    body, headers = _signed(stack, _event("payment_intent.succeeded", intent), timestamp=int(time.time()) - 301)
    assert api.post("/webhooks/stripe", data=body, headers=headers).status_code == 400
    assert api.post("/webhooks/stripe", data=body, headers={"content-type": "application/json"}).status_code == 400


def test_refunds_and_disputes_made_at_stripe_are_reconciled(api: Api, stack: LocalStack) -> None:
    session, client_id, invoice, intent = _invoice_paid_by_card(api, stack, 6000)
    assert stack.stripe is not None
    refund = refund_at_stripe(stack, intent["id"], 2500)
    assert stack.stripe.wait_for_webhooks()
    assert session.get(f"/invoices/{invoice['invoice_id']}").json()["balance_cents"] == 2500
    for event in stack.stripe.events():  # every refund event delivered again: nothing is counted twice
        if event["type"].startswith(("charge.refund", "refund.")):
            stack.stripe.resend(event["id"])
    assert stack.stripe.wait_for_webhooks()
    listed = session.get(f"/clients/{client_id}/payments").json()["payments"]
    assert listed[0]["refunded_cents"] == 2500
    charge_id = intent["latest_charge"] if isinstance(intent["latest_charge"], str) else intent["latest_charge"]["id"]
    stack.stripe.create_dispute(charge_id, amount=3500)
    assert stack.stripe.wait_for_webhooks()
    listed = session.get(f"/clients/{client_id}/payments").json()["payments"]
    assert listed[0]["disputed_cents"] == 3500 and listed[0]["refunded_cents"] == 2500
    assert refund["status"] == "succeeded"
    assert _overview(session, client_id)["balance_cents"] == 2500


def test_a_processing_charge_is_not_a_decline_and_the_webhook_settles_it(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, card="pm_card_processing")
    invoice = _invoice(session, client_id, 7000)
    body = {"client_id": client_id, "amount_cents": 7000, "method": "card_on_file"}
    key = idempotency_key()
    response = session.post("/payments", json=body, headers=key)
    assert response.status_code == 202, response.text
    payment = response.json()
    assert payment["status"] == "processing" and payment.get("decline_code") is None
    # Held, not paid: another payment for the same invoice is refused before it charges anything.
    other = session.post("/payments", json=body | {"invoice_ids": [invoice["invoice_id"]]}, headers=idempotency_key())
    assert other.status_code == 409 and other.json()["error"]["code"] == "payment_in_progress"
    assert session.get(f"/invoices/{invoice['invoice_id']}").json()["status"] == "unpaid"
    assert session.post("/payments", json=body, headers=key).status_code == 202  # a replay says the same
    assert stack.stripe is not None
    stack.stripe.settle_payment_intent(_intents_for(stack, payment["payment_id"])[0]["id"], succeeded=True)
    assert stack.stripe.wait_for_webhooks()
    assert session.get(f"/invoices/{invoice['invoice_id']}").json()["status"] == "paid"
    assert session.post("/payments", json=body, headers=key).status_code == 201
    assert len(_intents_for(stack, payment["payment_id"])) == 1


def test_nothing_about_the_client_reaches_stripe(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    phi = {
        "first_name": "Philomena",
        "last_name": "Quarrington",
        "email": "philomena.q@example.org",
        "date_of_birth": "1968-02-29",
        "diagnosis_codes": ["F41.1"],
    }
    client_id = session.post("/clients", json=phi).json()["client_id"]
    session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_visa"})
    appointment = book(session, client_id, status="show", starts_at="2026-11-19T16:00:00Z").json()["appointment_id"]
    paid = session.post(
        f"/appointments/{appointment}/invoice-and-payment", json={"method": "card_on_file"}, headers=idempotency_key()
    )
    assert paid.status_code == 201
    refunded = session.post(
        f"/payments/{paid.json()['payment']['payment_id']}/refunds",
        json={"amount_cents": 100},
        headers=idempotency_key(),
    )
    assert refunded.status_code == 201, refunded.text
    sent = json.dumps(stack.stripe.request_log())  # type: ignore[union-attr]
    assert client_id in sent  # the requests are there, identified by opaque ids only
    for value in ("Philomena", "Quarrington", "philomena.q@example.org", "1968-02-29", "F41.1", "2026-11-19", "90837"):
        assert value not in sent
