"""AutoPay nights through the local server, the local scheduler and the Stripe emulator."""

import threading
from typing import Any

import requests

from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book, fire

ZONE = "America/Chicago"


def _fire(api: Api, schedule: str, scheduled_time: str) -> dict[str, Any]:
    return fire(api, schedule, ZONE, scheduled_time)


def _night(api: Api, day: int) -> dict[str, Any]:
    """Daily invoicing at 00:05, then AutoPay at 03:30, on the morning of November ``day`` in Chicago."""
    _fire(api, "daily_invoices", f"2026-11-{day:02d}T06:05:00Z")
    return _fire(api, "autopay", f"2026-11-{day:02d}T09:30:00Z")


def _practice(api: Api) -> ApiSession:
    session = api.as_practice()
    settings = {"name": "Night Practice", "timezone": ZONE, "invoice_creation": "daily", "autopay_enabled": True}
    assert session.put("/practice", json=settings).status_code == 200
    return session


def _client(session: ApiSession, card: str, enrol: bool = True, day: int = 24) -> str:
    client_id = str(session.post("/clients", json={"first_name": "Al", "last_name": "Pay"}).json()["client_id"])
    assert session.post(f"/clients/{client_id}/cards", json={"payment_method_id": card}).status_code == 201
    response = book(session, client_id, starts_at=f"2026-11-{day:02d}T16:00:00Z", fee_cents=15000, status="show")
    assert response.status_code == 201
    if enrol:
        enrolled = session.put(f"/clients/{client_id}/autopay", json={"enabled": True})
        assert enrolled.status_code == 200, enrolled.text
    return client_id


def _intents(stack: LocalStack, client_id: str) -> list[dict[str, Any]]:
    assert stack.stripe is not None
    return [pi for pi in stack.stripe.payment_intents() if pi.get("metadata", {}).get("client_id") == client_id]


def _overview(session: ApiSession, client_id: str) -> dict[str, Any]:
    return dict(session.get(f"/clients/{client_id}/billing-overview").json())


def test_a_night_of_autopay_charges_declines_and_reports(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    paying = _client(session, "pm_card_visa")
    short = _client(session, "pm_card_chargeDeclinedInsufficientFunds")
    needs_client = _client(session, "pm_card_authenticationRequired")
    not_enrolled = _client(session, "pm_card_visa", enrol=False)

    preview = session.get("/autopay/preview", params={"date": "2026-11-25"})
    assert preview.status_code == 200, preview.text
    assert {(c["client_id"], c["amount_cents"]) for c in preview.json()["charges"]} == {
        (paying, 15000),
        (short, 15000),
        (needs_client, 15000),
    }
    night = _night(api, 25)
    assert night["failed"] == 0, night

    assert _overview(session, paying)["balance_cents"] == 0
    assert [i["status"] for i in session.get(f"/clients/{paying}/invoices").json()["invoices"]] == ["paid"]
    assert _overview(session, not_enrolled)["balance_cents"] == 15000 and _intents(stack, not_enrolled) == []
    report = session.get("/autopay/runs", params={"date": "2026-11-25"}).json()["outcomes"]
    by_client = {o["client_id"]: o for o in report}
    assert by_client[paying]["outcome"] == "charged" and by_client[paying]["amount_cents"] == 15000
    assert (by_client[short]["outcome"], by_client[short]["decline_code"]) == ("declined", "insufficient_funds")
    assert by_client[needs_client]["decline_code"] == "authentication_required"
    assert not_enrolled not in by_client
    autopay = _overview(session, needs_client)["autopay"]
    assert autopay["requires_client_action"] and autopay["card"]["last4"] == "3184"
    assert _overview(session, short)["autopay"]["last_attempt"]["decline_code"] == "insufficient_funds"

    charged = {c: len(_intents(stack, c)) for c in (paying, short, needs_client)}
    _fire(api, "autopay", "2026-11-25T09:30:00Z")  # the same night again
    assert {c: len(_intents(stack, c)) for c in charged} == charged

    for day in (26, 27):
        _night(api, day)
    assert _overview(session, short)["autopay"]["enabled"] is False  # three failed nights
    assert _overview(session, short)["autopay"]["consecutive_failures"] == 3
    assert len(_intents(stack, needs_client)) == 1  # never retried off-session


def test_five_fires_of_one_night_at_once_make_one_charge_per_client(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    clients = [_client(session, "pm_card_visa") for _ in range(2)]
    _fire(api, "daily_invoices", "2026-11-25T06:05:00Z")
    barrier = threading.Barrier(5)
    answers: list[requests.Response] = []

    def fire() -> None:
        own = requests.Session()
        own.trust_env = False
        barrier.wait()
        response = own.post(
            f"{api.base_url}/_local/scheduler/fire",
            json={"schedule": "autopay", "timezone": ZONE, "scheduled_time": "2026-11-25T09:30:00Z"},
            timeout=120,
        )
        answers.append(response)

    threads = [threading.Thread(target=fire) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 5
    # Every entry queued both clients; several fires' drains delivered those messages, so workers of
    # different fires really ran the same nights at once (the harness can race).
    delivered = [a.json()["messages"] for a in answers]
    assert sum(1 for d in delivered if d) >= 2, delivered
    assert [len(_intents(stack, c)) for c in clients] == [1, 1]
    assert [_overview(session, c)["balance_cents"] for c in clients] == [0, 0]
    # A run that found the payment in progress must not turn the night's charge into a skip in the report.
    report = session.get("/autopay/runs", params={"date": "2026-11-25"}).json()["outcomes"]
    assert sorted((o["client_id"], o["outcome"]) for o in report) == sorted((c, "charged") for c in clients)


def test_a_night_fired_after_six_charges_nothing_and_says_so(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, "pm_card_visa")
    _fire(api, "daily_invoices", "2026-11-25T06:05:00Z")
    _fire(api, "autopay", "2026-11-25T13:00:00Z")  # 07:00 in Chicago
    assert _intents(stack, client_id) == []
    report = session.get("/autopay/runs", params={"date": "2026-11-25"}).json()["outcomes"]
    assert [(o["outcome"], o["reason"]) for o in report] == [("skipped", "outside_window")]


def test_enrolment_is_refused_without_a_card_or_when_the_practice_has_autopay_off(api: Api) -> None:
    session = api.as_practice()
    settings = {"name": "No AutoPay", "timezone": ZONE, "invoice_creation": "daily"}
    assert session.put("/practice", json=settings).status_code == 200
    client_id = str(session.post("/clients", json={"first_name": "No", "last_name": "Card"}).json()["client_id"])
    off = session.put(f"/clients/{client_id}/autopay", json={"enabled": True})
    assert off.status_code == 409 and off.json()["error"]["code"] == "autopay_off_for_practice"
    assert session.put("/practice", json=settings | {"autopay_enabled": True}).status_code == 200
    cardless = session.put(f"/clients/{client_id}/autopay", json={"enabled": True})
    assert cardless.status_code == 409 and cardless.json()["error"]["code"] == "no_card_on_file"
    client_token = api.as_practice(session.practice_id, role="client", client_id=client_id)
    assert client_token.put(f"/clients/{client_id}/autopay", json={"enabled": True}).status_code == 403
