"""Exactly-once money against the real table (moto) and a fault-injecting in-memory processor: reserve before
charging, no transaction-size cliff, crashes resumed, refunds recorded once per processor refund, keys bound
to one route and body. Every test runs with the index-lag double armed: nothing reads its own write through
an index."""

import threading
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest

from billing.accounts import billing_overview
from billing.cards import CardRequest, add_card
from billing.errors import Conflict, ProcessorUnavailable
from billing.invoice_service import create_invoice, void_invoice
from billing.invoices import Invoice, InvoiceAllocation, InvoiceLine, InvoiceRequest
from billing.payment_service import LEASE, invoice_and_pay, resolve_payment, take_payment
from billing.payments import (
    AppointmentPaymentRequest,
    Payment,
    PaymentAllocation,
    PaymentMethod,
    PaymentRequest,
    PaymentStatus,
    RefundStatus,
)
from billing.reconciliation import reconcile_charge, reconcile_refunds
from billing.refund_service import refund_payment
from billing.unit_of_work import UnitOfWork
from billing_aws.store import BillingStore
from tests.fakes.gateway import FakeGateway
from tests.integration.conftest import Books
from tests.support.gsi_lag import indexes_caught_up

pytestmark = pytest.mark.gsi_lag()  # every test here runs with index reads trailing their writes, as on AWS


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


def _card_client(books: Books, gateway: FakeGateway, card: str = "pm_card_visa") -> str:
    client_id = books.client()
    add_card(books.store, gateway, books.clock, books.practice_id, client_id, CardRequest(payment_method_id=card))
    return client_id


def _invoices(books: Books, client_id: str, count: int, fee: int = 1000) -> list[str]:
    """``count`` open invoices of ``fee`` each, issued by hand (one appointment each)."""
    ids = []
    for day in range(count):
        appointment = books.appointment(client_id, f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T15:00:00Z", fee)
        request = InvoiceRequest(client_id=client_id, appointment_ids=[appointment])
        ids.append(create_invoice(books.store, books.clock, books.practice_id, request).invoice_id)
    return ids


def _seed(books: Books, objects: list[Any], sequences: tuple[int, int] | None = None) -> None:
    """Write new objects in units of at most 95 (quicker than one use case per object, and just as real)."""
    for start in range(0, len(objects), 95):
        unit = UnitOfWork(books.practice_id, invoice_sequence=sequences if start == 0 else None)
        for obj in objects[start : start + 95]:
            unit.create(obj)
        books.store.commit(unit)


def _seeded_invoices(books: Books, client_id: str, count: int, fee: int, allocations: list[Any] = ()) -> list[Any]:
    invoices = [
        Invoice(
            invoice_id=f"inv_{uuid.uuid4().hex}",
            sequence=n + 1,
            client_id=client_id,
            currency="usd",
            issue_date=date(2026, 1, 1) + timedelta(days=n),
            due_date=date(2026, 1, 1) + timedelta(days=n),
            lines=[
                InvoiceLine(
                    appointment_id=f"apt_{n}",
                    date=date(2026, 1, 1),
                    service_code="90837",
                    description="90837",
                    amount_cents=fee,
                )
            ],
            total_cents=fee,
            allocations=list(allocations),
            created_at=books.clock.now(),
        )
        for n in range(count)
    ]
    _seed(books, invoices, sequences=(0, count))
    return invoices


def _pay(books: Books, gateway: FakeGateway, client_id: str, amount: int, key: str | None = None, **extra: Any):
    request = PaymentRequest(client_id=client_id, amount_cents=amount, method=PaymentMethod.CARD_ON_FILE, **extra)
    return take_payment(books.store, gateway, books.clock, books.practice, request, key or _key())


def _assert_books_balance(books: Books, client_id: str) -> dict[str, int]:
    """DESIGN.md: balance = Σ live invoice totals - Σ succeeded payments + Σ refunds = what invoices owe - credit.

    The check lists the client's objects through the index once it has caught up (the code under test never
    waits for it)."""
    indexes_caught_up()
    overview = billing_overview(books.store, books.clock.now(), books.practice, client_id)
    invoices = books.store.invoices_by_id(
        books.practice_id, [i.invoice_id for i in books.store.invoices_of(books.practice_id, client_id)]
    )
    payments = books.store.payments_by_id(
        books.practice_id, [p.payment_id for p in books.store.payments_of(books.practice_id, client_id)]
    )
    succeeded = [p for p in payments if p.status is PaymentStatus.SUCCEEDED]
    live_total = sum(i.total_cents for i in invoices if not i.voided)
    formula = live_total - sum(p.amount_cents for p in succeeded) + sum(p.refunded_cents for p in payments)
    assert overview.balance_cents == formula
    owed = sum(i.balance_cents for i in invoices)
    credit = sum(p.unallocated_cents for p in succeeded)
    assert (overview.unallocated_credit_cents, formula) == (credit, owed - credit)
    for payment in succeeded:  # every cent of every payment is somewhere
        allocated = sum(a.amount_cents for a in payment.allocations)
        assert payment.amount_cents == allocated + payment.unallocated_cents + payment.refunded_cents
    return {"balance": formula, "credit": credit, "owed": owed}


class Crash(Exception):
    """The Lambda died here."""


class CrashingStore:
    """The store, except that the first commit ``when`` accepts raises, as if the function died right there."""

    def __init__(self, store: BillingStore, when: Callable[[UnitOfWork], bool]) -> None:
        self._store, self._when, self.crashed = store, when, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, unit: UnitOfWork) -> None:
        if not self.crashed and self._when(unit):
            self.crashed = True
            raise Crash
        self._store.commit(unit)


def _settles(unit: UnitOfWork) -> bool:
    return any(getattr(obj, "status", None) is PaymentStatus.SUCCEEDED for obj in unit.changed)


def test_a_card_payment_over_120_open_invoices_and_its_full_refund_have_no_transaction_cliff(
    books: Books, gateway: FakeGateway
) -> None:
    client_id = _card_client(books, gateway)
    _seeded_invoices(books, client_id, 120, fee=1000)
    payment = _pay(books, gateway, client_id, 120_000)
    assert payment.status is PaymentStatus.SUCCEEDED and len(payment.allocations) == 120
    assert _assert_books_balance(books, client_id) == {"balance": 0, "credit": 0, "owed": 0}
    refund = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, None, _key())
    assert refund.status is RefundStatus.SUCCEEDED and refund.amount_cents == 120_000
    assert _assert_books_balance(books, client_id) == {"balance": 120_000, "credit": 0, "owed": 120_000}
    assert gateway.succeeded_charged_cents() == 120_000 and gateway.refunded_cents() == 120_000


@pytest.mark.parametrize("count", [60, 110])  # 110: more than one transaction can hand back
def test_a_void_hands_many_payments_back_as_credit_in_bounded_steps(books: Books, count: int) -> None:
    client_id = books.client()
    payment_ids = [f"pay_{uuid.uuid4().hex}" for _ in range(count)]
    [invoice] = _seeded_invoices(
        books,
        client_id,
        1,
        fee=1000 * count,
        allocations=[InvoiceAllocation(payment_id=p, amount_cents=1000) for p in payment_ids],
    )
    payments = [
        Payment(
            payment_id=payment_id,
            client_id=client_id,
            amount_cents=1000,
            currency="usd",
            method=PaymentMethod.CASH,
            status=PaymentStatus.SUCCEEDED,
            allocations=[PaymentAllocation(invoice_id=invoice.invoice_id, amount_cents=1000)],
            created_at=books.clock.now(),
        )
        for payment_id in payment_ids
    ]
    _seed(books, payments)
    assert _assert_books_balance(books, client_id)["owed"] == 0
    voided = void_invoice(books.store, books.clock, books.practice_id, invoice.invoice_id, lambda _: None)
    assert voided.status.value == "void" and voided.allocations == []
    expected = {"balance": -1000 * count, "credit": 1000 * count, "owed": 0}
    assert _assert_books_balance(books, client_id) == expected


def test_the_store_refuses_a_transaction_over_dynamodbs_100_items(books: Books) -> None:
    client_id = books.client()
    invoices = books.store.invoices_by_id(books.practice_id, _invoices(books, client_id, 2))
    unit = UnitOfWork(books.practice_id)
    for _ in range(51):
        for invoice in invoices:
            unit.changed.append(invoice.next())
    with pytest.raises(ValueError, match="100-item"):
        books.store.commit(unit)


def test_an_idempotency_key_is_bound_to_one_route_and_one_body(books: Books, gateway: FakeGateway) -> None:
    client_id = _card_client(books, gateway)
    appointment = books.appointment(client_id, "2026-11-20T15:00:00Z")
    key = _key()
    _pay(books, gateway, client_id, 5000, key)
    assert _pay(books, gateway, client_id, 5000, key).amount_cents == 5000  # a replay
    with pytest.raises(Conflict) as other_body:
        _pay(books, gateway, client_id, 6000, key)
    assert other_body.value.code == "idempotency_key_reused"
    request = AppointmentPaymentRequest(method=PaymentMethod.CARD_ON_FILE)
    with pytest.raises(Conflict) as other_route:
        invoice_and_pay(books.store, gateway, books.clock, books.practice, appointment, request, key)
    assert other_route.value.code == "idempotency_key_reused"
    refund_key = _key()
    payment_id = _pay(books, gateway, client_id, 1000).payment_id
    refund_payment(books.store, gateway, books.clock, books.practice_id, payment_id, 100, refund_key)
    with pytest.raises(Conflict):
        refund_payment(books.store, gateway, books.clock, books.practice_id, payment_id, 200, refund_key)
    with pytest.raises(Conflict):
        _pay(books, gateway, client_id, 100, refund_key)
    assert len(gateway.charges) == 2


def test_a_crash_after_the_charge_is_resumed_by_the_retry_without_a_second_charge_even_after_24_hours(
    books: Books, gateway: FakeGateway
) -> None:
    client_id = _card_client(books, gateway)
    [invoice_id] = _invoices(books, client_id, 1, fee=12_000)
    crashing = CrashingStore(books.store, _settles)
    key = _key()
    request = PaymentRequest(client_id=client_id, amount_cents=12_000, method=PaymentMethod.CARD_ON_FILE)
    with pytest.raises(Crash):
        take_payment(crashing, gateway, books.clock, books.practice, request, key)  # type: ignore[arg-type]
    gateway.forget_idempotency_keys()  # the retry comes a day later: Stripe no longer knows the key
    books.clock.advance(hours=25)
    payment = take_payment(books.store, gateway, books.clock, books.practice, request, key)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert len(gateway.charges) == 1
    assert books.store.get_invoice(books.practice_id, invoice_id).balance_cents == 0  # type: ignore[union-attr]
    _assert_books_balance(books, client_id)


def test_a_reservation_whose_request_died_before_charging_is_swept_by_the_next_payment(
    books: Books, gateway: FakeGateway
) -> None:
    client_id = _card_client(books, gateway)
    [invoice_id] = _invoices(books, client_id, 1, fee=8000)

    def dies_at_charge(**_: Any) -> Any:
        raise Crash

    real_charge = gateway.charge
    gateway.charge = dies_at_charge  # type: ignore[method-assign]
    with pytest.raises(Crash):
        _pay(books, gateway, client_id, 8000, invoice_ids=[invoice_id])
    gateway.charge = real_charge  # type: ignore[method-assign]
    with pytest.raises(Conflict) as blocked:  # while the dead request's lease runs, its hold stands
        _pay(books, gateway, client_id, 8000, invoice_ids=[invoice_id])
    assert blocked.value.code == "payment_in_progress"
    books.clock.advance(seconds=LEASE.total_seconds() + 1)
    payment = _pay(books, gateway, client_id, 8000, invoice_ids=[invoice_id])
    assert payment.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    indexes_caught_up()
    statuses = sorted(p.status.value for p in books.store.payments_of(books.practice_id, client_id))
    assert statuses == ["canceled", "succeeded"]
    _assert_books_balance(books, client_id)


@pytest.mark.parametrize("fault", ["timeout_after_success", "server_error", "rate_limited", "key_in_use"])
def test_processor_faults_never_charge_twice_and_never_lose_a_charge(
    books: Books, gateway: FakeGateway, fault: str
) -> None:
    client_id = _card_client(books, gateway)
    _invoices(books, client_id, 1, fee=5000)
    key = _key()
    gateway.queue_fault("charge", fault, times=3)
    answers: list[Any] = []
    for _ in range(6):  # the client retries with the same key until it has an answer
        try:
            answers.append(_pay(books, gateway, client_id, 5000, key))
            break
        except ProcessorUnavailable:
            answers.append(None)
    first, retried = answers[0], answers[-1]
    assert retried is not None and retried.status is PaymentStatus.SUCCEEDED
    assert first is None or first.payment_id == retried.payment_id
    assert len([c for c in gateway.charges if c.status == "succeeded"]) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


def test_a_processing_charge_holds_the_invoice_until_the_webhook_settles_it(books: Books, gateway: FakeGateway) -> None:
    client_id = _card_client(books, gateway)
    [invoice_id] = _invoices(books, client_id, 1, fee=7000)
    gateway.queue_fault("charge", "processing")
    payment = _pay(books, gateway, client_id, 7000, invoice_ids=[invoice_id])
    assert payment.status is PaymentStatus.PROCESSING and payment.decline_code is None
    with pytest.raises(Conflict):
        _pay(books, gateway, client_id, 7000, invoice_ids=[invoice_id])
    assert payment.processor_payment_id is not None
    gateway.settle_processing(payment.processor_payment_id, succeeded=True)
    current = gateway.retrieve_payment_intent(payment.processor_payment_id)
    reconcile_charge(books.store, books.practice_id, payment.payment_id, current)
    reconcile_charge(books.store, books.practice_id, payment.payment_id, current)  # duplicated: no change
    assert books.store.get_invoice(books.practice_id, invoice_id).status.value == "paid"  # type: ignore[union-attr]
    assert _assert_books_balance(books, client_id)["balance"] == 0


def _paid_by_card(books: Books, gateway: FakeGateway, amount: int = 10_000) -> tuple[str, Any]:
    client_id = _card_client(books, gateway)
    _invoices(books, client_id, 1, fee=amount)
    return client_id, _pay(books, gateway, client_id, amount)


def _refund_webhooks(books: Books, gateway: FakeGateway, payment: Any) -> None:
    reconcile_refunds(
        books.store, gateway, books.clock, books.practice_id, payment.payment_id, payment.processor_payment_id
    )


def _recorded_refunds(books: Books, client_id: str) -> list[tuple[int, str]]:
    indexes_caught_up()
    return sorted((r.amount_cents, r.status.value) for r in books.store.refunds_of(books.practice_id, client_id))


def test_a_refund_webhook_before_the_api_records_the_refund_once(books: Books, gateway: FakeGateway) -> None:
    client_id, payment = _paid_by_card(books, gateway)
    key = _key()
    original_refund = gateway.refund

    def refund_then_webhook(**kwargs: Any) -> Any:
        made = original_refund(**kwargs)
        _refund_webhooks(books, gateway, payment)  # the webhook lands before the API has recorded its answer
        return made

    gateway.refund = refund_then_webhook  # type: ignore[method-assign]
    refund = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 4000, key)
    gateway.refund = original_refund  # type: ignore[method-assign]
    assert refund.status is RefundStatus.SUCCEEDED
    assert _recorded_refunds(books, client_id) == [(4000, "succeeded")]
    assert _assert_books_balance(books, client_id)["balance"] == 4000


def test_a_crash_then_the_webhook_then_the_retry_record_the_refund_once(books: Books, gateway: FakeGateway) -> None:
    client_id, payment = _paid_by_card(books, gateway)
    key = _key()
    crashing = CrashingStore(
        books.store, lambda unit: any(type(o).__name__ == "ProcessorRefundLink" for o in unit.created)
    )
    with pytest.raises(Crash):
        refund_payment(crashing, gateway, books.clock, books.practice_id, payment.payment_id, 3000, key)  # type: ignore[arg-type]
    _refund_webhooks(books, gateway, payment)
    gateway.forget_idempotency_keys()
    retried = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 3000, key)
    assert retried.status is RefundStatus.SUCCEEDED
    assert _recorded_refunds(books, client_id) == [(3000, "succeeded")]
    assert gateway.refunded_cents() == 3000
    assert _assert_books_balance(books, client_id)["balance"] == 3000


def test_two_refund_webhooks_at_once_and_a_retried_refund_count_each_processor_refund_once(
    books: Books, gateway: FakeGateway
) -> None:
    client_id, payment = _paid_by_card(books, gateway)
    key = _key()
    first = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 2500, key)
    again = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 2500, key)
    assert first.refund_id == again.refund_id
    gateway.refund(  # a refund made in Stripe's dashboard, outside this API
        payment_intent_id=payment.processor_payment_id, amount_cents=1500, idempotency_key="dash-1", metadata={}
    )
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def webhook() -> None:
        barrier.wait()
        try:
            _refund_webhooks(books, gateway, payment)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=webhook) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _recorded_refunds(books, client_id) == [(1500, "succeeded"), (2500, "succeeded")]
    assert gateway.refunded_cents() == 4000
    assert _assert_books_balance(books, client_id)["balance"] == 4000


def test_a_refund_that_fails_at_the_processor_is_not_counted(books: Books, gateway: FakeGateway) -> None:
    client_id, payment = _paid_by_card(books, gateway)
    gateway.queue_fault("refund", "refund_fails")
    pending = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 6000, _key())
    assert pending.status is RefundStatus.PENDING
    assert _assert_books_balance(books, client_id)["balance"] == 0  # nothing has gone back to the client yet
    gateway.settle_refunds()
    _refund_webhooks(books, gateway, payment)
    assert _recorded_refunds(books, client_id) == [(6000, "failed")]
    assert _assert_books_balance(books, client_id)["balance"] == 0
    refund = refund_payment(books.store, gateway, books.clock, books.practice_id, payment.payment_id, 6000, _key())
    assert refund.status is RefundStatus.SUCCEEDED  # what failed can be refunded again


def test_resolving_a_payment_whose_charge_may_still_be_sent_is_refused(books: Books, gateway: FakeGateway) -> None:
    client_id = _card_client(books, gateway)
    _invoices(books, client_id, 1, fee=3000)

    def dies_at_charge(**_: Any) -> Any:
        raise Crash

    real_charge = gateway.charge
    gateway.charge = dies_at_charge  # type: ignore[method-assign]
    with pytest.raises(Crash):
        _pay(books, gateway, client_id, 3000)
    gateway.charge = real_charge  # type: ignore[method-assign]
    indexes_caught_up()
    [pending] = books.store.payments_of(books.practice_id, client_id)
    with pytest.raises(Conflict):
        resolve_payment(books.store, gateway, books.clock, books.practice_id, pending.payment_id)
    books.clock.advance(seconds=LEASE.total_seconds() + 1)
    resolved = resolve_payment(books.store, gateway, books.clock, books.practice_id, pending.payment_id)
    assert resolved.status is PaymentStatus.CANCELED and gateway.charges == []
    _assert_books_balance(books, client_id)
