"""Hostile input over real HTTP, as a careless user or an attacker sends it: every one is a clear 4xx in the error
shape, and nothing is written (the practice's items, schedules and documents, and what GETs answer, are unchanged).

The rules are docs/api.md's "Input rules"; the valid body of each route is accepted afterwards, so each refusal
is down to the hostile part alone.
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from bench.night import partition_items
from billing_lambda.http import MAX_BODY_BYTES
from local.scheduler import list_schedules
from local.stack import LocalStack
from tests.e2e.conftest import Api, ApiSession, appointment_body, book

SETTINGS = {"name": "Hostile Input Practice", "timezone": "America/Chicago", "invoice_creation": "manual"}


@dataclass
class Account:
    """A practice with one client, an uninvoiced appointment and an unpaid invoice; staff and portal sessions."""

    staff: ApiSession
    portal: ApiSession
    client_id: str
    appointment_id: str  # not invoiced yet
    invoice_id: str


def _account(api: Api) -> Account:
    staff = api.as_practice()
    assert staff.put("/practice", json=SETTINGS).status_code == 200
    client_id = staff.post("/clients", json={"first_name": "Hana", "last_name": "Hostile"}).json()["client_id"]
    invoiced = book(staff, client_id, status="show").json()["appointment_id"]
    invoice = staff.post("/invoices", json={"client_id": client_id, "appointment_ids": [invoiced]})
    assert invoice.status_code == 201, invoice.text
    appointment_id = book(staff, client_id, status="show", starts_at="2026-11-21T15:00:00Z").json()["appointment_id"]
    portal = api.as_practice(staff.practice_id, role="client", client_id=client_id)
    return Account(staff, portal, client_id, appointment_id, invoice.json()["invoice_id"])


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"hostile-{uuid.uuid4().hex}"}


def _written(stack: LocalStack, account: Account) -> dict[str, Any]:
    """Everything a request could have changed: the practice's items, every schedule and stored document,
    and what the GETs of the practice, client, calendar, invoices, payments and portal answer."""
    items = partition_items(stack.aws, stack.resolver.physical_name("BillingTable"), account.staff.practice_id)
    bucket = stack.resolver.physical_name("DocumentsBucket")
    objects = stack.aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    schedules = list_schedules(stack.aws.client("scheduler"), stack.server.targets.group_names)
    gets = [
        account.staff.get(path)
        for path in (
            "/practice",
            f"/clients/{account.client_id}",
            f"/clients/{account.client_id}/billing-overview",
            "/appointments?date=2026-11-21",
            f"/clients/{account.client_id}/invoices",
            f"/clients/{account.client_id}/payments",
        )
    ] + [account.portal.get("/portal/invoices"), account.portal.get("/portal/cards")]
    assert all(get.status_code == 200 for get in gets), [get.text for get in gets if get.status_code != 200]
    return {
        "items": sorted(json.dumps(item, sort_keys=True) for item in items),
        "documents": sorted(o["Key"] for page in objects for o in page.get("Contents", [])),
        "schedules": sorted(s["Name"] for s in schedules),
        "answers": [{k: v for k, v in get.json().items() if k != "as_of"} for get in gets],  # as_of: when read
    }


@pytest.fixture
def account(api: Api, stack: LocalStack) -> Iterator[Account]:
    """The account, checked unchanged after the test's hostile requests."""
    opened = _account(api)
    before = _written(stack, opened)
    yield opened
    assert _written(stack, opened) == before, "a refused request wrote something"


def _assert_refused(
    response: requests.Response, status: int, code: str, field: str | None = None, case: object = None
) -> None:
    """``status`` and ``code`` in the error shape (naming ``field`` when given); ``case`` says what was sent."""
    assert response.status_code == status, (case, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] == code, (case, error)
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["details"], list)
    if field is not None:
        assert field in [d["field"] for d in error["details"]], (case, error)


# --- bodies a parser could choke on: refused at the edge of every route that takes one ------------------------


@dataclass
class Route:
    method: str
    path: str
    number_field: str  # where the 5,000-digit number goes
    portal: bool = False

    def valid_body(self, account: Account) -> dict[str, Any]:
        return {
            "/practice": SETTINGS | {"invoice_due_days": 14},
            "/clients": {"first_name": "Ivo", "last_name": "Valid"},
            "/appointments": appointment_body(account.client_id, starts_at="2026-11-22T15:00:00Z"),
            "/invoices": {"client_id": account.client_id, "appointment_ids": [account.appointment_id]},
            "/payments": {"client_id": account.client_id, "amount_cents": 5000, "method": "cash"},
            "/portal/payments": {"amount_cents": 5000, "payment_method_id": "pm_card_visa"},
        }[self.path]

    def send(self, account: Account, body: bytes) -> requests.Response:
        session = account.portal if self.portal else account.staff
        headers = {"content-type": "application/json", **_key()}
        return session.request(self.method, self.path, data=body, headers=headers)


ROUTES = [
    Route("PUT", "/practice", "invoice_due_days"),
    Route("POST", "/clients", "first_name"),
    Route("POST", "/appointments", "fee_cents"),
    Route("POST", "/invoices", "appointment_ids"),
    Route("POST", "/payments", "amount_cents"),
    Route("POST", "/portal/payments", "amount_cents", portal=True),
]


def _with(body: dict[str, Any], field: str, raw: bytes) -> bytes:
    """``body`` as JSON bytes with ``field`` holding ``raw`` exactly as given (which need not be JSON)."""
    return json.dumps(body | {field: "\x00raw"}).encode().replace(b'"\\u0000raw"', raw)


def _hostile_bodies(route: Route, valid: dict[str, Any]) -> list[tuple[bytes, int, str]]:
    first_field = next(iter(valid))
    return [
        (_with(valid, first_field, b'"Ana\xff\xfe"'), 400, "invalid_json"),  # not UTF-8
        (_with(valid, first_field, b"[" * 10_000 + b"]" * 10_000), 400, "invalid_json"),  # RecursionError once
        (_with(valid, route.number_field, b"1" * 5_000), 400, "invalid_json"),  # past Python's int limit
        (_with(valid, first_field, b'"' + b"x" * MAX_BODY_BYTES + b'"'), 413, "body_too_large"),
        (_with(valid, route.number_field, b"NaN"), 400, "invalid_json"),
    ]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_a_body_not_utf8_nested_deep_with_a_huge_number_or_too_large_is_refused(
    api: Api, stack: LocalStack, route: Route
) -> None:
    account = _account(api)
    before = _written(stack, account)
    valid = route.valid_body(account)
    for number, (body, status, code) in enumerate(_hostile_bodies(route, valid)):
        _assert_refused(route.send(account, body), status, code, case=number)
    assert _written(stack, account) == before
    accepted = route.send(account, json.dumps(valid).encode())
    assert accepted.status_code in (200, 201), accepted.text


def test_the_role_is_checked_before_the_body(account: Account) -> None:
    for route in ROUTES:
        wrong = Route(route.method, route.path, route.number_field, portal=not route.portal)
        for body, _, _ in _hostile_bodies(route, route.valid_body(account)):
            _assert_refused(wrong.send(account, body), 403, "wrong_role", case=route.path)


# --- hidden characters in human text ---------------------------------------------------------------------------


def test_hidden_characters_in_any_text_are_422_naming_the_field(account: Account) -> None:
    staff, client_id = account.staff, account.client_id
    for hidden in ("\x00", "\x1b[31m", "\u202e", "\u2066", "\n"):
        sent = {
            "name": staff.put("/practice", json=SETTINGS | {"name": f"Calm{hidden}Minds"}),
            "first_name": staff.post("/clients", json={"first_name": f"Ada{hidden}", "last_name": "Byron"}),
            "last_name": staff.post("/clients", json={"first_name": "Ada", "last_name": f"{hidden}Byron"}),
            "address.line1": staff.post(
                "/clients",
                json={"first_name": "Ada", "last_name": "B", "address": {"line1": f"1{hidden}", "city": "X"}},
            ),
            "service_description": staff.post(
                "/appointments", json=appointment_body(client_id) | {"service_description": f"On{hidden}line"}
            ),
            "reference": staff.post(
                "/payments",
                json={"client_id": client_id, "amount_cents": 5000, "method": "check", "reference": f"#1{hidden}2"},
                headers=_key(),
            ),
        }
        for field, response in sent.items():
            _assert_refused(response, 422, "validation_error", field, case=hidden)


# --- instants and dates ----------------------------------------------------------------------------------------


def test_an_appointment_outside_2000_to_two_years_ahead_or_not_strict_iso_is_422(account: Account) -> None:
    two_years_and_a_week = (datetime.now(UTC) + timedelta(days=737)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for starts_at in (
        "0001-01-01T00:00:00Z",  # an OverflowError in local-date arithmetic once
        "1900-01-01T15:00:00Z",
        "9999-12-31T23:59:59Z",
        two_years_and_a_week,
        1795791600,  # an epoch
        "1795791600",
        "2026-11-27T15:00:00",  # naive
        "2026-11-27",
        "2026-11-27 15:00:00+00:00",
    ):
        body = appointment_body(account.client_id) | {"starts_at": starts_at}
        _assert_refused(account.staff.post("/appointments", json=body), 422, "validation_error", "starts_at", starts_at)


def test_a_date_of_birth_before_1900_or_in_the_future_is_422(account: Account) -> None:
    the_day_after_tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    for born in ("1899-12-31", "2099-01-01", the_day_after_tomorrow, 0):
        body = {"first_name": "Ada", "last_name": "Byron", "date_of_birth": born}
        _assert_refused(account.staff.post("/clients", json=body), 422, "validation_error", "date_of_birth", born)


def test_document_and_export_ranges_outside_the_service_dates_are_422(account: Account) -> None:
    staff, client_id = account.staff, account.client_id
    for start, end in (("0001-01-01", "0001-01-02"), ("9999-12-30", "9999-12-31"), (0, 1)):
        period = {"from": start, "to": end}
        for path, body in (
            (f"/clients/{client_id}/statements", period),
            (f"/clients/{client_id}/superbills", period),
            (f"/clients/{client_id}/billing-documents/export", period | {"types": ["invoice"]}),
            ("/exports/finance", period),
        ):
            _assert_refused(staff.post(path, json=body), 422, "validation_error", "from", (path, start))
        statement = account.portal.get(f"/portal/statements?from={start}&to={end}")
        _assert_refused(statement, 422, "validation_error", "from", start)


def test_day_queries_outside_the_service_dates_are_422(account: Account) -> None:
    for day in ("0001-01-01", "9999-12-31", "1795737600"):
        for path in ("/appointments", "/autopay/preview", "/autopay/runs"):
            _assert_refused(account.staff.get(f"{path}?date={day}"), 422, "validation_error", "date", (path, day))


# --- time zones --------------------------------------------------------------------------------------------------


def test_a_time_zone_that_is_not_an_iana_region_is_422_and_gets_no_schedule(account: Account) -> None:
    for zone in ("localtime", "Factory", "posixrules", "EST5EDT", "US/Eastern", "Etc/GMT+5", "../../etc/passwd"):
        response = account.staff.put("/practice", json=SETTINGS | {"timezone": zone})
        _assert_refused(response, 422, "validation_error", "timezone", zone)
