"""The client portal: what a client sees of their own account, and paying it.

Everything here acts for the client the verified token names, and only for them: another client's objects are
"not found". Payments go through the same reserved, exactly-once path as staff payments.
"""

from datetime import date, datetime, timedelta
from typing import Protocol

from pydantic import model_validator

from billing import autopay
from billing.autopay import PreviewStore
from billing.books import open_invoices
from billing.cards import Card, CardRequest, CardStore, PaymentMethodId, add_card
from billing.errors import Conflict, NotFound
from billing.gateway import PaymentGateway
from billing.invoice_service import InvoiceLister
from billing.invoices import Invoice
from billing.localtime import Clock, local_date, local_datetime
from billing.money import PositiveCents
from billing.nightly import LATEST_LOCAL_TIME
from billing.payment_service import take_payment
from billing.payments import Payment, PaymentMethod, PaymentRequest, PaymentStatus
from billing.practices import Practice
from billing.schema import IdList, Model, ObjectId, RequestModel


class PortalPaymentRequest(RequestModel):
    """Body of ``POST /portal/payments``: the whole balance by default, or chosen invoices, or an amount; with a
    saved card (default: the default card) or a new Stripe PaymentMethod (saved when ``save_card``)."""

    amount_cents: PositiveCents | None = None
    invoice_ids: IdList | None = None
    card_id: ObjectId | None = None
    payment_method_id: PaymentMethodId | None = None
    save_card: bool = False

    @model_validator(mode="after")
    def _one_card(self) -> "PortalPaymentRequest":
        if self.card_id is not None and self.payment_method_id is not None:
            raise ValueError("give card_id or payment_method_id, not both")
        return self


class PortalAutoPay(Model):
    enabled: bool
    next_charge_cents: int | None = None
    next_charge_date: date | None = None
    card: Card | None = None
    requires_client_action: bool = False


class PortalAccount(Model):
    """``GET /portal/invoices``: the client's invoices (newest first), balance, credit, and AutoPay's notice."""

    invoices: list[Invoice]
    balance_cents: int
    unallocated_credit_cents: int
    autopay: PortalAutoPay


class PortalStore(PreviewStore, CardStore, InvoiceLister, Protocol):
    """What the portal needs from storage."""


def coming_night(now: datetime, practice: Practice) -> date:
    """The business date of the next AutoPay night: today's before 06:00 local, else tomorrow's."""
    local = local_datetime(now, practice.timezone)
    return local.date() if local.time() < LATEST_LOCAL_TIME else local.date() + timedelta(days=1)


def account(books: PortalStore, clock: Clock, practice: Practice, client_id: str) -> PortalAccount:
    """The client's own account: invoices, balance, credit, and what AutoPay will charge next and on which card
    (the staff preview's number), so the client can pay another way first."""
    now = clock.now()
    today = local_date(now, practice.timezone)
    invoices = sorted(
        (i.reported_on(today) for i in books.invoices_of(practice.practice_id, client_id)),
        key=lambda i: i.sequence,
        reverse=True,
    )
    totals = books.get_account(practice.practice_id, client_id)
    state = autopay.view(books, practice, client_id, today)
    notice = PortalAutoPay(enabled=state.enabled, requires_client_action=state.requires_client_action)
    if state.enabled:
        night = coming_night(now, practice)
        charge = autopay.night_charge(books, practice, client_id, night)
        notice = notice.model_copy(
            update={"next_charge_cents": charge, "next_charge_date": night if charge else None, "card": state.card}
        )
    return PortalAccount(
        invoices=invoices,
        balance_cents=totals.balance_cents,
        unallocated_credit_cents=totals.unallocated_credit_cents,
        autopay=notice,
    )


def pay(
    books: PortalStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    client_id: str,
    request: PortalPaymentRequest,
    idempotency_key: str,
) -> Payment:
    """The client pays: the whole balance (default), chosen invoices, or an amount, by card. A decline is a 402
    and changes no balance; a client AutoPay could not charge off-session is cleared to be charged again."""
    practice_id = practice.practice_id
    card_id = request.card_id
    if request.payment_method_id is not None:
        new_card = CardRequest(payment_method_id=request.payment_method_id)
        card_id = add_card(books, gateway, clock, practice_id, client_id, new_card).card_id
    amount = request.amount_cents or _owed(books, practice_id, client_id, request.invoice_ids)
    payment_request = PaymentRequest(
        client_id=client_id,
        amount_cents=amount,
        method=PaymentMethod.CARD_ON_FILE,
        card_id=card_id,
        invoice_ids=request.invoice_ids,
    )
    route = "POST /portal/payments"
    exact = request.amount_cents is None  # "pay what I owe": never more, even if someone paid a moment ago
    payment = take_payment(
        books, gateway, clock, practice, payment_request, idempotency_key, route=route, prepay=not exact
    )
    if payment.status is PaymentStatus.SUCCEEDED:
        autopay.client_paid(books, practice_id, client_id)
    return payment


def _owed(books: PortalStore, practice_id: str, client_id: str, invoice_ids: list[str] | None) -> int:
    """What the client owes: on the chosen invoices, else the whole balance. Nothing owed is a 409."""
    invoices = open_invoices(books, practice_id, client_id)
    if invoice_ids:
        chosen = {i.invoice_id: i for i in invoices}
        missing = [i for i in invoice_ids if i not in chosen]
        if missing:
            raise NotFound("invoice", missing[0])
        owed = sum(chosen[i].balance_cents for i in invoice_ids)
    else:
        owed = books.get_account(practice_id, client_id).balance_cents
    if owed <= 0:
        raise Conflict("there is nothing to pay", code="nothing_owed")
    return owed
