"""Invoicing against the real table in moto: numbering, conflicts, voids, races, DST nights, call counts."""

import threading
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from billing.errors import Conflict
from billing.invoice_service import create_invoice, invoice_night, void_invoice
from billing.invoices import InvoiceRequest, InvoiceStatus
from billing_aws.store import BillingStore
from tests.integration.conftest import Books, open_books
from tests.support.gsi_lag import indexes_caught_up

# Index reads trail their writes here as on AWS. The code under test reads what it decides on by key; the
# tests let the indexes catch up where time would pass in real life (the night comes hours after the day's
# appointments) and before they look at the outcome, as a person would.
pytestmark = pytest.mark.gsi_lag()


def _night(*args: Any, **kwargs: Any) -> Any:
    """The nightly run, which comes long after the day's appointments were booked."""
    indexes_caught_up()
    return invoice_night(*args, **kwargs)


def _nothing_in_flight(payment_id: str) -> object:
    raise AssertionError(f"no payment should be in flight here ({payment_id})")


def _invoice(books: Books, client_id: str, *appointment_ids: str):
    return create_invoice(
        books.store,
        books.clock,
        books.practice_id,
        InvoiceRequest(client_id=client_id, appointment_ids=list(appointment_ids)),
    )


def _live_invoices(books: Books, client_ids: list[str]):
    indexes_caught_up()
    return [i for c in client_ids for i in books.store.invoices_of(books.practice_id, c) if not i.voided]


def test_manual_invoices_are_numbered_without_gaps_and_take_their_appointments(books: Books) -> None:
    ann, bob = books.client(), books.client()
    a1 = books.appointment(ann, "2026-11-26T15:00:00Z")
    a2 = books.appointment(ann, "2026-11-27T15:00:00Z", fee_cents=12000)
    b1 = books.appointment(bob, "2026-11-26T16:00:00Z")
    first = _invoice(books, ann, a1, a2)
    second = _invoice(books, bob, b1)
    assert (first.number, second.number) == ("INV-000001", "INV-000002")
    assert first.total_cents == 27000 and first.balance_cents == 27000 and first.status is InvoiceStatus.UNPAID
    assert [line.appointment_id for line in first.lines] == [a1, a2]
    assert books.store.get_appointment(books.practice_id, a1).invoice_id == first.invoice_id  # type: ignore[union-attr]
    assert books.store.get_account(books.practice_id, ann).balance_cents == 27000


def test_an_invoiced_appointment_cannot_be_invoiced_again_and_no_number_is_used(books: Books) -> None:
    ann = books.client()
    a1 = books.appointment(ann, "2026-11-26T15:00:00Z")
    a2 = books.appointment(ann, "2026-11-26T17:00:00Z")
    _invoice(books, ann, a1)
    with pytest.raises(Conflict) as refused:
        _invoice(books, ann, a2, a1)
    assert a1 in refused.value.message and refused.value.code == "appointment_already_invoiced"
    assert books.store.get_appointment(books.practice_id, a2).invoice_id is None  # type: ignore[union-attr]
    assert _invoice(books, ann, a2).number == "INV-000002"


@pytest.mark.parametrize(("status", "fee"), [("cancelled", 15000), ("no_show", 0), ("scheduled", 15000)])
def test_non_billable_appointments_are_refused_by_name(books: Books, status: str, fee: int) -> None:
    ann = books.client()
    appointment = books.appointment(ann, "2026-11-26T15:00:00Z", fee_cents=fee, status=status)
    with pytest.raises(Conflict, match=appointment):
        _invoice(books, ann, appointment)


def test_void_keeps_the_number_and_frees_the_appointments_for_reinvoicing(books: Books) -> None:
    ann = books.client()
    a1 = books.appointment(ann, "2026-11-26T15:00:00Z")
    first = _invoice(books, ann, a1)
    voided = void_invoice(books.store, books.clock, books.practice_id, first.invoice_id, _nothing_in_flight)
    assert voided.status is InvoiceStatus.VOID and voided.number == "INV-000001" and voided.version > first.version
    assert books.store.get_account(books.practice_id, ann).balance_cents == 0
    again = _invoice(books, ann, a1)
    assert again.number == "INV-000002"
    with pytest.raises(Conflict):
        void_invoice(books.store, books.clock, books.practice_id, first.invoice_id, _nothing_in_flight)


def test_the_nightly_run_invoices_each_client_once_and_heals_skipped_nights(books: Books) -> None:
    ann, bob, cy = books.client(), books.client(), books.client()
    # Chicago is UTC-6 in November: these are the 24th, 25th and 26th locally.
    old = books.appointment(ann, "2026-11-24T20:00:00Z")
    ann_26 = books.appointment(ann, "2026-11-26T20:00:00Z")
    bob_26 = books.appointment(bob, "2026-11-26T21:00:00Z", fee_cents=5000, status="late_cancel")
    books.appointment(bob, "2026-11-26T22:00:00Z", fee_cents=0, status="no_show")
    books.appointment(cy, "2026-11-26T23:00:00Z", status="cancelled")
    tonight = books.appointment(ann, "2026-11-27T20:00:00Z")  # the 27th: not yet over on the night of the 27th
    summary = _night(books.store, books.clock, books.practice_id, date(2026, 11, 27))
    assert summary.invoices_created == 2
    invoices = _live_invoices(books, [ann, bob, cy])
    assert sorted(tuple(sorted(line.appointment_id for line in i.lines)) for i in invoices) == sorted(
        [tuple(sorted([old, ann_26])), (bob_26,)]
    )
    assert {i.issue_date for i in invoices} == {date(2026, 11, 26)}
    # Run again at once: the index still lists the appointments just invoiced; each is re-read by key and left.
    assert invoice_night(books.store, books.clock, books.practice_id, date(2026, 11, 27)).invoices_created == 0
    assert books.store.get_appointment(books.practice_id, tonight).invoice_id is None  # type: ignore[union-attr]
    assert sorted(i.sequence for i in _live_invoices(books, [ann, bob, cy])) == [1, 2]


def test_monthly_practices_invoice_on_the_first_and_manual_ones_never(store: BillingStore) -> None:
    monthly = open_books(store, creation="monthly")
    manual = open_books(store, creation="manual")
    for books in (monthly, manual):
        client = books.client()
        books.appointment(client, "2026-10-05T15:00:00Z")
        books.appointment(client, "2026-10-20T15:00:00Z")
    assert _night(store, monthly.clock, monthly.practice_id, date(2026, 10, 31)).invoices_created == 0
    assert _night(store, monthly.clock, monthly.practice_id, date(2026, 11, 1)).invoices_created == 1
    assert _night(store, manual.clock, manual.practice_id, date(2026, 11, 1)).invoices_created == 0


def test_nightly_run_and_staff_racing_for_the_same_appointment_never_double_invoice(store: BillingStore) -> None:
    books = open_books(store)
    client = books.client()
    appointments: list[str] = []
    errors: list[BaseException] = []

    def by_hand(appointment_id: str) -> None:
        try:
            _invoice(books, client, appointment_id)
        except Conflict:
            pass  # lost to the nightly run: the right answer for staff
        except BaseException as error:
            errors.append(error)

    def nightly() -> None:
        try:
            _night(store, books.clock, books.practice_id, date(2026, 11, 27))
        except BaseException as error:
            errors.append(error)

    for i in range(25):
        appointment_id = books.appointment(client, f"2026-11-{1 + i % 20:02d}T15:{i:02d}:00Z")
        appointments.append(appointment_id)
        threads = [threading.Thread(target=by_hand, args=(appointment_id,)), threading.Thread(target=nightly)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    live = _live_invoices(books, [client])
    on_invoices = [line.appointment_id for invoice in live for line in invoice.lines]
    assert sorted(on_invoices) == sorted(appointments)  # each exactly once
    assert sorted(i.sequence for i in live) == list(range(1, len(live) + 1))  # gapless, no number skipped
    assert books.refresh().last_invoice_sequence == len(live)


DST_CASES = [
    ("America/New_York", [date(2026, 3, 8), date(2026, 11, 1)]),
    ("Europe/London", [date(2026, 3, 29), date(2026, 10, 25)]),
    ("Australia/Lord_Howe", [date(2026, 4, 5), date(2026, 10, 4)]),
    ("America/Santiago", [date(2026, 4, 5), date(2026, 9, 6)]),
]


@pytest.mark.parametrize(("timezone", "change_days"), DST_CASES)
def test_appointments_around_dst_changes_are_invoiced_once_on_their_local_date(
    store: BillingStore, timezone: str, change_days: list[date]
) -> None:
    books = open_books(store, timezone=timezone)
    zone = ZoneInfo(timezone)
    client = books.client()
    expected: dict[str, date] = {}
    for change in change_days:
        for day in (change - timedelta(days=1), change, change + timedelta(days=1)):
            for at in (time(23, 30), time(0, 30)):
                local = datetime.combine(day, at, tzinfo=zone)
                instant = local.astimezone(UTC)
                appointment_id = books.appointment(client, instant.isoformat())
                # A wall time that does not exist (Santiago's skipped 00:30) lands on the next real instant.
                expected[appointment_id] = instant.astimezone(zone).date()
    first = min(change_days) - timedelta(days=1)
    night = first
    while night <= max(change_days) + timedelta(days=3):
        _night(store, books.clock, books.practice_id, night)
        night += timedelta(days=1)
    live = _live_invoices(books, [client])
    lines = [(line.appointment_id, line.date, invoice.issue_date) for invoice in live for line in invoice.lines]
    assert sorted(a for a, _, _ in lines) == sorted(expected)  # every appointment exactly once
    for appointment_id, line_date, issue_date in lines:
        assert line_date == expected[appointment_id]
        assert issue_date == line_date  # invoiced on the night right after its local day


def test_the_nightly_worker_makes_one_call_per_access_pattern_and_one_transaction_per_invoice(
    store: BillingStore,
) -> None:
    books = open_books(store)
    clients = [books.client() for _ in range(3)]
    for client in clients:
        books.appointment(client, "2026-11-25T15:00:00Z")
        books.appointment(client, "2026-11-26T15:00:00Z")
    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    events = store._db.meta.events
    events.register("before-call.dynamodb", count)
    try:
        _night(store, books.clock, books.practice_id, date(2026, 11, 27))
    finally:
        events.unregister("before-call.dynamodb", count)
    # The practice and the uninvoiced list once; per client one consistent read of its appointments and of its
    # credit (on the client item: no index, so nothing written a moment ago is missed), and one transaction.
    per_client = ["BatchGetItem", "GetItem", "TransactWriteItems"]
    assert sorted(calls) == sorted(["GetItem", "Query"] + per_client * 3)


def test_voiding_a_paid_invoice_turns_its_payment_into_credit_for_the_next_invoice(books: Books) -> None:
    from billing.payment_service import take_payment
    from billing.payments import PaymentMethod, PaymentRequest

    ann = books.client()
    first_visit = books.appointment(ann, "2026-11-20T15:00:00Z", fee_cents=12000)
    paid = _invoice(books, ann, first_visit)
    request = PaymentRequest(client_id=ann, amount_cents=12000, method=PaymentMethod.CASH)
    take_payment(books.store, None, books.clock, books.practice, request, "key-void-credit")  # type: ignore[arg-type]
    assert books.store.get_invoice(books.practice_id, paid.invoice_id).status is InvoiceStatus.PAID  # type: ignore[union-attr]
    void_invoice(books.store, books.clock, books.practice_id, paid.invoice_id, _nothing_in_flight)
    account = books.store.get_account(books.practice_id, ann)
    assert (account.balance_cents, account.unallocated_credit_cents) == (-12000, 12000)
    corrected = _invoice(books, ann, first_visit)  # re-invoiced (e.g. with the right code): credit pays it
    assert corrected.paid_cents == 12000 and corrected.status is InvoiceStatus.PAID
    account = books.store.get_account(books.practice_id, ann)
    assert (account.balance_cents, account.unallocated_credit_cents) == (0, 0)
