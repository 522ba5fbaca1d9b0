"""The Stripe payment gateway: the one place the billing backend talks to Stripe (SDK 16.x, ``StripeClient``).

Nothing that could be PHI is ever sent: no names, emails, phone numbers, addresses, descriptions of
services or dates of service. Customers, PaymentIntents and Refunds carry only opaque ids in their
metadata (``practice_id``, ``client_id``, ``payment_id``, ``idempotency_key``, ...) and amounts.

Errors, as a caller sees them:

- a card decline on a charge is an outcome (``ChargeOutcome(status="failed", decline_code=...)``),
  on attaching a card it is ``billing.errors.PaymentDeclined``;
- a charge that is not final yet (Stripe's ``processing``, ``requires_action``, ...) is an outcome too
  (``status="processing"``), never a decline: a webhook or ``retrieve_payment_intent`` tells the end;
- Stripe rejecting the request (unknown payment method, refund larger than what is left, ...) is
  ``billing.errors.InvalidRequest`` / ``Conflict`` with Stripe's message; an unknown PaymentIntent or
  Refund asked for by id is ``NotFound``;
- Stripe unreachable, 5xx, rate limited, or the same idempotency key still in flight is
  ``GatewayUnavailable``: nothing is known about the outcome, so retry with the same idempotency key
  (or recover with ``find_charge`` / ``refunds_of``).

Time budget (see ``request_worst_case_seconds``): every request gives up after a bounded time, so that
the calling Lambda (Timeout 15 s) always has time left to record what happened.
"""

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

import stripe
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config
from pydantic import AfterValidator, ConfigDict, SecretStr
from stripe.params import PaymentIntentListParams, RefundListParams

from billing.errors import Conflict, InvalidRequest, NotFound, PaymentDeclined, ProcessorUnavailable
from billing.gateway import (
    CHARGE_FAILED,
    CHARGE_PROCESSING,
    CHARGE_SUCCEEDED,
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    RefundResult,
)
from billing.schema import Model

WEBHOOK_TOLERANCE_SECONDS = 300

# ---- time budget -------------------------------------------------------------------------------
# One Stripe request, worst case, as the SDK runs it (stripe._http_client.HTTPClient):
#   attempts  = 1 + MAX_NETWORK_RETRIES                          = 2
#   attempt  <= CONNECT_TIMEOUT + READ_TIMEOUT = 1.0 s + 3.0 s    = 4.0 s
#   backoff  <= sum(min(0.5 * 2**(n - 1), 5) for n in 1..retries) = 0.5 s   (jitter only shortens it)
#   request  <= 2 * 4.0 s + 0.5 s                                 = 8.5 s
# An operation that makes several requests (find_charge: search, then list pages; refunds_of: pages; a decline
# that names no PaymentIntent: the charge, then a lookup) starts no request after its first one once
# PAGING_DEADLINE_SECONDS have passed since it began, so it takes at most 2.0 s + 8.5 s = 10.5 s.
# Reading the Stripe secret (at most once per SECRET_MAX_AGE_SECONDS) takes at most
#   SECRET_CONNECT_TIMEOUT + SECRET_READ_TIMEOUT = 1.0 s + 1.0 s = 2.0 s (one attempt: it happens before
# anything is charged, so failing it fails the request harmlessly).
# Worst invocation: 2.0 s (secret) + 10.5 s (paged lookup) = 12.5 s of the Lambda's 15 s, leaving 2.5 s
# (>= RECORDING_MARGIN_SECONDS) to record the outcome. tests/unit/test_stripe_budget.py checks this against
# the Timeout in template.yaml of every function that reads the Stripe secret.
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 3.0
MAX_NETWORK_RETRIES = 1
PAGING_DEADLINE_SECONDS = 2.0
SECRET_CONNECT_TIMEOUT_SECONDS = 1.0
SECRET_READ_TIMEOUT_SECONDS = 1.0
SECRET_MAX_AGE_SECONDS = 300
RECORDING_MARGIN_SECONDS = 2.0

# The charge's fee lives on its balance transaction; expanding it saves a round trip per charge.
_PI_EXPAND = ["latest_charge.balance_transaction"]
_PAGE_SIZE = 100

# Metadata is the only free-form data sent to Stripe, so only opaque ids are allowed into it.
_METADATA_KEY = re.compile(r"^[a-z][a-z0-9_]{0,36}_id$")
_METADATA_EXTRA_KEYS = frozenset({"idempotency_key", "purpose"})
_OPAQUE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")

ChargeStatus = Literal["succeeded", "failed", "processing"]
RefundStatus = Literal["pending", "succeeded", "failed"]

# Stripe's PaymentIntent statuses in the domain's terms; anything else (processing, requires_action,
# requires_confirmation, requires_capture, or a status Stripe adds later) is not final: "processing".
_FAILED_INTENT_STATUSES = frozenset({"requires_payment_method", "canceled"})
# Stripe's Refund statuses in the domain's terms; anything else (pending, requires_action, unknown) is pending.
_REFUND_STATUSES = {"succeeded": REFUND_SUCCEEDED, "failed": REFUND_FAILED, "canceled": REFUND_FAILED}


def request_worst_case_seconds() -> float:
    """The longest one Stripe request can take, retries and backoff included (see the budget above)."""
    attempts = 1 + MAX_NETWORK_RETRIES
    backoff = sum(
        min(stripe.HTTPClient.INITIAL_DELAY * 2 ** (retry - 1), stripe.HTTPClient.MAX_DELAY)
        for retry in range(1, MAX_NETWORK_RETRIES + 1)
    )
    return attempts * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + backoff


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"status must be one of {allowed}")
        return value

    return check


class GatewayUnavailable(ProcessorUnavailable):
    """Stripe could not be reached or failed (network, 5xx, 429, key in flight): the outcome is unknown.

    Retry with the same idempotency key (Stripe replays the original result), or call
    ``StripeGateway.find_charge`` to recover a charge made before a crash. It is the domain's
    ``ProcessorUnavailable`` (HTTP 503), so the payments domain's recovery path catches it.
    """


class StripeSettings(Model):
    """Credentials and endpoint of the Stripe account (secrets are ``SecretStr`` so they never print).

    Frozen and hashable, and equal exactly when the keys are: ``current_gateway`` rebuilds the client
    only when the settings changed (a rotated secret).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret_key: SecretStr
    webhook_secret: SecretStr | None = None
    api_base: str | None = None


@cache
def _secrets() -> parameters.SecretsProvider:
    # One provider per container: it caches the secret for max_age (Powertools), and its client gives up
    # quickly (see the budget above) instead of botocore's default 60 s timeouts and retries.
    config = Config(
        connect_timeout=SECRET_CONNECT_TIMEOUT_SECONDS,
        read_timeout=SECRET_READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return parameters.SecretsProvider(boto_config=config)


def load_stripe_settings() -> StripeSettings:
    """The container's Stripe settings: from ``STRIPE_SECRET_KEY`` (+ ``STRIPE_WEBHOOK_SECRET``,
    ``STRIPE_API_BASE``) when set, else from the Secrets Manager secret named by ``STRIPE_SECRET_ID``.

    The secret is cached for ``SECRET_MAX_AGE_SECONDS`` (Powertools Parameters) and then read again, so a
    rotated Stripe key is picked up within that time without a new container.
    """
    secret_key = os.environ.get("STRIPE_SECRET_KEY")
    if secret_key:
        return StripeSettings.model_validate(
            {
                "secret_key": secret_key,
                "webhook_secret": os.environ.get("STRIPE_WEBHOOK_SECRET") or None,
                "api_base": os.environ.get("STRIPE_API_BASE") or None,
            }
        )
    secret_id = os.environ.get("STRIPE_SECRET_ID")
    if not secret_id:
        raise RuntimeError("Stripe is not configured: set STRIPE_SECRET_ID (or STRIPE_SECRET_KEY locally)")
    value = _secrets().get(secret_id, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
    if not isinstance(value, dict) or not value.get("secret_key"):
        raise RuntimeError(f"Secret {secret_id} must be JSON with 'secret_key' and 'webhook_secret'")
    return StripeSettings.model_validate(
        {"secret_key": value["secret_key"], "webhook_secret": value.get("webhook_secret") or None}
    )


def current_gateway() -> "StripeGateway":
    """The container's gateway on the current settings: the same object while the settings are the same,
    a new one (new key, new HTTP client) once a rotated secret has been read."""
    return _gateway_for(load_stripe_settings())


@lru_cache(maxsize=1)
def _gateway_for(settings: StripeSettings) -> "StripeGateway":
    return StripeGateway(settings)


class Card(Model):
    """A card kept on file for a client (what staff and the client may see of it)."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class ChargeOutcome(Model):
    """What happened to a charge (a PaymentIntent), in the terms the payments domain needs.

    ``status``: ``succeeded``; ``failed`` (declined or canceled: no money moved; ``decline_code`` says
    why when Stripe said); or ``processing`` (not final: Stripe's ``processing``, ``requires_action``,
    ``requires_confirmation``, ``requires_capture``; never a decline, a webhook tells the end).
    ``stripe_status`` is the PaymentIntent's own status.
    """

    # Typed ``str`` (validated against ChargeStatus) so it matches the domain's ChargeResult protocol.
    status: Annotated[str, AfterValidator(_one_of(get_args(ChargeStatus)))]
    payment_intent_id: str
    charge_id: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    fee_cents: int | None = None
    amount_cents: int | None = None
    currency: str | None = None
    stripe_status: str | None = None
    metadata: dict[str, str] = {}


class Refund(Model):
    """A refund, in the domain's terms: ``status`` is ``pending`` (asked for, not final: Stripe's
    ``pending`` and ``requires_action``), ``succeeded`` or ``failed`` (Stripe's ``failed`` and
    ``canceled``; ``failure_reason`` says why when Stripe said). ``stripe_status`` is Stripe's own."""

    refund_id: str
    status: Annotated[str, AfterValidator(_one_of(get_args(RefundStatus)))]
    amount_cents: int
    payment_intent_id: str | None = None
    charge_id: str | None = None
    currency: str | None = None
    failure_reason: str | None = None
    stripe_status: str | None = None
    metadata: dict[str, str] = {}


class StripeGateway:
    """Customers, cards, off-session charges, refunds and webhooks of one Stripe account."""

    def __init__(
        self,
        settings: StripeSettings,
        *,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout_seconds: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        """A gateway on ``settings``. Each request attempt gives up after the connect and read timeouts and
        the SDK retries it ``MAX_NETWORK_RETRIES`` times with the same idempotency key."""
        self._settings = settings
        # Bounded timeouts turn a hung request into GatewayUnavailable well before the Lambda times out.
        http_client = stripe.RequestsClient(timeout=(connect_timeout_seconds, read_timeout_seconds))
        if settings.api_base:
            self._client = stripe.StripeClient(
                settings.secret_key.get_secret_value(),
                base_addresses={"api": settings.api_base},
                max_network_retries=MAX_NETWORK_RETRIES,
                http_client=http_client,
            )
        else:
            self._client = stripe.StripeClient(
                settings.secret_key.get_secret_value(),
                max_network_retries=MAX_NETWORK_RETRIES,
                http_client=http_client,
            )

    @property
    def settings(self) -> StripeSettings:
        return self._settings

    # ---- customers and cards -------------------------------------------------------------------

    def create_customer(self, practice_id: str, client_id: str, idempotency_key: str) -> str:
        """Create the Stripe customer of a client and return its id (``cus_...``).

        Only the two ids are sent; the same ``idempotency_key`` returns the same customer (for 24 hours).
        """
        metadata = safe_metadata({"practice_id": practice_id, "client_id": client_id})
        with _outage_is_unavailable():
            try:
                customer = self._client.v1.customers.create(
                    {"metadata": metadata}, {"idempotency_key": idempotency_key}
                )
            except stripe.InvalidRequestError as error:
                raise _invalid_request(error) from error
        return customer.id

    def attach_card(self, customer_id: str, payment_method_id: str) -> Card:
        """Attach a card PaymentMethod (collected by Stripe.js) to the customer and describe it.

        Raises ``PaymentDeclined`` when the issuer refuses the card and ``InvalidRequest`` when the
        payment method is unknown, already used elsewhere, or not a card.
        """
        with _outage_is_unavailable():
            try:
                method = self._client.v1.payment_methods.attach(payment_method_id, {"customer": customer_id})
            except stripe.CardError as error:
                raise PaymentDeclined(_message(error), decline_code=_decline_code(error)) from error
            except stripe.InvalidRequestError as error:
                raise _invalid_request(error) from error
        card = method.card
        if card is None:
            raise InvalidRequest("Only card payment methods can be kept on file.", code="not_a_card")
        return Card(
            payment_method_id=method.id,
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
        )

    def detach_card(self, payment_method_id: str) -> None:
        """Detach a card from its customer; a card already detached (or unknown) is not an error."""
        with _outage_is_unavailable():
            try:
                self._client.v1.payment_methods.detach(payment_method_id)
            except stripe.InvalidRequestError:
                # Stripe refuses to detach what is not attached: the wanted end state already holds.
                return

    # ---- charges -------------------------------------------------------------------------------

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> ChargeOutcome:
        """Charge a card on file off-session, at most once per ``idempotency_key`` (while Stripe remembers
        it: 24 hours; after that, ``find_charge`` first).

        A decline is a ``failed`` outcome with Stripe's decline code (``authentication_required`` when
        the card needs the client present); a charge Stripe has not finished is ``processing``. Raises
        ``GatewayUnavailable`` when the outcome is unknown: call again with the same key, or
        ``find_charge``; ``Conflict(code="idempotency_key_reused")`` when the key was used with other
        parameters. ``metadata`` may hold only opaque ids (keys ending in ``_id``); anything else raises
        ``ValueError`` before Stripe is called.
        """
        if amount_cents <= 0:
            raise InvalidRequest("A charge must be for a positive amount.", code="invalid_amount")
        sent_metadata = safe_metadata({**metadata, "idempotency_key": idempotency_key})
        deadline = _Deadline(PAGING_DEADLINE_SECONDS)
        deadline.before_request()
        with _outage_is_unavailable():
            try:
                intent = self._client.v1.payment_intents.create(
                    {
                        "amount": amount_cents,
                        "currency": currency.lower(),
                        "customer": customer_id,
                        "payment_method": payment_method_id,
                        "confirm": True,
                        "off_session": True,
                        # Cards only: confirming server-side cannot follow a redirect-based method.
                        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                        "metadata": sent_metadata,
                        "expand": _PI_EXPAND,
                    },
                    {"idempotency_key": idempotency_key},
                )
            except stripe.CardError as error:
                return self._declined(error, idempotency_key, customer_id, deadline)
            except stripe.InvalidRequestError as error:
                raise _invalid_request(error) from error
        return _outcome(intent)

    def find_charge(self, idempotency_key: str, customer_id: str) -> ChargeOutcome | None:
        """The charge made with ``idempotency_key`` for the customer (e.g. before a crash), or None.

        Reads ``metadata['idempotency_key']``, not Stripe's idempotency cache, so it works after Stripe has
        forgotten the key (24 hours). Searches first; when search fails or finds nothing (its index lags by
        up to a minute) it scans all of the customer's PaymentIntents, newest first. None is only answered
        after the whole scan; a scan that runs out of time raises ``GatewayUnavailable`` instead.
        Should one key have made several PaymentIntents, the succeeded one wins, then a processing one.
        """
        with _outage_is_unavailable():
            intent = self._find_intent(idempotency_key, customer_id, _Deadline(PAGING_DEADLINE_SECONDS))
        return _outcome(intent) if intent is not None else None

    def retrieve_payment_intent(self, payment_intent_id: str) -> ChargeOutcome:
        """The current state of a PaymentIntent (webhooks are hints: read the truth from Stripe)."""
        with _outage_is_unavailable():
            try:
                intent = self._client.v1.payment_intents.retrieve(payment_intent_id, {"expand": _PI_EXPAND})
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    raise NotFound("payment_intent", payment_intent_id) from error
                raise _invalid_request(error) from error
        return _outcome(intent)

    # ---- refunds -------------------------------------------------------------------------------

    def refund(
        self,
        *,
        payment_intent_id: str,
        amount_cents: int,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> Refund:
        """Refund ``amount_cents`` of a succeeded charge, at most once per ``idempotency_key`` (while Stripe
        remembers it: 24 hours; after that, look with ``refunds_of`` first: the key is in the metadata).

        The refund may be ``pending`` (a webhook or ``retrieve_refund`` tells the end). Raises ``Conflict``
        with Stripe's message when Stripe refuses (more than what is left, already refunded, disputed, not
        succeeded), ``NotFound`` for an unknown PaymentIntent and ``GatewayUnavailable`` when the outcome
        is unknown (retry with the same key).
        """
        if amount_cents <= 0:
            raise InvalidRequest("A refund must be for a positive amount.", code="invalid_amount")
        sent_metadata = safe_metadata({**metadata, "idempotency_key": idempotency_key})
        with _outage_is_unavailable():
            try:
                refund = self._client.v1.refunds.create(
                    {"payment_intent": payment_intent_id, "amount": amount_cents, "metadata": sent_metadata},
                    {"idempotency_key": idempotency_key},
                )
            except stripe.InvalidRequestError as error:
                if error.code == "resource_missing" and error.param == "payment_intent":
                    raise NotFound("payment_intent", payment_intent_id) from error
                raise Conflict(_message(error), details=_stripe_details(error)) from error
        return _refund(refund)

    def refunds_of(self, payment_intent_id: str) -> "list[RefundResult]":
        """Every refund of the PaymentIntent's charge (newest first), whoever made it and whatever its status.

        Raises ``NotFound`` for an unknown PaymentIntent and ``GatewayUnavailable`` when Stripe cannot be
        read (or the pages cannot all be read in time): never a partial list. The items are ``Refund``s
        (typed as the protocol's ``RefundResult`` because ``list`` is invariant).
        """
        deadline = _Deadline(PAGING_DEADLINE_SECONDS)

        def page(after: str | None) -> stripe.ListObject[stripe.Refund]:
            params: RefundListParams = {"payment_intent": payment_intent_id, "limit": _PAGE_SIZE}
            if after:
                params["starting_after"] = after
            return self._client.v1.refunds.list(params)

        with _outage_is_unavailable():
            try:
                return [_refund(refund) for refund in _every(page, deadline)]
            except stripe.InvalidRequestError as error:
                if error.code == "resource_missing":
                    raise NotFound("payment_intent", payment_intent_id) from error
                raise _invalid_request(error) from error

    def retrieve_refund(self, refund_id: str) -> Refund:
        """The current state of a refund; ``NotFound`` when Stripe has no such refund."""
        with _outage_is_unavailable():
            try:
                refund = self._client.v1.refunds.retrieve(refund_id)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    raise NotFound("refund", refund_id) from error
                raise _invalid_request(error) from error
        return _refund(refund)

    # ---- webhooks ------------------------------------------------------------------------------

    def parse_webhook(self, payload: bytes, signature_header: str) -> dict[str, Any]:
        """Verify a webhook's ``Stripe-Signature`` (timestamp within 300 s) and return the event as a dict.

        Raises ``InvalidRequest(code="invalid_signature")`` for a missing, wrong or stale signature and
        ``InvalidRequest(code="invalid_payload")`` for a body that is not a JSON event.
        """
        secret = self._settings.webhook_secret
        if secret is None:
            raise RuntimeError("Stripe webhook secret is not configured")
        try:
            event = self._client.construct_event(
                payload, signature_header, secret.get_secret_value(), tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            raise InvalidRequest("The webhook signature could not be verified.", code="invalid_signature") from error
        except ValueError as error:
            raise InvalidRequest("The webhook body is not a Stripe event.", code="invalid_payload") from error
        return event.to_dict()

    # ---- internals -----------------------------------------------------------------------------

    def _declined(
        self, error: stripe.CardError, idempotency_key: str, customer_id: str, deadline: "_Deadline"
    ) -> ChargeOutcome:
        details = error.error
        intent = details.payment_intent if details is not None else None
        if intent is None:
            # Stripe names the PaymentIntent on every PaymentIntent decline; look it up if it did not.
            intent = self._find_intent(idempotency_key, customer_id, deadline)
        if intent is None:
            raise GatewayUnavailable("Stripe declined the charge but named no PaymentIntent") from error
        return ChargeOutcome(
            status=CHARGE_FAILED,
            payment_intent_id=intent.id,
            charge_id=details.charge if details is not None else None,
            decline_code=_decline_code(error),
            failure_message=_message(error),
            amount_cents=intent.amount,
            currency=intent.currency,
            stripe_status=intent.status,
            metadata=_plain_metadata(intent),
        )

    def _find_intent(
        self, idempotency_key: str, customer_id: str, deadline: "_Deadline"
    ) -> stripe.PaymentIntent | None:
        found = self._search(idempotency_key, customer_id, deadline)
        if not found:
            found = self._scan_customer(idempotency_key, customer_id, deadline)
        if not found:
            return None
        return max(found, key=lambda intent: (_preference(intent), intent.created))

    def _search(self, idempotency_key: str, customer_id: str, deadline: "_Deadline") -> list[stripe.PaymentIntent]:
        query = f"metadata['idempotency_key']:'{_quoted(idempotency_key)}' AND customer:'{_quoted(customer_id)}'"
        deadline.before_request()
        try:
            result = self._client.v1.payment_intents.search(
                {"query": query, "limit": 10, "expand": [f"data.{path}" for path in _PI_EXPAND]}
            )
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError):
            raise
        except stripe.StripeError:
            return []  # search is not available everywhere (and restricted keys may lack it): scan instead
        return [intent for intent in result.data if _customer_id(intent) == customer_id]

    def _scan_customer(
        self, idempotency_key: str, customer_id: str, deadline: "_Deadline"
    ) -> list[stripe.PaymentIntent]:
        def page(after: str | None) -> stripe.ListObject[stripe.PaymentIntent]:
            params: PaymentIntentListParams = {
                "customer": customer_id,
                "limit": _PAGE_SIZE,
                "expand": [f"data.{path}" for path in _PI_EXPAND],
            }
            if after:
                params["starting_after"] = after
            return self._client.v1.payment_intents.list(params)

        found: list[stripe.PaymentIntent] = []
        try:
            for intent in _every(page, deadline):
                if _plain_metadata(intent).get("idempotency_key") != idempotency_key:
                    continue
                found.append(intent)
                if intent.status == "succeeded":
                    break  # nothing can be preferred to the charge that took the money
        except GatewayUnavailable:
            if not found:
                raise  # "no charge" must never be a guess: it would invite a second charge
        return found


class _Deadline:
    """One operation's requests: the first always starts, later ones only until ``seconds`` have passed since
    the operation began (the Lambda must keep time to record what happened)."""

    def __init__(self, seconds: float) -> None:
        self._ends = _clock() + seconds
        self._started = False

    def before_request(self) -> None:
        if self._started and _clock() > self._ends:
            raise GatewayUnavailable("Stripe could not be read completely in time")
        self._started = True


_clock = time.monotonic  # tests move it by hand
_Item = TypeVar("_Item", bound=stripe.StripeObject)


def _every(page: Callable[[str | None], stripe.ListObject[_Item]], deadline: _Deadline) -> Iterator[_Item]:
    """Every item of a Stripe list, page by page (``page(starting_after)``), within ``deadline``."""
    deadline.before_request()
    current = page(None)
    while True:
        yield from current.data
        if not current.has_more or not current.data:
            return
        deadline.before_request()
        current = page(str(current.data[-1]["id"]))


@contextmanager
def _outage_is_unavailable() -> Iterator[None]:
    """Turn "Stripe's answer is unknown" errors into ``GatewayUnavailable`` (the SDK already retried)."""
    try:
        yield
    except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as error:
        raise GatewayUnavailable(f"Stripe is unavailable: {_message(error)}") from error
    except stripe.IdempotencyError as error:
        if error.code == "idempotency_key_in_use":
            raise GatewayUnavailable("A request with the same idempotency key is still in progress") from error
        # The same key with different parameters: a caller bug, never a second charge.
        raise Conflict(_message(error), code="idempotency_key_reused") from error


def _outcome(intent: stripe.PaymentIntent) -> ChargeOutcome:
    if intent.status == "succeeded":
        status = CHARGE_SUCCEEDED
    elif intent.status in _FAILED_INTENT_STATUSES:
        status = CHARGE_FAILED
    else:
        # processing, requires_action, requires_confirmation, requires_capture: no money has moved yet, and
        # it may still: never "failed", which would invite a second charge.
        status = CHARGE_PROCESSING
    error = intent.last_payment_error
    decline_code: str | None = None
    failure_message: str | None = None
    if status == CHARGE_FAILED:
        if error is not None:
            decline_code = error.decline_code or error.code
            failure_message = error.message
        elif intent.status == "canceled":
            failure_message = f"The payment was canceled ({intent.cancellation_reason or 'no reason given'})."
    charge = intent.latest_charge
    charge_id = charge if isinstance(charge, str) or charge is None else charge.id
    return ChargeOutcome(
        status=status,
        payment_intent_id=intent.id,
        charge_id=charge_id,
        decline_code=decline_code,
        failure_message=failure_message,
        fee_cents=_fee_cents(charge) if status == CHARGE_SUCCEEDED else None,
        amount_cents=intent.amount,
        currency=intent.currency,
        stripe_status=intent.status,
        metadata=_plain_metadata(intent),
    )


def _refund(refund: stripe.Refund) -> Refund:
    # Stripe leaves out what does not apply (failure_reason until a refund failed): read with defaults.
    stripe_status: str | None = getattr(refund, "status", None)
    status = _REFUND_STATUSES.get(stripe_status or "", REFUND_PENDING)
    intent = getattr(refund, "payment_intent", None)
    charge = getattr(refund, "charge", None)
    return Refund(
        refund_id=refund.id,
        status=status,
        amount_cents=refund.amount,
        payment_intent_id=intent if isinstance(intent, str) or intent is None else intent.id,
        charge_id=charge if isinstance(charge, str) or charge is None else charge.id,
        currency=getattr(refund, "currency", None),
        failure_reason=getattr(refund, "failure_reason", None) if status == REFUND_FAILED else None,
        stripe_status=stripe_status,
        metadata=_plain_metadata(refund),
    )


def _preference(intent: stripe.PaymentIntent) -> int:
    if intent.status == "succeeded":
        return 2
    return 0 if intent.status in _FAILED_INTENT_STATUSES else 1


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _fee_cents(charge: str | stripe.Charge | None) -> int | None:
    # Not expanded, or not created yet (async capture): the fee is simply unknown for now.
    if charge is None or isinstance(charge, str):
        return None
    transaction = charge.balance_transaction
    if transaction is None or isinstance(transaction, str):
        return None
    return transaction.fee


def _customer_id(intent: stripe.PaymentIntent) -> str | None:
    customer = intent.customer
    if customer is None or isinstance(customer, str):
        return customer
    return customer.id


def _plain_metadata(obj: stripe.StripeObject) -> dict[str, str]:
    metadata: Any = getattr(obj, "metadata", None)
    if metadata is None:
        return {}
    # The SDK hands out StripeObjects, which are not mappings.
    plain = metadata.to_dict() if isinstance(metadata, stripe.StripeObject) else dict(metadata)
    return {str(key): str(value) for key, value in plain.items()}


def safe_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` if it holds only opaque ids (what may be sent to a processor); ``ValueError`` (a
    programming error) otherwise: keys are ``*_id``, ``idempotency_key`` or ``purpose``, values are
    single opaque tokens (letters, digits, ``_.:-``), so no name, email, date or diagnosis fits."""
    for key, value in metadata.items():
        if not (_METADATA_KEY.match(key) or key in _METADATA_EXTRA_KEYS):
            raise ValueError(f"metadata key {key!r} is not an opaque id key (only '*_id' keys go to Stripe)")
        if not isinstance(value, str) or not _OPAQUE_VALUE.match(value):
            raise ValueError(f"metadata value of {key!r} is not an opaque id")
    return dict(metadata)


def _message(error: stripe.StripeError) -> str:
    return error.user_message or str(error)


def _decline_code(error: stripe.CardError) -> str:
    # Some declines (expired_card, authentication_required, ...) carry only a code, not a decline_code.
    details = error.error
    decline_code = details.decline_code if details is not None else None
    return decline_code or error.code or "card_declined"


def _stripe_details(error: stripe.StripeError) -> list[dict[str, Any]]:
    return [{"stripe_code": error.code}] if error.code else []


def _invalid_request(error: stripe.StripeError) -> InvalidRequest:
    return InvalidRequest(_message(error), details=_stripe_details(error))


if TYPE_CHECKING:
    from billing.gateway import PaymentGateway

    def _conforms(gateway: StripeGateway) -> PaymentGateway:
        # mypy proves here that the adapter satisfies the domain's PaymentGateway protocol.
        return gateway
