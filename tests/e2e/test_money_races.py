"""Exactly-once money under real concurrency: requests released at the same instant over real HTTP, each served
by its own Lambda-like worker process, against the Stripe emulator. Counted at the processor, not trusted."""

import threading
import uuid
from collections.abc import Callable
from typing import Any

import requests

from billing.payments import idempotent_id
from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}


def _practice(api: Api) -> ApiSession:
    session = api.as_practice()
    settings = {"name": "Race Practice", "timezone": "America/Chicago", "invoice_creation": "manual"}
    assert session.put("/practice", json=settings).status_code == 200
    return session


def _client_with_card(session: ApiSession) -> str:
    client_id = str(session.post("/clients", json={"first_name": "Ray", "last_name": "Race"}).json()["client_id"])
    response = session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_visa"})
    assert response.status_code == 201, response.text
    return client_id


def _appointment(session: ApiSession, client_id: str, fee: int = 15000) -> str:
    response = book(session, client_id, starts_at="2026-11-20T16:00:00Z", fee_cents=fee, status="show")
    return str(response.json()["appointment_id"])


def _invoice(session: ApiSession, client_id: str, fee: int = 15000) -> str:
    appointment = _appointment(session, client_id, fee)
    response = session.post("/invoices", json={"client_id": client_id, "appointment_ids": [appointment]})
    assert response.status_code == 201, response.text
    return str(response.json()["invoice_id"])


def _at_once(session: ApiSession, calls: list[Callable[[ApiSession], requests.Response]]) -> list[requests.Response]:
    """Run ``calls`` on their own connections, released together by a barrier; answers in call order."""
    barrier = threading.Barrier(len(calls))
    answers: list[requests.Response | None] = [None] * len(calls)

    def run(index: int) -> None:
        own = ApiSession(session.base_url)
        own.headers.update(session.headers)
        barrier.wait()
        answers[index] = calls[index](own)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def _charges_of(stack: LocalStack, client_id: str) -> list[dict[str, Any]]:
    assert stack.stripe is not None
    return [pi for pi in stack.stripe.payment_intents() if pi.get("metadata", {}).get("client_id") == client_id]


def _overview(session: ApiSession, client_id: str) -> dict[str, Any]:
    return dict(session.get(f"/clients/{client_id}/billing-overview").json())


def test_ten_staff_paying_one_invoice_with_different_keys_charge_the_card_once(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client_with_card(session)
    invoice_id = _invoice(session, client_id)
    body = {"client_id": client_id, "amount_cents": 15000, "method": "card_on_file", "invoice_ids": [invoice_id]}
    answers = _at_once(session, [lambda s: s.post("/payments", json=body, headers=_key()) for _ in range(10)])
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 9, [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} <= {
        "payment_in_progress",
        "invoice_not_open",
    }
    assert [pi["status"] for pi in _charges_of(stack, client_id)] == ["succeeded"]
    overview = _overview(session, client_id)
    assert (overview["balance_cents"], overview["unallocated_credit_cents"]) == (0, 0)


def test_ten_double_clicks_on_create_invoice_and_charge_make_one_invoice_and_one_charge(
    api: Api, stack: LocalStack
) -> None:
    session = _practice(api)
    client_id = _client_with_card(session)
    appointment = _appointment(session, client_id)
    path = f"/appointments/{appointment}/invoice-and-payment"
    answers = _at_once(
        session, [lambda s: s.post(path, json={"method": "card_on_file"}, headers=_key()) for _ in range(10)]
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9, [a.text for a in answers]
    invoices = session.get(f"/clients/{client_id}/invoices").json()["invoices"]
    assert [(i["status"], i["total_cents"]) for i in invoices] == [("paid", 15000)]
    assert len(_charges_of(stack, client_id)) == 1
    overview = _overview(session, client_id)
    assert (overview["balance_cents"], overview["unallocated_credit_cents"]) == (0, 0)


def test_a_void_racing_card_payments_never_lets_a_charge_through_after_it(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client_with_card(session)
    invoice_id = _invoice(session, client_id)
    body = {"client_id": client_id, "amount_cents": 15000, "method": "card_on_file", "invoice_ids": [invoice_id]}
    charges_when_voided: list[int] = []

    def void(s: ApiSession) -> requests.Response:
        response = s.post(f"/invoices/{invoice_id}/void")
        if response.status_code == 200:
            charges_when_voided.append(len(_charges_of(stack, client_id)))
        return response

    calls: list[Callable[[ApiSession], requests.Response]] = [
        lambda s: s.post("/payments", json=body, headers=_key()) for _ in range(7)
    ]
    answers = _at_once(session, [*calls[:3], void, *calls[3:]])
    charges = _charges_of(stack, client_id)
    assert len(charges) <= 1
    voided = answers[3]
    assert voided.status_code in (200, 409), voided.text
    if voided.status_code == 409:  # the charge won and was in flight: the void may be made again now
        assert voided.json()["error"]["code"] == "payment_in_progress"
        assert void(session).status_code == 200
    assert charges_when_voided and charges_when_voided[-1] == len(_charges_of(stack, client_id))  # none after it
    overview = _overview(session, client_id)
    paid = sum(pi["amount"] for pi in charges if pi["status"] == "succeeded")
    # The void won (nothing charged) or the charge won and the void turned it into credit.
    assert (overview["balance_cents"], overview["unallocated_credit_cents"]) == (-paid, paid)


def test_sixteen_mixed_concurrent_payments_are_each_answered_from_their_own_headers_and_body(api: Api) -> None:
    session = _practice(api)
    client_ids = [str(session.post("/clients", json={"first_name": "A", "last_name": "B"}).json()["client_id"])]
    client_ids.append(str(session.post("/clients", json={"first_name": "C", "last_name": "D"}).json()["client_id"]))
    keys = [f"mixed-{uuid.uuid4().hex}" for _ in range(16)]
    methods = ["cash", "check", "external_card", "other"]

    def pay(index: int) -> Callable[[ApiSession], requests.Response]:
        body = {"client_id": client_ids[index % 2], "amount_cents": 100 + index, "method": methods[index % 4]}
        return lambda s: s.post("/payments", json=body, headers={"Idempotency-Key": keys[index]})

    answers = _at_once(session, [pay(i) for i in range(16)])
    assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers]
    for index, answer in enumerate(answers):
        payment = answer.json()
        assert payment["payment_id"] == idempotent_id("pay", str(session.practice_id), keys[index])
        assert (payment["amount_cents"], payment["method"]) == (100 + index, methods[index % 4])
        assert payment["client_id"] == client_ids[index % 2]
