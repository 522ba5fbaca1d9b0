"""Property tests over random sequences of invoicing, payments, refunds and voids against the real table.

Whatever happens, in whatever order: invoice numbers are gapless and unique, an appointment is on at most
one live invoice, every cent of every payment is allocated, credit or refunded, and the client's balance is
Σ live invoice totals - Σ succeeded payments + Σ refunds, which equals what invoices owe minus credit.
"""

import contextlib
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from billing.errors import Conflict
from billing.invoices import InvoiceRequest
from billing.invoicing import create_invoice, void_invoice
from billing.paying import refund_payment, take_payment
from billing.payments import PaymentMethod, PaymentRequest, PaymentStatus
from billing_aws.store import BillingStore
from tests.integration.conftest import Books, open_books


class NoGateway:
    """Recorded payments (cash, check) never reach a card processor."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"recorded payments must not call the gateway ({name})")


class Ledger(RuleBasedStateMachine):
    store: BillingStore

    @initialize()
    def open(self) -> None:
        self.books: Books = open_books(self.store, creation="manual")
        self.client_id = self.books.client()
        self.appointments: list[str] = []
        self.payments: list[str] = []
        self.day = 0

    @rule(fee=st.integers(min_value=0, max_value=50_000), status=st.sampled_from(["show", "no_show", "late_cancel"]))
    def book_appointment(self, fee: int, status: str) -> None:
        self.day += 1
        starts_at = f"2026-0{1 + self.day // 28 % 9}-{1 + self.day % 28:02d}T15:00:00Z"
        self.appointments.append(self.books.appointment(self.client_id, starts_at, fee_cents=fee, status=status))

    @precondition(lambda self: self.appointments)
    @rule(data=st.data())
    def invoice_some(self, data: st.DataObject) -> None:
        chosen = data.draw(st.lists(st.sampled_from(self.appointments), min_size=1, max_size=3, unique=True))
        request = InvoiceRequest(client_id=self.client_id, appointment_ids=chosen)
        # Already invoiced or not billable: refused as a whole, nothing written.
        with contextlib.suppress(Conflict):
            create_invoice(self.store, self.books.clock, self.books.practice_id, request)

    @precondition(lambda self: self._live_invoices())
    @rule(data=st.data())
    def void_one(self, data: st.DataObject) -> None:
        invoice = data.draw(st.sampled_from(self._live_invoices()))
        void_invoice(self.store, self.books.clock, self.books.practice_id, invoice.invoice_id)

    @rule(amount=st.integers(min_value=1, max_value=60_000), name_one=st.booleans(), data=st.data())
    def pay(self, amount: int, name_one: bool, data: st.DataObject) -> None:
        unpaid = [i.invoice_id for i in self._live_invoices() if i.balance_cents > 0]
        named = [data.draw(st.sampled_from(unpaid))] if name_one and unpaid else None
        request = PaymentRequest(
            client_id=self.client_id, amount_cents=amount, method=PaymentMethod.CASH, invoice_ids=named
        )
        payment = take_payment(
            self.store,
            NoGateway(),
            self.books.clock,
            self.books.practice,
            request,
            f"key-{uuid.uuid4().hex}",  # type: ignore[arg-type]
        )
        self.payments.append(payment.payment_id)

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), everything=st.booleans())
    def refund(self, data: st.DataObject, everything: bool) -> None:
        payment_id = data.draw(st.sampled_from(self.payments))
        payment = self.store.get_payment(self.books.practice_id, payment_id)
        assert payment is not None
        amount = None if everything else data.draw(st.integers(min_value=1, max_value=payment.amount_cents + 10))
        try:
            refund_payment(self.store, NoGateway(), self.books.clock, self.books.practice_id, payment_id, amount, None)  # type: ignore[arg-type]
        except Conflict:
            assert (amount is None and payment.refundable_cents == 0) or (amount or 0) > payment.refundable_cents

    def _invoices(self):
        return self.store.invoices_of(self.books.practice_id, self.client_id)

    def _live_invoices(self):
        return [i for i in self._invoices() if not i.voided]

    @invariant()
    def numbers_are_gapless_and_unique(self) -> None:
        if not hasattr(self, "books"):
            return
        sequences = sorted(i.sequence for i in self._invoices())
        assert sequences == list(range(1, len(sequences) + 1))
        assert self.books.refresh().last_invoice_sequence == len(sequences)

    @invariant()
    def each_appointment_is_on_at_most_one_live_invoice_and_totals_match_fees(self) -> None:
        if not hasattr(self, "books"):
            return
        live = self._live_invoices()
        lines = [line.appointment_id for i in live for line in i.lines]
        assert len(lines) == len(set(lines))
        invoiced = [a for a in self.store.appointments_by_id(self.books.practice_id, self.appointments) if a.invoice_id]
        assert sorted(a.appointment_id for a in invoiced) == sorted(lines)
        assert all(a.billable for a in invoiced)
        assert sum(i.total_cents for i in live) == sum(a.fee_cents for a in invoiced)

    @invariant()
    def every_cent_is_accounted_for_and_the_balance_follows_the_formula(self) -> None:
        if not hasattr(self, "books"):
            return
        pid = self.books.practice_id
        payments = [p for p in self.store.payments_of(pid, self.client_id) if p.status is PaymentStatus.SUCCEEDED]
        invoices = self._invoices()
        for payment in payments:
            allocated = sum(a.amount_cents for a in payment.allocations)
            assert payment.amount_cents == allocated + payment.unallocated_cents + payment.refunded_cents
            for allocation in payment.allocations:
                invoice = next(i for i in invoices if i.invoice_id == allocation.invoice_id)
                on_invoice = [a.amount_cents for a in invoice.allocations if a.payment_id == payment.payment_id]
                assert on_invoice == [allocation.amount_cents]
        live = [i for i in invoices if not i.voided]
        assert all(0 <= i.paid_cents <= i.total_cents for i in live)
        account = self.store.get_account(pid, self.client_id)
        expected = (
            sum(i.total_cents for i in live)
            - sum(p.amount_cents for p in payments)
            + sum(p.refunded_cents for p in payments)
        )
        assert account.balance_cents == expected
        credit = sum(p.unallocated_cents for p in payments)
        assert account.unallocated_credit_cents == credit
        assert account.balance_cents == sum(i.balance_cents for i in live) - credit


def test_invoices_payments_refunds_and_voids_keep_the_books_straight(store: BillingStore) -> None:
    Ledger.store = store
    Ledger.TestCase.settings = settings(
        max_examples=20,
        stateful_step_count=14,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Ledger.TestCase().runTest()
