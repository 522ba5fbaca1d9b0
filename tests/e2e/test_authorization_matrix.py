"""The authorization matrix: every HTTP route in template.yaml, called by every kind of caller.

Rows are the template's routes, read with `local.template` (never listed by hand); columns are callers: no
token, forged tokens (another secret, claims edited after signing, ``alg: none``), an expired token, a token
naming no practice, the wrong role, another practice, another client of the same practice, and the owner. A
route the matrix does not describe fails, and so does an entry whose route is gone: adding a route means
deciding here who may call it. Another tenant's object gets exactly the answer an id that never existed gets,
and no refusal carries the owner's data. The Stripe webhook has no JWT: its rows are about its signature.

The data is made once per module through the API, as users would make it; a success that uses data up (a
void, a removed card, an invoiced appointment) first makes its own, so no cell depends on the order they run in.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

import pytest
import requests

from local.stack import LocalStack
from local.template import HttpRoute, load_template
from local.tokens import make_token
from tests.e2e.conftest import Api, ApiSession, book
from tests.e2e.iam_audit import IamAuditLog
from tests.support.tokens import claims_of, unsigned, with_claims_changed, without_claim

DAY = "2026-11-20"
PERIOD = {"from": "2026-11-01", "to": "2026-11-30"}
PRACTICE: dict[str, Any] = {
    "name": "Matrix Practice",
    "timezone": "America/Chicago",
    "invoice_creation": "manual",
    "autopay_enabled": True,
    "npi": "1234567893",  # a superbill needs the NPI, the tax id and diagnoses
    "tax_id": "98-7654321",
}
# Distinctive enough that finding one in an answer to someone else can only mean the owner's data leaked.
OWNER_NAME = {"first_name": "Zephyrine", "last_name": "Quillfeather"}
OTHER_NAME = {"first_name": "Bartholomew", "last_name": "Ironside"}


class Caller(StrEnum):
    """Who calls: the columns of the matrix."""

    ANONYMOUS = "no token"
    WRONG_SECRET = "signed with another secret"
    EDITED_CLAIMS = "claims edited after signing"
    ALG_NONE = "alg none"
    EXPIRED = "expired"
    NO_PRACTICE = "no practice claim"
    WRONG_ROLE = "wrong role"
    OTHER_PRACTICE = "another practice"
    OTHER_CLIENT = "another client of the practice"
    OWNER = "owner"


# The authorizer refuses these before any function runs.
NOT_AUTHENTICATED = {Caller.ANONYMOUS, Caller.WRONG_SECRET, Caller.EDITED_CLAIMS, Caller.ALG_NONE, Caller.EXPIRED}

HIDDEN = "hidden"
"""Another tenant's object: 404, and the same answer as for an id that never existed."""

Outcome = int | str  # a status code, or HIDDEN


@dataclass(frozen=True)
class World:
    """The owner's practice and objects; a route's path parameters are filled from these fields by name."""

    practice_id: str
    client_id: str = ""
    appointment_id: str = ""
    invoice_id: str = ""
    payment_id: str = ""
    card_id: str = ""

    def phantom(self) -> World:
        """The same practice, and ids of the same shape that name no object: what "not found" looks like."""
        objects = {name: value for name, value in asdict(self).items() if name != "practice_id"}
        return replace(self, **{name: re.sub(r"[0-9a-f]{32}$", uuid.uuid4().hex, id_) for name, id_ in objects.items()})


@dataclass(frozen=True)
class Cast:
    """Everyone the matrix needs: the owner's practice (its staff and the owner's world), another client of
    that practice, and another practice."""

    api: ApiSession
    staff: ApiSession
    world: World
    other_client_id: str
    other_practice_id: str


@dataclass(frozen=True)
class Request:
    """What a route is sent besides its path and token."""

    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    idempotent: bool = False  # payments and refunds need an Idempotency-Key


@dataclass(frozen=True)
class Entry:
    """One row: the request, the owner's success status, and what other tenants get.

    ``other_practice`` and (on portal routes; a client token on a staff route is always 403) ``other_client``
    are HIDDEN when the request names the owner's objects, else the status the caller gets for acting on their
    own account. ``fresh`` makes the data the owner's success uses up.
    """

    request: Callable[[World], Request]
    success: int
    other_practice: Outcome = HIDDEN
    other_client: Outcome = HIDDEN
    fresh: Callable[[ApiSession, World], World] | None = None


# ---------------------------------------------------------------- data, made through the API as users would


def _created(response: requests.Response, name: str) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()[name])


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"matrix-{uuid.uuid4().hex}"}


def _appointment(staff: ApiSession, world: World) -> World:
    """``world`` with a new, attended, uninvoiced session of its client."""
    booked = book(staff, world.client_id, starts_at=f"{DAY}T16:00:00Z", status="show")
    return replace(world, appointment_id=_created(booked, "appointment_id"))


def _invoice(staff: ApiSession, world: World) -> World:
    """``world`` with a new unpaid invoice (of a new session)."""
    world = _appointment(staff, world)
    body = {"client_id": world.client_id, "appointment_ids": [world.appointment_id]}
    return replace(world, invoice_id=_created(staff.post("/invoices", json=body), "invoice_id"))


def _card(staff: ApiSession, world: World) -> World:
    """``world`` with a new card on file."""
    card = staff.post(f"/clients/{world.client_id}/cards", json={"payment_method_id": "pm_card_visa"})
    return replace(world, card_id=_created(card, "card_id"))


def _card_payment(staff: ApiSession, world: World) -> World:
    """``world`` with part of its invoice paid by its card."""
    body: dict[str, Any] = {"client_id": world.client_id, "amount_cents": 5000, "method": "card_on_file"}
    body |= {"card_id": world.card_id, "invoice_ids": [world.invoice_id]}
    payment = staff.post("/payments", json=body, headers=_key())
    return replace(world, payment_id=_created(payment, "payment_id"))


def _practice(api: Api) -> ApiSession:
    staff = api.as_practice()
    assert staff.put("/practice", json=PRACTICE).status_code == 200
    return staff


def _client(staff: ApiSession, details: dict[str, Any]) -> str:
    return _created(staff.post("/clients", json=details), "client_id")


def _owner(staff: ApiSession) -> World:
    """A client with a card, an invoice partly paid by card, an uninvoiced session, and AutoPay on (so the
    preview has something to leak)."""
    world = World(str(staff.practice_id), _client(staff, OWNER_NAME | {"diagnosis_codes": ["F41.1"]}))
    world = _appointment(staff, _card_payment(staff, _invoice(staff, _card(staff, world))))
    autopay = staff.put(f"/clients/{world.client_id}/autopay", json={"enabled": True, "card_id": world.card_id})
    assert autopay.status_code == 200, autopay.text
    return world


@pytest.fixture(scope="module")
def cast(stack: LocalStack, iam_audit: IamAuditLog) -> Iterator[Cast]:
    """The matrix's data, made once per module (and held to IAM, as each test is)."""
    before = iam_audit.snapshot()
    with Api(stack.url) as api:
        staff = _practice(api)
        made = Cast(api, staff, _owner(staff), _client(staff, OTHER_NAME), str(_practice(api).practice_id))
        assert iam_audit.since(before) == []
        yield made


# ---------------------------------------------------------------- the matrix


def _nothing(_: World) -> Request:
    return Request()


def _day(_: World) -> Request:
    return Request(params={"date": DAY})


def _period(_: World) -> Request:
    return Request(json=PERIOD)


def _card_to_add(_: World) -> Request:
    return Request(json={"payment_method_id": "pm_card_visa"})


def _autopay_on(world: World) -> Request:
    return Request(json={"enabled": True, "card_id": world.card_id})


def _session_of(world: World) -> Request:
    start = f"{DAY}T18:00:00Z"
    body = {"client_id": world.client_id, "starts_at": start, "duration_minutes": 50, "service_code": "90837"}
    return Request(json=body | {"fee_cents": 100})


def _invoice_of(world: World) -> Request:
    return Request(json={"client_id": world.client_id, "appointment_ids": [world.appointment_id]})


def _cash(world: World) -> Request:
    return Request(json={"client_id": world.client_id, "amount_cents": 100, "method": "cash"}, idempotent=True)


def _portal_payment(world: World) -> Request:
    return Request(json={"invoice_ids": [world.invoice_id], "card_id": world.card_id}, idempotent=True)


MATRIX: dict[str, Entry] = {
    # Staff routes. Those naming no object act on the caller's own practice, whoever calls.
    "PUT /practice": Entry(lambda _: Request(json=PRACTICE), 200, other_practice=200),
    "GET /practice": Entry(_nothing, 200, other_practice=200),
    "POST /clients": Entry(lambda _: Request(json=OTHER_NAME), 201, other_practice=201),
    "GET /clients/{client_id}": Entry(_nothing, 200),
    "GET /clients/{client_id}/billing-overview": Entry(_nothing, 200),
    "POST /appointments": Entry(_session_of, 201),
    "GET /appointments": Entry(_day, 200, other_practice=200),
    "PATCH /appointments/{appointment_id}": Entry(lambda _: Request(json={"status": "show"}), 200),
    "POST /invoices": Entry(_invoice_of, 201, fresh=_appointment),
    "GET /invoices/{invoice_id}": Entry(_nothing, 200),
    "GET /clients/{client_id}/invoices": Entry(_nothing, 200),
    "POST /invoices/{invoice_id}/void": Entry(_nothing, 200, fresh=_invoice),
    "POST /payments": Entry(_cash, 201),
    "GET /clients/{client_id}/payments": Entry(_nothing, 200),
    "POST /payments/{payment_id}/refunds": Entry(lambda _: Request(json={"amount_cents": 100}, idempotent=True), 201),
    "POST /appointments/{appointment_id}/invoice-and-payment": Entry(
        lambda _: Request(json={"method": "cash"}, idempotent=True), 201, fresh=_appointment
    ),
    "POST /clients/{client_id}/cards": Entry(_card_to_add, 201),
    "DELETE /clients/{client_id}/cards/{card_id}": Entry(_nothing, 204, fresh=_card),
    "PUT /clients/{client_id}/autopay": Entry(_autopay_on, 200),
    "GET /autopay/preview": Entry(_day, 200, other_practice=200),
    "GET /autopay/runs": Entry(_day, 200, other_practice=200),
    "GET /invoices/{invoice_id}/pdf": Entry(_nothing, 200),
    "GET /payments/{payment_id}/receipt": Entry(_nothing, 200),
    "POST /clients/{client_id}/statements": Entry(_period, 201),
    "POST /clients/{client_id}/superbills": Entry(_period, 201),
    "POST /clients/{client_id}/billing-documents/export": Entry(
        lambda _: Request(json=PERIOD | {"types": ["invoice"]}), 201
    ),
    "POST /exports/finance": Entry(_period, 201, other_practice=201),
    # Portal routes act for the token's client: another practice's token naming the owner finds no one there,
    # and another client of the practice gets their own account, or 404 for the owner's objects.
    "GET /portal/invoices": Entry(_nothing, 200, other_client=200),
    "GET /portal/invoices/{invoice_id}/pdf": Entry(_nothing, 200),
    "GET /portal/payments/{payment_id}/receipt": Entry(_nothing, 200),
    "GET /portal/statements": Entry(lambda _: Request(params=PERIOD), 200, other_client=200),
    "POST /portal/payments": Entry(_portal_payment, 201, fresh=_invoice),
    "GET /portal/cards": Entry(_nothing, 200, other_client=200),
    "POST /portal/cards": Entry(_card_to_add, 201, other_client=201),
    "DELETE /portal/cards/{card_id}": Entry(_nothing, 204, fresh=_card),
    "PUT /portal/autopay": Entry(_autopay_on, 200),
}
"""Every route behind the JWT authorizer, by API Gateway route key."""

PUBLIC_ROUTES = {"POST /webhooks/stripe"}
"""Routes without a JWT; each has rows of its own below."""

TEMPLATE_ROUTES = {route.route_key: route for route in load_template().routes}


def _is_portal(route: HttpRoute) -> bool:
    return route.path.startswith("/portal/")


def test_the_matrix_describes_exactly_the_routes_of_template_yaml() -> None:
    protected = {key for key, route in TEMPLATE_ROUTES.items() if route.requires_auth}
    assert sorted(protected - set(MATRIX)) == [], "routes nobody decided the callers of: add them to MATRIX"
    assert sorted(set(MATRIX) - protected) == [], "MATRIX entries for routes template.yaml does not protect"
    assert set(TEMPLATE_ROUTES) - protected == PUBLIC_ROUTES, "a route without the JWT needs rows of its own"


# ---------------------------------------------------------------- one cell


def _token(caller: Caller, route: HttpRoute, world: World, cast: Cast) -> str | None:
    """The token ``caller`` sends to ``route`` about ``world``, if any."""
    portal = _is_portal(route)
    role, client_id = ("client", world.client_id) if portal else ("clinician", None)
    own = make_token(world.practice_id, role, client_id)
    other_practice = make_token(cast.other_practice_id, role, client_id)
    wrong_role = make_token(world.practice_id) if portal else make_token(world.practice_id, "client", world.client_id)
    tokens: dict[Caller, str | None] = {
        Caller.ANONYMOUS: None,
        Caller.WRONG_SECRET: make_token(world.practice_id, role, client_id, secret="not-the-local-secret"),
        Caller.EDITED_CLAIMS: with_claims_changed(other_practice, {"custom:practice_id": world.practice_id}),
        Caller.ALG_NONE: unsigned(own),
        Caller.EXPIRED: make_token(world.practice_id, role, client_id, ttl=-60),
        Caller.NO_PRACTICE: without_claim(own, "custom:practice_id"),
        Caller.WRONG_ROLE: wrong_role,
        Caller.OTHER_PRACTICE: other_practice,
        Caller.OTHER_CLIENT: make_token(world.practice_id, "client", cast.other_client_id),
        Caller.OWNER: own,
    }
    return tokens[caller]


def _posing_as_owner(world: World) -> dict[str, str]:
    """Headers naming the owner's tenant: only the verified token's claims decide it, so they change nothing."""
    return {"X-Practice-Id": world.practice_id, "X-Client-Id": world.client_id}


def _path(route: HttpRoute, world: World) -> str:
    names = set(re.findall(r"\{(\w+)\}", route.path))
    assert names <= set(asdict(world)), (
        f"{route.route_key}: give World a field for {sorted(names - set(asdict(world)))}"
    )
    return route.path.format(**asdict(world))


@dataclass(frozen=True)
class Sent:
    """A request as sent (``asked``: its path, query, body and claims, as text), and what came back."""

    asked: str
    response: requests.Response
    world: World


def _send(caller: Caller, route: HttpRoute, entry: Entry, world: World, cast: Cast) -> Sent:
    request = entry.request(world)
    headers = _key() if request.idempotent else {}
    if caller in (Caller.OTHER_PRACTICE, Caller.OTHER_CLIENT):
        headers |= _posing_as_owner(world)
    token = _token(caller, route, world, cast)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    path = _path(route, world)
    response = cast.api.request(route.method, path, params=request.params, json=request.json, headers=headers)
    claims = claims_of(token) if token else {}
    return Sent(f"{path} {request.params} {json.dumps(request.json)} {json.dumps(claims)}", response, world)


def expected(caller: Caller, route: HttpRoute, entry: Entry) -> Outcome:
    """What ``caller`` must get from ``route``."""
    if caller in NOT_AUTHENTICATED:
        return 401
    if caller in (Caller.NO_PRACTICE, Caller.WRONG_ROLE):
        return 403
    if caller is Caller.OTHER_CLIENT:
        return entry.other_client if _is_portal(route) else 403  # a client token on a staff route
    if caller is Caller.OTHER_PRACTICE:
        return entry.other_practice
    return entry.success


def assert_error_shape(response: requests.Response) -> None:
    error = response.json()["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), response.text
    assert isinstance(error["details"], list), response.text


def assert_leaks_nothing(sent: Sent, caller: Caller, cast: Cast) -> None:
    """An answer to anyone but the owner carries none of the owner's data that the request did not carry."""
    owners = [*OWNER_NAME.values(), *asdict(cast.world).values()]
    if caller is Caller.OTHER_CLIENT:
        owners.remove(cast.world.practice_id)  # their practice too
    leaked = [value for value in owners if value in sent.response.text and value not in sent.asked]
    assert leaked == [], f"{caller} was told {leaked}: {sent.response.text}"


def _with_ids_named(sent: Sent) -> str:
    """The answer with the request's ids replaced by their names, to compare answers about different ids."""
    text = sent.response.text
    for name, value in asdict(sent.world).items():
        text = text.replace(value, f"<{name}>")
    return text


CELLS = [(key, caller) for key, route in TEMPLATE_ROUTES.items() if route.requires_auth for caller in Caller]


@pytest.mark.parametrize(("route_key", "caller"), CELLS, ids=[f"{key} | {caller}" for key, caller in CELLS])
def test_authorization_matrix(cast: Cast, route_key: str, caller: Caller) -> None:
    route, entry = TEMPLATE_ROUTES[route_key], MATRIX.get(route_key)
    assert entry is not None, f"{route_key} is not in the authorization matrix"
    world = entry.fresh(cast.staff, cast.world) if entry.fresh and caller is Caller.OWNER else cast.world
    sent = _send(caller, route, entry, world, cast)
    outcome = expected(caller, route, entry)
    assert sent.response.status_code == (404 if outcome == HIDDEN else outcome), sent.response.text
    if caller is Caller.OWNER:
        return
    if sent.response.status_code >= 400:
        assert_error_shape(sent.response)
    assert_leaks_nothing(sent, caller, cast)
    if outcome == HIDDEN:
        nowhere = _send(caller, route, entry, world.phantom(), cast)
        assert (nowhere.response.status_code, _with_ids_named(nowhere)) == (404, _with_ids_named(sent))


# ---------------------------------------------------------------- the Stripe webhook: a signature, not a JWT

Signer = Callable[..., str]
"""The emulator's ``signature_header(payload, timestamp=None, secret=None)``."""


def _signature(header: str) -> dict[str, str]:
    return {"Stripe-Signature": header}


WEBHOOK_ROWS: dict[str, tuple[Callable[[Signer, str, World], dict[str, str]], int]] = {
    "unsigned": (lambda sign, body, world: {}, 400),
    "signed with another secret": (lambda sign, body, world: _signature(sign(body, secret="whsec_forged")), 400),
    "signed over another body": (
        lambda sign, body, world: _signature(sign(body.replace("succeeded", "canceled"))),
        400,
    ),
    "signed six minutes ago": (lambda sign, body, world: _signature(sign(body, int(time.time()) - 360)), 400),
    "a staff JWT instead": (
        lambda sign, body, world: {"Authorization": f"Bearer {make_token(world.practice_id)}"},
        400,
    ),
    "signed": (lambda sign, body, world: _signature(sign(body)), 200),
}


def _payment_succeeded(stack: LocalStack, payment_id: str) -> str:
    """A ``payment_intent.succeeded`` event for the owner's card payment, as Stripe sends it."""
    assert stack.stripe is not None
    intent = next(pi for pi in stack.stripe.payment_intents() if pi["metadata"].get("payment_id") == payment_id)
    event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded"}
    return json.dumps(event | {"created": int(time.time()), "livemode": False, "data": {"object": intent}})


@pytest.mark.parametrize("row", WEBHOOK_ROWS)
def test_the_stripe_webhook_takes_only_a_valid_signature(stack: LocalStack, cast: Cast, row: str) -> None:
    if stack.stripe is None:
        pytest.skip("no Stripe emulator to sign with: STRIPE_SECRET_KEY is a real test key")
    headers, status = WEBHOOK_ROWS[row]
    body = _payment_succeeded(stack, cast.world.payment_id)
    sent = headers(stack.stripe.signature_header, body, cast.world) | {"content-type": "application/json"}
    response = cast.api.post("/webhooks/stripe", data=body, headers=sent)
    assert response.status_code == status, response.text
    if status >= 400:
        assert_error_shape(response)
        assert response.json()["error"]["code"] == "invalid_signature"
