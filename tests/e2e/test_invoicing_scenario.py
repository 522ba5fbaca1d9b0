"""The night happens: a Chicago practice's daily invoicing through the local server and scheduler."""

from tests.e2e.conftest import Api, ApiSession, book, fire


def _appointment(session: ApiSession, client_id: str, starts_at: str, status: str, fee: int = 15000) -> str:
    response = book(session, client_id, starts_at=starts_at, fee_cents=fee, status=status)
    assert response.status_code == 201, response.text
    return str(response.json()["appointment_id"])


def _fire(api: Api, scheduled_time: str) -> dict:
    return fire(api, "daily_invoices", "America/Chicago", scheduled_time)


def test_a_chicago_night_invoices_exactly_the_billable_uninvoiced_appointments(api: Api) -> None:
    session = api.as_practice()
    settings = {
        "name": "Lakeside Counselling",
        "timezone": "America/Chicago",
        "invoice_creation": "daily",
        "invoice_due_days": 7,
    }
    assert session.put("/practice", json=settings).status_code == 200
    ann, bob, cy = (
        session.post("/clients", json={"first_name": n, "last_name": "Client"}).json()["client_id"]
        for n in ("Ann", "Bob", "Cy")
    )
    # Two local days (Chicago is UTC-6 in November): the 25th and the 26th.
    ann_25 = _appointment(session, ann, "2026-11-25T16:00:00Z", "show")
    ann_26 = _appointment(session, ann, "2026-11-26T16:00:00Z", "show")
    by_hand = _appointment(session, bob, "2026-11-26T17:00:00Z", "show")
    _appointment(session, bob, "2026-11-26T18:00:00Z", "no_show", fee=0)
    late = _appointment(session, cy, "2026-11-26T19:00:00Z", "late_cancel", fee=5000)
    _appointment(session, cy, "2026-11-26T20:00:00Z", "cancelled")
    manual = session.post("/invoices", json={"client_id": bob, "appointment_ids": [by_hand]})
    assert manual.status_code == 201 and manual.json()["number"] == "INV-000001"

    # The night's summary counts every Chicago practice this stack holds (other tests' too): this practice's
    # outcome is read from its own invoices below.
    night = _fire(api, "2026-11-27T06:05:00Z")  # 00:05 on the 27th in Chicago
    assert night["summary"]["invoices_created"] >= 2 and night["failed"] == 0

    ann_invoices = session.get(f"/clients/{ann}/invoices").json()["invoices"]
    cy_invoices = session.get(f"/clients/{cy}/invoices").json()["invoices"]
    bob_invoices = session.get(f"/clients/{bob}/invoices").json()["invoices"]
    assert [len(i["lines"]) for i in ann_invoices] == [2]
    assert {line["appointment_id"] for line in ann_invoices[0]["lines"]} == {ann_25, ann_26}
    assert [[line["appointment_id"] for line in i["lines"]] for i in cy_invoices] == [[late]]
    assert len(bob_invoices) == 1  # the no-show without a fee is not billed; the hand-made invoice stays alone
    assert ann_invoices[0]["issue_date"] == "2026-11-26" and ann_invoices[0]["due_date"] == "2026-12-03"
    numbers = sorted(i["number"] for i in ann_invoices + bob_invoices + cy_invoices)
    assert numbers == ["INV-000001", "INV-000002", "INV-000003"]

    again = _fire(api, "2026-11-27T06:05:00Z")
    assert again["failed"] == 0
    after = [session.get(f"/clients/{c}/invoices").json()["invoices"] for c in (ann, bob, cy)]
    assert sorted(i["number"] for invoices in after for i in invoices) == numbers  # nothing invoiced twice
    overview = session.get(f"/clients/{ann}/billing-overview").json()
    assert overview["balance_cents"] == 30000 and overview["uninvoiced_cents"] == 0
    assert overview["unpaid_invoices_cents"] == 30000 and len(overview["unpaid_invoices"]) == 1


def test_void_and_reinvoice_over_http(api: Api) -> None:
    session = api.as_practice()
    session.put("/practice", json={"name": "P", "timezone": "America/Chicago", "invoice_creation": "manual"})
    client = session.post("/clients", json={"first_name": "Dee", "last_name": "Client"}).json()["client_id"]
    appointment = _appointment(session, client, "2026-11-25T16:00:00Z", "show")
    first = session.post("/invoices", json={"client_id": client, "appointment_ids": [appointment]}).json()
    again = session.post("/invoices", json={"client_id": client, "appointment_ids": [appointment]})
    assert again.status_code == 409 and appointment in again.json()["error"]["message"]
    voided = session.post(f"/invoices/{first['invoice_id']}/void")
    assert voided.status_code == 200 and voided.json()["status"] == "void" and voided.json()["number"] == "INV-000001"
    second = session.post("/invoices", json={"client_id": client, "appointment_ids": [appointment]})
    assert second.status_code == 201 and second.json()["number"] == "INV-000002"
    assert session.get(f"/invoices/{first['invoice_id']}").json()["status"] == "void"
    assert api.as_practice().get(f"/invoices/{first['invoice_id']}").status_code == 404


def test_the_night_and_staff_racing_over_http_never_double_invoice(api: Api) -> None:
    import threading

    session = api.as_practice()
    session.put("/practice", json={"name": "Race", "timezone": "America/Chicago", "invoice_creation": "daily"})
    client = session.post("/clients", json={"first_name": "Rae", "last_name": "Client"}).json()["client_id"]
    outcomes: list[int] = []
    nights: list[int] = []
    for day in range(1, 11):
        appointment = _appointment(session, client, f"2026-10-{day:02d}T16:00:00Z", "show")
        staff = threading.Thread(
            target=lambda a=appointment: outcomes.append(
                session.post("/invoices", json={"client_id": client, "appointment_ids": [a]}).status_code
            )
        )
        night = threading.Thread(target=lambda: nights.append(_fire(api, "2026-11-27T06:05:00Z")["failed"]))
        staff.start()
        night.start()
        staff.join()
        night.join()
    assert set(outcomes) <= {201, 409} and nights == [0] * 10
    invoices = session.get(f"/clients/{client}/invoices").json()["invoices"]
    lines = [line["appointment_id"] for invoice in invoices for line in invoice["lines"]]
    assert len(lines) == len(set(lines)) == 10
    numbers = sorted(int(i["number"].removeprefix("INV-")) for i in invoices)
    assert numbers == list(range(1, len(invoices) + 1))
