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

from billing.cards import CardRequest, add_card
from billing.errors import Conflict, InvalidRequest, PaymentDeclined, ProcessorUnavailable
from billing.invoice_service import create_invoice, void_invoice
from billing.invoices import InvoiceRequest
from billing.payment_service import resolve_payment, take_payment
from billing.payments import PaymentMethod, PaymentRequest, PaymentStatus, RefundStatus
from billing.reconciliation import reconcile_charge, reconcile_refunds
from billing.refund_service import refund_payment
from billing_aws.store import BillingStore
from tests.fakes.gateway import FakeGateway
from tests.integration.conftest import Books, open_books

_FAULTS = st.sampled_from([None, None, None, "processing", "timeout_after_success", "server_error", "key_in_use"])


class Ledger(RuleBasedStateMachine):
    """Staff, the processor and its webhooks acting in any order, some of it twice."""

    store: BillingStore

    @initialize()
    def open(self) -> None:
        self.books: Books = open_books(self.store, creation="manual")
        self.gateway = FakeGateway()
        self.client_id = self.books.client()
        card = CardRequest(payment_method_id="pm_card_visa")
        add_card(self.store, self.gateway, self.books.clock, self.books.practice_id, self.client_id, card)
        self.appointments: list[str] = []
        self.payments: list[str] = []
        self.keys: dict[str, PaymentRequest] = {}
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
        practice_id = self.books.practice_id

        def resolve(payment_id: str) -> object:
            return resolve_payment(self.store, self.gateway, self.books.clock, practice_id, payment_id)

        with contextlib.suppress(Conflict):  # refused while a charge is still processing
            void_invoice(self.store, self.books.clock, practice_id, invoice.invoice_id, resolve)

    @rule(
        amount=st.integers(min_value=1, max_value=60_000),
        name_one=st.booleans(),
        by_card=st.booleans(),
        fault=_FAULTS,
        data=st.data(),
    )
    def pay(self, amount: int, name_one: bool, by_card: bool, fault: str | None, data: st.DataObject) -> None:
        unpaid = [i.invoice_id for i in self._live_invoices() if i.balance_cents > 0]
        named = [data.draw(st.sampled_from(unpaid))] if name_one and unpaid else None
        method = PaymentMethod.CARD_ON_FILE if by_card else PaymentMethod.CASH
        request = PaymentRequest(client_id=self.client_id, amount_cents=amount, method=method, invoice_ids=named)
        if by_card and fault:
            self.gateway.queue_fault("charge", fault)
        key = f"key-{uuid.uuid4().hex}"
        self.keys[key] = request
        self._send(key, request)

    @precondition(lambda self: self.keys)
    @rule(data=st.data())
    def retry_a_payment(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.keys)))
        self._send(key, self.keys[key])

    def _send(self, key: str, request: PaymentRequest) -> None:
        try:
            payment = take_payment(self.store, self.gateway, self.books.clock, self.books.practice, request, key)
            self.payments.append(payment.payment_id)
        except InvalidRequest as refused:  # below the processor's minimum: refused before anything is written
            assert refused.code == "amount_below_minimum_charge" and request.amount_cents < 50
        except (Conflict, PaymentDeclined, ProcessorUnavailable):
            pass

    @precondition(lambda self: self.payments)
    @rule(data=st.data(), everything=st.booleans(), pending=st.booleans())
    def refund(self, data: st.DataObject, everything: bool, pending: bool) -> None:
        payment_id = data.draw(st.sampled_from(self.payments))
        payment = self.store.get_payment(self.books.practice_id, payment_id)
        assert payment is not None
        amount = None if everything else data.draw(st.integers(min_value=1, max_value=payment.amount_cents + 10))
        if pending:
            self.gateway.queue_fault("refund", "refund_pending")
        try:
            refund_payment(
                self.store, self.gateway, self.books.clock, self.books.practice_id, payment_id, amount, uuid.uuid4().hex
            )
        except Conflict:
            assert (amount is None and payment.refundable_cents == 0) or (amount or 0) > payment.refundable_cents

    @rule(succeeded=st.booleans())
    def processor_finishes_what_was_pending(self, succeeded: bool) -> None:
        for charge in self.gateway.charges:
            if charge.status == "processing":
                self.gateway.settle_processing(charge.id, succeeded=succeeded)
        self.gateway.settle_refunds()

    @precondition(lambda self: self.gateway.charges)
    @rule(data=st.data(), twice=st.booleans())
    def a_webhook_arrives(self, data: st.DataObject, twice: bool) -> None:
        intent = data.draw(st.sampled_from(self.gateway.charges))
        for _ in range(2 if twice else 1):
            self._deliver(intent.id)

    def _deliver(self, payment_intent_id: str) -> None:
        """What the webhook function does for any event about this PaymentIntent: read it, reconcile."""
        current = self.gateway.retrieve_payment_intent(payment_intent_id)
        payment_id, pid = current.metadata["payment_id"], self.books.practice_id
        reconcile_charge(self.store, pid, payment_id, current)
        reconcile_refunds(self.store, self.gateway, self.books.clock, pid, payment_id, payment_intent_id)

    @invariant()
    def charged_at_the_processor_is_what_is_recorded(self) -> None:
        if not hasattr(self, "books"):
            return
        for intent in self.gateway.charges:  # webhooks not delivered yet: bring everything in first
            self._deliver(intent.id)
        recorded = self.store.payments_by_id(
            self.books.practice_id,
            [p.payment_id for p in self.store.payments_of(self.books.practice_id, self.client_id)],
        )
        by_card = [p for p in recorded if p.method is PaymentMethod.CARD_ON_FILE]
        charged = [c for c in self.gateway.charges if c.status == "succeeded"]
        assert sorted(c.amount_cents for c in charged) == sorted(
            p.amount_cents for p in by_card if p.status is PaymentStatus.SUCCEEDED
        )
        assert len({c.metadata.get("payment_id") for c in charged}) == len(charged)  # one charge per payment
        refunds = self.store.refunds_of(self.books.practice_id, self.client_id)
        assert self.gateway.refunded_cents() == sum(
            r.amount_cents for r in refunds if r.status is RefundStatus.SUCCEEDED and self._is_card(r.payment_id)
        )

    def _is_card(self, payment_id: str) -> bool:
        payment = self.store.get_payment(self.books.practice_id, payment_id)
        return payment is not None and payment.method is PaymentMethod.CARD_ON_FILE

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
        max_examples=10,
        stateful_step_count=14,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    Ledger.TestCase().runTest()
