"""The client portal over real HTTP: a client sees and pays only their own account; roles never cross."""

import re
import threading
import uuid
from typing import Any

import requests

from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book, idempotency_key


def _practice(api: Api, autopay: bool = False) -> ApiSession:
    session = api.as_practice()
    settings = {"name": "Portal Practice", "timezone": "America/Chicago", "invoice_creation": "manual"}
    assert session.put("/practice", json=settings | {"autopay_enabled": autopay}).status_code == 200
    return session


def _client(session: ApiSession, name: str = "Cleo") -> str:
    return str(session.post("/clients", json={"first_name": name, "last_name": "Portal"}).json()["client_id"])


def _invoice(session: ApiSession, client_id: str, fee: int, day: int = 20) -> str:
    appointment = book(session, client_id, starts_at=f"2026-11-{day:02d}T16:00:00Z", fee_cents=fee, status="show")
    response = session.post(
        "/invoices", json={"client_id": client_id, "appointment_ids": [appointment.json()["appointment_id"]]}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["invoice_id"])


def _portal(api: Api, session: ApiSession, client_id: str) -> ApiSession:
    return api.as_practice(session.practice_id, role="client", client_id=client_id)


def _mine(portal: ApiSession) -> dict[str, Any]:
    response = portal.get("/portal/invoices")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_client_sees_only_their_own_invoices_and_balance(api: Api) -> None:
    session = _practice(api)
    cleo, dan = _client(session), _client(session, "Dan")
    own = _invoice(session, cleo, 12000)
    _invoice(session, dan, 9000)
    mine = _mine(_portal(api, session, cleo))
    assert [i["invoice_id"] for i in mine["invoices"]] == [own]
    assert (mine["balance_cents"], mine["unallocated_credit_cents"]) == (12000, 0)
    assert mine["autopay"]["enabled"] is False
    stranger = api.as_practice(session.practice_id, role="client", client_id=f"cli_{uuid.uuid4().hex}")
    assert stranger.get("/portal/invoices").status_code == 404


def test_roles_never_cross_clinician_and_portal_routes(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session)
    portal = _portal(api, session, client_id)
    for route in stack.template.routes:
        if not route.requires_auth:
            continue
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        caller = session if route.path.startswith("/portal/") else portal
        response = caller.request(route.method, path, json={"unexpected": "body"}, headers=idempotency_key())
        assert response.status_code == 403, (route.method, route.path, response.text)
        assert response.json()["error"]["code"] == "wrong_role"


def test_a_client_pays_the_whole_balance_then_one_chosen_invoice(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session)
    _invoice(session, client_id, 10000, day=10)
    _invoice(session, client_id, 5000, day=11)
    portal = _portal(api, session, client_id)
    paid = portal.post(
        "/portal/payments", json={"payment_method_id": "pm_card_visa", "save_card": True}, headers=idempotency_key()
    )
    assert paid.status_code == 201, paid.text
    assert paid.json()["amount_cents"] == 15000
    mine = _mine(portal)
    assert mine["balance_cents"] == 0 and {i["status"] for i in mine["invoices"]} == {"paid"}
    later = _invoice(session, client_id, 7000, day=12)
    _invoice(session, client_id, 3000, day=13)
    chosen = portal.post("/portal/payments", json={"invoice_ids": [later]}, headers=idempotency_key())
    assert chosen.status_code == 201, chosen.text
    assert chosen.json()["allocations"] == [{"invoice_id": later, "amount_cents": 7000}]
    assert _mine(portal)["balance_cents"] == 3000
    assert len(portal.get("/portal/cards").json()["cards"]) == 1


def test_a_declined_new_card_is_402_with_its_code_and_changes_nothing(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    _invoice(session, client_id, 8000)
    portal = _portal(api, session, client_id)
    body = {"payment_method_id": "pm_card_chargeDeclinedInsufficientFunds"}
    declined = portal.post("/portal/payments", json=body, headers=idempotency_key())
    assert declined.status_code == 402 and declined.json()["decline_code"] == "insufficient_funds"
    mine = _mine(portal)
    assert mine["balance_cents"] == 8000 and [i["status"] for i in mine["invoices"]] == ["unpaid"]


def test_ten_concurrent_portal_payments_never_charge_more_than_is_owed(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session)
    _invoice(session, client_id, 15000)
    portal = _portal(api, session, client_id)
    assert portal.post("/portal/cards", json={"payment_method_id": "pm_card_visa"}).status_code == 201
    barrier = threading.Barrier(10)
    answers: list[requests.Response] = []
    lock = threading.Lock()

    def pay() -> None:
        own = ApiSession(portal.base_url)
        own.headers.update(portal.headers)
        barrier.wait()
        response = own.post("/portal/payments", json={}, headers=idempotency_key())
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=pay) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9, [a.text for a in answers]
    assert stack.stripe is not None
    charged = [pi for pi in stack.stripe.payment_intents() if pi.get("metadata", {}).get("client_id") == client_id]
    assert sum(pi["amount"] for pi in charged if pi["status"] == "succeeded") == 15000
    mine = _mine(portal)
    assert (mine["balance_cents"], mine["unallocated_credit_cents"]) == (0, 0)


def test_a_client_enrolled_in_autopay_sees_the_nights_charge_the_staff_preview_shows(api: Api) -> None:
    session = _practice(api, autopay=True)
    client_id = _client(session)
    _invoice(session, client_id, 11000)
    portal = _portal(api, session, client_id)
    assert portal.post("/portal/cards", json={"payment_method_id": "pm_card_visa"}).status_code == 201
    enrolled = portal.put("/portal/autopay", json={"enabled": True})
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["consent"]["authorization_version"]
    notice = _mine(portal)["autopay"]
    assert notice["enabled"] and notice["card"]["last4"] == "4242"
    preview = session.get("/autopay/preview", params={"date": notice["next_charge_date"]}).json()["charges"]
    assert [(c["client_id"], c["amount_cents"]) for c in preview] == [(client_id, notice["next_charge_cents"])]
    assert notice["next_charge_cents"] == 11000


def test_a_client_downloads_their_own_documents_and_never_another_clients(api: Api) -> None:
    session = _practice(api)
    cleo, dan = _client(session), _client(session, "Dan")
    own, other = _invoice(session, cleo, 6000), _invoice(session, dan, 4000)
    portal = _portal(api, session, cleo)
    assert portal.get(f"/portal/invoices/{own}/pdf").status_code == 200
    assert portal.get(f"/portal/invoices/{other}/pdf").status_code == 404
    body = {"client_id": dan, "amount_cents": 4000, "method": "cash", "invoice_ids": [other]}
    dans_payment = session.post("/payments", json=body, headers=idempotency_key()).json()["payment_id"]
    assert portal.get(f"/portal/payments/{dans_payment}/receipt").status_code == 404
    paid = portal.post("/portal/payments", json={"payment_method_id": "pm_card_visa"}, headers=idempotency_key())
    assert portal.get(f"/portal/payments/{paid.json()['payment_id']}/receipt").status_code == 200
    statement = portal.get("/portal/statements", params={"from": "2026-11-01", "to": "2026-11-30"})
    assert statement.status_code == 200 and statement.json()["closing_balance_cents"] == 0
