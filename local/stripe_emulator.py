"""A local Stripe API that the real ``stripe`` SDK talks to (dev/test tooling, never deployed).

It serves the small part of Stripe's v1 API the billing backend uses, with Stripe's documented
request encoding (form-encoded, nested ``metadata[key]=value``, ``expand[]``), object shapes,
error shapes and HTTP statuses, idempotency semantics, test PaymentMethods and signed webhooks::

    with StripeEmulator(webhook_url="http://127.0.0.1:3000/webhooks/stripe",
                        webhook_secret="whsec_local") as emulator:
        client = stripe.StripeClient("sk_test_local", base_addresses={"api": emulator.url})
        client.v1.customers.create({"email": "a@example.com"})

or ``python -m local.stripe_emulator --port 12111 --webhook-url URL --webhook-secret S``.

Besides the standard library it uses only the billing domain's table of minimum charge amounts
(``billing.money``, so ``layers/billing`` must be on ``PYTHONPATH``). Everything lives in memory.

Endpoints: ``POST /v1/customers``, ``GET /v1/customers/{id}``, ``GET /v1/customers/{id}/payment_methods``,
``POST /v1/payment_methods/{id}/attach|detach``, ``GET /v1/payment_methods/{id}``,
``POST /v1/payment_intents``, ``POST /v1/payment_intents/{id}/confirm``, ``GET /v1/payment_intents``,
``GET /v1/payment_intents/search``, ``GET /v1/payment_intents/{id}``, ``POST /v1/refunds``,
``GET /v1/refunds`` (``payment_intent`` / ``charge`` filters), ``GET /v1/refunds/{id}``,
``GET /v1/charges/{id}``, ``GET /v1/balance_transactions/{id}``.

Emulator-only control endpoints (no API key needed) live under ``/_emulator/``; see
``StripeEmulator._control_routes``. The Python object offers the same controls as methods:

=====================================  ===================================================================
Python                                 HTTP (form or JSON body)
=====================================  ===================================================================
``fail_after_success``                 ``POST /_emulator/fail_after_success`` (path_prefix, times, method)
``fail_next_request``                  ``POST /_emulator/fail_next_request`` (path_prefix, times, status, method)
``key_in_use_next``                    ``POST /_emulator/key_in_use_next`` (path_prefix, times, method)
``set_latency``                        ``POST /_emulator/latency`` (seconds, path_prefix, method)
``decline_next_charge``                ``POST /_emulator/decline_next_charge`` (decline_code, code, message, times)
``process_next_charge``                ``POST /_emulator/process_next_charge`` (times)
``settle_payment_intent``              ``POST /_emulator/payment_intents/{id}/settle`` (succeeded, decline_code)
``pend_next_refund``                   ``POST /_emulator/pend_next_refund`` (times)
``fail_next_refund``                   ``POST /_emulator/fail_next_refund`` (failure_reason, times)
``settle_refund``                      ``POST /_emulator/refunds/{id}/settle`` (succeeded, failure_reason)
``settle_refunds``                     ``POST /_emulator/settle_refunds``
``forget_idempotency_keys``            ``POST /_emulator/forget_idempotency_keys``
``create_dispute``                     ``POST /_emulator/disputes`` (charge, amount, reason)
``resend``                             ``POST /_emulator/events/{id}/resend`` (timestamp)
``reset``                              ``POST /_emulator/reset``
``events`` / ``payment_intents`` /     ``GET /_emulator/events`` (type) / ``GET /_emulator/payment_intents`` /
``refunds`` / ``request_log``          ``GET /_emulator/refunds`` / ``GET /_emulator/requests``
=====================================  ===================================================================

Charges that are not final: ``process_next_charge()`` (or the emulator-only test PaymentMethod
``pm_card_processing``, which is not one of Stripe's) makes a confirmation end in ``processing``
(``payment_intent.processing``); ``settle_payment_intent`` later makes it ``succeeded``
(``payment_intent.succeeded``) or declined (``requires_payment_method``, ``payment_intent.payment_failed``).

Refunds that are not final: ``pend_next_refund()`` / ``fail_next_refund(failure_reason)`` make the next refund
answer ``pending``; ``settle_refund`` / ``settle_refunds`` later make it ``succeeded`` or ``failed`` (with
``failure_reason``; the amount is no longer refunded on the charge), emitting ``charge.refund.updated`` and
``refund.updated`` (and ``refund.failed``), as Stripe does.

Idempotency keys are kept until ``forget_idempotency_keys()`` (Stripe forgets them after 24 hours): after that
the same key with the same parameters runs the request again, as it would at Stripe.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import http.server
import json
import os
import queue
import re
import secrets
import signal
import socket
import string
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from types import FrameType, TracebackType
from typing import Any

from billing.money import has_minor_units, minimum_charge_cents

__all__ = [
    "API_VERSION",
    "AUTH_REQUIRED",
    "DEFAULT_WEBHOOK_SECRET",
    "GENERIC_DECLINE",
    "REFUND_FAILURE_REASONS",
    "TEST_CARDS",
    "Decline",
    "StripeEmulator",
    "StripeEmulatorError",
    "TestCard",
    "decline_named",
    "main",
    "parse_form",
    "stripe_fee",
]

API_VERSION = "2026-10-28.endive"
"""The API version reported when a request sends no ``Stripe-Version`` (the SDK's pinned one)."""

DEFAULT_WEBHOOK_SECRET = "whsec_local_emulator"

Obj = dict[str, Any]
Handler = Callable[..., Obj]

_ID_ALPHABET = string.ascii_letters + string.digits
_CURRENCY_SYMBOL = {"usd": "$", "eur": "€", "gbp": "£", "cad": "$", "aud": "$"}
_REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
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


def _metadata(params: Obj, existing: Mapping[str, str] | None = None) -> dict[str, str]:
    result = dict(existing or {})
    value = params.get("metadata")
    if value is None:
        return result
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", "metadata", "parameter_invalid_hash")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _invalid(f"Invalid string: {json.dumps(item)}", f"metadata[{key}]")
        if len(key) > 40:
            raise _invalid("Metadata keys can have up to 40 characters.", f"metadata[{key}]")
        if len(item) > 500:
            raise _invalid("Metadata values can have up to 500 characters.", f"metadata[{key}]")
        if item == "":
            result.pop(key, None)
        else:
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
    __test__ = False  # not a pytest test class, should a test module import it

    brand: str
    last4: str
    funding: str = "credit"
    country: str = "US"
    # succeed | decline | customer_fail | auth_always | auth_unless_setup | auth_setup_done | processing
    outcome: str = "succeed"
    decline: Decline | None = None

    @property
    def display_brand(self) -> str:
        return "american_express" if self.brand == "amex" else self.brand


def _declining(last4: str, decline: Decline) -> TestCard:
    return TestCard("visa", last4, outcome="decline", decline=decline)


TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "pm_card_mastercard_prepaid": TestCard("mastercard", "5100", funding="prepaid"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_chargeDeclined": _declining("0002", GENERIC_DECLINE),
    "pm_card_chargeDeclinedInsufficientFunds": _declining(
        "9995",
        Decline("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    ),
    "pm_card_chargeDeclinedLostCard": _declining("9987", Decline("card_declined", "lost_card", _DECLINED)),
    "pm_card_chargeDeclinedStolenCard": _declining("9979", Decline("card_declined", "stolen_card", _DECLINED)),
    "pm_card_chargeDeclinedFraudulent": _declining("0019", Decline("card_declined", "fraudulent", _DECLINED)),
    "pm_card_chargeDeclinedExpiredCard": _declining(
        "0069", Decline("expired_card", "expired_card", "Your card has expired.", "exp_month")
    ),
    "pm_card_chargeDeclinedIncorrectCvc": _declining(
        "0127",
        Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"),
    ),
    "pm_card_chargeDeclinedProcessingError": _declining(
        "0119",
        Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
    ),
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", outcome="customer_fail"),
    "pm_card_authenticationRequired": TestCard("visa", "3184", outcome="auth_always"),
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", outcome="auth_unless_setup"),
    "pm_card_authenticationRequiredSetupForOffSession": TestCard("visa", "0446", outcome="auth_setup_done"),
    # Emulator-only (Stripe has no such card): every charge ends in `processing` until settle_payment_intent.
    "pm_card_processing": TestCard("visa", "0077", outcome="processing"),
}


def decline_named(decline_code: str) -> Decline:
    """The decline a test card gives for ``decline_code`` (``generic_decline``, ``insufficient_funds``,
    ``expired_card``, ...), or a ``card_declined`` with that decline code."""
    for card in TEST_CARDS.values():
        if card.decline is not None and card.decline.decline_code == decline_code:
            return card.decline
    if decline_code == AUTH_REQUIRED.decline_code:
        return AUTH_REQUIRED
    return Decline("card_declined", decline_code, _DECLINED)


@dataclasses.dataclass
class _PmInfo:
    token: str
    detached: bool = False
    used: bool = False


# --------------------------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------------------------

_EXPANDABLE: dict[str, dict[str, str]] = {
    "customer": {"invoice_settings.default_payment_method": "payment_method"},
    "payment_method": {"customer": "customer"},
    "payment_intent": {
        "customer": "customer",
        "payment_method": "payment_method",
        "latest_charge": "charge",
    },
    "charge": {
        "customer": "customer",
        "payment_intent": "payment_intent",
        "balance_transaction": "balance_transaction",
    },
    "refund": {
        "charge": "charge",
        "payment_intent": "payment_intent",
        "balance_transaction": "balance_transaction",
        "failure_balance_transaction": "balance_transaction",
    },
    "balance_transaction": {"source": "charge"},
    "dispute": {"charge": "charge", "payment_intent": "payment_intent"},
}


def _match_expandable(kind: str, parts: list[str]) -> tuple[str, str, int] | None:
    table = _EXPANDABLE.get(kind, {})
    for width in (2, 1):
        if len(parts) >= width:
            key = ".".join(parts[:width])
            if key in table:
                return key, table[key], width
    return None


def _validate_expand(kind: str, path: str) -> None:
    parts = path.split(".")
    if ":" in kind:
        container, kind = kind.split(":", 1)
        if container == "search" and path == "total_count":
            return
        if parts[0] != "data" or len(parts) < 2:
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        parts = parts[1:]
    depth = 0
    while parts:
        found = _match_expandable(kind, parts)
        if found is None:
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        _, kind, width = found
        parts = parts[width:]
        depth += 1
    if depth > 4:
        raise _invalid(f"You cannot expand more than 4 levels of a property. Property: {path}", "expand")


# --------------------------------------------------------------------------------------------
# Search query language (the subset used for PaymentIntents)
# --------------------------------------------------------------------------------------------

_CLAUSE_RE = re.compile(
    r"""\s*(?P<neg>-?)
    (?P<field>metadata\[(?P<q>['"])(?P<key>.*?)(?P=q)\]|[a-z_]+)
    \s*(?P<op>:|>=|<=|>|<|~)\s*
    (?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|-?\d+|null)\s*""",
    re.VERBOSE,
)
_CONNECTOR_RE = re.compile(r"(AND|OR)(?=\s)")
_PI_SEARCH_FIELDS = {
    "amount": "number",
    "created": "number",
    "currency": "string",
    "customer": "string",
    "status": "string",
}

Predicate = Callable[[Obj], bool]


def _unquote(raw: str) -> str | int | None:
    if raw == "null":
        return None
    if raw[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return int(raw)


def _clause_predicate(match: re.Match[str], query: str) -> Predicate:
    negate = match.group("neg") == "-"
    field = match.group("field")
    op = match.group("op")
    value = _unquote(match.group("value"))
    metadata_key = match.group("key")
    if metadata_key is None and field not in _PI_SEARCH_FIELDS:
        raise _invalid(
            f"Field '{field}' is an unsupported search field for resource payment_intents. "
            f"See {_DOCS}/search#query-fields-for-payment-intents for a list of supported fields.",
            "query",
        )
    numeric = metadata_key is None and _PI_SEARCH_FIELDS[field] == "number"
    if numeric and not isinstance(value, int):
        raise _invalid(f"Field '{field}' requires a numeric value: {query}", "query")
    if not numeric and isinstance(value, int):
        raise _invalid(f"String values must be quoted: {query}", "query")
    if op in (">", "<", ">=", "<=") and not numeric:
        raise _invalid(f"The operator '{op}' is only valid for numeric fields.", "query")
    if op == "~" and (not isinstance(value, str) or len(value) < 3):
        raise _invalid("Substring matches need at least 3 characters.", "query")

    def actual(pi: Obj) -> Any:
        if metadata_key is not None:
            return pi["metadata"].get(metadata_key)
        return pi.get(field)

    def test(pi: Obj) -> bool:
        current = actual(pi)
        result: bool
        if op == ":":
            result = bool(current == value)
        elif op == "~":
            result = isinstance(current, str) and str(value) in current
        elif not isinstance(current, int) or not isinstance(value, int):
            result = False
        elif op == ">":
            result = current > value
        elif op == "<":
            result = current < value
        elif op == ">=":
            result = current >= value
        else:
            result = current <= value
        return result != negate

    return test


def _parse_search_query(query: str) -> Predicate:
    predicates: list[Predicate] = []
    connectors: set[str] = set()
    position = 0
    while True:
        match = _CLAUSE_RE.match(query, position)
        if match is None:
            raise _invalid(
                f"We were unable to parse your search query. Try using the format "
                f"`metadata['key']:'value'` to query for metadata or `key:'value'` to query "
                f"for other fields. Query: {query}",
                "query",
            )
        predicates.append(_clause_predicate(match, query))
        position = match.end()
        if position >= len(query):
            break
        connector = _CONNECTOR_RE.match(query, position)
        if connector is None:
            raise _invalid(f"We were unable to parse your search query: {query}", "query")
        connectors.add(connector.group(1))
        position = connector.end()
    if len(connectors) > 1:
        raise _invalid("Using both AND and OR in the same search query is not supported.", "query")
    if len(predicates) > 10:
        raise _invalid("Search queries can have at most 10 clauses.", "query")
    if connectors == {"OR"}:
        return lambda pi: any(predicate(pi) for predicate in predicates)
    return lambda pi: all(predicate(pi) for predicate in predicates)


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


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    kind: str


class StripeEmulator:
    """An in-memory Stripe API served over HTTP on 127.0.0.1 (see the module docstring).

    Parameters:
        webhook_url: where signed events are POSTed (``None`` disables delivery; events are still
            recorded and can be sent later with ``send_event`` / ``resend`` after setting it).
        webhook_secret: the endpoint secret used for ``Stripe-Signature``.
        decline_cards_fail_attach: ``False`` (default): the ``pm_card_chargeDeclined*`` cards
            attach fine and decline when charged, and ``pm_card_chargeCustomerFail`` declines at
            attach. ``True``: Stripe's own test-mode behaviour, where attaching runs a card check,
            so the ``chargeDeclined*`` cards fail at attach and ``pm_card_chargeCustomerFail``
            ("decline after attaching") attaches and then declines when charged.
        clock: the time source for ``created`` and webhook timestamps (seconds since the epoch).
        verbose: log each request to stderr.
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        *,
        decline_cards_fail_attach: bool = False,
        clock: Callable[[], float] = time.time,
        verbose: bool = False,
    ) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret or DEFAULT_WEBHOOK_SECRET
        self.deliver_webhooks = True
        self.webhook_timeout = 5.0
        self.decline_cards_fail_attach = decline_cards_fail_attach
        self.verbose = verbose
        self._clock = clock

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
            worker.join(timeout=self.webhook_timeout + 1)

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``) to give the SDK as its ``api`` base address."""
        if self._url is None:
            raise RuntimeError("the Stripe emulator is not running; call start() first")
        return self._url

    def __enter__(self) -> StripeEmulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- emulator-only helpers -----------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object, event, idempotency key, hook and pending webhook delivery."""
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

    def charges(self) -> list[Obj]:
        """Every Charge, failed ones included (oldest first)."""
        with self._lock:
            return copy.deepcopy(list(self._charges.values()))

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
        """Every webhook delivery attempt's outcome: event_id, type, the charge it concerns (or None), status,
        error, attempts."""
        with self._lock:
            return copy.deepcopy(self._deliveries)

    def fail_after_success(
        self,
        path_prefix: str = "/v1/payment_intents",
        times: int = 1,
        method: str | None = "POST",
        status: int | None = None,
    ) -> None:
        """Make the next ``times`` matching requests run at "Stripe" (objects are created, charges
        made, events sent and the idempotent result saved) and then lose the answer: the connection
        is dropped (the SDK raises ``APIConnectionError``), or with ``status`` (500, 429...) an error
        of that status is answered instead of the result. Applies whatever the outcome."""
        with self._lock:
            self._drop_hooks.append(_Hook(path_prefix, _upper(method), times, status))

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

    def set_latency(self, seconds: float, path_prefix: str = "/v1/", method: str | None = None) -> None:
        """Delay matching requests by ``seconds`` while their idempotency key is held (0 clears)."""
        with self._lock:
            self._latency[:] = [entry for entry in self._latency if entry[:2] != (path_prefix, _upper(method))]
            if seconds > 0:
                self._latency.append((path_prefix, _upper(method), seconds))

    def decline_next_charge(
        self,
        decline_code: str = "generic_decline",
        code: str = "card_declined",
        message: str = _DECLINED,
        times: int = 1,
    ) -> None:
        """Decline the next ``times`` charge attempts with any card, e.g. ``pickup_card``, which
        has no test card of its own."""
        with self._lock:
            self._forced_declines.extend([Decline(code, decline_code, message)] * times)

    def key_in_use_next(self, path_prefix: str = "/v1/", times: int = 1, method: str | None = "POST") -> None:
        """Answer the next ``times`` matching requests with Stripe's 409 ``idempotency_key_in_use`` (as if a
        request with the same key were still running) before anything happens (nothing is created or saved).
        The SDK retries 409s, so a client with ``max_network_retries=n`` needs ``times=n + 1`` to see it."""
        with self._lock:
            self._in_use_hooks.append(_Hook(path_prefix, _upper(method), times, 409))

    def forget_idempotency_keys(self) -> int:
        """Forget every finished idempotent request, as Stripe does after 24 hours: the same key then runs
        the request again (a second charge, if the caller did not look first). Requests still running keep
        their key. Returns how many keys were forgotten."""
        with self._idem_lock:
            finished = [scope for scope, entry in self._idem.items() if entry.result is not None]
            for scope in finished:
                del self._idem[scope]
        return len(finished)

    def process_next_charge(self, times: int = 1) -> None:
        """Make the next ``times`` PaymentIntent confirmations end in ``processing`` (whatever the card; a
        ``decline_next_charge`` still wins), emitting ``payment_intent.processing``. No money has moved until
        ``settle_payment_intent``. The emulator-only card ``pm_card_processing`` always does this."""
        with self._lock:
            self._processing_next += times

    def settle_payment_intent(
        self, payment_intent: str, succeeded: bool | None = None, decline_code: str | None = None
    ) -> Obj:
        """Finish a ``processing`` PaymentIntent: ``succeeded`` (``payment_intent.succeeded``, the charge is
        paid, its fee known) or declined with ``decline_code`` (default ``generic_decline``;
        ``requires_payment_method``, ``payment_intent.payment_failed``). ``succeeded=None``: what its card
        does (``pm_card_processing`` and good cards succeed, declining cards decline)."""
        with self._lock:
            return copy.deepcopy(self._settle_pi(payment_intent, succeeded, decline_code))

    def pend_next_refund(self, times: int = 1) -> None:
        """Make the next ``times`` refunds answer ``pending`` (``settle_refund`` makes them ``succeeded``)."""
        with self._lock:
            self._refund_plans.extend([_RefundPlan(True)] * times)

    def fail_next_refund(self, failure_reason: str = "lost_or_stolen_card", times: int = 1) -> None:
        """Make the next ``times`` refunds answer ``pending`` and fail with ``failure_reason`` when settled
        (``settle_refund`` / ``settle_refunds``): the card could not take the money back."""
        if failure_reason not in REFUND_FAILURE_REASONS:
            raise ValueError(f"failure_reason must be one of {', '.join(REFUND_FAILURE_REASONS)}")
        with self._lock:
            self._refund_plans.extend([_RefundPlan(False, failure_reason)] * times)

    def settle_refund(self, refund: str, succeeded: bool | None = None, failure_reason: str | None = None) -> Obj:
        """Finish a ``pending`` refund: ``succeeded``, or ``failed`` with ``failure_reason`` (default: how
        ``pend_next_refund`` / ``fail_next_refund`` planned it). Emits ``charge.refund.updated`` and
        ``refund.updated``, plus ``refund.failed`` when it failed (the charge's ``amount_refunded`` drops)."""
        with self._lock:
            return copy.deepcopy(self._settle_refund(refund, succeeded, failure_reason))

    def settle_refunds(self) -> list[Obj]:
        """Settle every pending refund as planned (oldest first); returns them."""
        with self._lock:
            pending = [refund["id"] for refund in self._refunds.values() if refund["status"] == "pending"]
            return [copy.deepcopy(self._settle_refund(refund_id, None, None)) for refund_id in pending]

    def create_dispute(self, charge: str, amount: int | None = None, reason: str = "fraudulent") -> Obj:
        """Open a dispute on a succeeded charge and emit ``charge.dispute.created``."""
        with self._lock:
            return copy.deepcopy(self._create_dispute(None, charge, amount, reason))

    def signature_header(self, payload: str, timestamp: int | None = None, secret: str | None = None) -> str:
        """``Stripe-Signature`` for ``payload``: ``t=<ts>,v1=<HMAC-SHA256 of "<ts>.<payload>">``."""
        ts = int(self._clock()) if timestamp is None else timestamp
        key = (secret if secret is not None else self.webhook_secret).encode("utf-8")
        digest = hmac.new(key, f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
        return f"t={ts},v1={digest}"

    def send_event(self, event: Obj, timestamp: int | None = None, secret: str | None = None) -> int | None:
        """Deliver ``event`` (any dict) to ``webhook_url`` now, signed with ``timestamp`` (default:
        now) and ``secret`` (default: ``webhook_secret``). Returns the receiver's HTTP status, or
        ``None`` when it could not be reached. For duplicated, stale and out-of-order deliveries."""
        return self._deliver(event, timestamp, secret)

    def resend(self, event_id: str, timestamp: int | None = None) -> int | None:
        """Deliver a recorded event again now (a duplicate delivery); returns the HTTP status."""
        with self._lock:
            event = self._events.get(event_id)
            if event is None:
                raise KeyError(f"no such event: {event_id}")
            event = copy.deepcopy(event)
        return self._deliver(event, timestamp, None)

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
        self._disputes: dict[str, Obj] = {}
        self._events: dict[str, Obj] = {}
        self._idem: dict[tuple[str, str], _IdemEntry] = {}
        self._request_log: list[Obj] = []
        self._deliveries: list[Obj] = []
        self._drop_hooks: list[_Hook] = []
        self._error_hooks: list[_Hook] = []
        self._latency: list[tuple[str, str | None, float]] = []
        self._forced_declines: list[Decline] = []
        self._in_use_hooks: list[_Hook] = []
        self._processing_next = 0
        self._refund_plans: list[_RefundPlan] = []
        self._pending_refunds: dict[str, _RefundPlan] = {}

    def _now(self) -> int:
        return int(self._clock())

    def _stores(self) -> dict[str, dict[str, Obj]]:
        return {
            "cus_": self._customers,
            "pm_": self._pms,
            "pi_": self._pis,
            "ch_": self._charges,
            "txn_": self._txns,
            "re_": self._refunds,
            "du_": self._disputes,
        }

    def _lookup(self, object_id: str) -> Obj | None:
        for prefix, store in self._stores().items():
            if object_id.startswith(prefix):
                return store.get(object_id)
        return None

    # ---- HTTP plumbing -------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Handler, str]] = [
            ("POST", r"/v1/customers", self._create_customer, "customer"),
            ("GET", r"/v1/customers/([^/]+)", self._get_customer, "customer"),
            (
                "GET",
                r"/v1/customers/([^/]+)/payment_methods",
                self._list_customer_pms,
                "list:payment_method",
            ),
            ("POST", r"/v1/payment_methods/([^/]+)/attach", self._attach_pm, "payment_method"),
            ("POST", r"/v1/payment_methods/([^/]+)/detach", self._detach_pm, "payment_method"),
            ("GET", r"/v1/payment_methods/([^/]+)", self._get_pm, "payment_method"),
            ("POST", r"/v1/payment_intents", self._create_pi, "payment_intent"),
            ("GET", r"/v1/payment_intents", self._list_pis, "list:payment_intent"),
            ("GET", r"/v1/payment_intents/search", self._search_pis, "search:payment_intent"),
            (
                "POST",
                r"/v1/payment_intents/([^/]+)/confirm",
                self._confirm_pi_endpoint,
                "payment_intent",
            ),
            ("GET", r"/v1/payment_intents/([^/]+)", self._get_pi, "payment_intent"),
            ("POST", r"/v1/refunds", self._create_refund, "refund"),
            ("GET", r"/v1/refunds", self._list_refunds, "list:refund"),
            ("GET", r"/v1/refunds/([^/]+)", self._get_refund, "refund"),
            ("GET", r"/v1/charges/([^/]+)", self._get_charge, "charge"),
            (
                "GET",
                r"/v1/balance_transactions/([^/]+)",
                self._get_txn,
                "balance_transaction",
            ),
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
        """Serve one request (the HTTP server calls this; exposed for direct use in tests)."""
        split = urllib.parse.urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        request_id = _new_id("req_", 14)
        api_version = headers.get("Stripe-Version") or API_VERSION
        if path.startswith("/_emulator"):
            return self._handle_control(method, path, split.query, headers, body, request_id)

        try:
            api_key = self._authenticate(headers)
            if method == "POST":
                content_type = headers.get("Content-Type") or ""
                text = body.decode("utf-8")
                params = json.loads(text) if "json" in content_type and text else parse_form(text)
            else:
                params = parse_form(split.query)
        except StripeEmulatorError as error:
            return self._json_result(error.status, error.to_body(request_id), request_id, api_version)
        except (UnicodeDecodeError, ValueError):
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
        if self.verbose:
            print(
                f"stripe-emulator: {method} {path} -> {result.status}" + (" (dropped)" if result.drop else ""),
                file=sys.stderr,
                flush=True,
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
                expand = _expand_param(params)
                for path in expand:
                    _validate_expand(route.kind, path)
                obj = copy.deepcopy(route.handler(ctx, params, *ids))
                kind = route.kind.split(":")[-1]
                for path in expand:
                    self._expand(obj, route.kind, kind, path.split("."))
                return self._json_result(200, obj, ctx.request_id, ctx.api_version, idem_key)
            except StripeEmulatorError as error:
                return self._json_result(
                    error.status, error.to_body(ctx.request_id), ctx.request_id, ctx.api_version, idem_key
                )
            except Exception:  # a bug in the emulator: answer like Stripe's 500s
                traceback.print_exc()
                crash = StripeEmulatorError(500, "api_error", "An unknown error occurred.")
                return self._json_result(500, crash.to_body(ctx.request_id), ctx.request_id, ctx.api_version, idem_key)

    def _expand(self, obj: Obj, route_kind: str, kind: str, parts: list[str]) -> None:
        if ":" in route_kind:
            if parts[0] == "data" and isinstance(obj.get("data"), list):
                for item in obj["data"]:
                    self._expand(item, kind, kind, parts[1:])
            return  # "total_count" on a search is set by the search itself
        found = _match_expandable(kind, parts)
        if found is None:
            return
        key, target_kind, width = found
        container: Any = obj
        names = key.split(".")
        for name in names[:-1]:
            container = container.get(name) if isinstance(container, dict) else None
        if not isinstance(container, dict):
            return
        value = container.get(names[-1])
        if isinstance(value, str):
            target = self._lookup(value)
            if target is None:
                return
            value = copy.deepcopy(target)
            container[names[-1]] = value
        if isinstance(value, dict) and parts[width:]:
            self._expand(value, target_kind, target_kind, parts[width:])

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

    # ---- control endpoints ---------------------------------------------------------------------

    def _control_routes(self) -> dict[tuple[str, str], Callable[[Obj], Obj]]:
        return {
            ("GET", "/_emulator/health"): lambda p: {"ok": True},
            ("POST", "/_emulator/reset"): self._control_reset,
            ("GET", "/_emulator/events"): lambda p: {
                "object": "list",
                "data": self.events(p.get("type") or None),
            },
            ("GET", "/_emulator/payment_intents"): lambda p: {
                "object": "list",
                "data": self.payment_intents(),
            },
            ("GET", "/_emulator/requests"): lambda p: {
                "object": "list",
                "data": self.request_log(),
            },
            ("POST", "/_emulator/disputes"): lambda p: self.create_dispute(
                str(p.get("charge") or ""),
                _opt_int(p.get("amount")),
                str(p.get("reason") or "fraudulent"),
            ),
            ("POST", "/_emulator/fail_after_success"): self._control_fail_after_success,
            ("POST", "/_emulator/fail_next_request"): self._control_fail_next_request,
            ("POST", "/_emulator/decline_next_charge"): self._control_decline_next_charge,
            ("POST", "/_emulator/latency"): self._control_latency,
            ("GET", "/_emulator/refunds"): lambda p: {"object": "list", "data": self.refunds()},
            ("POST", "/_emulator/key_in_use_next"): self._control_key_in_use_next,
            ("POST", "/_emulator/forget_idempotency_keys"): lambda p: {"forgotten": self.forget_idempotency_keys()},
            ("POST", "/_emulator/process_next_charge"): self._control_process_next_charge,
            ("POST", "/_emulator/pend_next_refund"): self._control_pend_next_refund,
            ("POST", "/_emulator/fail_next_refund"): self._control_fail_next_refund,
            ("POST", "/_emulator/settle_refunds"): lambda p: {"object": "list", "data": self.settle_refunds()},
        }

    def _object_controls(self, method: str, path: str, params: Obj) -> Obj | None:
        """Controls on one object: ``POST /_emulator/<payment_intents|refunds|events>/{id}/<action>``."""
        match = re.fullmatch(r"/_emulator/(payment_intents|refunds|events)/([^/]+)/(settle|resend)", path)
        if method != "POST" or match is None:
            return None
        kind, object_id, action = match.groups()
        if (kind, action) == ("events", "resend"):
            return {"delivered_status": self.resend(object_id, _opt_int(params.get("timestamp")))}
        if (kind, action) == ("payment_intents", "settle"):
            decline_code = params.get("decline_code")
            return self.settle_payment_intent(
                object_id, _opt_bool(params.get("succeeded")), str(decline_code) if decline_code else None
            )
        if (kind, action) == ("refunds", "settle"):
            reason = params.get("failure_reason")
            return self.settle_refund(object_id, _opt_bool(params.get("succeeded")), str(reason) if reason else None)
        return None

    def _handle_control(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        request_id: str,
    ) -> _HttpResult:
        try:
            text = body.decode("utf-8")
            if "json" in (headers.get("Content-Type") or "") and text:
                loaded = json.loads(text)
                params: Obj = loaded if isinstance(loaded, dict) else {}
            else:
                params = parse_form(text if method == "POST" else query)
            object_payload = self._object_controls(method, path, params)
            if object_payload is not None:
                payload: Obj = object_payload
            else:
                handler = self._control_routes().get((method, path))
                if handler is None:
                    raise StripeEmulatorError(
                        404, "invalid_request_error", f"Unknown emulator control: {method} {path}"
                    )
                payload = handler(params)
            return self._json_result(200, payload, request_id, API_VERSION)
        except StripeEmulatorError as error:
            return self._json_result(error.status, error.to_body(request_id), request_id, API_VERSION)
        except (KeyError, ValueError, RuntimeError) as problem:
            bad = _invalid(str(problem))
            return self._json_result(400, bad.to_body(request_id), request_id, API_VERSION)

    def _control_reset(self, params: Obj) -> Obj:
        self.reset()
        return {"ok": True}

    def _control_fail_after_success(self, params: Obj) -> Obj:
        self.fail_after_success(
            str(params.get("path_prefix") or "/v1/payment_intents"),
            _opt_int(params.get("times")) or 1,
            _method_param(params, "POST"),
        )
        return {"ok": True}

    def _control_fail_next_request(self, params: Obj) -> Obj:
        self.fail_next_request(
            str(params.get("path_prefix") or "/v1/"),
            _opt_int(params.get("times")) or 1,
            _opt_int(params.get("status")) or 500,
            _method_param(params, "POST"),
        )
        return {"ok": True}

    def _control_decline_next_charge(self, params: Obj) -> Obj:
        self.decline_next_charge(
            str(params.get("decline_code") or "generic_decline"),
            str(params.get("code") or "card_declined"),
            str(params.get("message") or _DECLINED),
            _opt_int(params.get("times")) or 1,
        )
        return {"ok": True}

    def _control_process_next_charge(self, params: Obj) -> Obj:
        self.process_next_charge(_opt_int(params.get("times")) or 1)
        return {"ok": True}

    def _control_pend_next_refund(self, params: Obj) -> Obj:
        self.pend_next_refund(_opt_int(params.get("times")) or 1)
        return {"ok": True}

    def _control_fail_next_refund(self, params: Obj) -> Obj:
        self.fail_next_refund(
            str(params.get("failure_reason") or "lost_or_stolen_card"), _opt_int(params.get("times")) or 1
        )
        return {"ok": True}

    def _control_key_in_use_next(self, params: Obj) -> Obj:
        self.key_in_use_next(
            str(params.get("path_prefix") or "/v1/"),
            _opt_int(params.get("times")) or 1,
            _method_param(params, "POST"),
        )
        return {"ok": True}

    def _control_latency(self, params: Obj) -> Obj:
        self.set_latency(
            float(params.get("seconds") or 0),
            str(params.get("path_prefix") or "/v1/"),
            _method_param(params, None),
        )
        return {"ok": True}

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
            "created": self._now(),
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
                self._deliver(event, None, None)
            except Exception:  # never let one bad delivery stop the sender
                traceback.print_exc()
            finally:
                self._delivery_done()

    def _delivery_done(self) -> None:
        with self._webhook_cond:
            self._webhook_pending = max(0, self._webhook_pending - 1)
            self._webhook_cond.notify_all()

    def _deliver(self, event: Obj, timestamp: int | None, secret: str | None) -> int | None:
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
                    "Stripe-Signature": self.signature_header(payload, timestamp, secret),
                },
            )
            try:
                with self._opener.open(request, timeout=self.webhook_timeout) as response:
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
                    "timestamp": timestamp,
                }
            )
        return status

    # ---- customers -----------------------------------------------------------------------------

    def _create_customer(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(
            params,
            {
                "address",
                "description",
                "email",
                "expand",
                "invoice_settings",
                "metadata",
                "name",
                "payment_method",
                "phone",
                "preferred_locales",
                "shipping",
                "tax_exempt",
            },
        )
        invoice_settings = params.get("invoice_settings") or {}
        if not isinstance(invoice_settings, dict):
            raise _invalid("Invalid hash", "invoice_settings", "parameter_invalid_hash")
        _check_params(invoice_settings, {"default_payment_method", "custom_fields", "footer"})
        metadata = _metadata(params)
        address = params.get("address")
        customer: Obj = {
            "id": _new_id("cus_", 14),
            "object": "customer",
            "address": _address(address) if isinstance(address, dict) else None,
            "balance": 0,
            "created": self._now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": _str_param(params, "description"),
            "discount": None,
            "email": _str_param(params, "email"),
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": _str_param(invoice_settings, "footer"),
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": metadata,
            "name": _str_param(params, "name"),
            "next_invoice_sequence": 1,
            "phone": _str_param(params, "phone"),
            "preferred_locales": list(params.get("preferred_locales") or []),
            "shipping": None,
            "tax_exempt": _str_param(params, "tax_exempt") or "none",
            "test_clock": None,
        }
        pm_id = _str_param(params, "payment_method")
        default_pm = _str_param(invoice_settings, "default_payment_method")
        if default_pm and default_pm != pm_id:
            raise _invalid(
                f"The customer does not have a payment method with the ID {default_pm}. The "
                "payment method must be attached to the customer.",
                "invoice_settings[default_payment_method]",
            )
        self._customers[customer["id"]] = customer
        if pm_id:
            try:
                pm = self._attach(pm_id, customer["id"], param="payment_method")
            except StripeEmulatorError:
                del self._customers[customer["id"]]
                raise
            if default_pm:
                customer["invoice_settings"]["default_payment_method"] = pm["id"]
        return customer

    def _get_customer(self, ctx: _Ctx, params: Obj, customer_id: str) -> Obj:
        _check_params(params, {"expand"})
        customer = self._customers.get(customer_id)
        if customer is None:
            raise _no_such("customer", customer_id)
        return customer

    def _list_customer_pms(self, ctx: _Ctx, params: Obj, customer_id: str) -> Obj:
        _check_params(params, {"allow_redisplay", "ending_before", "expand", "limit", "starting_after", "type"})
        if customer_id not in self._customers:
            raise _no_such("customer", customer_id)
        kind = _str_param(params, "type")
        items = [
            pm for pm in reversed(self._pms.values()) if pm["customer"] == customer_id and kind in (None, pm["type"])
        ]
        return _paginate(items, params, f"/v1/customers/{customer_id}/payment_methods", "PaymentMethod")

    # ---- payment methods -----------------------------------------------------------------------

    def _clone_test_card(self, token: str) -> Obj:
        card = TEST_CARDS[token]
        pm_id = _new_id("pm_")
        pm: Obj = {
            "id": pm_id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": _address({}),
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
                "country": card.country,
                "display_brand": card.display_brand,
                "exp_month": 12,
                "exp_year": time.gmtime(self._now()).tm_year + 3,
                "fingerprint": hashlib.sha256(token.encode()).hexdigest()[:16],
                "funding": card.funding,
                "generated_from": None,
                "last4": card.last4,
                "networks": {"available": [card.brand], "preferred": None},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": self._now(),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self._pms[pm_id] = pm
        self._pm_info[pm_id] = _PmInfo(token)
        return pm

    def _card_error(self, decline: Decline, **extra: Any) -> StripeEmulatorError:
        return StripeEmulatorError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            param=decline.param,
            decline_code=decline.decline_code,
            **extra,
        )

    def _attach_decline(self, token: str) -> Decline | None:
        card = TEST_CARDS[token]
        if self.decline_cards_fail_attach:
            return card.decline if card.outcome == "decline" else None
        return GENERIC_DECLINE if card.outcome == "customer_fail" else None

    def _attach(self, pm_id: str, customer_id: str, *, param: str | None = None) -> Obj:
        if pm_id in TEST_CARDS:
            decline = self._attach_decline(pm_id)
            if decline is not None:
                raise self._card_error(decline)
            pm = self._clone_test_card(pm_id)
        else:
            found = self._pms.get(pm_id)
            if found is None:
                raise _no_such("PaymentMethod", pm_id, param)
            pm = found
            info = self._pm_info[pm_id]
            if pm["customer"] == customer_id:
                return pm
            if pm["customer"] is not None:
                raise _invalid(
                    "The payment method you provided has already been attached to a customer.",
                    param,
                )
            if info.detached or info.used:
                raise _invalid(_REUSE_MESSAGE, param)
            decline = self._attach_decline(info.token)
            if decline is not None:
                raise self._card_error(decline)
        pm["customer"] = customer_id
        return pm

    def _attach_pm(self, ctx: _Ctx, params: Obj, pm_id: str) -> Obj:
        _check_params(params, {"customer", "expand"})
        customer_id = _str_param(params, "customer", required=True)
        assert customer_id is not None
        if customer_id not in self._customers:
            raise _no_such("customer", customer_id, "customer")
        if pm_id not in TEST_CARDS and pm_id not in self._pms:
            raise _no_such("PaymentMethod", pm_id)
        return self._attach(pm_id, customer_id)

    def _detach_pm(self, ctx: _Ctx, params: Obj, pm_id: str) -> Obj:
        _check_params(params, {"expand"})
        pm = self._pms.get(pm_id)
        if pm is None:
            raise _no_such("PaymentMethod", pm_id)
        customer_id = pm["customer"]
        if customer_id is None:
            raise _invalid("The payment method you provided is not attached to a customer so detachment is impossible.")
        pm["customer"] = None
        self._pm_info[pm_id].detached = True
        customer = self._customers.get(customer_id)
        if customer and customer["invoice_settings"]["default_payment_method"] == pm_id:
            customer["invoice_settings"]["default_payment_method"] = None
        return pm

    def _get_pm(self, ctx: _Ctx, params: Obj, pm_id: str) -> Obj:
        _check_params(params, {"expand"})
        if pm_id in TEST_CARDS:
            return self._clone_test_card(pm_id)
        pm = self._pms.get(pm_id)
        if pm is None:
            raise _no_such("PaymentMethod", pm_id)
        return pm

    def _payment_method_for(self, pm_id: str, customer_id: str | None) -> Obj:
        if pm_id in TEST_CARDS:
            return self._clone_test_card(pm_id)
        pm = self._pms.get(pm_id)
        if pm is None:
            raise _no_such("PaymentMethod", pm_id, "payment_method")
        info = self._pm_info[pm_id]
        if pm["customer"] is None and (info.detached or info.used):
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

    _PI_CREATE_PARAMS = frozenset(
        {
            "amount",
            "automatic_payment_methods",
            "capture_method",
            "confirm",
            "confirmation_method",
            "currency",
            "customer",
            "description",
            "error_on_requires_action",
            "expand",
            "mandate_data",
            "metadata",
            "off_session",
            "payment_method",
            "payment_method_options",
            "payment_method_types",
            "receipt_email",
            "return_url",
            "setup_future_usage",
            "shipping",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "transfer_group",
            "use_stripe_sdk",
        }
    )
    _PI_CONFIRM_PARAMS = frozenset(
        {
            "capture_method",
            "error_on_requires_action",
            "expand",
            "mandate_data",
            "off_session",
            "payment_method",
            "payment_method_options",
            "payment_method_types",
            "receipt_email",
            "return_url",
            "setup_future_usage",
            "shipping",
            "use_stripe_sdk",
        }
    )

    def _create_pi(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, self._PI_CREATE_PARAMS)
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
        capture_method = _str_param(params, "capture_method") or "automatic_async"
        if capture_method not in ("automatic", "automatic_async"):
            raise _invalid(
                f"capture_method={capture_method} is not supported by the local Stripe emulator.",
                "capture_method",
            )
        confirm = bool(_bool_param(params, "confirm"))
        if params.get("off_session") not in (None, "") and not confirm:
            raise _invalid("You can only pass in `off_session` when `confirm` is set to true.", "off_session")
        _off_session(params)
        if confirm and not params.get("payment_method"):
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "To confirm the PaymentIntent, provide a `payment_method`.",
                "payment_method",
                "payment_intent_unexpected_state",
            )
        customer_id = _str_param(params, "customer")
        if customer_id is not None and customer_id not in self._customers:
            raise _no_such("customer", customer_id, "customer")
        pm_param = _str_param(params, "payment_method")
        pm = self._payment_method_for(pm_param, customer_id) if pm_param else None
        types = params.get("payment_method_types")
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
            "capture_method": capture_method,
            "client_secret": f"{pi_id}_secret_{_new_id('', 25)}",
            "confirmation_method": _str_param(params, "confirmation_method") or "automatic",
            "created": self._now(),
            "currency": currency,
            "customer": customer_id,
            "description": _str_param(params, "description"),
            "excluded_payment_method_types": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": _metadata(params),
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": pm["id"] if pm else None,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ([str(item) for item in types] if isinstance(types, list) else ["card"]),
            "processing": None,
            "receipt_email": _str_param(params, "receipt_email"),
            "review": None,
            "setup_future_usage": _str_param(params, "setup_future_usage"),
            "shipping": None,
            "source": None,
            "statement_descriptor": _str_param(params, "statement_descriptor"),
            "statement_descriptor_suffix": _str_param(params, "statement_descriptor_suffix"),
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": _str_param(params, "transfer_group"),
        }
        self._pis[pi_id] = pi
        if confirm:
            self._confirm(ctx, pi, params)
        return pi

    def _get_pi(self, ctx: _Ctx, params: Obj, pi_id: str) -> Obj:
        _check_params(params, {"client_secret", "expand"})
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id)
        return pi

    def _confirm_pi_endpoint(self, ctx: _Ctx, params: Obj, pi_id: str) -> Obj:
        _check_params(params, self._PI_CONFIRM_PARAMS)
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id)
        _off_session(params)
        status = pi["status"]
        if status not in ("requires_payment_method", "requires_confirmation", "requires_action"):
            raise _invalid(
                f"You cannot confirm this PaymentIntent because it has a status of {status}. "
                "Only a PaymentIntent with one of the following statuses may be confirmed: "
                "requires_confirmation, requires_action, requires_payment_method.",
                None,
                "payment_intent_unexpected_state",
                payment_intent=copy.deepcopy(pi),
            )
        pm_param = _str_param(params, "payment_method")
        if pm_param:
            pm = self._payment_method_for(pm_param, pi["customer"])
            pi["payment_method"] = pm["id"]
        if _str_param(params, "setup_future_usage"):
            pi["setup_future_usage"] = params["setup_future_usage"]
        if _str_param(params, "receipt_email"):
            pi["receipt_email"] = params["receipt_email"]
        self._confirm(ctx, pi, params)
        return pi

    def _confirm(self, ctx: _Ctx, pi: Obj, params: Obj) -> None:
        if pi["payment_method"] is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "To confirm the PaymentIntent, provide a `payment_method`.",
                "payment_method",
                "payment_intent_unexpected_state",
                payment_intent=copy.deepcopy(pi),
            )
        off_session = _off_session(params)
        pm = self._pms[pi["payment_method"]]
        info = self._pm_info[pm["id"]]
        card = TEST_CARDS[info.token]
        pi["last_payment_error"] = None
        pi["next_action"] = None

        decline: Decline | None = None
        needs_action = False
        if self._forced_declines:
            decline = self._forced_declines.pop(0)
        elif self._processing_next > 0 or card.outcome == "processing":
            if card.outcome != "processing":
                self._processing_next -= 1
            charge = self._create_charge(pi, pm, None, pending=True)
            pi["latest_charge"] = charge["id"]
            pi["status"] = "processing"
            self._emit(ctx, "payment_intent.processing", pi)
            return
        elif card.outcome == "decline":
            decline = card.decline
        elif card.outcome == "customer_fail":
            decline = GENERIC_DECLINE
        elif card.outcome in ("auth_always", "auth_unless_setup"):
            if off_session:
                decline = AUTH_REQUIRED
            else:
                needs_action = True
        elif card.outcome == "auth_setup_done" and not off_session:
            needs_action = True

        if needs_action:
            pi["status"] = "requires_action"
            pi["next_action"] = {
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {
                    "type": "three_d_secure_redirect",
                    "stripe_js": f"https://hooks.stripe.com/3d_secure_2/hosted?pi={pi['id']}",
                    "source": _new_id("src_"),
                },
            }
            return

        charge = self._create_charge(pi, pm, decline)
        pi["latest_charge"] = charge["id"]
        if decline is not None:
            self._decline_pi(ctx, pi, pm, charge, decline)
            raise self._card_error(
                decline,
                charge=charge["id"],
                payment_intent=copy.deepcopy(pi),
                payment_method=copy.deepcopy(pm),
            )
        self._succeed_pi(ctx, pi, pm)

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

    def _succeed_pi(self, ctx: _Ctx | None, pi: Obj, pm: Obj) -> None:
        pi["status"] = "succeeded"
        pi["amount_received"] = pi["amount"]
        if pm["customer"] is None:
            if pi["setup_future_usage"] and pi["customer"]:
                pm["customer"] = pi["customer"]
            else:
                self._pm_info[pm["id"]].used = True
        self._emit(ctx, "payment_intent.succeeded", pi)

    def _settle_pi(self, pi_id: str, succeeded: bool | None, decline_code: str | None) -> Obj:
        pi = self._pis.get(pi_id)
        if pi is None:
            raise _no_such("payment_intent", pi_id)
        if pi["status"] != "processing":
            raise _invalid(f"PaymentIntent {pi_id} is {pi['status']}, not processing: there is nothing to settle.")
        charge = self._charges[pi["latest_charge"]]
        pm = self._pms[charge["payment_method"]]
        decline: Decline | None
        if succeeded is None and decline_code is None:
            card = TEST_CARDS[self._pm_info[pm["id"]].token]
            decline = card.decline if card.outcome == "decline" else None
            if card.outcome in ("customer_fail", "auth_always", "auth_unless_setup"):
                decline = GENERIC_DECLINE if card.outcome == "customer_fail" else AUTH_REQUIRED
        elif succeeded is False or (succeeded is None and decline_code):
            decline = decline_named(decline_code or "generic_decline")
        else:
            decline = None
        self._finish_charge(charge, decline)
        if decline is not None:
            self._decline_pi(None, pi, pm, charge, decline)
        else:
            self._succeed_pi(None, pi, pm)
        return pi

    def _list_pis(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"created", "customer", "ending_before", "expand", "limit", "starting_after"})
        customer_id = _str_param(params, "customer")
        created = _created_filter(params.get("created"))
        items = [
            pi
            for pi in reversed(self._pis.values())
            if customer_id in (None, pi["customer"]) and created(pi["created"])
        ]
        return _paginate(items, params, "/v1/payment_intents", "payment_intent")

    def _search_pis(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(params, {"expand", "limit", "page", "query"})
        query = _str_param(params, "query", required=True)
        assert query is not None
        limit = _limit(params)
        predicate = _parse_search_query(query)
        matches = [pi for pi in reversed(self._pis.values()) if predicate(pi)]
        page = _str_param(params, "page")
        offset = 0
        if page:
            try:
                offset = int(base64.urlsafe_b64decode(page.encode()).decode().split(":")[1])
            except (ValueError, IndexError, UnicodeDecodeError):
                raise _invalid(f"Invalid page: {page}", "page") from None
        data = matches[offset : offset + limit]
        has_more = offset + limit < len(matches)
        next_page = base64.urlsafe_b64encode(f"page:{offset + limit}".encode()).decode() if has_more else None
        result: Obj = {
            "object": "search_result",
            "data": data,
            "has_more": has_more,
            "next_page": next_page,
            "url": "/v1/payment_intents/search",
        }
        if "total_count" in _expand_param(params):
            result["total_count"] = len(matches)
        return result

    # ---- charges -------------------------------------------------------------------------------

    def _create_charge(self, pi: Obj, pm: Obj, decline: Decline | None, *, pending: bool = False) -> Obj:
        """The PaymentIntent's charge: ``pending`` (not final: no money has moved) or finished by ``decline``."""
        now = self._now()
        charge_id = _new_id("ch_")
        amount = pi["amount"]
        card = pm["card"]
        charge: Obj = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": None,
            "billing_details": copy.deepcopy(pm["billing_details"]),
            "calculated_statement_descriptor": "STRIPE EMULATOR",
            "captured": False,
            "created": now,
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
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
            "receipt_email": pi["receipt_email"],
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
            "refunded": False,
            "review": None,
            "shipping": None,
            "source_transfer": None,
            "statement_descriptor": pi["statement_descriptor"],
            "statement_descriptor_suffix": pi["statement_descriptor_suffix"],
            "status": "pending",
            "transfer_data": None,
            "transfer_group": pi["transfer_group"],
        }
        self._charges[charge_id] = charge
        if not pending:
            self._finish_charge(charge, decline)
        return charge

    def _finish_charge(self, charge: Obj, decline: Decline | None) -> None:
        """A pending charge succeeds (paid, with its fee on a balance transaction) or is declined."""
        amount = charge["amount"]
        succeeded = decline is None
        if succeeded:
            txn_id = _new_id("txn_")
            self._txns[txn_id] = _balance_transaction(
                txn_id,
                amount,
                stripe_fee(amount),
                charge["currency"],
                self._now(),
                charge["id"],
                "charge",
                charge["description"],
            )
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

    def _get_charge(self, ctx: _Ctx, params: Obj, charge_id: str) -> Obj:
        _check_params(params, {"expand"})
        charge = self._charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id)
        return charge

    def _get_txn(self, ctx: _Ctx, params: Obj, txn_id: str) -> Obj:
        _check_params(params, {"expand"})
        txn = self._txns.get(txn_id)
        if txn is None:
            raise _no_such("balance transaction", txn_id)
        return txn

    # ---- refunds -------------------------------------------------------------------------------

    def _create_refund(self, ctx: _Ctx, params: Obj) -> Obj:
        _check_params(
            params,
            {"amount", "charge", "expand", "instructions_email", "metadata", "payment_intent", "reason"},
        )
        pi_id = _str_param(params, "payment_intent")
        charge_id = _str_param(params, "charge")
        if not pi_id and not charge_id:
            raise _invalid(
                "One of the following params should be provided for this request: payment_intent or charge.",
                None,
                "parameter_missing",
            )
        if pi_id:
            pi = self._pis.get(pi_id)
            if pi is None:
                raise _no_such("payment_intent", pi_id, "payment_intent")
            if pi["status"] != "succeeded" or not pi["latest_charge"]:
                raise _invalid(
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    "payment_intent",
                )
            charge = self._charges[pi["latest_charge"]]
            if charge_id and charge_id != charge["id"]:
                raise _invalid(
                    f"The charge {charge_id} does not belong to the PaymentIntent {pi_id}.",
                    "charge",
                )
        else:
            assert charge_id is not None
            found = self._charges.get(charge_id)
            if found is None:
                raise _no_such("charge", charge_id, "charge")
            charge = found
            if charge["status"] != "succeeded":
                raise _invalid(f"Charge {charge_id} has failed; there is nothing to refund.", "charge")
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
        reason = _str_param(params, "reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                "reason",
            )
        now = self._now()
        refund_id = _new_id("re_")
        plan = self._refund_plans.pop(0) if self._refund_plans else None
        txn_id = _new_id("txn_")
        self._txns[txn_id] = _balance_transaction(
            txn_id, -amount, 0, charge["currency"], now, refund_id, "refund", "REFUND FOR CHARGE"
        )
        refund: Obj = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": txn_id,
            "charge": charge["id"],
            "created": now,
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
            "payment_intent": charge["payment_intent"],
            "reason": reason,
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
        _check_params(
            params, {"charge", "created", "ending_before", "expand", "limit", "payment_intent", "starting_after"}
        )
        pi_id = _str_param(params, "payment_intent")
        charge_id = _str_param(params, "charge")
        if pi_id is not None and pi_id not in self._pis:
            raise _no_such("payment_intent", pi_id, "payment_intent")
        if charge_id is not None and charge_id not in self._charges:
            raise _no_such("charge", charge_id, "charge")
        created = _created_filter(params.get("created"))
        items = [
            refund
            for refund in reversed(self._refunds.values())
            if pi_id in (None, refund["payment_intent"])
            and charge_id in (None, refund["charge"])
            and created(refund["created"])
        ]
        return _paginate(items, params, "/v1/refunds", "refund")

    def _settle_refund(self, refund_id: str, succeeded: bool | None, failure_reason: str | None) -> Obj:
        refund = self._refunds.get(refund_id)
        if refund is None:
            raise _no_such("refund", refund_id)
        if refund["status"] != "pending":
            raise _invalid(f"Refund {refund_id} is {refund['status']}, not pending: there is nothing to settle.")
        plan = self._pending_refunds.pop(refund_id, _RefundPlan(True))
        if succeeded is None:
            succeeded = plan.succeeds and failure_reason is None
        charge = self._charges[refund["charge"]]
        previous: Obj = {"status": "pending"}
        if succeeded:
            refund["status"] = "succeeded"
            refund["destination_details"]["card"]["reference_status"] = "available"
            reference = "".join(secrets.choice(string.digits) for _ in range(23))
            refund["destination_details"]["card"]["reference"] = reference
        else:
            reason = failure_reason or plan.failure_reason or "unknown"
            if reason not in REFUND_FAILURE_REASONS:
                raise _invalid(f"Invalid failure_reason: must be one of {', '.join(REFUND_FAILURE_REASONS)}")
            txn_id = _new_id("txn_")
            self._txns[txn_id] = _balance_transaction(
                txn_id,
                refund["amount"],
                0,
                refund["currency"],
                self._now(),
                refund_id,
                "refund_failure",
                "REFUND FAILURE",
            )
            refund["status"] = "failed"
            refund["failure_reason"] = reason
            refund["failure_balance_transaction"] = txn_id
            refund["destination_details"]["card"]["reference_status"] = "unavailable"
            previous["failure_reason"] = None
            # The money never left: the charge no longer counts it as refunded.
            charge["amount_refunded"] -= refund["amount"]
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self._emit(None, "charge.refund.updated", refund, previous)
        self._emit(None, "refund.updated", refund, previous)
        if not succeeded:
            self._emit(None, "refund.failed", refund)
        return refund

    # ---- disputes (emulator-only trigger) ------------------------------------------------------

    def _create_dispute(self, ctx: _Ctx | None, charge_id: str, amount: int | None, reason: str) -> Obj:
        charge = self._charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        if charge["status"] != "succeeded":
            raise _invalid(f"Charge {charge_id} did not succeed; it cannot be disputed.", "charge")
        if charge["disputed"]:
            raise _invalid(f"Charge {charge_id} is already disputed.", "charge")
        now = self._now()
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
            "reason": reason,
            "status": "needs_response",
        }
        self._disputes[dispute["id"]] = dispute
        charge["disputed"] = True
        self._emit(ctx, "charge.dispute.created", dispute)
        return dispute


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


def _off_session(params: Obj) -> bool:
    value = params.get("off_session")
    if value not in (None, "", "true", "false", "one_off", "recurring"):
        raise _invalid(f"Invalid off_session: {value}", "off_session")
    return bool(value in ("true", "one_off", "recurring"))


def _charge_of(obj: Obj) -> str | None:
    """The charge an event's object concerns: the charge itself, or a refund's or dispute's charge."""
    return str(obj["id"]) if obj.get("object") == "charge" else obj.get("charge")


def _upper(method: str | None) -> str | None:
    return method.upper() if method else None


def _opt_bool(value: Any) -> bool | None:
    """``true`` / ``false`` (form or JSON), or None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise ValueError(f"not a boolean: {value!r}")


def _opt_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _method_param(params: Obj, default: str | None) -> str | None:
    if "method" not in params:
        return default
    value = params.get("method")
    return str(value).upper() if value else None


def _address(value: Mapping[str, Any]) -> Obj:
    return {key: value.get(key) or None for key in ("city", "country", "line1", "line2", "postal_code", "state")}


def _balance_transaction(
    txn_id: str,
    amount: int,
    fee: int,
    currency: str,
    created: int,
    source: str,
    type_: str,
    description: str | None,
) -> Obj:
    return {
        "id": txn_id,
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created + 2 * 24 * 3600,
        "created": created,
        "currency": currency,
        "description": description,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": (
            [
                {
                    "amount": fee,
                    "application": None,
                    "currency": currency,
                    "description": "Stripe processing fees",
                    "type": "stripe_fee",
                }
            ]
            if fee
            else []
        ),
        "net": amount - fee,
        "reporting_category": type_,
        "source": source,
        "status": "pending",
        "type": type_,
    }


def _limit(params: Obj) -> int:
    limit = _int_param(params, "limit", minimum=1)
    if limit is None:
        return 10
    if limit > 100:
        raise _invalid("This value must be less than or equal to 100.", "limit")
    return limit


def _paginate(items: list[Obj], params: Obj, url: str, label: str) -> Obj:
    """A Stripe list (newest first) with ``limit``, ``starting_after`` and ``ending_before``."""
    limit = _limit(params)
    starting_after = _str_param(params, "starting_after")
    ending_before = _str_param(params, "ending_before")
    ids = [item["id"] for item in items]
    if starting_after:
        if starting_after not in ids:
            raise _no_such(label, starting_after, "starting_after")
        window = items[ids.index(starting_after) + 1 :]
        page, has_more = window[:limit], len(window) > limit
    elif ending_before:
        if ending_before not in ids:
            raise _no_such(label, ending_before, "ending_before")
        window = items[: ids.index(ending_before)]
        page, has_more = window[-limit:], len(window) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def _created_filter(value: Any) -> Callable[[int], bool]:
    if value is None or value == "":
        return lambda created: True
    if isinstance(value, str):
        exact = _int_param({"created": value}, "created")
        return lambda created: created == exact
    if not isinstance(value, dict):
        raise _invalid("Invalid created filter", "created")
    _check_params(value, {"gt", "gte", "lt", "lte"})
    bounds = {op: _int_param(value, op) for op in value}

    def test(created: int) -> bool:
        for op, bound in bounds.items():
            if bound is None:
                continue
            if op == "gt" and not created > bound:
                return False
            if op == "gte" and not created >= bound:
                return False
            if op == "lt" and not created < bound:
                return False
            if op == "lte" and not created <= bound:
                return False
        return True

    return test


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

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _serve(self, method: str) -> None:
        server = self.server
        assert isinstance(server, _Server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {key: value for key, value in self.headers.items()}
        canonical = {
            "authorization": "Authorization",
            "idempotency-key": "Idempotency-Key",
            "content-type": "Content-Type",
            "stripe-version": "Stripe-Version",
        }
        normalized = {canonical.get(key.lower(), key): value for key, value in headers.items()}
        result = server.emulator.handle_http(method, self.path, normalized, body)
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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.stripe_emulator",
        description="Run the local Stripe emulator in the foreground.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument("--webhook-url", default=os.environ.get("STRIPE_EMULATOR_WEBHOOK_URL"))
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get("STRIPE_WEBHOOK_SECRET") or DEFAULT_WEBHOOK_SECRET,
    )
    parser.add_argument(
        "--decline-cards-fail-attach",
        action="store_true",
        help="Stripe's own attach checks: pm_card_chargeDeclined* fail when attached",
    )
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)

    emulator = StripeEmulator(
        webhook_url=args.webhook_url or None,
        webhook_secret=args.webhook_secret,
        decline_cards_fail_attach=args.decline_cards_fail_attach,
        verbose=args.verbose,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    url = emulator.start(args.host, args.port)
    print(f"stripe emulator ready {url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
