"""The PHI canary: a client whose details cannot occur by chance goes through every capability over real HTTP,
and none of those details turns up anywhere but in the documents and the finance CSVs.

Looked at afterwards: every line the functions' processes wrote (Powertools log lines, EMF metric lines), their
trace annotations and metadata, the parameters of every AWS call they made but DynamoDB's (SQS message bodies,
S3 keys and object metadata, Scheduler schedules; `local.capture`), every request the Stripe emulator received,
the idempotency records in both tables, every S3 key, every schedule, and every presigned URL handed out. The
details are matched case-insensitively and in the forms they are commonly rewritten to (the date of birth as
``07/14/1961`` or ``19610714``, the phone as bare digits, URL-encoded text).
"""

import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import pytest
import requests

from local.capture import read_captured
from local.scheduler import list_schedules
from local.stack import LocalStack
from tests.e2e.conftest import (
    Api,
    ApiSession,
    book,
    download,
    fire,
    idempotency_key,
    pdf_text,
    refund_at_stripe,
)

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (pdftotext)")

ZONE = "America/Denver"  # no other end-to-end test uses it: saving the practice creates its schedules here
# The sessions' month, and a year on: the clock dates payments, and the documents and CSVs should list them.
PERIOD = {"from": "2026-11-01", "to": "2027-10-31"}

CANARY_CLIENT = {
    "first_name": "Zebulon",
    "last_name": "Canaryfield",
    "email": "zebulon.canary@example.org",
    "phone": "+1 (555) 014-7263",
    "date_of_birth": "1961-07-14",
    "address": {
        "line1": "4471 Quillfeather Lane",
        "line2": "Unit Xylofen 9",
        "city": "Marrowby Heights",
        "state": "MT",
        "postal_code": "59871-4403",
    },
    "diagnosis_codes": ["F43.23"],
}

# Each detail in the forms it would take in a log line, a key or a URL (matched lower-cased).
CANARY_SIGNS = {
    "name": ("zebulon", "canaryfield"),
    "email": ("zebulon.canary@example.org", "zebulon.canary"),
    "phone": ("(555) 014-7263", "555-014-7263", "5550147263"),
    "date of birth": (
        "1961-07-14",
        "07/14/1961",
        "7/14/1961",
        "14/07/1961",
        "19610714",
        "jul 14, 1961",
        "july 14, 1961",
    ),
    "address": ("quillfeather", "xylofen", "marrowby", "59871-4403"),
    "diagnosis": ("f43.23",),
}


def canary_signs_in(text: str) -> list[str]:
    """The canary's details found in ``text`` (as written, or URL-decoded), named by detail and form."""
    lowered = text.lower()
    haystack = f"{lowered}\n{unquote_plus(lowered)}"
    return [f"{detail} ({sign})" for detail, signs in CANARY_SIGNS.items() for sign in signs if sign in haystack]


@dataclass
class Journey:
    """What the canary's trip handed out: presigned URLs, and the text of each document they led to."""

    urls: list[str] = field(default_factory=list)
    documents: dict[str, str] = field(default_factory=dict)

    def pdf(self, name: str, response: requests.Response) -> None:
        """Keep a document link answered by the API, and the text of the PDF behind it."""
        assert response.status_code in (200, 201), response.text
        url = response.json()["url"]
        self.urls.append(url)
        self.documents[name] = pdf_text(download(url))

    def csvs(self, name: str, response: requests.Response) -> None:
        """Keep the finance export links answered by the API, and the CSVs behind them."""
        assert response.status_code == 201, response.text
        for column in ("invoices_url", "payments_url"):
            url = response.json()[column]
            self.urls.append(url)
            self.documents[f"{name} {column}"] = download(url).decode()


def test_the_canary_clients_details_reach_the_documents_and_nothing_else(api: Api, stack: LocalStack) -> None:
    session = _practice(api)
    created = session.post("/clients", json=CANARY_CLIENT)
    assert created.status_code == 201, created.text
    client_id = str(created.json()["client_id"])
    assert session.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_visa"}).status_code == 201
    journey = Journey()

    card_payment = _invoices_payments_declines_and_refunds(session, stack, client_id)
    _the_night(api, session, client_id)
    portal_payment = _the_portal(api, session, client_id, journey)
    _documents(session, client_id, card_payment, journey)
    _webhooks_for_a_refund_and_a_dispute_made_at_stripe(stack, card_payment)
    fire(api, "finance_export", ZONE, "2026-11-26T10:00:00Z")

    stored = session.get(f"/clients/{client_id}").json()
    assert stored["phone"] == CANARY_CLIENT["phone"]  # no document prints the phone: it is kept, and that is all
    shown = canary_signs_in(" ".join(journey.documents.values()))
    for detail in CANARY_SIGNS.keys() - {"phone"}:
        assert any(sign.startswith(detail) for sign in shown), f"the documents never show the {detail}"
    for name, text in journey.documents.items():
        assert "Zebulon Canaryfield" in text, f"{name} does not name the client"

    places = list(_what_left_the_functions(stack, journey))
    _assert_every_outlet_was_seen(places, str(session.practice_id), client_id, portal_payment)
    leaks = [f"{where}: {', '.join(signs)}: {text[:300]}" for where, text in places if (signs := canary_signs_in(text))]
    assert leaks == [], "PHI left the functions:\n" + "\n".join(leaks[:20])


# ---------------------------------------------------------------- the trip


def _practice(api: Api) -> ApiSession:
    session = api.as_practice()
    settings = {
        "name": "Canary Counselling",
        "timezone": ZONE,
        "invoice_creation": "daily",
        "autopay_enabled": True,
        "npi": "1234567893",
        "tax_id": "98-7654321",
    }
    assert session.put("/practice", json=settings).status_code == 200
    return session


def _appointment(session: ApiSession, client_id: str, day: int, fee: int) -> str:
    response = book(session, client_id, starts_at=f"2026-11-{day:02d}T17:00:00Z", fee_cents=fee, status="show")
    assert response.status_code == 201, response.text
    return str(response.json()["appointment_id"])


def _invoice(session: ApiSession, client_id: str, day: int, fee: int) -> str:
    appointment = _appointment(session, client_id, day, fee)
    response = session.post("/invoices", json={"client_id": client_id, "appointment_ids": [appointment]})
    assert response.status_code == 201, response.text
    return str(response.json()["invoice_id"])


def _invoices_payments_declines_and_refunds(session: ApiSession, stack: LocalStack, client_id: str) -> str:
    """A manual invoice, a card payment at the time of service, a declined one and a refund: the card payment."""
    _invoice(session, client_id, 16, 12000)
    paid = session.post(
        f"/appointments/{_appointment(session, client_id, 17, 15000)}/invoice-and-payment",
        json={"method": "card_on_file"},
        headers=idempotency_key(),
    )
    assert paid.status_code == 201, paid.text
    assert stack.stripe is not None
    stack.stripe.decline_next_charge(decline_code="insufficient_funds")
    declined = session.post(
        f"/appointments/{_appointment(session, client_id, 18, 9000)}/invoice-and-payment",
        json={"method": "card_on_file"},
        headers=idempotency_key(),
    )
    assert declined.status_code == 402 and declined.json()["decline_code"] == "insufficient_funds"
    payment_id = str(paid.json()["payment"]["payment_id"])
    refund = session.post(f"/payments/{payment_id}/refunds", json={"amount_cents": 5000}, headers=idempotency_key())
    assert refund.status_code == 201, refund.text
    assert stack.stripe.wait_for_webhooks()
    return payment_id


def _the_night(api: Api, session: ApiSession, client_id: str) -> None:
    """Enrolled in AutoPay, a session left to daily invoicing; the night invoices it and charges the balance."""
    assert session.put(f"/clients/{client_id}/autopay", json={"enabled": True}).status_code == 200
    _appointment(session, client_id, 24, 8000)
    preview = session.get("/autopay/preview", params={"date": "2026-11-25"})
    assert preview.status_code == 200 and [c["client_id"] for c in preview.json()["charges"]] == [client_id]
    assert fire(api, "daily_invoices", ZONE, "2026-11-25T07:05:00Z")["failed"] == 0
    assert fire(api, "autopay", ZONE, "2026-11-25T10:30:00Z")["failed"] == 0
    runs = session.get("/autopay/runs", params={"date": "2026-11-25"}).json()["outcomes"]
    assert [(o["client_id"], o["outcome"]) for o in runs] == [(client_id, "charged")]
    assert session.get(f"/clients/{client_id}/billing-overview").json()["balance_cents"] == 0


def _the_portal(api: Api, session: ApiSession, client_id: str, journey: Journey) -> str:
    """The client pays a new invoice with a new card, fetches their documents and ends AutoPay: the payment."""
    invoice_id = _invoice(session, client_id, 25, 7000)
    portal = api.as_practice(session.practice_id, role="client", client_id=client_id)
    assert portal.get("/portal/invoices").json()["balance_cents"] == 7000
    paid = portal.post("/portal/payments", json={"payment_method_id": "pm_card_mastercard"}, headers=idempotency_key())
    assert paid.status_code == 201, paid.text
    payment_id = str(paid.json()["payment_id"])
    assert portal.get("/portal/cards").status_code == 200
    journey.pdf("portal invoice", portal.get(f"/portal/invoices/{invoice_id}/pdf"))
    journey.pdf("portal receipt", portal.get(f"/portal/payments/{payment_id}/receipt"))
    journey.pdf("portal statement", portal.get("/portal/statements", params=PERIOD))
    assert portal.put("/portal/autopay", json={"enabled": False}).status_code == 200
    return payment_id


def _documents(session: ApiSession, client_id: str, payment_id: str, journey: Journey) -> None:
    """Every document staff can make for the client, and the finance export."""
    invoices = session.get(f"/clients/{client_id}/invoices").json()["invoices"]
    journey.pdf("invoice", session.get(f"/invoices/{invoices[-1]['invoice_id']}/pdf"))
    journey.pdf("receipt", session.get(f"/payments/{payment_id}/receipt"))
    journey.pdf("statement", session.post(f"/clients/{client_id}/statements", json=PERIOD))
    journey.pdf("superbill", session.post(f"/clients/{client_id}/superbills", json=PERIOD))
    every_type = PERIOD | {"types": ["invoice", "receipt", "statement", "superbill"]}
    journey.pdf("series", session.post(f"/clients/{client_id}/billing-documents/export", json=every_type))
    journey.csvs("finance", session.post("/exports/finance", json=PERIOD))
    rows = csv.DictReader(io.StringIO(journey.documents["finance invoices_url"]))
    assert {row["client_name"] for row in rows} == {"Zebulon Canaryfield"}


def _webhooks_for_a_refund_and_a_dispute_made_at_stripe(stack: LocalStack, payment_id: str) -> None:
    """Made in Stripe's dashboard, they reach the API only as webhooks (which read the payment back)."""
    assert stack.stripe is not None
    [intent] = [pi for pi in stack.stripe.payment_intents() if pi["metadata"].get("payment_id") == payment_id]
    refund_at_stripe(stack, intent["id"], 1000)
    stack.stripe.create_dispute(intent["latest_charge"], amount=2000)
    assert stack.stripe.wait_for_webhooks()
    reconciled = [  # this charge's only: other tests share the emulator
        d
        for d in stack.stripe.webhook_deliveries()
        if d["type"] in ("charge.refunded", "charge.dispute.created") and d["charge"] == intent["latest_charge"]
    ]
    assert reconciled and all(d["status"] == 200 for d in reconciled), reconciled


# ---------------------------------------------------------------- where PHI must not be


def _what_left_the_functions(stack: LocalStack, journey: Journey) -> Iterator[tuple[str, str]]:
    """Every place outside the documents that the trip reached, as (where, what it holds)."""
    assert stack.capture is not None and stack.stripe is not None
    for record in read_captured(stack.capture):
        yield f"{record['function']} {record['kind']}", json.dumps(record)
    for request in stack.stripe.request_log():
        yield f"Stripe {request['method']} {request['path']}", json.dumps(request)
    for item in _items(stack, "IdempotencyTable"):
        yield "IdempotencyTable", json.dumps(item, default=str)
    keys_used = {
        "FilterExpression": "begins_with(SK, :kind)",
        "ExpressionAttributeValues": {":kind": {"S": "IDEMPOTENCY#"}},
    }
    for item in _items(stack, "BillingTable", **keys_used):
        yield "BillingTable idempotency record", json.dumps(item, default=str)
    for key in _s3_keys(stack):
        yield "S3 key", key
    for schedule in list_schedules(stack.aws.client("scheduler"), stack.server.targets.group_names):
        yield f"schedule {schedule['Name']}", json.dumps(schedule, default=str)
    for url in journey.urls:
        yield "presigned URL", url


def _items(stack: LocalStack, table: str, **only: Any) -> Iterator[dict[str, Any]]:
    """Every item of a table, or those a filter keeps (a scan: fine for a look at the embedded DynamoDB)."""
    paginator = stack.aws.client("dynamodb").get_paginator("scan")
    for page in paginator.paginate(TableName=stack.resolver.physical_name(table), **only):
        yield from page["Items"]


def _s3_keys(stack: LocalStack) -> Iterator[str]:
    paginator = stack.aws.client("s3").get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=stack.resolver.physical_name("DocumentsBucket")):
        yield from (o["Key"] for o in page.get("Contents", []))


def _assert_every_outlet_was_seen(
    places: list[tuple[str, str]], practice_id: str, client_id: str, payment_id: str
) -> None:
    """A capture that saw nothing would find no PHI either: each outlet must hold a trace of the trip."""
    expected = {  # outlet: where it is recorded, then what shows it was (all of it in one record)
        "a Powertools log line": (" output", '\\"function_request_id\\":', payment_id),
        "an EMF metric line": (" output", "CloudWatchMetrics"),
        "a trace annotation": (" trace", '"put_annotation"'),
        "an SQS message body": (" aws", '"MessageBody"', practice_id),
        "an S3 object written": (" aws", '"PutObject"', practice_id),
        "a schedule created": (" aws", '"CreateSchedule"', ZONE),
        "the client's requests to Stripe": ("Stripe ", client_id),
        "the portal payment's request to Stripe": ("Stripe ", payment_id),
        "a payment's idempotency record": ("BillingTable idempotency record", practice_id),
        "a webhook's idempotency record": ("IdempotencyTable", "handle_event"),
        "the documents' S3 keys": ("S3 key", practice_id),
        "a presigned URL": ("presigned URL", practice_id),
    }
    missing = [
        outlet
        for outlet, (place, *traces) in expected.items()
        if not any(place in where and all(trace in text for trace in traces) for where, text in places)
    ]
    assert missing == [], f"nothing recorded for: {', '.join(missing)}"
