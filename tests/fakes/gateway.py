"""An in-memory card processor with Stripe's semantics and queued faults: ``billing.gateway.PaymentGateway``
for domain tests with the network off.

It behaves like ``billing_stripe.StripeGateway`` talking to Stripe (or to ``local/stripe_emulator.py``; the
two are checked against each other in ``tests/unit/test_fake_gateway.py``):

- Stripe's test PaymentMethods, the emulator's catalogue (``local.stripe_emulator.TEST_CARDS``):
  ``pm_card_visa`` (and the other good cards) succeed; ``pm_card_chargeDeclined`` declines ``generic_decline``,
  ``pm_card_chargeDeclinedInsufficientFunds`` ``insufficient_funds``, ``...ExpiredCard`` ``expired_card``,
  ``...LostCard`` / ``...StolenCard`` ``lost_card`` / ``stolen_card``, ``pm_card_authenticationRequired`` (and
  ``...OnSetup``) declines ``authentication_required`` off-session, ``pm_card_chargeCustomerFail`` is refused
  when attached; ``pm_card_processing`` (emulator-only) leaves every charge ``processing``. Attaching a token
  makes a new card (``pm_fake...``) for the customer.
- Idempotency keys, shared by every operation as at Stripe: the same key with the same parameters answers
  the first result again (a snapshot: a replayed ``processing`` charge stays ``processing``); with other
  parameters (or another operation) it is ``Conflict(code="idempotency_key_reused")``. Requests refused
  as invalid are not remembered. ``forget_idempotency_keys()`` is Stripe forgetting them after 24 hours:
  the same key then charges again, so callers must ``find_charge`` (metadata) first.
- Declines are ``failed`` outcomes; a charge not final yet is ``processing``; refunds are ``pending``,
  ``succeeded`` or ``failed``; money and PHI rules as the real gateway (metadata of opaque ids only:
  anything else is a ``ValueError`` before "Stripe" is called).

Faults, queued per operation with ``queue_fault(operation, fault, times=1)`` (each call takes one):

=========================  ===================================================================================
``timeout_after_success``  the operation takes effect (and its key remembers the result), then the answer is
                           lost: ``ProcessorUnavailable``. The caller's retry with the key replays it.
``server_error``           Stripe's 500 after the SDK's retries: ``ProcessorUnavailable``, nothing happened.
``rate_limited``           Stripe's 429: ``ProcessorUnavailable``, nothing happened.
``key_in_use``             Stripe's 409 ``idempotency_key_in_use``: ``ProcessorUnavailable``, nothing happened.
``processing``             (``charge``) the charge ends ``processing``; ``settle_processing(pi, succeeded)``
                           finishes it.
``refund_pending``         (``refund``) the refund is ``pending``; ``settle_refund(id)`` makes it succeed.
``refund_fails``           (``refund``) the refund is ``pending`` and fails (``failure_reason``) when settled.
=========================  ===================================================================================

``decline_next_charge(decline_code)`` declines the next charge whatever the card (e.g. ``pickup_card``).

Book-keeping for assertions: ``charges`` (every PaymentIntent made, oldest first, live records),
``refunds``, ``succeeded_charged_cents(customer_id)``, ``refunded_cents(...)``, ``calls`` (every call, faults
included) and ``events``: Stripe-like events (``{"id", "type", "created", "data": {"object": ...}}``) in the
order Stripe would send them, for feeding webhook logic.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

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
from billing.money import minimum_charge_cents
from billing_stripe.gateway import safe_metadata
from local.stripe_emulator import (
    AUTH_REQUIRED,
    GENERIC_DECLINE,
    REFUND_FAILURE_REASONS,
    TEST_CARDS,
    Decline,
    TestCard,
    decline_named,
    stripe_fee,
)

OPERATIONS = (
    "create_customer",
    "attach_card",
    "detach_card",
    "charge",
    "find_charge",
    "retrieve_payment_intent",
    "refund",
    "refunds_of",
    "retrieve_refund",
)

TIMEOUT_AFTER_SUCCESS = "timeout_after_success"
SERVER_ERROR = "server_error"
RATE_LIMITED = "rate_limited"
KEY_IN_USE = "key_in_use"
PROCESSING = "processing"
REFUND_PENDING_FAULT = "refund_pending"
REFUND_FAILS = "refund_fails"

_BEFORE_EFFECT = {
    SERVER_ERROR: "Stripe is unavailable: An unknown error occurred (500).",
    RATE_LIMITED: "Stripe is unavailable: Too many requests (429).",
    KEY_IN_USE: "A request with the same idempotency key is still in progress",
}
_ANY_OPERATION = frozenset({TIMEOUT_AFTER_SUCCESS, *_BEFORE_EFFECT})
_FAULTS_OF = {
    "charge": _ANY_OPERATION | {PROCESSING},
    "refund": _ANY_OPERATION | {REFUND_PENDING_FAULT, REFUND_FAILS},
}


def _off_session_decline(card: TestCard) -> Decline | None:
    """How ``card`` answers an off-session charge (the only kind the gateway makes), as the emulator does."""
    if card.outcome == "decline":
        return card.decline
    if card.outcome == "customer_fail":
        return GENERIC_DECLINE
    if card.outcome in ("auth_always", "auth_unless_setup"):
        return AUTH_REQUIRED
    return None  # succeed, auth_setup_done (set up for off-session use), processing (settled later)


# ---- what callers get (the protocol's result shapes) ---------------------------------------------


@dataclasses.dataclass
class FakeCard:
    """``billing.gateway.AttachedCard``."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclasses.dataclass
class FakeCharge:
    """``billing.gateway.ChargeResult`` (the real gateway's ``ChargeOutcome`` fields)."""

    status: str
    payment_intent_id: str
    charge_id: str | None
    decline_code: str | None
    failure_message: str | None
    fee_cents: int | None
    amount_cents: int | None
    metadata: dict[str, str]
    currency: str | None = None
    stripe_status: str | None = None


@dataclasses.dataclass
class FakeRefund:
    """``billing.gateway.RefundResult`` (the real gateway's ``Refund`` fields); also the live record."""

    refund_id: str
    status: str
    amount_cents: int
    payment_intent_id: str | None
    metadata: dict[str, str]
    charge_id: str | None = None
    currency: str | None = None
    failure_reason: str | None = None
    stripe_status: str | None = None


# ---- what "Stripe" holds -------------------------------------------------------------------------


@dataclasses.dataclass
class FakePaymentIntent:
    """One PaymentIntent as the fake holds it (live: its status changes when it settles)."""

    id: str
    customer_id: str
    payment_method_id: str
    amount_cents: int
    currency: str
    metadata: dict[str, str]
    charge_id: str
    created: int
    stripe_status: str = "succeeded"
    decline: Decline | None = None
    amount_refunded_cents: int = 0

    @property
    def idempotency_key(self) -> str | None:
        return self.metadata.get("idempotency_key")

    @property
    def status(self) -> str:
        if self.stripe_status == "succeeded":
            return CHARGE_SUCCEEDED
        if self.stripe_status in ("requires_payment_method", "canceled"):
            return CHARGE_FAILED
        return CHARGE_PROCESSING

    def outcome(self) -> FakeCharge:
        status = self.status
        return FakeCharge(
            status=status,
            payment_intent_id=self.id,
            charge_id=self.charge_id,
            decline_code=self.decline.decline_code if status == CHARGE_FAILED and self.decline else None,
            failure_message=self.decline.message if status == CHARGE_FAILED and self.decline else None,
            fee_cents=stripe_fee(self.amount_cents) if status == CHARGE_SUCCEEDED else None,
            amount_cents=self.amount_cents,
            metadata=dict(self.metadata),
            currency=self.currency,
            stripe_status=self.stripe_status,
        )


@dataclasses.dataclass
class _Method:
    id: str
    token: str
    customer_id: str | None
    detached: bool = False


@dataclasses.dataclass
class _Saved:
    operation: str
    fingerprint: Any
    result: Any


@dataclasses.dataclass(frozen=True)
class _Fault:
    kind: str
    failure_reason: str = "lost_or_stolen_card"


class _LostAnswer(Exception):
    """Internal: the operation took effect, then its answer was lost."""


_Result = TypeVar("_Result")


class FakeGateway:
    """``billing.gateway.PaymentGateway`` in memory, with Stripe's semantics and queued faults (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1_800_000_000)
        self.customers: dict[str, dict[str, str]] = {}
        self._methods: dict[str, _Method] = {}
        self._intents: dict[str, FakePaymentIntent] = {}
        self._refunds: dict[str, FakeRefund] = {}
        self._refund_plans: dict[str, _Fault | None] = {}
        self._idem: dict[str, _Saved] = {}
        self._faults: dict[str, list[_Fault]] = {operation: [] for operation in OPERATIONS}
        self._declines: list[Decline] = []
        self.events: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    # ---- test controls -----------------------------------------------------------------------------

    def queue_fault(
        self, operation: str, fault: str, *, times: int = 1, failure_reason: str = "lost_or_stolen_card"
    ) -> None:
        """Make the next ``times`` calls of ``operation`` meet ``fault`` (see the module's table)."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}")
        if fault not in _FAULTS_OF.get(operation, _ANY_OPERATION):
            raise ValueError(f"{operation} cannot meet the fault {fault!r}")
        if failure_reason not in REFUND_FAILURE_REASONS:
            raise ValueError(f"failure_reason must be one of {REFUND_FAILURE_REASONS}")
        with self._lock:
            self._faults[operation].extend([_Fault(fault, failure_reason)] * times)

    def decline_next_charge(self, decline_code: str = "generic_decline", times: int = 1) -> None:
        """Decline the next ``times`` charges whatever the card (``pickup_card``, ``lost_card``, ...)."""
        with self._lock:
            self._declines.extend([decline_named(decline_code)] * times)

    def forget_idempotency_keys(self) -> int:
        """Stripe forgets idempotency keys after 24 hours: the same key then runs again. Returns how many."""
        with self._lock:
            forgotten = len(self._idem)
            self._idem.clear()
            return forgotten

    def settle_processing(
        self, payment_intent_id: str, succeeded: bool, decline_code: str = "generic_decline"
    ) -> FakeCharge:
        """Finish a ``processing`` charge: succeeded (``payment_intent.succeeded``) or declined with
        ``decline_code`` (``payment_intent.payment_failed``)."""
        with self._lock:
            intent = self._intents.get(payment_intent_id)
            if intent is None:
                raise NotFound("payment_intent", payment_intent_id)
            if intent.status != CHARGE_PROCESSING:
                raise InvalidRequest(f"PaymentIntent {payment_intent_id} is {intent.stripe_status}, not processing")
            if succeeded:
                intent.stripe_status = "succeeded"
                self._emit("payment_intent.succeeded", self._intent_object(intent))
            else:
                intent.stripe_status = "requires_payment_method"
                intent.decline = decline_named(decline_code)
                self._emit("payment_intent.payment_failed", self._intent_object(intent))
            return intent.outcome()

    def settle_refund(
        self, refund_id: str, succeeded: bool | None = None, failure_reason: str | None = None
    ) -> FakeRefund:
        """Finish a ``pending`` refund: succeeded, or failed with ``failure_reason`` (default: as queued by
        ``refund_pending`` / ``refund_fails``). Emits ``charge.refund.updated`` and ``refund.updated``, and
        ``refund.failed`` when it failed (the amount can then be refunded again)."""
        with self._lock:
            refund = self._refunds.get(refund_id)
            if refund is None:
                raise NotFound("refund", refund_id)
            if refund.status != REFUND_PENDING:
                raise InvalidRequest(f"Refund {refund_id} is {refund.stripe_status}, not pending")
            plan = self._refund_plans.pop(refund_id, None)
            if succeeded is None:
                succeeded = failure_reason is None and (plan is None or plan.kind != REFUND_FAILS)
            if succeeded:
                refund.status = refund.stripe_status = REFUND_SUCCEEDED
            else:
                refund.status = refund.stripe_status = REFUND_FAILED
                refund.failure_reason = failure_reason or (plan.failure_reason if plan else None) or "unknown"
                assert refund.payment_intent_id is not None
                self._intents[refund.payment_intent_id].amount_refunded_cents -= refund.amount_cents
            previous: dict[str, Any] = {"status": REFUND_PENDING}
            self._emit("charge.refund.updated", self._refund_object(refund), previous)
            self._emit("refund.updated", self._refund_object(refund), previous)
            if not succeeded:
                self._emit("refund.failed", self._refund_object(refund))
            return copy.deepcopy(refund)

    def settle_refunds(self) -> list[FakeRefund]:
        """Settle every pending refund as queued (oldest first)."""
        with self._lock:
            pending = [refund.refund_id for refund in self._refunds.values() if refund.status == REFUND_PENDING]
            return [self.settle_refund(refund_id) for refund_id in pending]

    # ---- book-keeping --------------------------------------------------------------------------------

    @property
    def charges(self) -> list[FakePaymentIntent]:
        """Every PaymentIntent made (declined and processing ones included), oldest first."""
        with self._lock:
            return list(self._intents.values())

    @property
    def refunds(self) -> list[FakeRefund]:
        """Every refund asked for (any status), oldest first."""
        with self._lock:
            return [copy.deepcopy(refund) for refund in self._refunds.values()]

    def succeeded_charged_cents(self, customer_id: str | None = None) -> int:
        """Money taken: the amounts of succeeded PaymentIntents (of one customer)."""
        with self._lock:
            return sum(
                intent.amount_cents
                for intent in self._intents.values()
                if intent.status == CHARGE_SUCCEEDED and customer_id in (None, intent.customer_id)
            )

    def refunded_cents(
        self,
        customer_id: str | None = None,
        *,
        payment_intent_id: str | None = None,
        including_pending: bool = False,
    ) -> int:
        """Money given back: succeeded refunds (and pending ones when asked) of a customer or PaymentIntent."""
        statuses = {REFUND_SUCCEEDED, REFUND_PENDING} if including_pending else {REFUND_SUCCEEDED}
        with self._lock:
            return sum(
                refund.amount_cents
                for refund in self._refunds.values()
                if refund.status in statuses
                and payment_intent_id in (None, refund.payment_intent_id)
                and customer_id in (None, self._intents[str(refund.payment_intent_id)].customer_id)
            )

    def events_of(self, type_: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == type_]

    # ---- PaymentGateway: customers and cards ----------------------------------------------------------

    def create_customer(self, practice_id: str, client_id: str, idempotency_key: str) -> str:
        metadata = safe_metadata({"practice_id": practice_id, "client_id": client_id})

        def create() -> str:
            customer_id = self._new_id("cus_fake")
            self.customers[customer_id] = metadata
            return customer_id

        return self._call(
            "create_customer",
            {"practice_id": practice_id, "client_id": client_id, "idempotency_key": idempotency_key},
            create,
            key=idempotency_key,
            fingerprint=("create_customer", tuple(sorted(metadata.items()))),
        )

    def attach_card(self, customer_id: str, payment_method_id: str) -> FakeCard:
        def attach() -> FakeCard:
            if customer_id not in self.customers:
                raise _resource_missing(f"No such customer: '{customer_id}'")
            if payment_method_id in TEST_CARDS:
                card = TEST_CARDS[payment_method_id]
                if card.outcome == "customer_fail":
                    raise PaymentDeclined(GENERIC_DECLINE.message, decline_code=GENERIC_DECLINE.decline_code)
                method = _Method(self._new_id("pm_fake"), payment_method_id, customer_id)
                self._methods[method.id] = method
            else:
                found = self._methods.get(payment_method_id)
                if found is None:
                    raise _resource_missing(f"No such PaymentMethod: '{payment_method_id}'")
                if found.customer_id not in (None, customer_id):
                    raise InvalidRequest("The payment method you provided has already been attached to a customer.")
                if found.detached:
                    raise InvalidRequest(
                        "This PaymentMethod was previously used without being attached to a Customer or was "
                        "detached from a Customer, and may not be used again."
                    )
                method = found
            return _card_of(method)

        return self._call("attach_card", {"customer_id": customer_id, "payment_method_id": payment_method_id}, attach)

    def detach_card(self, payment_method_id: str) -> None:
        def detach() -> None:
            method = self._methods.get(payment_method_id)
            if method is not None and method.customer_id is not None:
                method.customer_id = None
                method.detached = True

        self._call("detach_card", {"payment_method_id": payment_method_id}, detach)

    # ---- PaymentGateway: charges ----------------------------------------------------------------------

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> FakeCharge:
        if amount_cents <= 0:
            raise InvalidRequest("A charge must be for a positive amount.", code="invalid_amount")
        sent = safe_metadata({**metadata, "idempotency_key": idempotency_key})
        currency = currency.lower()
        arguments = {
            "customer_id": customer_id,
            "payment_method_id": payment_method_id,
            "amount_cents": amount_cents,
            "currency": currency,
            "idempotency_key": idempotency_key,
            "metadata": dict(metadata),
        }

        def create(fault: _Fault | None) -> FakeCharge:
            if amount_cents < minimum_charge_cents(currency):
                raise _invalid("Amount must be at least the processor's minimum.", "amount_too_small")
            if customer_id not in self.customers:
                raise _resource_missing(f"No such customer: '{customer_id}'")
            method = self._methods.get(payment_method_id)
            if method is None:
                raise _resource_missing(f"No such PaymentMethod: '{payment_method_id}'")
            if method.customer_id != customer_id:
                raise InvalidRequest(
                    f"The PaymentMethod {payment_method_id} does not belong to the customer {customer_id}."
                )
            card = TEST_CARDS[method.token]
            intent = FakePaymentIntent(
                id=self._new_id("pi_fake"),
                customer_id=customer_id,
                payment_method_id=payment_method_id,
                amount_cents=amount_cents,
                currency=currency,
                metadata=sent,
                charge_id=self._new_id("ch_fake"),
                created=next(self._clock),
            )
            self._intents[intent.id] = intent
            if self._declines:
                intent.decline = self._declines.pop(0)
            elif (fault is not None and fault.kind == PROCESSING) or card.outcome == "processing":
                intent.stripe_status = "processing"
            else:
                intent.decline = _off_session_decline(card)
            if intent.decline is not None:
                intent.stripe_status = "requires_payment_method"
                self._emit("payment_intent.payment_failed", self._intent_object(intent))
            elif intent.stripe_status == "processing":
                self._emit("payment_intent.processing", self._intent_object(intent))
            else:
                self._emit("payment_intent.succeeded", self._intent_object(intent))
            return intent.outcome()

        return self._call(
            "charge",
            arguments,
            create,
            key=idempotency_key,
            fingerprint=("charge", customer_id, payment_method_id, amount_cents, currency, tuple(sorted(sent.items()))),
            takes_fault=True,
        )

    def find_charge(self, idempotency_key: str, customer_id: str) -> FakeCharge | None:
        def find() -> FakeCharge | None:
            found = [
                intent
                for intent in self._intents.values()
                if intent.idempotency_key == idempotency_key and intent.customer_id == customer_id
            ]
            if not found:
                return None
            preference = {CHARGE_SUCCEEDED: 2, CHARGE_PROCESSING: 1, CHARGE_FAILED: 0}
            return max(found, key=lambda intent: (preference[intent.status], intent.created)).outcome()

        return self._call("find_charge", {"idempotency_key": idempotency_key, "customer_id": customer_id}, find)

    def retrieve_payment_intent(self, payment_intent_id: str) -> FakeCharge:
        def retrieve() -> FakeCharge:
            return self._intent(payment_intent_id).outcome()

        return self._call("retrieve_payment_intent", {"payment_intent_id": payment_intent_id}, retrieve)

    # ---- PaymentGateway: refunds ----------------------------------------------------------------------

    def refund(
        self, *, payment_intent_id: str, amount_cents: int, idempotency_key: str, metadata: Mapping[str, str]
    ) -> FakeRefund:
        if amount_cents <= 0:
            raise InvalidRequest("A refund must be for a positive amount.", code="invalid_amount")
        sent = safe_metadata({**metadata, "idempotency_key": idempotency_key})
        arguments = {
            "payment_intent_id": payment_intent_id,
            "amount_cents": amount_cents,
            "idempotency_key": idempotency_key,
            "metadata": dict(metadata),
        }

        def create(fault: _Fault | None) -> FakeRefund:
            intent = self._intent(payment_intent_id)
            if intent.status != CHARGE_SUCCEEDED:
                raise Conflict(f"This PaymentIntent ({payment_intent_id}) does not have a successful charge to refund.")
            remaining = intent.amount_cents - intent.amount_refunded_cents
            if remaining <= 0:
                raise _conflict(f"Charge {intent.charge_id} has already been refunded.", "charge_already_refunded")
            if amount_cents > remaining:
                raise _conflict(
                    f"Refund amount ({amount_cents}) is greater than unrefunded amount on charge ({remaining})",
                    "amount_too_large",
                )
            pending = fault is not None and fault.kind in (REFUND_PENDING_FAULT, REFUND_FAILS)
            status = REFUND_PENDING if pending else REFUND_SUCCEEDED
            refund = FakeRefund(
                refund_id=self._new_id("re_fake"),
                status=status,
                amount_cents=amount_cents,
                payment_intent_id=payment_intent_id,
                metadata=sent,
                charge_id=intent.charge_id,
                currency=intent.currency,
                stripe_status=status,
            )
            self._refunds[refund.refund_id] = refund
            if pending:
                self._refund_plans[refund.refund_id] = fault
            previous = {"amount_refunded": intent.amount_refunded_cents}
            intent.amount_refunded_cents += amount_cents
            self._emit("charge.refunded", self._charge_object(intent), previous)
            self._emit("refund.created", self._refund_object(refund))
            return copy.deepcopy(refund)

        return self._call(
            "refund",
            arguments,
            create,
            key=idempotency_key,
            fingerprint=("refund", payment_intent_id, amount_cents, tuple(sorted(sent.items()))),
            takes_fault=True,
        )

    def refunds_of(self, payment_intent_id: str) -> list[RefundResult]:
        def listed() -> list[RefundResult]:
            self._intent(payment_intent_id)
            return [
                copy.deepcopy(refund)
                for refund in reversed(self._refunds.values())
                if refund.payment_intent_id == payment_intent_id
            ]

        return self._call("refunds_of", {"payment_intent_id": payment_intent_id}, listed)

    def retrieve_refund(self, refund_id: str) -> FakeRefund:
        def retrieve() -> FakeRefund:
            refund = self._refunds.get(refund_id)
            if refund is None:
                raise NotFound("refund", refund_id)
            return copy.deepcopy(refund)

        return self._call("retrieve_refund", {"refund_id": refund_id}, retrieve)

    # ---- internals -----------------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        arguments: dict[str, Any],
        run: Callable[..., _Result],
        *,
        key: str | None = None,
        fingerprint: Any = None,
        takes_fault: bool = False,
    ) -> _Result:
        """One request to "Stripe": faults before it acts, idempotent replay, the effect, a lost answer."""
        with self._lock:
            self.calls.append((operation, arguments))
            fault = self._faults[operation].pop(0) if self._faults[operation] else None
            if fault is not None and fault.kind in _BEFORE_EFFECT:
                raise ProcessorUnavailable(_BEFORE_EFFECT[fault.kind])
            saved = self._idem.get(key) if key is not None else None
            if saved is not None:
                if fault is not None and fault.kind != TIMEOUT_AFTER_SUCCESS:
                    self._faults[operation].insert(0, fault)  # a replay runs nothing: keep it for the next one
                    fault = None
                if (saved.operation, saved.fingerprint) != (operation, fingerprint):
                    raise Conflict(
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{key}' if you meant to execute a different request.",
                        code="idempotency_key_reused",
                    )
                result: _Result = copy.deepcopy(saved.result)
            else:
                result = run(fault) if takes_fault else run()
                if key is not None:
                    self._idem[key] = _Saved(operation, fingerprint, copy.deepcopy(result))
            if fault is not None and fault.kind == TIMEOUT_AFTER_SUCCESS:
                raise ProcessorUnavailable(f"Stripe is unavailable: the answer to {operation} was lost")
            return result

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _intent(self, payment_intent_id: str) -> FakePaymentIntent:
        intent = self._intents.get(payment_intent_id)
        if intent is None:
            raise NotFound("payment_intent", payment_intent_id)
        return intent

    def _emit(self, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        self.events.append(
            {
                "id": self._new_id("evt_fake"),
                "object": "event",
                "type": type_,
                "created": next(self._clock),
                "livemode": False,
                "data": data,
            }
        )

    def _intent_object(self, intent: FakePaymentIntent) -> dict[str, Any]:
        decline = intent.decline if intent.status == CHARGE_FAILED else None
        return {
            "id": intent.id,
            "object": "payment_intent",
            "amount": intent.amount_cents,
            "amount_received": intent.amount_cents if intent.status == CHARGE_SUCCEEDED else 0,
            "currency": intent.currency,
            "customer": intent.customer_id,
            "latest_charge": intent.charge_id,
            "payment_method": None if decline else intent.payment_method_id,
            "status": intent.stripe_status,
            "last_payment_error": (
                {
                    "type": "card_error",
                    "code": decline.code,
                    "decline_code": decline.decline_code,
                    "message": decline.message,
                    "charge": intent.charge_id,
                }
                if decline
                else None
            ),
            "metadata": dict(intent.metadata),
        }

    def _charge_object(self, intent: FakePaymentIntent) -> dict[str, Any]:
        return {
            "id": intent.charge_id,
            "object": "charge",
            "amount": intent.amount_cents,
            "amount_refunded": intent.amount_refunded_cents,
            "refunded": intent.amount_refunded_cents >= intent.amount_cents,
            "currency": intent.currency,
            "customer": intent.customer_id,
            "payment_intent": intent.id,
            "status": "succeeded",
            "metadata": dict(intent.metadata),
        }

    def _refund_object(self, refund: FakeRefund) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": refund.refund_id,
            "object": "refund",
            "amount": refund.amount_cents,
            "charge": refund.charge_id,
            "currency": refund.currency,
            "payment_intent": refund.payment_intent_id,
            "status": refund.stripe_status,
            "metadata": dict(refund.metadata),
        }
        if refund.status == REFUND_FAILED:
            obj["failure_reason"] = refund.failure_reason
        return obj


def _card_of(method: _Method) -> FakeCard:
    card = TEST_CARDS[method.token]
    # Stripe's test cards expire in December, three years from now.
    return FakeCard(
        payment_method_id=method.id,
        brand=card.brand,
        last4=card.last4,
        exp_month=12,
        exp_year=time.gmtime().tm_year + 3,
    )


def _invalid(message: str, stripe_code: str) -> InvalidRequest:
    return InvalidRequest(message, details=[{"stripe_code": stripe_code}])


def _resource_missing(message: str) -> InvalidRequest:
    return _invalid(message, "resource_missing")


def _conflict(message: str, stripe_code: str) -> Conflict:
    return Conflict(message, details=[{"stripe_code": stripe_code}])


if TYPE_CHECKING:
    from billing.gateway import PaymentGateway

    def _conforms(gateway: FakeGateway) -> PaymentGateway:
        # mypy proves here that the fake satisfies the domain's PaymentGateway protocol.
        return gateway
