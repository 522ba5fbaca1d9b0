"""The calendar API over real HTTP: tenancy from claims only, auth, validation, local dates, no PHI in logs."""

import logging

import pytest

from tests.e2e.conftest import Api, ApiSession, appointment_body, book

PRACTICE = {"name": "Calm Minds", "timezone": "America/New_York", "invoice_creation": "daily"}


def _practice(api: Api, **settings: object) -> ApiSession:
    session = api.as_practice()
    response = session.put("/practice", json=PRACTICE | settings)
    assert response.status_code == 200, response.text
    return session


def _client(session: ApiSession, **details: object) -> str:
    response = session.post("/clients", json={"first_name": "Ada", "last_name": "Byron"} | details)
    assert response.status_code == 201, response.text
    return str(response.json()["client_id"])


def _error(response: object) -> dict:
    body = response.json()  # type: ignore[attr-defined]
    assert {"code", "message", "details"} <= set(body["error"])
    return dict(body["error"])


def test_put_practice_creates_then_updates_and_get_returns_it(api: Api) -> None:
    session = _practice(api)
    updated = session.put("/practice", json=PRACTICE | {"invoice_due_days": 14, "npi": "1234567893"})
    assert updated.status_code == 200
    got = session.get("/practice").json()
    assert got["practice_id"] == session.practice_id and got["invoice_due_days"] == 14
    assert got["created_at"] == updated.json()["created_at"]


def test_the_tenant_comes_from_the_token_not_the_body_or_path(api: Api) -> None:
    mine, theirs = _practice(api), _practice(api)
    client_id = _client(mine)
    # A body naming another practice is refused as an unknown field and changes nothing.
    response = theirs.put("/practice", json=PRACTICE | {"practice_id": mine.practice_id})
    assert response.status_code == 422
    assert mine.get("/practice").json()["name"] == "Calm Minds"
    # Another practice's objects are 404, whoever asks for them by id.
    assert theirs.get(f"/clients/{client_id}").status_code == 404
    assert theirs.get(f"/clients/{client_id}/billing-overview").status_code == 404
    created = book(mine, client_id).json()
    assert theirs.patch(f"/appointments/{created['appointment_id']}", json={"status": "show"}).status_code == 404
    assert theirs.get("/appointments?date=2026-11-20").json() == {"appointments": []}
    assert book(theirs, client_id).status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-jwt", "Basic abc"],
)
def test_missing_or_malformed_tokens_are_401(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = api.get("/practice", headers=headers)
    assert response.status_code == 401
    _error(response)


def test_forged_and_expired_tokens_are_401(api: Api) -> None:
    from local.tokens import make_token

    forged = make_token("prac_x", secret="not-the-secret")
    expired = make_token("prac_x", ttl=-60)
    for token in (forged, expired):
        assert api.get("/practice", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_client_token_cannot_use_clinician_routes(api: Api) -> None:
    portal = api.as_practice(role="client", client_id="cli_1")
    assert portal.get("/practice").status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (PRACTICE | {"timezone": "Mars/Olympus_Mons"}, "timezone"),
        (PRACTICE | {"invoice_creation": "weekly"}, "invoice_creation"),
        (PRACTICE | {"name": "x" * 5000}, "name"),
        (PRACTICE | {"invoice_due_days": "14"}, "invoice_due_days"),
        (PRACTICE | {"surprise": True}, "surprise"),
        ({"timezone": "UTC"}, "name"),
    ],
)
def test_bad_practice_settings_are_422_with_the_field_named(api: Api, body: dict, field: str) -> None:
    session = api.as_practice()
    response = session.put("/practice", json=body)
    assert response.status_code == 422
    assert field in [d["field"] for d in _error(response)["details"]]
    assert session.get("/practice").status_code == 404  # nothing was written


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fee_cents": -100}, "fee_cents"),
        ({"fee_cents": 150.5}, "fee_cents"),
        ({"fee_cents": "15000"}, "fee_cents"),
        ({"starts_at": "2026-11-27T15:00:00"}, "starts_at"),
        ({"duration_minutes": 0}, "duration_minutes"),
        ({"status": "maybe"}, "status"),
        ({"service_description": "y" * 20000}, "service_description"),
    ],
)
def test_bad_appointments_are_422(api: Api, change: dict, field: str) -> None:
    session = _practice(api)
    client_id = _client(session)
    response = session.post("/appointments", json=appointment_body(client_id) | change)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in _error(response)["details"]]


def test_invalid_json_and_bad_ids_are_4xx_not_500(api: Api) -> None:
    session = _practice(api)
    assert session.post("/clients", data="{not json", headers={"content-type": "application/json"}).status_code == 400
    assert session.get("/clients/" + "x" * 300).status_code == 422
    assert session.get("/appointments?date=tomorrow").status_code == 422
    assert session.get("/appointments").status_code == 422


@pytest.mark.parametrize(
    ("zone", "starts_at", "local_date"),
    [
        ("America/New_York", "2026-03-08T04:30:00Z", "2026-03-07"),  # 23:30 EST the night before spring-forward
        ("America/New_York", "2026-03-08T05:30:00Z", "2026-03-08"),  # 00:30 EST on the change day
        ("Australia/Sydney", "2026-10-03T14:30:00Z", "2026-10-04"),  # 00:30 AEST on the change day
        ("America/Santiago", "2026-09-06T03:30:00Z", "2026-09-05"),  # 23:30 before the midnight jump
        ("America/Santiago", "2026-09-06T04:30:00Z", "2026-09-06"),  # 01:30, just after it
    ],
)
def test_appointments_get_their_local_date_in_the_practice_zone(
    api: Api, zone: str, starts_at: str, local_date: str
) -> None:
    session = _practice(api, timezone=zone)
    client_id = _client(session)
    response = book(session, client_id, starts_at=starts_at)
    assert response.status_code == 201
    assert response.json()["local_date"] == local_date and response.json()["invoice_id"] is None
    listed = session.get(f"/appointments?date={local_date}").json()["appointments"]
    assert [a["appointment_id"] for a in listed] == [response.json()["appointment_id"]]


def test_changing_the_fee_of_an_invoiced_appointment_is_409(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    appointment = book(session, client_id, status="show").json()
    invoiced = session.post(
        "/invoices", json={"client_id": client_id, "appointment_ids": [appointment["appointment_id"]]}
    )
    assert invoiced.status_code == 201, invoiced.text
    response = session.patch(f"/appointments/{appointment['appointment_id']}", json={"fee_cents": 100})
    assert response.status_code == 409 and _error(response)["code"] == "appointment_invoiced"


def test_billing_overview_reports_uninvoiced_billable_appointments(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    for status, fee in (("show", 15000), ("no_show", 0), ("late_cancel", 5000), ("cancelled", 15000)):
        book(session, client_id, fee_cents=fee, status=status)
    overview = session.get(f"/clients/{client_id}/billing-overview").json()
    assert overview["uninvoiced_cents"] == 20000 and len(overview["uninvoiced_appointments"]) == 2
    assert overview["balance_cents"] == 0 and overview["unpaid_invoices"] == []


def test_phi_never_reaches_the_logs(
    api: Api, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    session = _practice(api)
    phi = {
        "first_name": "Zebulon",
        "last_name": "Quixotic",
        "email": "zebulon.q@example.org",
        "date_of_birth": "1971-04-13",
        "diagnosis_codes": ["F43.21"],
    }
    # INFO is the level the functions run at (template.yaml); library DEBUG tracing is never enabled there.
    with caplog.at_level(logging.INFO):
        client_id = _client(session, **phi)
        session.get(f"/clients/{client_id}")
        session.post("/clients", json=phi | {"diagnosis_codes": ["not-a-code"]})  # a refused request, too
    captured = capfd.readouterr()
    logs = captured.out + captured.err + caplog.text
    assert client_id in logs or "request" in logs  # the handlers did log
    for value in ("Zebulon", "Quixotic", "zebulon.q@example.org", "1971-04-13", "F43.21", "not-a-code"):
        assert value not in logs
