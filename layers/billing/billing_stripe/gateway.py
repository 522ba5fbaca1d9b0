"""The Stripe payment gateway: the one place the billing backend talks to Stripe (SDK 16.x, ``StripeClient``).

Nothing that could be PHI is ever sent: no names, emails, phone numbers, addresses, descriptions of
services or dates of service. Customers, PaymentIntents and Refunds carry only opaque ids in their
metadata (``practice_id``, ``client_id``, ``payment_id``, ``idempotency_key``, ...) and amounts.

Errors, as a caller sees them:

- a card decline on a charge is an outcome (``ChargeOutcome(status="failed", decline_code=...)``),
  on attaching a card it is ``billing.errors.PaymentDeclined``;
- Stripe rejecting the request (unknown payment method, refund larger than what is left, ...) is
  ``billing.errors.InvalidRequest`` / ``Conflict`` with Stripe's message;
- Stripe unreachable, 5xx, rate limited, or the same idempotency key still in flight is
  ``GatewayUnavailable``: nothing is known about the outcome, so retry with the same idempotency key
  (or recover with ``find_charge``).
"""

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import stripe
from aws_lambda_powertools.utilities import parameters
from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr

from billing.errors import Conflict, InvalidRequest, NotFound, PaymentDeclined, ProcessorUnavailable

WEBHOOK_TOLERANCE_SECONDS = 300
SECRET_MAX_AGE_SECONDS = 300
MAX_NETWORK_RETRIES = 2
DEFAULT_TIMEOUT_SECONDS = 10.0

# The charge's fee lives on its balance transaction; expanding it saves a round trip per charge.
_PI_EXPAND = ["latest_charge.balance_transaction"]
# A customer's recent PaymentIntents scanned when search cannot find a charge (newest first).
_LIST_SCAN_LIMIT = 300

# Metadata is the only free-form data sent to Stripe, so only opaque ids are allowed into it.
_METADATA_KEY = re.compile(r"^[a-z][a-z0-9_]{0,36}_id$")
_METADATA_EXTRA_KEYS = frozenset({"idempotency_key", "purpose"})
_OPAQUE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")

ChargeStatus = Literal["succeeded", "failed", "requires_action"]


def _charge_status(value: str) -> str:
    if value not in get_args(ChargeStatus):
        raise ValueError(f"status must be one of {get_args(ChargeStatus)}")
    return value


class GatewayUnavailable(ProcessorUnavailable):
    """Stripe could not be reached or failed (network, 5xx, 429, key in flight): the outcome is unknown.

    Retry with the same idempotency key (Stripe replays the original result), or call
    ``StripeGateway.find_charge`` to recover a charge made before a crash. It is the domain's
    ``ProcessorUnavailable`` (HTTP 503), so the payments domain's recovery path catches it.
    """


class StripeSettings(BaseModel):
    """Credentials and endpoint of the Stripe account (secrets are ``SecretStr`` so they never print)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret_key: SecretStr
    webhook_secret: SecretStr | None = None
    api_base: str | None = None


@cache
def load_stripe_settings() -> StripeSettings:
    """The container's Stripe settings: from ``STRIPE_SECRET_KEY`` (+ ``STRIPE_WEBHOOK_SECRET``,
    ``STRIPE_API_BASE``) when set, else from the Secrets Manager secret named by ``STRIPE_SECRET_ID``.

    Read once per container (``load_stripe_settings.cache_clear()`` forgets it).
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
    value = parameters.get_secret(secret_id, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
    if not isinstance(value, dict) or not value.get("secret_key"):
        raise RuntimeError(f"Secret {secret_id} must be JSON with 'secret_key' and 'webhook_secret'")
    return StripeSettings.model_validate(
        {"secret_key": value["secret_key"], "webhook_secret": value.get("webhook_secret") or None}
    )


class Card(BaseModel):
    """A card kept on file for a client (what staff and the client may see of it)."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class ChargeOutcome(BaseModel):
    """What happened to a charge (a PaymentIntent), in the terms the payments domain needs.

    ``status``: ``succeeded``; ``failed`` (declined or canceled; ``decline_code`` says why); or
    ``requires_action`` (the card needs the client present, or Stripe has not finished: not charged yet,
    a webhook will tell). ``stripe_status`` is the PaymentIntent's own status.
    """

    # Typed ``str`` (validated against ChargeStatus) so it matches the domain's ChargeResult protocol.
    status: Annotated[str, AfterValidator(_charge_status)]
    payment_intent_id: str
    charge_id: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    fee_cents: int | None = None
    amount_cents: int | None = None
    currency: str | None = None
    stripe_status: str | None = None
    metadata: dict[str, str] = {}


class Refund(BaseModel):
    """A refund as Stripe recorded it (``status``: ``succeeded``, ``pending``, ``failed``, ...)."""

    refund_id: str
    status: str
    amount_cents: int


class StripeGateway:
    """Customers, cards, off-session charges, refunds and webhooks of one Stripe account."""

    def __init__(self, settings: StripeSettings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        """A gateway on ``settings``; each request times out after ``timeout_seconds`` and is retried
        by the SDK up to ``MAX_NETWORK_RETRIES`` times with the same idempotency key."""
        self._settings = settings
        # A bounded timeout turns a hung request into GatewayUnavailable before the Lambda times out.
        http_client = stripe.RequestsClient(timeout=timeout_seconds)
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

    # ---- customers and cards -------------------------------------------------------------------

    def create_customer(self, practice_id: str, client_id: str, idempotency_key: str) -> str:
        """Create the Stripe customer of a client and return its id (``cus_...``).

        Only the two ids are sent; the same ``idempotency_key`` returns the same customer.
        """
        metadata = _safe_metadata({"practice_id": practice_id, "client_id": client_id})
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
        """Charge a card on file off-session, at most once per ``idempotency_key``.

        A decline is a ``failed`` outcome with Stripe's decline code (``authentication_required`` when
        the card needs the client present). Raises ``GatewayUnavailable`` when the outcome is unknown:
        call again with the same key, or ``find_charge``. ``metadata`` may hold only opaque ids
        (keys ending in ``_id``); anything else raises ``ValueError`` before Stripe is called.
        """
        if amount_cents <= 0:
            raise InvalidRequest("A charge must be for a positive amount.", code="invalid_amount")
        sent_metadata = _safe_metadata({**metadata, "idempotency_key": idempotency_key})
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
                return self._declined(error, idempotency_key, customer_id)
            except stripe.InvalidRequestError as error:
                raise _invalid_request(error) from error
        return _outcome(intent)

    def find_charge(self, idempotency_key: str, customer_id: str) -> ChargeOutcome | None:
        """The charge made with ``idempotency_key`` for the customer (e.g. before a crash), or None.

        Searches PaymentIntents by ``metadata['idempotency_key']``; when search fails or finds nothing
        (Stripe's search index lags by up to a minute) it scans the customer's recent PaymentIntents.
        """
        with _outage_is_unavailable():
            intent = self._find_intent(idempotency_key, customer_id)
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
        """Refund ``amount_cents`` of a succeeded charge, at most once per ``idempotency_key``.

        Raises ``Conflict`` with Stripe's message when Stripe refuses (more than what is left,
        already refunded, disputed, not succeeded) and ``GatewayUnavailable`` when the outcome is
        unknown (retry with the same key).
        """
        if amount_cents <= 0:
            raise InvalidRequest("A refund must be for a positive amount.", code="invalid_amount")
        sent_metadata = _safe_metadata({**metadata, "idempotency_key": idempotency_key})
        with _outage_is_unavailable():
            try:
                refund = self._client.v1.refunds.create(
                    {"payment_intent": payment_intent_id, "amount": amount_cents, "metadata": sent_metadata},
                    {"idempotency_key": idempotency_key},
                )
            except stripe.InvalidRequestError as error:
                raise Conflict(_message(error), details=_stripe_details(error)) from error
        return Refund(refund_id=refund.id, status=refund.status or "pending", amount_cents=refund.amount)

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

    def _declined(self, error: stripe.CardError, idempotency_key: str, customer_id: str) -> ChargeOutcome:
        details = error.error
        intent = details.payment_intent if details is not None else None
        if intent is None:
            # Stripe names the PaymentIntent on every PaymentIntent decline; look it up if it did not.
            intent = self._find_intent(idempotency_key, customer_id)
        if intent is None:
            raise GatewayUnavailable("Stripe declined the charge but named no PaymentIntent") from error
        return ChargeOutcome(
            status="failed",
            payment_intent_id=intent.id,
            charge_id=details.charge if details is not None else None,
            decline_code=_decline_code(error),
            failure_message=_message(error),
            amount_cents=intent.amount,
            currency=intent.currency,
            stripe_status=intent.status,
            metadata=_plain_metadata(intent),
        )

    def _find_intent(self, idempotency_key: str, customer_id: str) -> stripe.PaymentIntent | None:
        escaped = idempotency_key.replace("\\", "\\\\").replace("'", "\\'")
        query = f"metadata['idempotency_key']:'{escaped}'"
        found: list[stripe.PaymentIntent] = []
        try:
            result = self._client.v1.payment_intents.search(
                {"query": query, "limit": 10, "expand": [f"data.{path}" for path in _PI_EXPAND]}
            )
            found = [intent for intent in result.data if _customer_id(intent) == customer_id]
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError):
            raise
        except stripe.StripeError:
            found = []  # search is not available everywhere (and restricted keys may lack it): list instead
        if not found:
            found = self._scan_customer(idempotency_key, customer_id)
        if not found:
            return None
        # One key makes one PaymentIntent; should Stripe have forgotten the key (24 h), prefer the success.
        return sorted(found, key=lambda intent: (intent.status == "succeeded", intent.created), reverse=True)[0]

    def _scan_customer(self, idempotency_key: str, customer_id: str) -> list[stripe.PaymentIntent]:
        page = self._client.v1.payment_intents.list(
            {"customer": customer_id, "limit": 100, "expand": [f"data.{path}" for path in _PI_EXPAND]}
        )
        found = []
        for index, intent in enumerate(page.auto_paging_iter()):
            if index >= _LIST_SCAN_LIMIT:
                break
            if _plain_metadata(intent).get("idempotency_key") == idempotency_key:
                found.append(intent)
        return found


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
    status: ChargeStatus
    if intent.status == "succeeded":
        status = "succeeded"
    elif intent.status in ("requires_payment_method", "canceled"):
        status = "failed"
    else:
        # requires_action, processing, ...: not charged (yet); never "failed", which would invite a retry.
        status = "requires_action"
    error = intent.last_payment_error
    decline_code: str | None = None
    failure_message: str | None = None
    if status == "failed":
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
        fee_cents=_fee_cents(charge) if status == "succeeded" else None,
        amount_cents=intent.amount,
        currency=intent.currency,
        stripe_status=intent.status,
        metadata=_plain_metadata(intent),
    )


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


def _plain_metadata(intent: stripe.PaymentIntent) -> dict[str, str]:
    metadata: Any = intent.metadata
    if metadata is None:
        return {}
    # The SDK hands out StripeObjects, which are not mappings.
    plain = metadata.to_dict() if isinstance(metadata, stripe.StripeObject) else dict(metadata)
    return {str(key): str(value) for key, value in plain.items()}


def _safe_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` if it holds only opaque ids; ``ValueError`` (a programming error) otherwise."""
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
