"""AutoPay against the real table (moto, with index reads lagging as on AWS) and the in-memory processor:
consent, one charge per client and night whatever repeats, the decline rules, the window, the preview."""

import threading
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest

from billing import autopay
from billing.autopay import AutoPayRequest, Outcome
from billing.cards import CardRequest, add_card, remove_card
from billing.errors import Conflict
from billing.invoice_service import invoice_night
from billing.practices import InvoiceCreation, PracticeSettings, save_practice
from billing.reconciliation import record_dispute
from billing_aws.store import BillingStore
from tests.fakes.gateway import FakeGateway
from tests.integration.conftest import Books, NoSchedules, open_books
from tests.support.gsi_lag import indexes_caught_up

pytestmark = pytest.mark.gsi_lag()

NIGHT = date(2026, 11, 28)
AT_0330 = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)  # 03:30 in Chicago (UTC-6)
STAFF = "user-staff-1"


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def books(store: BillingStore) -> Books:
    opened = open_books(store, creation="daily")
    settings = PracticeSettings(
        name="Test", timezone="America/Chicago", invoice_creation=InvoiceCreation.DAILY, autopay_enabled=True
    )
    save_practice(store, NoSchedules(), opened.clock, opened.practice_id, settings)
    opened.refresh()
    return opened


def _client(books: Books, gateway: FakeGateway, card: str = "pm_card_visa", owes: int = 15000) -> str:
    client_id = books.client()
    request = CardRequest(payment_method_id=card)
    add_card(books.store, gateway, books.clock, books.practice_id, client_id, request)
    if owes:
        books.appointment(client_id, "2026-11-27T16:00:00Z", fee_cents=owes)  # the 27th in Chicago
    return client_id


def _enrol(books: Books, client_id: str) -> None:
    autopay.set_autopay(books.store, books.clock, books.practice, client_id, AutoPayRequest(enabled=True), STAFF)


def _invoice_the_day(books: Books, night: date = NIGHT) -> None:
    indexes_caught_up()  # the night's invoicing runs hours after the day's appointments were booked
    invoice_night(books.store, books.clock, books.practice_id, night)


def _night(books: Books, gateway: FakeGateway, client_id: str, night: date = NIGHT, at: datetime = AT_0330) -> Any:
    return autopay.charge_night(books.store, gateway, books.clock, books.practice_id, client_id, night, at)


def _balance(books: Books, client_id: str) -> int:
    return books.store.get_account(books.practice_id, client_id).balance_cents


def test_enrolment_needs_autopay_for_the_practice_and_a_card_and_records_consent(
    store: BillingStore, gateway: FakeGateway
) -> None:
    off = open_books(store, creation="daily")
    client_id = _client(off, gateway)
    with pytest.raises(Conflict) as practice_off:
        autopay.set_autopay(store, off.clock, off.practice, client_id, AutoPayRequest(enabled=True), STAFF)
    assert practice_off.value.code == "autopay_off_for_practice"
    settings = PracticeSettings(
        name="Test", timezone="America/Chicago", invoice_creation=InvoiceCreation.DAILY, autopay_enabled=True
    )
    practice = save_practice(store, NoSchedules(), off.clock, off.practice_id, settings)
    cardless = off.client()
    with pytest.raises(Conflict) as no_card:
        autopay.set_autopay(store, off.clock, practice, cardless, AutoPayRequest(enabled=True), STAFF)
    assert no_card.value.code == "no_card_on_file"
    state = autopay.set_autopay(store, off.clock, practice, client_id, AutoPayRequest(enabled=True), STAFF)
    assert state.enabled and state.card is not None and state.card.last4 == "4242"
    assert state.consent is not None
    assert (state.consent.enrolled_by, state.consent.card_id) == (STAFF, state.card_id)
    assert state.consent.authorization_version == autopay.AUTHORIZATION_VERSION
    indexes_caught_up()
    assert store.enrolled_clients(practice.practice_id) == [client_id]


def test_a_night_charges_each_enrolled_balance_once_and_records_every_outcome(
    books: Books, gateway: FakeGateway
) -> None:
    paying = _client(books, gateway)
    short = _client(books, gateway, "pm_card_chargeDeclinedInsufficientFunds")
    needs_client = _client(books, gateway, "pm_card_authenticationRequired")
    not_enrolled = _client(books, gateway)
    for client_id in (paying, short, needs_client):
        _enrol(books, client_id)
    _invoice_the_day(books)
    outcomes = {c: _night(books, gateway, c) for c in (paying, short, needs_client)}
    assert outcomes[paying].outcome is Outcome.CHARGED and outcomes[paying].amount_cents == 15000
    assert (outcomes[short].outcome, outcomes[short].decline_code) == (Outcome.DECLINED, "insufficient_funds")
    assert outcomes[needs_client].decline_code == "authentication_required"
    assert (_balance(books, paying), _balance(books, short), _balance(books, not_enrolled)) == (0, 15000, 15000)
    charges = len(gateway.charges)
    for client_id in (paying, short, needs_client):  # the same night again: nothing new is charged
        _night(books, gateway, client_id)
    assert len(gateway.charges) == charges
    report = autopay.night_report(books.store, books.practice_id, NIGHT)
    assert {(a.client_id, a.outcome) for a in report} == {
        (paying, Outcome.CHARGED),
        (short, Outcome.DECLINED),
        (needs_client, Outcome.DECLINED),
    }
    assert books.store.get_autopay(books.practice_id, short).consecutive_failures == 1  # counted once
    flagged = books.store.get_autopay(books.practice_id, needs_client)
    assert flagged.requires_client_action and flagged.enabled
    for night in (date(2026, 11, 29), date(2026, 11, 30)):
        at = datetime(night.year, night.month, night.day, 9, 30, tzinfo=UTC)
        _night(books, gateway, short, night, at)
        assert _night(books, gateway, needs_client, night, at).reason == "requires_client_action"
    ended = books.store.get_autopay(books.practice_id, short)
    assert (ended.enabled, ended.consecutive_failures) == (False, 3)
    assert len([c for c in gateway.charges if c.customer_id == _customer(books, needs_client)]) == 1


def _customer(books: Books, client_id: str) -> str | None:
    found = books.store.get_client(books.practice_id, client_id)
    return found.processor_customer_id if found else None


def test_five_runs_of_the_same_night_at_once_make_one_charge(books: Books, gateway: FakeGateway) -> None:
    client_id = _client(books, gateway)
    _enrol(books, client_id)
    _invoice_the_day(books)
    barrier = threading.Barrier(5)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(_night(books, gateway, client_id))
        except Exception as error:  # counted below
            results.append(error)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(gateway.charges) == 1 and _balance(books, client_id) == 0
    assert any(getattr(r, "outcome", None) is Outcome.CHARGED for r in results)


def test_outside_the_window_credit_and_tiny_balances_are_not_charged(books: Books, gateway: FakeGateway) -> None:
    late = _client(books, gateway)
    in_credit = _client(books, gateway, owes=0)
    tiny = _client(books, gateway, owes=30)
    for client_id in (late, in_credit, tiny):
        _enrol(books, client_id)
    _invoice_the_day(books)
    at_7 = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)  # 07:00 in Chicago: a retry after the window
    assert _night(books, gateway, late, at=at_7).reason == "outside_window"
    assert _night(books, gateway, in_credit).reason == "no_balance"
    assert _night(books, gateway, tiny).reason == "below_minimum"
    assert gateway.charges == []
    assert _night(books, gateway, late).outcome is Outcome.CHARGED  # the night itself still charges


def test_the_preview_is_what_the_night_then_charges(books: Books, gateway: FakeGateway) -> None:
    owes_more = _client(books, gateway)
    books.appointment(owes_more, "2026-11-20T16:00:00Z", fee_cents=5000)
    indexes_caught_up()
    invoice_night(books.store, books.clock, books.practice_id, date(2026, 11, 21))  # an older open invoice
    fresh = _client(books, gateway, owes=9000)
    for client_id in (owes_more, fresh):
        _enrol(books, client_id)
    indexes_caught_up()
    preview = {c.client_id: c.amount_cents for c in autopay.preview(books.store, books.practice, NIGHT)}
    assert preview == {owes_more: 20000, fresh: 9000}
    _invoice_the_day(books)
    charged = {c: _night(books, gateway, c).amount_cents for c in (owes_more, fresh)}
    assert charged == preview


@pytest.mark.parametrize("code", ["lost_card", "stolen_card", "pickup_card", "expired_card"])
def test_a_lost_stolen_picked_up_or_expired_card_ends_autopay_at_once(
    books: Books, gateway: FakeGateway, code: str
) -> None:
    client_id = _client(books, gateway)
    _enrol(books, client_id)
    _invoice_the_day(books)
    gateway.decline_next_charge(code)
    assert _night(books, gateway, client_id).decline_code == code
    state = books.store.get_autopay(books.practice_id, client_id)
    assert not state.enabled and state.ended_reason == f"card declined: {code}"


def test_removing_the_card_a_dispute_or_the_practice_turning_autopay_off_end_enrolment(
    books: Books, gateway: FakeGateway
) -> None:
    by_card, by_dispute, by_practice = (_client(books, gateway) for _ in range(3))
    for client_id in (by_card, by_dispute, by_practice):
        _enrol(books, client_id)
    card = books.store.get_autopay(books.practice_id, by_card).card_id
    assert card is not None
    remove_card(books.store, gateway, books.practice_id, by_card, card)
    autopay.card_removed(books.store, books.practice_id, by_card, card)
    _invoice_the_day(books)
    paid = _night(books, gateway, by_dispute)
    assert paid.payment_id is not None
    record_dispute(books.store, books.practice_id, paid.payment_id, 15000)
    before = books.refresh()
    settings = PracticeSettings(name="Test", timezone="America/Chicago", invoice_creation=InvoiceCreation.DAILY)
    after = save_practice(books.store, NoSchedules(), books.clock, books.practice_id, settings)
    indexes_caught_up()
    autopay.practice_saved(books.store, before, after)
    assert [books.store.get_autopay(books.practice_id, c).enabled for c in (by_card, by_dispute, by_practice)] == [
        False,
        False,
        False,
    ]
    assert books.store.get_autopay(books.practice_id, by_dispute).ended_reason == "a payment was disputed"


def test_the_night_makes_a_constant_number_of_dynamodb_calls_per_client(books: Books, gateway: FakeGateway) -> None:
    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    counts = []
    for invoices in (1, 6):
        client_id = _client(books, gateway, owes=0)
        for day in range(invoices):
            books.appointment(client_id, f"2026-11-{10 + day:02d}T16:00:00Z", fee_cents=1000)
        _enrol(books, client_id)
        _invoice_the_day(books)
        events = books.store._db.meta.events
        calls.clear()
        events.register("before-call.dynamodb", count)
        try:
            assert _night(books, gateway, client_id).outcome is Outcome.CHARGED
        finally:
            events.unregister("before-call.dynamodb", count)
        counts.append(sorted(calls))
    assert counts[0] == counts[1], counts  # one invoice or six: the same reads and the same transactions
    assert counts[0].count("TransactWriteItems") <= 3


def test_night_keys_carry_ids_and_a_date_only() -> None:
    client_id = f"cli_{uuid.uuid4().hex}"
    assert autopay.night_key(client_id, NIGHT) == f"autopay.{client_id}.2026-11-28"


def test_paying_in_the_portal_clears_the_flag_an_authentication_decline_set(books: Books, gateway: FakeGateway) -> None:
    from billing import portal

    client_id = _client(books, gateway, "pm_card_authenticationRequired")
    _enrol(books, client_id)
    _invoice_the_day(books)
    assert _night(books, gateway, client_id).decline_code == "authentication_required"
    assert books.store.get_autopay(books.practice_id, client_id).requires_client_action
    request = portal.PortalPaymentRequest(payment_method_id="pm_card_visa")
    paid = portal.pay(books.store, gateway, books.clock, books.practice, client_id, request, "portal-key-1")
    assert paid.amount_cents == 15000 and _balance(books, client_id) == 0
    assert not books.store.get_autopay(books.practice_id, client_id).requires_client_action
