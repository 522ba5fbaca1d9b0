"""Faults injected into the functions' worker processes, seen over real HTTP: an AWS call that outlasts the SDK's
retries is a 503 in the one error shape with nothing half-written, and sending the same request again (the
same Idempotency-Key) completes it exactly once. The faults are armed on each worker's own boto3 client
(`tests.support.faults.arm`); docs/architecture.md, "Failure handling", lists the designed outcomes."""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, book

SETTLES = {"kind": "payment", "status": "succeeded"}


@contextmanager
def failing(
    stack: LocalStack, service: str, operation: str, error: str, puts: dict[str, str] | None = None
) -> Iterator[None]:
    """Within the block, the first call of ``operation`` (that ``puts`` matches) fails on every attempt."""
    with stack.server.functions.patched(
        "billing_lambda.aws_clients:client", "tests.support.faults:arm", service, operation, error, puts, 0
    ):
        yield


def _unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "error": {"code": "service_unavailable", "message": response.json()["error"]["message"], "details": []}
    }


def _practice(api: Api) -> ApiSession:
    session = api.as_practice()
    settings = {"name": "Fault Practice", "timezone": "America/Chicago", "invoice_creation": "manual"}
    assert session.put("/practice", json=settings).status_code == 200
    return session


def _invoiced_client(session: ApiSession, fee: int, card: str | None = None) -> tuple[str, str]:
    client_id = session.post("/clients", json={"first_name": "Pat", "last_name": "Client"}).json()["client_id"]
    if card:
        assert session.post(f"/clients/{client_id}/cards", json={"payment_method_id": card}).status_code == 201
    appointment = book(session, client_id, starts_at="2026-11-20T16:00:00Z", fee_cents=fee, status="show")
    invoice = session.post(
        "/invoices", json={"client_id": client_id, "appointment_ids": [appointment.json()["appointment_id"]]}
    )
    assert invoice.status_code == 201, invoice.text
    return client_id, invoice.json()["invoice_id"]


def _objects(stack: LocalStack, prefix: str) -> list[str]:
    bucket = stack.resolver.physical_name("DocumentsBucket")
    listed = stack.aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))


def test_a_card_payment_whose_books_are_throttled_after_the_charge_is_a_503_and_its_retry_records_one_charge(
    api: Api, stack: LocalStack
) -> None:
    session = _practice(api)
    client_id, invoice_id = _invoiced_client(session, 12_000, card="pm_card_visa")
    body: dict[str, Any] = {"client_id": client_id, "amount_cents": 12_000, "method": "card_on_file"}
    key = {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}
    with failing(stack, "dynamodb", "TransactWriteItems", "throttled", SETTLES):
        _unavailable(session.post("/payments", json=body, headers=key))
    assert stack.stripe is not None
    [charged] = [pi for pi in stack.stripe.payment_intents() if pi["metadata"].get("client_id") == client_id]
    assert charged["status"] == "succeeded"  # the money moved; the books do not show it yet, nor half of it
    assert session.get(f"/invoices/{invoice_id}").json()["balance_cents"] == 12_000
    retry = session.post("/payments", json=body, headers=key)
    assert retry.status_code == 201, retry.text
    assert retry.json()["payment_id"] == charged["metadata"]["payment_id"]
    assert [pi["id"] for pi in stack.stripe.payment_intents() if pi["metadata"].get("client_id") == client_id] == [
        charged["id"]
    ]
    assert [p["payment_id"] for p in session.get(f"/clients/{client_id}/payments").json()["payments"]] == [
        retry.json()["payment_id"]
    ]
    assert session.get(f"/clients/{client_id}/billing-overview").json()["balance_cents"] == 0


def test_an_invoice_pdf_s3_refuses_is_a_503_with_no_object_and_the_next_request_renders_it(
    api: Api, stack: LocalStack
) -> None:
    session = _practice(api)
    _, invoice_id = _invoiced_client(session, 15_000)
    prefix = f"documents/{session.practice_id}/invoice/{invoice_id}/"
    with failing(stack, "s3", "PutObject", "s3_unavailable"):
        _unavailable(session.get(f"/invoices/{invoice_id}/pdf"))
    assert _objects(stack, prefix) == []
    rendered = session.get(f"/invoices/{invoice_id}/pdf")
    assert rendered.status_code == 200, rendered.text
    [key] = _objects(stack, prefix)
    assert key in rendered.json()["url"]


def test_a_finance_export_s3_refuses_is_a_503_and_the_next_request_writes_both_files(
    api: Api, stack: LocalStack
) -> None:
    session = _practice(api)
    _invoiced_client(session, 15_000)
    period = {"from": "2026-11-01", "to": "2026-11-30"}
    with failing(stack, "s3", "PutObject", "s3_unavailable"):
        _unavailable(session.post("/exports/finance", json=period))
    exported = session.post("/exports/finance", json=period)
    assert exported.status_code == 201, exported.text
    prefix = f"exports/{session.practice_id}/finance/2026-11-01--2026-11-30/"
    assert _objects(stack, prefix) == ["invoices.csv", "payments.csv"]
