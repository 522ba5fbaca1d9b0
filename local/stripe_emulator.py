"""A local Stripe API that the real ``stripe`` SDK talks to (dev/test tooling, never deployed).

It serves only what the billing backend calls (``billing_stripe.gateway``), with Stripe's request encoding
(form-encoded, nested ``metadata[key]=value``, ``expand[]``), object shapes, error shapes and HTTP statuses,
idempotency semantics, test PaymentMethods and signed webhooks::

    emulator = StripeEmulator(webhook_url="http://127.0.0.1:3000/webhooks/stripe", webhook_secret="whsec_local")
    client = stripe.StripeClient("sk_test_local", base_addresses={"api": emulator.start()})
    client.v1.customers.create({"metadata": {"client_id": "cli_1"}})
    emulator.stop()

Besides the standard library it uses only the billing domain's table of minimum charge amounts
(``billing.money``, so ``layers/billing`` must be on ``PYTHONPATH``). Everything lives in memory.

Endpoints (what the gateway sends; any other parameter is refused as Stripe refuses an unknown one):

- ``POST /v1/customers`` (``metadata``);
- ``POST /v1/payment_methods/{id}/attach`` (``customer``), ``POST /v1/payment_methods/{id}/detach``;
- ``POST /v1/payment_intents``, always confirmed off-session at once (``confirm``, ``off_session``);
- ``GET /v1/payment_intents`` (``customer``), ``GET /v1/payment_intents/search`` (``metadata['key']:'value'``
  and ``customer:'cus_...'`` clauses joined by ``AND``), ``GET /v1/payment_intents/{id}``;
- ``POST /v1/refunds`` (of a ``payment_intent``), ``GET /v1/refunds`` (``payment_intent``), ``GET /v1/refunds/{id}``.

Lists page with ``limit`` and ``starting_after``; ``expand`` reaches a PaymentIntent's ``latest_charge`` and
that charge's ``balance_transaction`` (its fee). Events, signed and POSTed to ``webhook_url``:
``payment_intent.succeeded`` / ``.payment_failed`` / ``.processing``, ``charge.refunded``, ``refund.created``,
``charge.refund.updated``, ``refund.updated``, ``refund.failed`` and ``charge.dispute.created``.

Tests and the local stack drive it with methods: faults (``fail_after_success``, ``fail_next_request``,
``key_in_use_next``, ``set_latency``, ``forget_idempotency_keys``); outcomes (``decline_next_charge``,
``process_next_charge`` then ``settle_payment_intent``, ``pend_next_refund`` / ``fail_next_refund`` then
``settle_refund``, ``create_dispute``); webhooks (``resend``, ``wait_for_webhooks``, ``signature_header``,
``deliver_webhooks``); and what happened (``events``, ``payment_intents``, ``refunds``, ``request_log``,
``webhook_deliveries``).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import http.server
import json
import queue
import re
import secrets
import socket
import string
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from billing.money import has_minor_units, minimum_charge_cents

__all__ = [
    "AUTH_REQUIRED",
    "GENERIC_DECLINE",
    "REFUND_FAILURE_REASONS",
    "TEST_CARDS",
    "Decline",
    "StripeEmulator",
    "StripeEmulatorError",
    "TestCard",
    "decline_named",
    "parse_form",
    "stripe_fee",
]

API_VERSION = "2026-10-28.endive"
"""The API version reported when a request sends no ``Stripe-Version`` (the SDK's pinned one)."""

DEFAULT_WEBHOOK_SECRET = "whsec_local_emulator"
WEBHOOK_TIMEOUT_SECONDS = 5.0

Obj = dict[str, Any]
Handler = Callable[..., Obj]

_ID_ALPHABET = string.ascii_letters + string.digits
_CURRENCY_SYMBOL = {"usd": "$", "eur": "€", "gbp": "£", "cad": "$", "aud": "$"}
REFUND_FAILURE_REASONS = (
    "charge_for_pending_refund_disputed",
    "declined",
    "expired_or_canceled_card",
    "insufficient_funds",
    "lost_or_stolen_card",
    "merchant_request",
    "unknown",
)
_DOCS = "https://stripe.com/docs"


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def stripe_fee(amount: int) -> int:
    """Stripe's standard card fee: 2.9% (rounded half up to a whole minor unit) + 30."""
    return (amount * 29 + 500) // 1000 + 30


def _format_money(amount: int, currency: str) -> str:
    number = f"{amount // 100}.{amount % 100:02d}" if has_minor_units(currency) else f"{amount}"
    symbol = _CURRENCY_SYMBOL.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


# --------------------------------------------------------------------------------------------
# Errors in Stripe's shape
# --------------------------------------------------------------------------------------------


class StripeEmulatorError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status, exactly as Stripe does."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.extra = extra

    def to_body(self, request_id: str) -> Obj:
        error: Obj = {}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"{_DOCS}/error-codes/{self.code.replace('_', '-')}"
        error["message"] = self.message
        if self.param is not None:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        error["type"] = self.type
        error.update(self.extra)
        return {"error": error}


def _invalid(message: str, param: str | None = None, code: str | None = None, **extra: Any) -> StripeEmulatorError:
    return StripeEmulatorError(400, "invalid_request_error", message, code=code, param=param, **extra)


def _missing(param: str) -> StripeEmulatorError:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")


def _unsupported(what: str, param: str) -> StripeEmulatorError:
    """A request Stripe would take but the gateway never sends: refused rather than half emulated."""
    return _invalid(f"{what} is not supported by the local Stripe emulator.", param)


def _no_such(label: str, object_id: str, param: str | None = None) -> StripeEmulatorError:
    """A missing object: 404 when it is the path's object, 400 when a parameter names it."""
    status = 400 if param else 404
    return StripeEmulatorError(
        status,
        "invalid_request_error",
        f"No such {label}: '{object_id}'",
        code="resource_missing",
        param=param or "id",
    )


def _key_in_use(key: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        409,
        "idempotency_error",
        f"There is currently another in-progress request using this Idempotent Key "
        f"(that probably means you submitted twice, and the other request is still "
        f"going through): {key}. Please try again later.",
        code="idempotency_key_in_use",
    )


_REUSE_MESSAGE = (
    "This PaymentMethod was previously used without being attached to a Customer or was "
    "detached from a Customer, and may not be used again."
)

# --------------------------------------------------------------------------------------------
# Request parameters (form encoding as the SDK sends it)
# --------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_BRACKET_RE = re.compile(r"\[([^\[\]]*)\]")
_INT_RE = re.compile(r"^-?\d+$")


def parse_form(text: str) -> Obj:
    """Decode Stripe's form encoding: ``a[b][c]=1``, ``a[0]=x`` / ``a[]=x`` lists, ``a=`` blanks."""
    root: Obj = {}
    for raw_key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        match = _KEY_RE.match(raw_key)
        parts = [match.group(1), *_BRACKET_RE.findall(match.group(2))] if match else [raw_key]
        node = root
        for index, part in enumerate(parts):
            key = part if part != "" else str(len(node))
            if index == len(parts) - 1:
                node[key] = value
                continue
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
    listified = _listify(root)
    assert isinstance(listified, dict)
    return listified


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(item) for key, item in value.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _check_params(params: Obj, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in params:
        if key not in known:
            raise _invalid(f"Received unknown parameter: {key}", key, "parameter_unknown")


def _str_param(params: Obj, name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {json.dumps(value)}", name, "parameter_invalid_string")
    return value


def _int_param(params: Obj, name: str, *, required: bool = False, minimum: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str) or not _INT_RE.match(value):
        raise _invalid(f"Invalid integer: {value}", name, "parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise _invalid(
            f"This value must be greater than or equal to {minimum}.",
            name,
            "parameter_invalid_integer",
        )
    return number


def _bool_param(params: Obj, name: str) -> bool | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if value in ("true", "false"):
        return bool(value == "true")
    raise _invalid(f"Invalid boolean: {value}", name)


def _metadata(params: Obj) -> dict[str, str]:
    """A new object's ``metadata``, within Stripe's limits (a blank value sets nothing)."""
    value = params.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", "metadata", "parameter_invalid_hash")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(f"Invalid string: {json.dumps(item)}", f"metadata[{key}]")
        if len(key) > 40:
            raise _invalid("Metadata keys can have up to 40 characters.", f"metadata[{key}]")
        if len(item) > 500:
            raise _invalid("Metadata values can have up to 500 characters.", f"metadata[{key}]")
        if item:
            result[key] = item
    if len(result) > 50:
        raise _invalid("Metadata can have up to 50 keys.", "metadata")
    return result


def _expand_param(params: Obj) -> list[str]:
    value = params.get("expand")
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise _invalid("Invalid array", "expand")
    return [item for item in items if item]


def _limit(params: Obj) -> int:
    limit = _int_param(params, "limit", minimum=1)
    if limit is None:
        return 10
    if limit > 100:
        raise _invalid("This value must be less than or equal to 100.", "limit")
    return limit


def _paginate(items: list[Obj], params: Obj, url: str, label: str) -> Obj:
    """A Stripe list (newest first) of ``limit`` items after ``starting_after``."""
    limit = _limit(params)
    starting_after = _str_param(params, "starting_after")
    if starting_after:
        ids = [item["id"] for item in items]
        if starting_after not in ids:
            raise _no_such(label, starting_after, "starting_after")
        items = items[ids.index(starting_after) + 1 :]
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit, "url": url}


# --------------------------------------------------------------------------------------------
# Test PaymentMethods (https://docs.stripe.com/testing)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decline:
    code: str
    decline_code: str
    message: str
    param: str | None = None


_DECLINED = "Your card was declined."
GENERIC_DECLINE = Decline("card_declined", "generic_decline", _DECLINED)
AUTH_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)


@dataclasses.dataclass(frozen=True)
class TestCard:
    """The card behind a test PaymentMethod token, and how it answers an off-session charge: succeeds, or
    ``decline``s. ``outcome`` names its kind: ``succeed``, ``decline``, ``customer_fail`` (refused when
    attached), ``auth_always`` / ``auth_unless_setup`` (Stripe's 3-D Secure cards: off-session, the only way
    the emulator charges, they decline with ``authentication_required``) or ``processing`` (emulator-only:
    every charge stays ``processing`` until ``settle_payment_intent``)."""

    __test__ = False  # not a pytest test class, should a test module import it

    brand: str
    last4: str
    outcome: str = "succeed"
    decline: Decline | None = None


def _declining(last4: str, decline: Decline) -> TestCard:
    return TestCard("visa", last4, "decline", decline)


TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_chargeDeclined": _declining("0002", GENERIC_DECLINE),
    "pm_card_chargeDeclinedInsufficientFunds": _declining(
        "9995",
        Decline("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ),
    "pm_card_chargeDeclinedLostCard": _declining("9987", Decline("card_declined", "lost_card", _DECLINED)),
    "pm_card_chargeDeclinedStolenCard": _declining("9979", Decline("card_declined", "stolen_card", _DECLINED)),
    "pm_card_chargeDeclinedExpiredCard": _declining(
        "0069", Decline("expired_card", "expired_card", "Your card has expired.", "exp_month")
    ),
    # At Stripe it attaches and then declines; refusing it at attach gives the product a card that fails there.
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", "customer_fail", GENERIC_DECLINE),
    "pm_card_authenticationRequired": TestCard("visa", "3184", "auth_always", AUTH_REQUIRED),
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", "auth_unless_setup", AUTH_REQUIRED),
    "pm_card_processing": TestCard("visa", "0077", "processing"),
}


def decline_named(decline_code: str) -> Decline:
    """The decline a test card gives for ``decline_code`` (``generic_decline``, ``insufficient_funds``,
    ``expired_card``, ...), or a ``card_declined`` with that decline code."""
    for card in TEST_CARDS.values():
        if card.decline is not None and card.decline.decline_code == decline_code:
            return card.decline
    return Decline("card_declined", decline_code, _DECLINED)


# --------------------------------------------------------------------------------------------
# Expansion and search (what the gateway asks for)
# --------------------------------------------------------------------------------------------

_EXPANDABLE: dict[str, dict[str, str]] = {
    "payment_intent": {"latest_charge": "charge"},
    "charge": {"balance_transaction": "balance_transaction"},
}


def _expansion(route_kind: str, path: str) -> tuple[str, list[str]]:
    """The object kind and property names an ``expand`` path walks (``data.`` first on a list), or Stripe's
    error when it names anything the emulator cannot expand."""
    container, _, kind = route_kind.rpartition(":")
    parts = path.split(".")
    if container:
        if parts[0] != "data" or len(parts) < 2:
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        parts = parts[1:]
    walked = kind
    for part in parts:
        target = _EXPANDABLE.get(walked, {}).get(part)
        if target is None:
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        walked = target
    return kind, parts


_CLAUSE_RE = re.compile(r"\s*(?:metadata\['(?P<key>[^'\\]*)'\]|customer):'(?P<value>(?:[^'\\]|\\.)*)'\s*")
_AND_RE = re.compile(r"AND(?=\s)")


def _parse_search_query(query: str) -> Callable[[Obj], bool]:
    """A PaymentIntent search: ``metadata['key']:'value'`` and ``customer:'cus_...'`` clauses joined by AND."""
    clauses: list[tuple[str | None, str]] = []
    position = 0
    while True:
        match = _CLAUSE_RE.match(query, position)
        if match is None:
            raise _invalid(
                "We were unable to parse your search query (the local Stripe emulator searches "
                f"`metadata['key']:'value'` and `customer:'value'` clauses joined by AND). Query: {query}",
                "query",
            )
        clauses.append((match.group("key"), re.sub(r"\\(.)", r"\1", match.group("value"))))
        position = match.end()
        if position >= len(query):
            break
        connector = _AND_RE.match(query, position)
        if connector is None:
            raise _invalid(f"We were unable to parse your search query: {query}", "query")
        position = connector.end()

    def matches(pi: Obj) -> bool:
        return all((pi["customer"] if key is None else pi["metadata"].get(key)) == value for key, value in clauses)

    return matches


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Ctx:
    request_id: str
    api_version: str
    idempotency_key: str | None


@dataclasses.dataclass
class _HttpResult:
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    drop: bool = False


@dataclasses.dataclass
class _IdemEntry:
    method: str
    path: str
    fingerprint: str
    result: _HttpResult | None = None


@dataclasses.dataclass
class _Hook:
    path_prefix: str
    method: str | None
    remaining: int
    status: int | None = 500  # None: drop the connection instead of answering


@dataclasses.dataclass(frozen=True)
class _RefundPlan:
    """How a pending refund ends when it is settled without being told."""

    succeeds: bool
    failure_reason: str | None = None


@dataclasses.dataclass
class _PmInfo:
    token: str
    detached: bool = False


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    kind: str  # the object kind answered; "list:..." / "search:..." for lists of it


class StripeEmulator:
    """An in-memory Stripe API served over HTTP on 127.0.0.1 (see the module docstring).

    ``webhook_url`` is where signed events are POSTed (``None``: they are only recorded), signed with
    ``webhook_secret``. ``deliver_webhooks = False`` records events without sending them.
    """

    def __init__(self, webhook_url: str | None = None, webhook_secret: str | None = None) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret or DEFAULT_WEBHOOK_SECRET
        self.deliver_webhooks = True

        self._lock = threading.RLock()
        self._idem_lock = threading.Lock()
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        self._url: str | None = None

        self._webhook_queue: queue.Queue[Obj | None] = queue.Queue()
        self._webhook_worker: threading.Thread | None = None
        self._webhook_cond = threading.Condition()
        self._webhook_pending = 0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        self._routes = self._build_routes()
        self._init_state()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port) from a background thread; return the URL."""
        if self._server is not None:
            raise RuntimeError("the Stripe emulator is already running")
        server = _Server((host, port), self)
        self._server = server
        self._url = f"http://{host}:{server.server_address[1]}"
        self._server_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="stripe-emulator",
            daemon=True,
        )
        self._server_thread.start()
        return self._url

    def stop(self) -> None:
        """Stop serving; the webhook sender finishes what is queued (briefly) and stops."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None
        worker, self._webhook_worker = self._webhook_worker, None
        if worker is not None:
            self._webhook_queue.put(None)
            worker.join(timeout=WEBHOOK_TIMEOUT_SECONDS + 1)

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``) to give the SDK as its ``api`` base address."""
        if self._url is None:
            raise RuntimeError("the Stripe emulator is not running; call start() first")
        return self._url

    # ---- what happened -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, event, idempotency key, fault and pending webhook delivery."""
        with self._lock, self._idem_lock:
            self._init_state()
        while True:
            try:
                item = self._webhook_queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # keep a stop request
                self._webhook_queue.put(None)
                break
            self._delivery_done()

    def events(self, type: str | None = None) -> list[Obj]:
        """Every event created so far (oldest first), optionally only those of one ``type``."""
        with self._lock:
            return [copy.deepcopy(event) for event in self._events.values() if type is None or event["type"] == type]

    def payment_intents(self) -> list[Obj]:
        """Every PaymentIntent (oldest first)."""
        with self._lock:
            return copy.deepcopy(list(self._pis.values()))

    def refunds(self) -> list[Obj]:
        """Every Refund (oldest first)."""
        with self._lock:
            return copy.deepcopy(list(self._refunds.values()))

    def request_log(self) -> list[Obj]:
        """Every API request served: method, path, params, idempotency_key, status, replayed,
        dropped (oldest first)."""
        with self._lock:
            return copy.deepcopy(self._request_log)

    def webhook_deliveries(self) -> list[Obj]:
        """Every webhook delivery's outcome: event_id, type, the charge it concerns (or None), status,
        error, attempts."""
        with self._lock:
            return copy.deepcopy(self._deliveries)

    # ---- faults --------------------------------------------------------------------------------

    def fail_after_success(
        self, path_prefix: str = "/v1/payment_intents", times: int = 1, status: int | None = None
    ) -> None:
        """Make the next ``times`` matching POSTs run at "Stripe" (objects are created, charges made, events
        sent and the idempotent result saved) and then lose the answer: the connection is dropped (the SDK
        raises ``APIConnectionError``), or with ``status`` (500, 429...) an error of that status is answered
        instead of the result. Applies whatever the outcome."""
        with self._lock:
            self._drop_hooks.append(_Hook(path_prefix, "POST", times, status))

    def fail_next_request(
        self,
        path_prefix: str = "/v1/",
        times: int = 1,
        status: int = 500,
        method: str | None = "POST",
    ) -> None:
        """Answer the next ``times`` matching requests with an ``api_error`` of ``status`` before
        anything happens (nothing is created and no idempotent result is saved)."""
        with self._lock:
            self._error_hooks.append(_Hook(path_prefix, _upper(method), times, status))

    def key_in_use_next(self, path_prefix: str = "/v1/", times: int = 1) -> None:
        """Answer the next ``times`` matching POSTs with Stripe's 409 ``idempotency_key_in_use`` (as if a request
        with the same key were still running) before anything happens (nothing is created or saved).
        The SDK retries 409s, so a client with ``max_network_retries=n`` needs ``times=n + 1`` to see it."""
        with self._lock:
            self._in_use_hooks.append(_Hook(path_prefix, "POST", times, 409))

    def set_latency(self, seconds: float, path_prefix: str = "/v1/", method: str | None = None) -> None:
        """Delay matching requests by ``seconds`` while their idempotency key is held (0 clears)."""
        with self._lock:
            self._latency[:] = [entry for entry in self._latency if entry[:2] != (path_prefix, _upper(method))]
            if seconds > 0:
                self._latency.append((path_prefix, _upper(method), seconds))

    def forget_idempotency_keys(self) -> int:
        """Forget every finished idempotent request, as Stripe does after 24 hours: the same key then runs
        the request again (a second charge, if the caller did not look first). Requests still running keep
        their key. Returns how many keys were forgotten."""
        with self._idem_lock:
            finished = [scope for scope, entry in self._idem.items() if entry.result is not None]
            for scope in finished:
                del self._idem[scope]
        return len(finished)

    # ---- outcomes ------------------------------------------------------------------------------

    def decline_next_charge(self, decline_code: str = "generic_decline") -> None:
        """Decline the next charge whatever the card, as its test card would (``decline_named``), e.g.
        ``pickup_card``, which has no test card of its own."""
        with self._lock:
            self._forced_declines.append(decline_named(decline_code))

    def process_next_charge(self) -> None:
        """Make the next charge end in ``processing`` (whatever the card; a ``decline_next_charge`` still
        wins), emitting ``payment_intent.processing``: no money has moved until ``settle_payment_intent``."""
        with self._lock:
            self._processing_next += 1

    def settle_payment_intent(self, payment_intent: str, succeeded: bool, decline_code: str | None = None) -> Obj:
        """Finish a ``processing`` PaymentIntent: ``succeeded`` (``payment_intent.succeeded``, the charge is
        paid, its fee known) or declined with ``decline_code`` (default ``generic_decline``;
        ``requires_payment_method``, ``payment_intent.payment_failed``)."""
        with self._lock:
            return copy.deepcopy(self._settle_pi(payment_intent, succeeded, decline_code or "generic_decline"))

    def pend_next_refund(self) -> None:
        """Make the next refund answer ``pending`` (``settle_refund`` makes it ``succeeded``)."""
        with self._lock:
            self._refund_plans.append(_RefundPlan(True))

    def fail_next_refund(self, failure_reason: str) -> None:
        """Make the next refund answer ``pending`` and fail with ``failure_reason`` when settled
        (``settle_refund``): the card could not take the money back."""
        if failure_reason not in REFUND_FAILURE_REASONS:
            raise ValueError(f"failure_reason must be one of {', '.join(REFUND_FAILURE_REASONS)}")
        with self._lock:
            self._refund_plans.append(_RefundPlan(False, failure_reason))

    def settle_refund(self, refund: str, succeeded: bool | None = None) -> Obj:
        """Finish a ``pending`` refund: ``succeeded``, or ``failed`` (default: as ``pend_next_refund`` /
        ``fail_next_refund`` planned it; ``unknown`` when told to fail unplanned). Emits
        ``charge.refund.updated`` and ``refund.updated``, plus ``refund.failed`` when it failed (the
        charge's ``amount_refunded`` drops)."""
        with self._lock:
            return copy.deepcopy(self._settle_refund(refund, succeeded))

    def create_dispute(self, charge: str, amount: int | None = None) -> Obj:
        """The client's bank disputes ``amount`` (default: what is not refunded) of a succeeded charge, as
        from outside the API: emits ``charge.dispute.created``."""
        with self._lock:
            return copy.deepcopy(self._create_dispute(charge, amount))

    # ---- webhooks ------------------------------------------------------------------------------

    def signature_header(self, payload: str, timestamp: int | None = None, secret: str | None = None) -> str:
        """``Stripe-Signature`` for ``payload``: ``t=<ts>,v1=<HMAC-SHA256 of "<ts>.<payload>">``."""
        ts = int(time.time()) if timestamp is None else timestamp
        key = (secret if secret is not None else self.webhook_secret).encode("utf-8")
        digest = hmac.new(key, f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
        return f"t={ts},v1={digest}"

    def resend(self, event_id: str) -> int | None:
        """Deliver a recorded event again now (a duplicate, or a late one); returns the receiver's HTTP
        status, or ``None`` when it could not be reached."""
        with self._lock:
            event = self._events.get(event_id)
            if event is None:
                raise KeyError(f"no such event: {event_id}")
            event = copy.deepcopy(event)
        return self._deliver(event)

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Block until every queued webhook delivery finished; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._webhook_cond:
            while self._webhook_pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._webhook_cond.wait(remaining)
        return True

    # ---- state ---------------------------------------------------------------------------------

    def _init_state(self) -> None:
        self._customers: dict[str, Obj] = {}
        self._pms: dict[str, Obj] = {}
        self._pm_info: dict[str, _PmInfo] = {}
        self._pis: dict[str, Obj] = {}
        self._charges: dict[str, Obj] = {}
        self._txns: dict[str, Obj] = {}
        self._refunds: dict[str, Obj] = {}
        self._events: dict[str, Obj] = {}
        self._idem: dict[tuple[str, str], _IdemEntry] = {}
        self._request_log: list[Obj] = []
        self._deliveries: list[Obj] = []
        self._drop_hooks: list[_Hook] = []
        self._error_hooks: list[_Hook] = []
        self._in_use_hooks: list[_Hook] = []
        self._latency: list[tuple[str, str | None, float]] = []
        self._forced_declines: list[Decline] = []
        self._processing_next = 0
        self._refund_plans: list[_RefundPlan] = []
        self._pending_refunds: dict[str, _RefundPlan] = {}

    # ---- HTTP plumbing -------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Handler, str]] = [
            ("POST", r"/v1/customers", self._create_customer, "customer"),
            ("POST", r"/v1/payment_methods/([^/]+)/attach", self._attach_pm, "payment_method"),
            ("POST", r"/v1/payment_methods/([^/]+)/detach", self._detach_pm, "payment_method"),
            ("POST", r"/v1/payment_intents", self._create_pi, "payment_intent"),
            ("GET", r"/v1/payment_intents", self._list_pis, "list:payment_intent"),
            ("GET", r"/v1/payment_intents/search", self._search_pis, "search:payment_intent"),
            ("GET", r"/v1/payment_intents/([^/]+)", self._get_pi, "payment_intent"),
            ("POST", r"/v1/refunds", self._create_refund, "refund"),
            ("GET", r"/v1/refunds", self._list_refunds, "list:refund"),
            ("GET", r"/v1/refunds/([^/]+)", self._get_refund, "refund"),
        ]
        return [_Route(method, re.compile(pattern), handler, kind) for method, pattern, handler, kind in table]

    def _match_route(self, method: str, path: str) -> tuple[_Route, list[str]] | None:
        for route in self._routes:
            if route.method != method:
                continue
            match = route.pattern.fullmatch(path)
            if match:
                return route, [urllib.parse.unquote(group) for group in match.groups()]
        return None

    def _json_result(
        self,
        status: int,
        payload: Obj,
        request_id: str,
        api_version: str,
        idempotency_key: str | None = None,
    ) -> _HttpResult:
        headers = [
            ("Content-Type", "application/json"),
            ("Request-Id", request_id),
            ("Stripe-Version", api_version),
            ("Cache-Control", "no-cache, no-store"),
        ]
        if idempotency_key:
            headers.append(("Idempotency-Key", idempotency_key))
        body = json.dumps(payload, indent=2).encode("utf-8")
        return _HttpResult(status, body, headers)

    @staticmethod
    def _authenticate(headers: Mapping[str, str]) -> str:
        """The test-mode secret key of a request, sent as Bearer (the SDK) or Basic auth (``requests``)."""
        value = (headers.get("Authorization") or "").strip()
        key = ""
        if value.lower().startswith("bearer "):
            key = value[7:].strip()
        elif value.lower().startswith("basic "):
            try:
                key = base64.b64decode(value[6:].strip()).decode("utf-8").split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not value:
            raise StripeEmulatorError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        if not re.fullmatch(r"(sk|rk)_test_[A-Za-z0-9_]+", key):
            shown = f"{key[:8]}{'*' * 4}{key[-4:]}" if len(key) > 12 else "****"
            raise StripeEmulatorError(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {shown}",
            )
        return key

    def handle_http(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _HttpResult:
        """Serve one request: authenticate, run it (idempotently), then apply any injected fault and log it."""
        split = urllib.parse.urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        request_id = _new_id("req_", 14)
        api_version = headers.get("Stripe-Version") or API_VERSION
        try:
            api_key = self._authenticate(headers)
            params = parse_form(body.decode("utf-8") if method == "POST" else split.query)
        except StripeEmulatorError as error:
            return self._json_result(error.status, error.to_body(request_id), request_id, api_version)
        except UnicodeDecodeError:
            bad_body = _invalid("Invalid request body.")
            return self._json_result(400, bad_body.to_body(request_id), request_id, api_version)

        matched = self._match_route(method, path)
        if matched is None:
            unknown = StripeEmulatorError(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
            return self._json_result(404, unknown.to_body(request_id), request_id, api_version)
        route, ids = matched

        idem_key = headers.get("Idempotency-Key") if method == "POST" else None
        ctx = _Ctx(request_id, api_version, idem_key)
        result = self._run_idempotent(api_key, idem_key, method, path, params, ctx, route, ids)

        with self._lock:
            lost = self._take_hook(self._drop_hooks, method, path)
            result.drop = lost is not None and lost.status is None
            if lost is not None and lost.status is not None:
                result = self._injected_error(lost.status, ctx, idem_key)
            self._request_log.append(
                {
                    "method": method,
                    "path": path,
                    "params": params,
                    "idempotency_key": idem_key,
                    "status": result.status,
                    "replayed": ("Idempotent-Replayed", "true") in result.headers,
                    "dropped": result.drop,
                }
            )
        return result

    def _run_idempotent(
        self,
        api_key: str,
        idem_key: str | None,
        method: str,
        path: str,
        params: Obj,
        ctx: _Ctx,
        route: _Route,
        ids: list[str],
    ) -> _HttpResult:
        scope = (api_key, idem_key or "")
        if idem_key:
            fingerprint = json.dumps(params, sort_keys=True)
            with self._idem_lock:
                entry = self._idem.get(scope)
                if entry is None:
                    self._idem[scope] = _IdemEntry(method, path, fingerprint)
                else:
                    error = self._idempotency_conflict(entry, idem_key, method, path, fingerprint)
                    if error is not None:
                        return self._json_result(
                            error.status, error.to_body(ctx.request_id), ctx.request_id, ctx.api_version
                        )
                    assert entry.result is not None
                    original = entry.result
                    headers = [*original.headers, ("Idempotent-Replayed", "true")]
                    original_id = dict(original.headers).get("Request-Id", "")
                    headers.append(("Original-Request", original_id))
                    return _HttpResult(original.status, original.body, headers)

        self._sleep_for_latency(method, path)
        injected: _Hook | None
        with self._lock:
            injected = self._take_hook(self._in_use_hooks, method, path)
            if injected is None:
                injected = self._take_hook(self._error_hooks, method, path)
        if injected is not None and injected.status == 409:
            in_use = _key_in_use(idem_key or "")
            result = self._json_result(409, in_use.to_body(ctx.request_id), ctx.request_id, ctx.api_version)
        elif injected is not None and injected.status is not None:
            result = self._injected_error(injected.status, ctx, idem_key)
        else:
            result = self._execute(ctx, params, route, ids, idem_key)

        if idem_key:
            with self._idem_lock:
                # Stripe saves the result once the endpoint ran; requests rejected before that
                # (bad parameters, missing objects) and injected failures are not saved.
                saved = injected is None and (result.status < 400 or result.status == 402 or result.status >= 500)
                entry = self._idem.get(scope)
                if saved and entry is not None:
                    entry.result = result
                else:
                    self._idem.pop(scope, None)
        return result

    @staticmethod
    def _idempotency_conflict(
        entry: _IdemEntry, key: str, method: str, path: str, fingerprint: str
    ) -> StripeEmulatorError | None:
        if (entry.method, entry.path) != (method, path):
            return StripeEmulatorError(
                400,
                "idempotency_error",
                f"Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{entry.method} {entry.path}' vs '{method} {path}'). Try using "
                f"a key other than '{key}' if you meant to execute a different request.",
            )
        if entry.fingerprint != fingerprint:
            return StripeEmulatorError(
                400,
                "idempotency_error",
                f"Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                f"execute a different request.",
            )
        if entry.result is None:
            return _key_in_use(key)
        return None

    def _execute(self, ctx: _Ctx, params: Obj, route: _Route, ids: list[str], idem_key: str | None) -> _HttpResult:
        with self._lock:
            try:
                expansions = [_expansion(route.kind, path) for path in _expand_param(params)]
                obj = copy.deepcopy(route.handler(ctx, params, *ids))
                items = obj["data"] if ":" in route.kind else [obj]
                for kind, parts in expansions:
                    for item in items:
                        self._expand(item, kind, parts)
                return self._json_result(200, obj, ctx.request_id, ctx.api_version, idem_key)
            except StripeEmulatorError as error:
                return self._json_result(
                    error.status, error.to_body(ctx.request_id), ctx.request_id, ctx.api_version, idem_key
                )
            except Exception:  # a bug in the emulator: answer like Stripe's 500s
                traceback.print_exc()
                crash = StripeEmulatorError(500, "api_error", "An unknown error occurred.")
                return self._json_result(500, crash.to_body(ctx.request_id), ctx.request_id, ctx.api_version, idem_key)

    def _expand(self, obj: Obj, kind: str, parts: list[str]) -> None:
        """Replace the id at each level of ``parts`` (checked by ``_expansion``) with a copy of its object."""
        if not parts:
            return
        name, target_kind = parts[0], _EXPANDABLE[kind][parts[0]]
        value = obj.get(name)
        if isinstance(value, str):
            store = {"charge": self._charges, "balance_transaction": self._txns}[target_kind]
            target = store.get(value)
            if target is None:
                return
            value = copy.deepcopy(target)
            obj[name] = value
        if isinstance(value, dict):
            self._expand(value, target_kind, parts[1:])

    def _sleep_for_latency(self, method: str, path: str) -> None:
        with self._lock:
            delays = [
                seconds
                for prefix, hook_method, seconds in self._latency
                if path.startswith(prefix) and hook_method in (None, method)
            ]
        if delays:
            time.sleep(max(delays))

    def _injected_error(self, status: int, ctx: _Ctx, idem_key: str | None) -> _HttpResult:
        """The answer of an injected failure: Stripe's ``api_error`` body with ``status``."""
        error = StripeEmulatorError(
            status, "api_error", "An unknown error occurred. Please try again (injected by the Stripe emulator)."
        )
        return self._json_result(status, error.to_body(ctx.request_id), ctx.request_id, ctx.api_version, idem_key)

    @staticmethod
    def _take_hook(hooks: list[_Hook], method: str, path: str) -> _Hook | None:
        for hook in hooks:
            if path.startswith(hook.path_prefix) and hook.method in (None, method):
                hook.remaining -= 1
                if hook.remaining <= 0:
                    hooks.remove(hook)
                return hook
        return None

    # ---- events and webhooks -------------------------------------------------------------------

    def _emit(self, ctx: _Ctx | None, type_: str, obj: Obj, previous: Obj | None = None) -> Obj:
        data: Obj = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        delivering = bool(self.webhook_url) and self.deliver_webhooks
        event: Obj = {
            "id": _new_id("evt_"),
            "object": "event",
            "api_version": ctx.api_version if ctx else API_VERSION,
            "created": int(time.time()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1 if delivering else 0,
            "request": {
                "id": ctx.request_id if ctx else None,
                "idempotency_key": ctx.idempotency_key if ctx else None,
            },
            "type": type_,
        }
        self._events[event["id"]] = event
        if delivering:
            with self._webhook_cond:
                self._webhook_pending += 1
            self._ensure_webhook_worker()
            self._webhook_queue.put(copy.deepcopy(event))
        return event

    def _ensure_webhook_worker(self) -> None:
        if self._webhook_worker is None or not self._webhook_worker.is_alive():
            self._webhook_worker = threading.Thread(
                target=self._webhook_loop, name="stripe-emulator-webhooks", daemon=True
            )
            self._webhook_worker.start()

    def _webhook_loop(self) -> None:
        while True:
            event = self._webhook_queue.get()
            if event is None:
                return
            try:
                self._deliver(event)
            except Exception:  # never let one bad delivery stop the sender
                traceback.print_exc()
            finally:
                self._delivery_done()

    def _delivery_done(self) -> None:
        with self._webhook_cond:
            self._webhook_pending = max(0, self._webhook_pending - 1)
            self._webhook_cond.notify_all()

    def _deliver(self, event: Obj) -> int | None:
        """POST ``event`` signed now; a receiver that cannot be reached is tried three times in all."""
        url = self.webhook_url
        if not url:
            raise RuntimeError("the Stripe emulator has no webhook_url to deliver to")
        payload = json.dumps(event, indent=2)
        status: int | None = None
        error: str | None = None
        attempts = 0
        for attempt in range(3):
            attempts = attempt + 1
            request = urllib.request.Request(
                url,
                data=payload.encode("utf-8"),
                method="POST",
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    "Stripe-Signature": self.signature_header(payload),
                },
            )
            try:
                with self._opener.open(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                    response.read()
                    status = int(response.status)
                error = None
                break
            except urllib.error.HTTPError as http_error:
                status = http_error.code
                error = None
                break
            except (urllib.error.URLError, OSError) as connection_error:
                error = str(connection_error)
                time.sleep(0.1 * attempts)
        with self._lock:
            self._deliveries.append(
                {
                    "event_id": event.get("id"),
                    "type": event.get("type"),
                    "charge": _charge_of(event["data"]["object"]),
                    "status": status,
                    "error": error,
                    "attempts": attempts,
                }
            )
        return status

    # ---- customers and payment methods ---------------------------------------------------------

    def _create_customer(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"expand", "metadata"})
        customer: Obj = {
            "id": _new_id("cus_", 14),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(time.time()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": _metadata(params),
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._customers[customer["id"]] = customer
        return customer

    def _clone_test_card(self, token: str) -> Obj:
        """A new PaymentMethod from a test token, as Stripe makes one each time a token is used."""
        card = TEST_CARDS[token]
        pm_id = _new_id("pm_")
        now = int(time.time())
        pm: Obj = {
            "id": pm_id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state")),
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "card": {
                "brand": card.brand,
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                    "cvc_check": "pass",
                },
                "country": "US",
                "display_brand": card.brand,
                "exp_month": 12,
                "exp_year": time.gmtime(now).tm_year + 3,
                "fingerprint": hashlib.sha256(token.encode()).hexdigest()[:16],
                "funding": "credit",
                "generated_from": None,
                "last4": card.last4,
                "networks": {"available": [card.brand], "preferred": None},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": now,
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self._pms[pm_id] = pm
        self._pm_info[pm_id] = _PmInfo(token)
        return pm

    @staticmethod
    def _card_error(decline: Decline, **extra: Any) -> StripeEmulatorError:
        return StripeEmulatorError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            param=decline.param,
            decline_code=decline.decline_code,
            **extra,
        )

    def _attach_pm(self, ctx: _Ctx, params: Obj, pm_id: str) -> Obj:
        _check_params(params, {"customer", "expand"})
        customer_id = _str_param(params, "customer", required=True)
        assert customer_id is not None
        if customer_id not in self._customers:
            raise _no_such("customer", customer_id, "customer")
        if pm_id in TEST_CARDS:
            card = TEST_CARDS[pm_id]
            if card.outcome == "customer_fail" and card.decline is not None:
                raise self._card_error(card.decline)
            pm = self._clone_test_card(pm_id)
        else:
            found = self._pms.get(pm_id)
            if found is None:
                raise _no_such("PaymentMethod", pm_id)
            pm = found
            if pm["customer"] == customer_id:
                return pm
            if pm["customer"] is not None:
                raise _invalid("The payment method you provided has already been attached to a customer.")
            if self._pm_info[pm_id].detached:
                raise _invalid(_REUSE_MESSAGE)
        pm["customer"] = customer_id
        return pm

    def _detach_pm(self, ctx: _Ctx, params: Obj, pm_id: str) -> Obj:
        _check_params(params, {"expand"})
        pm = self._pms.get(pm_id)
        if pm is None:
            raise _no_such("PaymentMethod", pm_id)
        if pm["customer"] is None:
            raise _invalid("The payment method you provided is not attached to a customer so detachment is impossible.")
        pm["customer"] = None
        self._pm_info[pm_id].detached = True
        return pm

    def _payment_method_for(self, pm_id: str, customer_id: str | None) -> Obj:
        """The PaymentMethod a charge uses: a test token's new one, or one that ``customer_id`` may use."""
        if pm_id in TEST_CARDS:
            return self._clone_test_card(pm_id)
        pm = self._pms.get(pm_id)
        if pm is None:
            raise _no_such("PaymentMethod", pm_id, "payment_method")
        if pm["customer"] is None and self._pm_info[pm_id].detached:
            raise _invalid(_REUSE_MESSAGE, "payment_method")
        if pm["customer"] is not None and pm["customer"] != customer_id:
            if customer_id is None:
                raise _invalid(
                    f"The PaymentMethod {pm_id} is attached to a Customer "
                    f"({pm['customer']}). To use it, provide the `customer` parameter.",
                    "payment_method",
                )
            raise _invalid(
                f"The provided PaymentMethod {pm_id} belongs to a different Customer "
                f"({pm['customer']}) than the one given ({customer_id}).",
                "payment_method",
            )
        return pm

    # ---- payment intents -----------------------------------------------------------------------

    def _create_pi(self, ctx: _Ctx, params: Obj) -> Obj:
        """Create a PaymentIntent and confirm it off-session at once: the one way the gateway charges."""
        _check_params(
            params,
            {
                "amount",
                "automatic_payment_methods",
                "confirm",
                "currency",
                "customer",
                "expand",
                "metadata",
                "off_session",
                "payment_method",
            },
        )
        amount = _int_param(params, "amount", required=True, minimum=1)
        currency = _str_param(params, "currency", required=True)
        assert amount is not None and currency is not None
        currency = currency.lower()
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise _invalid(f"Invalid currency: {currency}.", "currency", "parameter_invalid_string")
        minimum = minimum_charge_cents(currency)
        if amount < minimum:
            raise _invalid(
                f"Amount must be at least {_format_money(minimum, currency)} {currency}",
                "amount",
                "amount_too_small",
            )
        customer_id = _str_param(params, "customer")
        if customer_id is not None and customer_id not in self._customers:
            raise _no_such("customer", customer_id, "customer")
        if not _bool_param(params, "confirm"):
            raise _unsupported("A PaymentIntent not confirmed when it is created (confirm=true)", "confirm")
        if params.get("off_session") not in ("true", "one_off", "recurring"):
            raise _unsupported("Confirming a PaymentIntent on-session (without off_session=true)", "off_session")
        pm_id = _str_param(params, "payment_method")
        if pm_id is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "To confirm the PaymentIntent, provide a `payment_method`.",
                "payment_method",
                "payment_intent_unexpected_state",
            )
        pm = self._payment_method_for(pm_id, customer_id)
        apm = params.get("automatic_payment_methods")
        pi_id = _new_id("pi_")
        pi: Obj = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": (
                {
                    "allow_redirects": apm.get("allow_redirects", "always"),
                    "enabled": apm.get("enabled") == "true",
                }
                if isinstance(apm, dict)
                else None
            ),
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{pi_id}_secret_{_new_id('', 25)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": customer_id,
            "description": None,
            "excluded_payment_method_types": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(params),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": pm["id"],
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "requires_confirmation",
            "transfer_data": None,
            "transfer_group": None,
        }
        self._pis[pi_id] = pi
        self._confirm(ctx, pi, pm)
        return pi

    def _confirm(self, ctx: _Ctx, pi: Obj, pm: Obj) -> None:
        """Charge the card: a forced decline first, then a forced (or card's) ``processing``, then the card."""
        card = TEST_CARDS[self._pm_info[pm["id"]].token]
        decline = self._forced_declines.pop(0) if self._forced_declines else None
        if decline is None and (self._processing_next > 0 or card.outcome == "processing"):
            if card.outcome != "processing":
                self._processing_next -= 1
            charge = self._create_charge(pi, pm)
            pi["latest_charge"] = charge["id"]
            pi["status"] = "processing"
            self._emit(ctx, "payment_intent.processing", pi)
            return
        decline = decline or card.decline
        charge = self._create_charge(pi, pm)
        self._finish_charge(charge, decline)
        pi["latest_charge"] = charge["id"]
        if decline is not None:
            self._decline_pi(ctx, pi, pm, charge, decline)
            raise self._card_error(
                decline,
                charge=charge["id"],
                payment_intent=copy.deepcopy(pi),
                payment_method=copy.deepcopy(pm),
            )
        self._succeed_pi(ctx, pi)

    def _decline_pi(self, ctx: _Ctx | None, pi: Obj, pm: Obj, charge: Obj, decline: Decline) -> None:
        last_error: Obj = {
            "charge": charge["id"],
            "code": decline.code,
            "decline_code": decline.decline_code,
            "doc_url": f"{_DOCS}/error-codes/{decline.code.replace('_', '-')}",
            "message": decline.message,
            "payment_method": copy.deepcopy(pm),
            "type": "card_error",
        }
        if decline.param:
            last_error["param"] = decline.param
        pi["status"] = "requires_payment_method"
        pi["payment_method"] = None
        pi["last_payment_error"] = last_error
        self._emit(ctx, "payment_intent.payment_failed", pi)

    def _succeed_pi(self, ctx: _Ctx | None, pi: Obj) -> None:
        pi["status"] = "succeeded"
        pi["amount_received"] = pi["amount"]
        self._emit(ctx, "payment_intent.succeeded", pi)

    def _settle_pi(self, pi_id: str, succeeded: bool, decline_code: str) -> Obj:
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id)
        if pi["status"] != "processing":
            raise _invalid(f"PaymentIntent {pi_id} is {pi['status']}, not processing: there is nothing to settle.")
        charge = self._charges[pi["latest_charge"]]
        pm = self._pms[charge["payment_method"]]
        decline = None if succeeded else decline_named(decline_code)
        self._finish_charge(charge, decline)
        if decline is not None:
            self._decline_pi(None, pi, pm, charge, decline)
        else:
            self._succeed_pi(None, pi)
        return pi

    def _get_pi(self, ctx: _Ctx, params: Obj, pi_id: str) -> Obj:
        _check_params(params, {"expand"})
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id)
        return pi

    def _list_pis(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"customer", "expand", "limit", "starting_after"})
        customer_id = _str_param(params, "customer")
        items = [pi for pi in reversed(self._pis.values()) if customer_id in (None, pi["customer"])]
        return _paginate(items, params, "/v1/payment_intents", "payment_intent")

    def _search_pis(self, ctx: _Ctx, params: Obj) -> Obj:
        """One page of matches, newest first (the gateway never asks for a second one)."""
        _check_params(params, {"expand", "limit", "query"})
        query = _str_param(params, "query", required=True)
        assert query is not None
        limit = _limit(params)
        predicate = _parse_search_query(query)
        matches = [pi for pi in reversed(self._pis.values()) if predicate(pi)]
        return {
            "object": "search_result",
            "data": matches[:limit],
            "has_more": len(matches) > limit,
            "next_page": None,
            "url": "/v1/payment_intents/search",
        }

    # ---- charges -------------------------------------------------------------------------------

    def _create_charge(self, pi: Obj, pm: Obj) -> Obj:
        """The PaymentIntent's charge, ``pending`` (no money has moved) until ``_finish_charge``."""
        charge_id = _new_id("ch_")
        card = pm["card"]
        charge: Obj = {
            "id": charge_id,
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": copy.deepcopy(pm["billing_details"]),
            "calculated_statement_descriptor": "STRIPE EMULATOR",
            "captured": False,
            "created": int(time.time()),
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": None,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None,
            "failure_message": None,
            "fraud_details": {},
            "livemode": False,
            "metadata": copy.deepcopy(pi["metadata"]),
            "on_behalf_of": None,
            "outcome": None,
            "paid": False,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": {
                "card": {
                    "amount_authorized": None,
                    "brand": card["brand"],
                    "checks": copy.deepcopy(card["checks"]),
                    "country": card["country"],
                    "exp_month": card["exp_month"],
                    "exp_year": card["exp_year"],
                    "fingerprint": card["fingerprint"],
                    "funding": card["funding"],
                    "last4": card["last4"],
                    "network": card["brand"],
                    "three_d_secure": None,
                    "wallet": None,
                },
                "type": "card",
            },
            "receipt_email": None,
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
            "refunded": False,
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "pending",
            "transfer_data": None,
            "transfer_group": None,
        }
        self._charges[charge_id] = charge
        return charge

    def _finish_charge(self, charge: Obj, decline: Decline | None) -> None:
        """A pending charge succeeds (paid, with its fee on a balance transaction) or is declined."""
        amount = charge["amount"]
        succeeded = decline is None
        if succeeded:
            txn_id = _new_id("txn_")
            self._txns[txn_id] = _charge_balance_transaction(txn_id, charge)
            charge["balance_transaction"] = txn_id
        charge["amount_captured"] = amount if succeeded else 0
        charge["captured"] = succeeded
        charge["paid"] = succeeded
        charge["status"] = "succeeded" if succeeded else "failed"
        charge["failure_code"] = decline.code if decline else None
        charge["failure_message"] = decline.message if decline else None
        charge["payment_method_details"]["card"]["amount_authorized"] = amount if succeeded else None
        charge["outcome"] = {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network" if succeeded else "declined_by_network",
            "reason": decline.decline_code if decline else None,
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": (
                "Payment complete." if succeeded else "The bank did not return any further details with this decline."
            ),
            "type": "authorized" if succeeded else "issuer_declined",
        }

    # ---- refunds -------------------------------------------------------------------------------

    def _create_refund(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"amount", "expand", "metadata", "payment_intent"})
        pi_id = _str_param(params, "payment_intent")
        if pi_id is None:
            raise _invalid(
                "One of the following params should be provided for this request: payment_intent or charge.",
                None,
                "parameter_missing",
            )
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id, "payment_intent")
        if pi["status"] != "succeeded":
            raise _invalid(
                f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                "payment_intent",
            )
        charge = self._charges[pi["latest_charge"]]
        if charge["disputed"]:
            raise _invalid(
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                None,
                "charge_disputed",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise _invalid(
                f"Charge {charge['id']} has already been refunded.",
                None,
                "charge_already_refunded",
            )
        amount = _int_param(params, "amount", minimum=1)
        if amount is None:
            amount = remaining
        if amount > remaining:
            currency = charge["currency"]
            raise _invalid(
                f"Refund amount ({_format_money(amount, currency)}) is greater than unrefunded "
                f"amount on charge ({_format_money(remaining, currency)})",
                "amount",
                "amount_too_large",
            )
        refund_id = _new_id("re_")
        plan = self._refund_plans.pop(0) if self._refund_plans else None
        refund: Obj = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": _new_id("txn_"),  # an id only: nothing reads a refund's balance transaction
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "destination_details": {
                "card": {
                    "reference_status": "pending",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "metadata": _metadata(params),
            "payment_intent": pi_id,
            "reason": None,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "pending" if plan else "succeeded",
            "transfer_reversal": None,
        }
        self._refunds[refund_id] = refund
        if plan is not None:
            self._pending_refunds[refund_id] = plan
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self._emit(ctx, "charge.refunded", charge, previous)
        self._emit(ctx, "refund.created", refund)
        return refund

    def _get_refund(self, ctx: _Ctx, params: Obj, refund_id: str) -> Obj:
        _check_params(params, {"expand"})
        refund = self._refunds.get(refund_id)
        if refund is None:
            raise _no_such("refund", refund_id)
        return refund

    def _list_refunds(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"expand", "limit", "payment_intent", "starting_after"})
        pi_id = _str_param(params, "payment_intent")
        if pi_id is not None and pi_id not in self._pis:
            raise _no_such("payment_intent", pi_id, "payment_intent")
        items = [refund for refund in reversed(self._refunds.values()) if pi_id in (None, refund["payment_intent"])]
        return _paginate(items, params, "/v1/refunds", "refund")

    def _settle_refund(self, refund_id: str, succeeded: bool | None) -> Obj:
        refund = self._refunds.get(refund_id)
        if refund is None:
            raise _no_such("refund", refund_id)
        if refund["status"] != "pending":
            raise _invalid(f"Refund {refund_id} is {refund['status']}, not pending: there is nothing to settle.")
        plan = self._pending_refunds.pop(refund_id)
        if succeeded is None:
            succeeded = plan.succeeds
        previous: Obj = {"status": "pending"}
        if succeeded:
            refund["status"] = "succeeded"
            refund["destination_details"]["card"]["reference_status"] = "available"
            reference = "".join(secrets.choice(string.digits) for _ in range(23))
            refund["destination_details"]["card"]["reference"] = reference
        else:
            refund["status"] = "failed"
            refund["failure_reason"] = plan.failure_reason or "unknown"
            refund["failure_balance_transaction"] = _new_id("txn_")
            refund["destination_details"]["card"]["reference_status"] = "unavailable"
            previous["failure_reason"] = None
            # The money never left: the charge no longer counts it as refunded.
            charge = self._charges[refund["charge"]]
            charge["amount_refunded"] -= refund["amount"]
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self._emit(None, "charge.refund.updated", refund, previous)
        self._emit(None, "refund.updated", refund, previous)
        if not succeeded:
            self._emit(None, "refund.failed", refund)
        return refund

    # ---- disputes ------------------------------------------------------------------------------

    def _create_dispute(self, charge_id: str, amount: int | None) -> Obj:
        charge = self._charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        if charge["status"] != "succeeded":
            raise _invalid(f"Charge {charge_id} did not succeed; it cannot be disputed.", "charge")
        if charge["disputed"]:
            raise _invalid(f"Charge {charge_id} is already disputed.", "charge")
        now = int(time.time())
        dispute: Obj = {
            "id": _new_id("du_"),
            "object": "dispute",
            "amount": amount if amount is not None else charge["amount"] - charge["amount_refunded"],
            "balance_transactions": [],
            "charge": charge_id,
            "created": now,
            "currency": charge["currency"],
            "evidence": {},
            "evidence_details": {
                "due_by": now + 7 * 24 * 3600,
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {
                "card": {
                    "brand": charge["payment_method_details"]["card"]["brand"],
                    "case_type": "chargeback",
                    "network_reason_code": "10.4",
                },
                "type": "card",
            },
            "reason": "fraudulent",
            "status": "needs_response",
        }
        charge["disputed"] = True
        self._emit(None, "charge.dispute.created", dispute)
        return dispute


def _charge_of(obj: Obj) -> str | None:
    """The charge an event's object concerns: the charge itself, or a refund's or dispute's charge."""
    return str(obj["id"]) if obj.get("object") == "charge" else obj.get("charge")


def _upper(method: str | None) -> str | None:
    return method.upper() if method else None


def _charge_balance_transaction(txn_id: str, charge: Obj) -> Obj:
    """The balance transaction of a paid charge: its amount, Stripe's fee and what is left."""
    amount, currency, created = charge["amount"], charge["currency"], int(time.time())
    fee = stripe_fee(amount)
    return {
        "id": txn_id,
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created + 2 * 24 * 3600,
        "created": created,
        "currency": currency,
        "description": None,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": [
            {
                "amount": fee,
                "application": None,
                "currency": currency,
                "description": "Stripe processing fees",
                "type": "stripe_fee",
            }
        ],
        "net": amount - fee,
        "reporting_category": "charge",
        "source": charge["id"],
        "status": "pending",
        "type": "charge",
    }


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: StripeEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _RequestHandler)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    server_version = "stripe-emulator/1.0"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self, method: str) -> None:
        server = self.server
        assert isinstance(server, _Server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        canonical = {
            "authorization": "Authorization",
            "idempotency-key": "Idempotency-Key",
            "stripe-version": "Stripe-Version",
        }
        headers = {canonical.get(key.lower(), key): value for key, value in self.headers.items()}
        result = server.emulator.handle_http(method, self.path, headers, body)
        self.close_connection = True
        if result.drop:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(result.status)
            for name, value in result.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(result.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(result.body)
        except (BrokenPipeError, ConnectionResetError):
            pass
