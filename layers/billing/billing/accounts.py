"""A client's account: the running totals behind the balance, and the billing overview staff review.

Balance = Σ live invoice totals - Σ succeeded payments + Σ refunds (negative means credit).
"""

from datetime import date, datetime
from typing import Protocol

from billing import autopay
from billing.autopay import AutoPayStore, AutoPayView
from billing.books import open_invoices, require_ledger
from billing.calendar import Appointment
from billing.cards import Card
from billing.localtime import local_date
from billing.practices import Practice
from billing.schema import Model


class UninvoicedAppointment(Model):
    appointment_id: str
    date: date
    service_code: str
    status: str
    fee_cents: int


class UnpaidInvoice(Model):
    invoice_id: str
    number: str
    issue_date: date
    due_date: date
    status: str
    total_cents: int
    balance_cents: int


class BillingOverview(Model):
    """``GET /clients/{id}/billing-overview``: what staff review before enrolling a client in AutoPay."""

    client_id: str
    balance_cents: int
    invoiced_cents: int
    paid_cents: int
    refunded_cents: int
    unpaid_invoices_cents: int
    unallocated_credit_cents: int
    uninvoiced_cents: int
    unpaid_invoices: list[UnpaidInvoice]
    uninvoiced_appointments: list[UninvoicedAppointment]
    cards: list[Card]
    autopay: AutoPayView
    as_of: datetime


class AccountStore(AutoPayStore, Protocol):
    def uninvoiced_appointments(
        self, practice_id: str, *, before: date | None = None, client_id: str | None = None
    ) -> list[Appointment]: ...


def billing_overview(store: AccountStore, now: datetime, practice: Practice, client_id: str) -> BillingOverview:
    """The client's money position now. Uninvoiced lists only billable appointments not yet on an invoice."""
    practice_id = practice.practice_id
    ledger = require_ledger(store, practice_id, client_id)  # one read: totals, open invoices, cards
    account = ledger.account
    today = local_date(now, practice.timezone)
    unpaid = sorted(
        (i.reported_on(today) for i in open_invoices(store, practice_id, client_id, ledger)),
        key=lambda i: i.sequence,
    )
    cards = store.cards_by_id(practice_id, ledger.card_ids)
    uninvoiced = [a for a in store.uninvoiced_appointments(practice_id, client_id=client_id) if a.billable]
    return BillingOverview(
        client_id=client_id,
        balance_cents=account.balance_cents,
        invoiced_cents=account.invoiced_cents,
        paid_cents=account.paid_cents,
        refunded_cents=account.refunded_cents,
        unpaid_invoices_cents=sum(i.balance_cents for i in unpaid),
        unallocated_credit_cents=account.unallocated_credit_cents,
        uninvoiced_cents=sum(a.fee_cents for a in uninvoiced),
        unpaid_invoices=[UnpaidInvoice.model_validate(i.model_dump()) for i in unpaid],
        uninvoiced_appointments=[
            UninvoicedAppointment(
                appointment_id=a.appointment_id,
                date=a.local_date,
                service_code=a.service_code,
                status=a.status,
                fee_cents=a.fee_cents,
            )
            for a in uninvoiced
        ],
        cards=cards,
        autopay=autopay.view(store, practice, client_id, today, cards),
        as_of=now,
    )
