"""Billing documents through the local server: presigned PDFs from the embedded S3, render caching by version,
tenancy, superbill refusals and finance exports (on demand and from the nightly schedule)."""

import csv
import io
import shutil
import uuid
from typing import Any

import boto3
import pytest

from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book, download, fire, pdf_text

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (pdftotext)")

BUCKET = "documentsbucket"  # the local name of DocumentsBucket


def _practice(api: Api, **settings: Any) -> ApiSession:
    session = api.as_practice()
    body = {
        "name": "Harbor Therapy",
        "timezone": "America/New_York",
        "invoice_creation": "manual",
        "npi": "1234567893",
        "tax_id": "98-7654321",
    } | settings
    assert session.put("/practice", json=body).status_code == 200
    return session


def _client(session: ApiSession, first: str = "Grace", **details: Any) -> str:
    body = {"first_name": first, "last_name": "Hopper", "diagnosis_codes": ["F41.1"]} | details
    response = session.post("/clients", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["client_id"])


def _invoice(session: ApiSession, client_id: str, starts_at: str = "2026-11-20T15:00:00Z") -> str:
    appointment = book(session, client_id, starts_at=starts_at, status="show").json()["appointment_id"]
    response = session.post("/invoices", json={"client_id": client_id, "appointment_ids": [appointment]})
    assert response.status_code == 201, response.text
    return str(response.json()["invoice_id"])


def _objects(prefix: str) -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_an_invoice_pdf_is_cached_until_a_payment_makes_it_paid(api: Api) -> None:
    session = _practice(api)
    client_id = _client(session)
    invoice_id = _invoice(session, client_id)
    first = session.get(f"/invoices/{invoice_id}/pdf")
    assert first.status_code == 200, first.text
    assert "Grace" not in first.json()["url"] and "Hopper" not in first.json()["url"]
    text = pdf_text(download(first.json()["url"]))
    assert "Grace Hopper" in text and "Harbor Therapy" in text and "Status Unpaid" in text and "PAID" not in text

    prefix = f"documents/{session.practice_id}/invoice/{invoice_id}/"
    assert len(_objects(prefix)) == 1
    again = session.get(f"/invoices/{invoice_id}/pdf")
    assert again.status_code == 200 and len(_objects(prefix)) == 1  # not rendered again

    paid = session.post(
        "/payments",
        json={"client_id": client_id, "amount_cents": 15000, "method": "cash", "invoice_ids": [invoice_id]},
        headers={"Idempotency-Key": f"key-{uuid.uuid4().hex}"},
    )
    assert paid.status_code == 201, paid.text
    after = session.get(f"/invoices/{invoice_id}/pdf")
    assert len(_objects(prefix)) == 2
    assert "Status PAID" in pdf_text(download(after.json()["url"]))

    receipt = session.get(f"/payments/{paid.json()['payment_id']}/receipt")
    assert receipt.status_code == 200, receipt.text
    assert "Receipt" in pdf_text(download(receipt.json()["url"]))


def test_another_practices_documents_are_not_found(api: Api) -> None:
    owner = _practice(api)
    client_id = _client(owner)
    invoice_id = _invoice(owner, client_id)
    stranger = _practice(api)
    assert stranger.get(f"/invoices/{invoice_id}/pdf").status_code == 404
    period = {"from": "2026-11-01", "to": "2026-11-30"}
    assert stranger.post(f"/clients/{client_id}/statements", json=period).status_code == 404
    portal = api.as_practice(owner.practice_id, role="client", client_id="cli_not_the_owner")
    assert portal.get(f"/portal/invoices/{invoice_id}/pdf").status_code == 404
    own = api.as_practice(owner.practice_id, role="client", client_id=client_id)
    assert own.get(f"/portal/invoices/{invoice_id}/pdf").status_code == 200


def test_a_superbill_without_npi_tax_id_or_diagnoses_is_409_naming_them(api: Api) -> None:
    session = _practice(api, npi=None, tax_id=None)
    client_id = _client(session, diagnosis_codes=[])
    response = session.post(f"/clients/{client_id}/superbills", json={"from": "2026-11-01", "to": "2026-11-30"})
    assert response.status_code == 409, response.text
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert fields == ["practice.npi", "practice.tax_id", "client.diagnosis_codes"]


def test_statement_and_series_export(api: Api) -> None:
    session = _practice(api, license_number="LMHC-77", license_state="NY", place_of_service="11")
    client_id = _client(session)
    _invoice(session, client_id, "2026-10-20T15:00:00Z")
    _invoice(session, client_id, "2026-11-20T15:00:00Z")
    statement = session.post(f"/clients/{client_id}/statements", json={"from": "2026-10-01", "to": "2026-12-31"})
    assert statement.status_code == 201, statement.text
    overview = session.get(f"/clients/{client_id}/billing-overview").json()
    assert statement.json()["closing_balance_cents"] == overview["balance_cents"] == 30000
    export = session.post(
        f"/clients/{client_id}/billing-documents/export",
        json={"from": "2026-10-01", "to": "2026-12-31", "types": ["invoice", "statement", "superbill"]},
    )
    assert export.status_code == 201, export.text
    assert export.json()["documents"] >= 3
    text = pdf_text(download(export.json()["url"]))
    assert "Statement" in text and "Superbill" in text and "LMHC-77 (NY)" in text


def test_finance_exports_on_demand_and_nightly(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    client_id = _client(session, first='=HYPERLINK("x")')
    invoice_id = _invoice(session, client_id)
    _invoice(session, client_id, "2026-11-21T15:00:00Z")
    paid = session.post(
        "/payments",
        json={"client_id": client_id, "amount_cents": 20000, "method": "check", "reference": "@SUM(A1)"},
        headers={"Idempotency-Key": f"key-{uuid.uuid4().hex}"},
    )
    assert paid.status_code == 201, paid.text
    on_demand = session.post("/exports/finance", json={"from": "2026-01-01", "to": "2026-12-31"})
    assert on_demand.status_code == 201, on_demand.text
    rows = list(csv.DictReader(io.StringIO(download(on_demand.json()["invoices_url"]).decode())))
    payments = list(csv.DictReader(io.StringIO(download(on_demand.json()["payments_url"]).decode())))
    assert rows[0]["invoice_id"] == invoice_id and all(r["client_name"].startswith("'=") for r in rows)
    assert payments[0]["reference"] == "'@SUM(A1)" and payments[0]["allocations"] == "INV-000001:15000;INV-000002:5000"
    api_invoices = session.get(f"/clients/{client_id}/invoices").json()["invoices"]
    api_payments = session.get(f"/clients/{client_id}/payments").json()["payments"]
    for column, field in (
        ("total_cents", "total_cents"),
        ("paid_cents", "paid_cents"),
        ("balance_cents", "balance_cents"),
    ):
        assert sum(int(r[column]) for r in rows) == sum(i[field] for i in api_invoices), column
    assert sum(int(p["gross_cents"]) for p in payments) == sum(p["amount_cents"] for p in api_payments) == 20000

    fire(api, "finance_export", "America/New_York", "2027-01-02T06:15:00Z")  # within the service dates
    nightly = _objects(f"exports/{session.practice_id}/finance/2027-01-01--2027-01-01/")
    assert [key.rsplit("/", 1)[1] for key in nightly] == ["invoices.csv", "payments.csv"]
