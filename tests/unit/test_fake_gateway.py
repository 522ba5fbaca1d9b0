"""The in-memory FakeGateway behaves like the real StripeGateway talking to the local Stripe emulator.

Each scenario drives a gateway through the domain's PaymentGateway protocol and writes down what a caller
can observe (statuses, amounts, decline codes, errors, how many PaymentIntents "Stripe" holds, the webhook
events it sent), with ids replaced by what they refer to. Every scenario runs twice, against the fake and
against the emulator (through the real Stripe SDK, on 127.0.0.1), and the two transcripts must be equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from billing.errors import BillingError, Conflict, InvalidRequest, NotFound, PaymentDeclined, ProcessorUnavailable
from billing.gateway import PaymentGateway
from billing_stripe import gateway as stripe_gateway
from billing_stripe.gateway import StripeGateway, StripeSettings
from local.stripe_emulator import StripeEmulator
from tests.fakes.gateway import OPERATIONS, FakeGateway

PRACTICE_ID = "prac_0f3a9c"
CLIENT_ID = "cli_7b21e4"
ATTEMPTS = 1 + stripe_gateway.MAX_NETWORK_RETRIES
_PATHS = {"charge": "/v1/payment_intents", "refund": "/v1/refunds", "create_customer": "/v1/customers"}

Transcript = list[Any]


class Harness:
    """A gateway and the means to make "Stripe" misbehave, the same way for the fake and the emulator."""

    name: str
    gateway: PaymentGateway

    def fault(self, operation: str, fault: str, failure_reason: str = "lost_or_stolen_card") -> None:
        raise NotImplementedError

    def settle_processing(self, payment_intent_id: str, succeeded: bool, decline_code: str) -> None:
        raise NotImplementedError

    def settle_refund(self, refund_id: str, succeeded: bool | None = None) -> None:
        raise NotImplementedError

    def forget_idempotency_keys(self) -> None:
        raise NotImplementedError

    def payment_intents(self) -> int:
        raise NotImplementedError

    def event_types(self) -> list[str]:
        raise NotImplementedError


class FakeHarness(Harness):
    name = "fake"

    def __init__(self) -> None:
        self.fake = FakeGateway()
        self.gateway = self.fake

    def fault(self, operation: str, fault: str, failure_reason: str = "lost_or_stolen_card") -> None:
        self.fake.queue_fault(operation, fault, failure_reason=failure_reason)

    def settle_processing(self, payment_intent_id: str, succeeded: bool, decline_code: str) -> None:
        self.fake.settle_processing(payment_intent_id, succeeded, decline_code)

    def settle_refund(self, refund_id: str, succeeded: bool | None = None) -> None:
        self.fake.settle_refund(refund_id, succeeded)

    def forget_idempotency_keys(self) -> None:
        self.fake.forget_idempotency_keys()

    def payment_intents(self) -> int:
        return len(self.fake.charges)

    def event_types(self) -> list[str]:
        return [event["type"] for event in self.fake.events]


class EmulatorHarness(Harness):
    name = "emulator"

    def __init__(self, emulator: StripeEmulator) -> None:
        emulator.reset()
        self.emulator = emulator
        self.gateway = StripeGateway(StripeSettings(secret_key=SecretStr("sk_test_parity"), api_base=emulator.url))

    def fault(self, operation: str, fault: str, failure_reason: str = "lost_or_stolen_card") -> None:
        path = _PATHS[operation]
        if fault == "timeout_after_success":
            self.emulator.fail_after_success(path, times=ATTEMPTS)  # the request and the SDK's retry
        elif fault == "server_error":
            self.emulator.fail_next_request(path, times=ATTEMPTS, status=500)
        elif fault == "rate_limited":
            self.emulator.fail_next_request(path, times=1, status=429)  # the SDK does not retry a 429
        elif fault == "key_in_use":
            self.emulator.key_in_use_next(path, times=ATTEMPTS)
        elif fault == "processing":
            self.emulator.process_next_charge()
        elif fault == "refund_pending":
            self.emulator.pend_next_refund()
        elif fault == "refund_fails":
            self.emulator.fail_next_refund(failure_reason)
        else:
            raise ValueError(fault)

    def settle_processing(self, payment_intent_id: str, succeeded: bool, decline_code: str) -> None:
        self.emulator.settle_payment_intent(payment_intent_id, succeeded, None if succeeded else decline_code)

    def settle_refund(self, refund_id: str, succeeded: bool | None = None) -> None:
        self.emulator.settle_refund(refund_id, succeeded)

    def forget_idempotency_keys(self) -> None:
        self.emulator.forget_idempotency_keys()

    def payment_intents(self) -> int:
        return len(self.emulator.payment_intents())

    def event_types(self) -> list[str]:
        return [event["type"] for event in self.emulator.events()]


@pytest.fixture(scope="module")
def emulator() -> Iterator[StripeEmulator]:
    emulator = StripeEmulator(webhook_url=None)
    emulator.start(port=0)
    yield emulator
    emulator.stop()


# ---- how a caller sees results --------------------------------------------------------------------


def attempt(call: Callable[[], Any]) -> Any:
    """The result of ``call``, or the kind of domain error it raised (class, code, Stripe's code)."""
    try:
        return call()
    except ValueError:
        return ("error", "ValueError")
    except BillingError as error:
        kinds = (ProcessorUnavailable, Conflict, NotFound, PaymentDeclined, InvalidRequest)
        kind = next(kind.__name__ for kind in kinds if isinstance(error, kind))
        stripe_codes = [detail.get("stripe_code") for detail in error.details if "stripe_code" in detail]
        return ("error", kind, error.code, stripe_codes)


def charge_view(outcome: Any) -> Any:
    if isinstance(outcome, tuple) or outcome is None:
        return outcome
    return {
        "status": outcome.status,
        "decline_code": outcome.decline_code,
        "declined_with_a_message": outcome.failure_message is not None,
        "fee_cents": outcome.fee_cents,
        "amount_cents": outcome.amount_cents,
        "charge": outcome.charge_id is not None,
        "metadata": outcome.metadata,
    }


def refund_view(refund: Any) -> Any:
    if isinstance(refund, tuple):
        return refund
    return {
        "status": refund.status,
        "amount_cents": refund.amount_cents,
        "failure_reason": getattr(refund, "failure_reason", None),
        "metadata": refund.metadata,
    }


def customer_with(harness: Harness, token: str = "pm_card_visa", key: str = "cus-1") -> tuple[str, str]:
    customer_id = harness.gateway.create_customer(PRACTICE_ID, CLIENT_ID, key)
    return customer_id, harness.gateway.attach_card(customer_id, token).payment_method_id


def charge(harness: Harness, customer_id: str, card: str, key: str, amount: int = 15000) -> Any:
    return harness.gateway.charge(
        customer_id=customer_id,
        payment_method_id=card,
        amount_cents=amount,
        currency="usd",
        idempotency_key=key,
        metadata={"practice_id": PRACTICE_ID, "payment_id": "pay_01"},
    )


def refund(harness: Harness, payment_intent_id: str, amount: int, key: str) -> Any:
    return harness.gateway.refund(
        payment_intent_id=payment_intent_id, amount_cents=amount, idempotency_key=key, metadata={"refund_id": "rf_1"}
    )


# ---- scenarios --------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Harness], Transcript]] = {}


def scenario(function: Callable[[Harness], Transcript]) -> Callable[[Harness], Transcript]:
    SCENARIOS[function.__name__] = function
    return function


@scenario
def replay(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    first = charge(h, customer_id, card, "charge-1")
    second = charge(h, customer_id, card, "charge-1")
    assert second.payment_intent_id == first.payment_intent_id
    assert h.gateway.create_customer(PRACTICE_ID, CLIENT_ID, "cus-1") == customer_id
    return [charge_view(first), charge_view(second), h.payment_intents(), h.event_types()]


@scenario
def reuse_conflict(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    charge(h, customer_id, card, "charge-1", amount=15000)
    reused = attempt(lambda: charge(h, customer_id, card, "charge-1", amount=9000))
    assert reused[:3] == ("error", "Conflict", "idempotency_key_reused")
    other_customer = attempt(lambda: h.gateway.create_customer(PRACTICE_ID, "cli_other", "cus-1"))
    return [reused, other_customer, h.payment_intents()]


@scenario
def declines(h: Harness) -> Transcript:
    transcript = []
    for token in (
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedLostCard",
        "pm_card_chargeDeclinedStolenCard",
        "pm_card_chargeDeclinedExpiredCard",
        "pm_card_authenticationRequired",
    ):
        customer_id, card = customer_with(h, token, key=f"cus-{token}")
        outcome = charge(h, customer_id, card, f"charge-{token}")
        assert outcome.status == "failed"
        transcript.append(
            (token, charge_view(outcome), charge_view(h.gateway.find_charge(f"charge-{token}", customer_id)))
        )
    transcript.append(
        attempt(
            lambda: h.gateway.attach_card(h.gateway.create_customer("p_1", "c_1", "k"), "pm_card_chargeCustomerFail")
        )
    )
    return [transcript, h.payment_intents(), h.event_types()]


@scenario
def timeout_after_success(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    h.fault("charge", "timeout_after_success")
    lost = attempt(lambda: charge(h, customer_id, card, "charge-lost"))
    assert lost[:2] == ("error", "ProcessorUnavailable")
    found = h.gateway.find_charge("charge-lost", customer_id)
    assert found is not None and found.status == "succeeded"
    retried = charge(h, customer_id, card, "charge-lost")
    assert retried.payment_intent_id == found.payment_intent_id
    return [lost, charge_view(found), charge_view(retried), h.payment_intents(), h.event_types()]


@scenario
def errors_before_stripe_acts(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    transcript = []
    for fault in ("server_error", "rate_limited", "key_in_use"):
        h.fault("charge", fault)
        failed = attempt(lambda fault=fault: charge(h, customer_id, card, f"charge-{fault}"))
        assert failed[:2] == ("error", "ProcessorUnavailable")
        transcript.append(
            (fault, failed[:2], h.payment_intents(), h.gateway.find_charge(f"charge-{fault}", customer_id))
        )
        transcript.append(charge_view(charge(h, customer_id, card, f"charge-{fault}")))
    return [transcript, h.payment_intents(), h.event_types()]


@scenario
def processing_then_settled(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    h.fault("charge", "processing")
    paid = charge(h, customer_id, card, "charge-slow-ok")
    h.fault("charge", "processing")
    unpaid = charge(h, customer_id, card, "charge-slow-ko")
    assert (paid.status, unpaid.status) == ("processing", "processing")
    refund_too_early = attempt(lambda: refund(h, paid.payment_intent_id, 100, "refund-early"))
    h.settle_processing(paid.payment_intent_id, True, "generic_decline")
    h.settle_processing(unpaid.payment_intent_id, False, "insufficient_funds")
    return [
        charge_view(paid),
        charge_view(unpaid),
        refund_too_early,
        charge_view(h.gateway.retrieve_payment_intent(paid.payment_intent_id)),
        charge_view(h.gateway.retrieve_payment_intent(unpaid.payment_intent_id)),
        charge_view(charge(h, customer_id, card, "charge-slow-ok")),  # a replay is the first answer
        charge_view(h.gateway.find_charge("charge-slow-ok", customer_id)),
        h.event_types(),
    ]


@scenario
def forget_keys(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    first = charge(h, customer_id, card, "charge-day-1")
    h.forget_idempotency_keys()
    found = h.gateway.find_charge("charge-day-1", customer_id)
    assert found is not None and found.payment_intent_id == first.payment_intent_id
    missing = h.gateway.find_charge("charge-never", customer_id)
    elsewhere = h.gateway.find_charge("charge-day-1", "cus_someone_else")
    # A caller that does not look first charges again: Stripe no longer knows the key.
    again = charge(h, customer_id, card, "charge-day-1")
    assert again.payment_intent_id != first.payment_intent_id
    # ... and Stripe remembers the key again from then on.
    other_amount = attempt(lambda: charge(h, customer_id, card, "charge-day-1", amount=9000))
    return [charge_view(found), missing, elsewhere, other_amount, h.payment_intents()]


@scenario
def find_charge_after_forgetting_prefers_the_success(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    paid = charge(h, customer_id, card, "charge-k")
    h.forget_idempotency_keys()
    h.fault("charge", "processing")
    charge(h, customer_id, card, "charge-k")
    found = h.gateway.find_charge("charge-k", customer_id)
    assert found is not None and found.payment_intent_id == paid.payment_intent_id
    return [charge_view(found), h.payment_intents()]


@scenario
def refunds_settle_later(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    paid = charge(h, customer_id, card, "charge-r", amount=10000)
    h.fault("refund", "refund_pending")
    pending = refund(h, paid.payment_intent_id, 3000, "refund-1")
    h.fault("refund", "refund_fails", failure_reason="expired_or_canceled_card")
    failing = refund(h, paid.payment_intent_id, 7000, "refund-2")
    too_much = attempt(lambda: refund(h, paid.payment_intent_id, 1, "refund-3"))
    assert (pending.status, failing.status) == ("pending", "pending")
    h.settle_refund(pending.refund_id)
    h.settle_refund(failing.refund_id)
    assert h.gateway.retrieve_refund(failing.refund_id).status == "failed"
    again = refund(h, paid.payment_intent_id, 7000, "refund-4")  # the failed refund's money can go back again
    return [
        refund_view(pending),
        refund_view(failing),
        too_much,
        [refund_view(item) for item in h.gateway.refunds_of(paid.payment_intent_id)],
        refund_view(again),
        h.event_types(),
    ]


@scenario
def refund_replay_and_errors(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    paid = charge(h, customer_id, card, "charge-r", amount=10000)
    h.fault("refund", "timeout_after_success")
    lost = attempt(lambda: refund(h, paid.payment_intent_id, 4000, "refund-1"))
    replayed = refund(h, paid.payment_intent_id, 4000, "refund-1")
    reused = attempt(lambda: refund(h, paid.payment_intent_id, 5000, "refund-1"))
    too_much = attempt(lambda: refund(h, paid.payment_intent_id, 6001, "refund-2"))
    rest = refund(h, paid.payment_intent_id, 6000, "refund-3")
    nothing_left = attempt(lambda: refund(h, paid.payment_intent_id, 1, "refund-4"))
    declined_customer, declined_card = customer_with(h, "pm_card_chargeDeclined", key="cus-2")
    declined = charge(h, declined_customer, declined_card, "charge-declined")
    not_paid = attempt(lambda: refund(h, declined.payment_intent_id, 100, "refund-5"))
    refunds = h.gateway.refunds_of(paid.payment_intent_id)
    assert [item.refund_id for item in refunds] == [rest.refund_id, replayed.refund_id]
    return [
        lost,
        refund_view(replayed),
        reused,
        too_much,
        refund_view(rest),
        nothing_left,
        not_paid,
        [refund_view(item) for item in refunds],
        h.gateway.refunds_of(declined.payment_intent_id),
        h.event_types(),
    ]


@scenario
def unknown_objects(h: Harness) -> Transcript:
    customer_id, _ = customer_with(h)
    return [
        attempt(lambda: h.gateway.retrieve_payment_intent("pi_missing")),
        attempt(lambda: h.gateway.refunds_of("pi_missing")),
        attempt(lambda: h.gateway.retrieve_refund("re_missing")),
        attempt(lambda: refund(h, "pi_missing", 100, "refund-x")),
        attempt(lambda: h.gateway.attach_card(customer_id, "pm_missing")),
        attempt(lambda: h.gateway.attach_card("cus_missing", "pm_card_visa")),
        attempt(lambda: charge(h, customer_id, "pm_missing", "charge-x")),
        h.gateway.find_charge("charge-x", customer_id),
    ]


@scenario
def cards_and_amounts(h: Harness) -> Transcript:
    customer_id, card = customer_with(h)
    other_customer, other_card = customer_with(h, key="cus-2")
    attached = h.gateway.attach_card(customer_id, "pm_card_mastercard")
    h.gateway.detach_card(card)
    h.gateway.detach_card(card)  # detaching twice is fine
    return [
        (attached.brand, attached.last4, attached.exp_month),
        attempt(lambda: charge(h, customer_id, card, "charge-detached")),
        attempt(lambda: charge(h, customer_id, other_card, "charge-not-theirs")),
        attempt(lambda: charge(h, other_customer, other_card, "charge-tiny", amount=49)),
        attempt(lambda: charge(h, other_customer, other_card, "charge-zero", amount=0)),
        attempt(
            lambda: h.gateway.charge(
                customer_id=other_customer,
                payment_method_id=other_card,
                amount_cents=1000,
                currency="usd",
                idempotency_key="charge-phi",
                metadata={"client_name": "Jane Doe"},
            )
        ),
        h.payment_intents(),
    ]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_fake_behaves_like_the_emulator(name: str, emulator: StripeEmulator) -> None:
    run = SCENARIOS[name]

    expected = run(EmulatorHarness(emulator))
    actual = run(FakeHarness())

    assert actual == expected


# ---- the fake's own book-keeping --------------------------------------------------------------------


def test_book_keeping_counts_money_moved() -> None:
    h = FakeHarness()
    customer_id, card = customer_with(h)
    other_customer, other_card = customer_with(h, key="cus-2")
    paid = charge(h, customer_id, card, "charge-1", amount=10000)
    charge(h, other_customer, other_card, "charge-2", amount=2000)
    h.fake.decline_next_charge("pickup_card")
    assert charge(h, customer_id, card, "charge-3").decline_code == "pickup_card"
    h.fault("refund", "refund_pending")
    pending = refund(h, paid.payment_intent_id, 1000, "refund-1")
    refund(h, paid.payment_intent_id, 500, "refund-2")

    assert [intent.status for intent in h.fake.charges] == ["succeeded", "succeeded", "failed"]
    assert h.fake.succeeded_charged_cents() == 12000
    assert h.fake.succeeded_charged_cents(customer_id) == 10000
    assert h.fake.refunded_cents() == 500
    assert h.fake.refunded_cents(customer_id, including_pending=True) == 1500
    assert h.fake.refunded_cents(other_customer) == 0
    h.fake.settle_refunds()
    assert h.fake.refunded_cents(payment_intent_id=paid.payment_intent_id) == 1500
    assert h.fake.retrieve_refund(pending.refund_id).status == "succeeded"
    assert [operation for operation, _ in h.fake.calls].count("charge") == 3


def test_events_look_like_stripe_events_for_the_webhook_logic() -> None:
    h = FakeHarness()
    customer_id, card = customer_with(h)
    paid = charge(h, customer_id, card, "charge-1", amount=10000)
    h.fault("refund", "refund_fails")
    failing = refund(h, paid.payment_intent_id, 4000, "refund-1")
    h.fake.settle_refund(failing.refund_id)

    succeeded, refunded, created, charge_updated, updated, failed = h.fake.events
    assert succeeded["type"] == "payment_intent.succeeded"
    assert succeeded["data"]["object"]["id"] == paid.payment_intent_id
    assert succeeded["data"]["object"]["metadata"]["idempotency_key"] == "charge-1"
    assert (refunded["type"], refunded["data"]["object"]["amount_refunded"]) == ("charge.refunded", 4000)
    assert refunded["data"]["previous_attributes"] == {"amount_refunded": 0}
    assert (created["type"], created["data"]["object"]["status"]) == ("refund.created", "pending")
    assert charge_updated["type"] == "charge.refund.updated"
    assert (updated["type"], updated["data"]["previous_attributes"]) == ("refund.updated", {"status": "pending"})
    assert failed["type"] == "refund.failed"
    assert failed["data"]["object"]["failure_reason"] == "lost_or_stolen_card"
    assert failed["data"]["object"]["payment_intent"] == paid.payment_intent_id
    assert len({event["id"] for event in h.fake.events}) == 6
    assert h.fake.events_of("refund.failed") == [failed]


def test_faults_are_checked_when_queued() -> None:
    fake = FakeGateway()
    with pytest.raises(ValueError):
        fake.queue_fault("charge", "refund_pending")
    with pytest.raises(ValueError):
        fake.queue_fault("teleport", "server_error")
    with pytest.raises(ValueError):
        fake.queue_fault("refund", "refund_fails", failure_reason="because")
    for operation in OPERATIONS:
        fake.queue_fault(operation, "server_error")
    with pytest.raises(ProcessorUnavailable):
        fake.find_charge("k", "cus_1")
    with pytest.raises(ProcessorUnavailable):
        fake.retrieve_refund("re_1")
