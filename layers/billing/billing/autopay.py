"""AutoPay: a consenting client's whole balance charged to the card on file once a night, 00:00-06:00 local.

Enrolment is one client at a time, by staff (or the client), and records consent: who, when, which card and
which version of the authorisation text. The night charges through the same reserved, exactly-once payment
path as staff payments, under an Idempotency-Key derived from the client and the business date, so a night
fired twice or retried charges at most once. Declines are counted per night: ``authentication_required`` is
never retried off-session (the client must pay in the portal), a lost, stolen, picked-up or expired card or a
dispute ends enrolment at once, any other decline retries on later nights until the third failed night.
"""

from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from billing.books import Books
from billing.cards import Card
from billing.clients import require_client
from billing.errors import Conflict, InvalidRequest, PaymentDeclined, existing
from billing.gateway import PaymentGateway
from billing.invoice_service import NightStore, is_invoicing_night
from billing.localtime import Clock, local_date, local_datetime
from billing.money import minimum_charge_cents
from billing.nightly import LATEST_LOCAL_TIME
from billing.payment_service import choose_card, take_payment
from billing.payments import Payment, PaymentMethod, PaymentRequest, PaymentStatus, key_digest
from billing.practices import Practice
from billing.retry import optimistic
from billing.schema import Model, ObjectId, Record, RequestModel

# The authorisation the client agrees to; its version is kept with every consent. Change the text, bump it.
AUTHORIZATION_VERSION = "autopay-2026-11"
AUTHORIZATION_TEXT = (
    "I authorise the practice to charge my card on file, once a night, for the full balance of my account "
    "for sessions I have received, until I or the practice turn AutoPay off."
)
MAX_FAILED_NIGHTS = 3
# Declines after which the card must not be charged again: enrolment ends at once.
ENDING_DECLINES = frozenset({"lost_card", "stolen_card", "pickup_card", "expired_card"})
AUTHENTICATION_REQUIRED = "authentication_required"
AUTOPAY_ROUTE = "AutoPay night"


class AutoPayRequest(RequestModel):
    """Body of ``PUT /clients/{id}/autopay``: one client, never several."""

    enabled: bool
    card_id: ObjectId | None = None


class Consent(Record):
    enrolled_by: str  # the user (token subject) who enrolled the client: staff, or the client in the portal
    enrolled_at: datetime
    card_id: str
    authorization_version: str


class Outcome(StrEnum):
    CHARGED = "charged"
    DECLINED = "declined"
    SKIPPED = "skipped"


class Attempt(Record):
    """One night's AutoPay for one client (also the row of the nightly report)."""

    client_id: str
    business_date: date
    outcome: Outcome
    amount_cents: int = 0
    payment_id: str | None = None
    payment_status: str | None = None
    decline_code: str | None = None
    reason: str | None = None
    at: datetime


class AutoPayState(Record):
    """A client's AutoPay, kept on the client."""

    enabled: bool = False
    card_id: str | None = None
    consent: Consent | None = None
    consecutive_failures: int = 0
    last_attempt: Attempt | None = None
    requires_client_action: bool = False  # an off-session charge needed the client: they must pay in the portal
    ended_reason: str | None = None  # why enrolment ended (card removed, card lost, 3 failed nights, ...)
    version: int = 0

    def next(self, **changes: object) -> "AutoPayState":
        return self.model_copy(update={**changes, "version": self.version + 1})

    def ended(self, reason: str) -> "AutoPayState":
        return self.next(enabled=False, ended_reason=reason)


class AutoPayView(AutoPayState):
    """What staff see in the billing overview: the state, the enrolled card, and what needs their attention."""

    card: Card | None = None
    card_expires_soon: bool = False


class Balance(Protocol):
    @property
    def balance_cents(self) -> int: ...

    @property
    def unallocated_credit_cents(self) -> int: ...


class AutoPayStore(Books, Protocol):
    def get_account(self, practice_id: str, client_id: str) -> Balance: ...

    def get_autopay(self, practice_id: str, client_id: str) -> AutoPayState: ...

    def save_autopay(self, practice_id: str, client_id: str, state: AutoPayState) -> None:
        """Write ``state`` unless the stored state is no longer at ``state.version - 1`` (StaleState)."""
        ...

    def enrolled_clients(self, practice_id: str) -> list[str]:
        """Clients whose AutoPay is on (a sparse index: may lag; each is re-read before use)."""
        ...

    def record_attempt(self, practice_id: str, attempt: Attempt) -> None: ...

    def attempts_on(self, practice_id: str, business_date: date) -> list[Attempt]: ...


def card_expires_soon(card: Card, today: date, within_days: int = 30) -> bool:
    """True when the card stops working within ``within_days`` (it is good through the end of its month)."""
    first_after = date(card.exp_year + card.exp_month // 12, card.exp_month % 12 + 1, 1)
    return first_after - timedelta(days=1) < today + timedelta(days=within_days)


def view(
    books: AutoPayStore, practice: Practice, client_id: str, today: date, cards: list[Card] | None = None
) -> AutoPayView:
    """The client's AutoPay as staff and the client see it (``cards``: the client's cards, if already read)."""
    state = books.get_autopay(practice.practice_id, client_id)
    cards = books.cards_of(practice.practice_id, client_id) if cards is None else cards
    card = next((c for c in cards if c.card_id == state.card_id), None)
    expiring = card is not None and state.enabled and card_expires_soon(card, today)
    return AutoPayView(**state.model_dump(), card=card, card_expires_soon=expiring)


def set_autopay(
    books: AutoPayStore, clock: Clock, practice: Practice, client_id: str, request: AutoPayRequest, user: str
) -> AutoPayView:
    """Enrol (with consent recorded) or un-enrol one client. Enrolling needs AutoPay on for the practice and a
    card on file (the named card, else the default one): otherwise 409 naming what is missing."""
    practice_id = practice.practice_id
    require_client(books, practice_id, client_id)

    def attempt() -> AutoPayState:
        state = books.get_autopay(practice_id, client_id)
        if not request.enabled:
            after = state.ended("turned off") if state.enabled else state
        else:
            if not practice.autopay_enabled:
                raise Conflict("AutoPay is turned off for the practice", code="autopay_off_for_practice")
            card = choose_card(books.cards_of(practice_id, client_id), request.card_id)
            now = clock.now()
            consent = Consent(
                enrolled_by=user, enrolled_at=now, card_id=card.card_id, authorization_version=AUTHORIZATION_VERSION
            )
            after = state.next(
                enabled=True,
                card_id=card.card_id,
                consent=consent,
                consecutive_failures=0,
                requires_client_action=False,
                ended_reason=None,
            )
        if after is not state:
            books.save_autopay(practice_id, client_id, after)
        return after

    optimistic(attempt)
    return view(books, practice, client_id, local_date(clock.now(), practice.timezone))


def end_enrolment(books: AutoPayStore, practice_id: str, client_id: str, reason: str) -> None:
    """End a client's enrolment (its card went away, the card was reported lost, a dispute, ...)."""

    def attempt() -> None:
        state = books.get_autopay(practice_id, client_id)
        if state.enabled:
            books.save_autopay(practice_id, client_id, state.ended(reason))

    optimistic(attempt)


def end_all_enrolments(books: AutoPayStore, practice_id: str, reason: str) -> int:
    """The practice turned AutoPay off: every enrolment ends (consent is not carried over to a later re-enable)."""
    clients = books.enrolled_clients(practice_id)
    for client_id in clients:
        end_enrolment(books, practice_id, client_id, reason)
    return len(clients)


def card_removed(books: AutoPayStore, practice_id: str, client_id: str, card_id: str) -> None:
    """Removing the enrolled card ends the enrolment (another card needs the client's consent again)."""
    if books.get_autopay(practice_id, client_id).card_id == card_id:
        end_enrolment(books, practice_id, client_id, "the enrolled card was removed")


def practice_saved(books: AutoPayStore, before: Practice | None, after: Practice) -> None:
    """The practice turning AutoPay off ends every enrolment."""
    if before is not None and before.autopay_enabled and not after.autopay_enabled:
        end_all_enrolments(books, after.practice_id, "AutoPay was turned off for the practice")


def in_window(now: datetime, timezone: str, business_date: date) -> bool:
    """True between 00:00 and 06:00 local on the business date (the only hours AutoPay may charge)."""
    local = local_datetime(now, timezone)
    return local.date() == business_date and local.time() < LATEST_LOCAL_TIME


def night_key(client_id: str, business_date: date) -> str:
    """The Idempotency-Key of a client's AutoPay night: ids and a date only, the same however often it runs."""
    return f"autopay.{client_id}.{business_date.isoformat()}"


def _skip(client_id: str, business_date: date, reason: str, now: datetime) -> Attempt:
    return Attempt(client_id=client_id, business_date=business_date, outcome=Outcome.SKIPPED, reason=reason, at=now)


def charge_night(
    books: AutoPayStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice_id: str,
    client_id: str,
    business_date: date,
    at: datetime | None = None,
) -> Attempt:
    """One client's AutoPay for one night: charge the whole balance once, or say why not. Safe to repeat: the
    payment is made at most once, and the night is counted once in the client's state. ``at`` is when this
    attempt happens (default: now); outside 00:00-06:00 local on the business date nothing is charged."""
    practice = existing(books.get_practice(practice_id), "practice", practice_id)
    attempt = _night(books, gateway, clock, practice, client_id, business_date, at or clock.now())
    books.record_attempt(practice_id, attempt)
    if attempt.reason != "outside_window":  # a late retry is no attempt at all
        _count(books, practice_id, client_id, attempt)
    return attempt


def _night(
    books: AutoPayStore,
    gateway: PaymentGateway,
    clock: Clock,
    practice: Practice,
    client_id: str,
    day: date,
    now: datetime,
) -> Attempt:
    practice_id = practice.practice_id
    if not in_window(now, practice.timezone, day):
        return _skip(client_id, day, "outside_window", now)
    state = books.get_autopay(practice_id, client_id)
    if not (practice.autopay_enabled and state.enabled and state.card_id):
        return _skip(client_id, day, "disabled", now)
    key = night_key(client_id, day)
    recorded = books.get_idempotency_record(practice_id, key_digest(practice_id, key))
    if recorded is None:
        if state.requires_client_action:
            return _skip(client_id, day, "requires_client_action", now)
        amount = books.get_account(practice_id, client_id).balance_cents
        if amount <= 0:
            return _skip(client_id, day, "no_balance", now)
        if amount < minimum_charge_cents(practice.currency):
            return _skip(client_id, day, "below_minimum", now)
    else:  # a repeat of this night: the payment made then is the answer
        amount = existing(
            books.get_payment(practice_id, recorded.object_id), "payment", recorded.object_id
        ).amount_cents
    request = PaymentRequest(
        client_id=client_id, amount_cents=amount, method=PaymentMethod.CARD_ON_FILE, card_id=state.card_id
    )
    try:
        payment = take_payment(
            books,
            gateway,
            clock,
            practice,
            request,
            key,
            route=AUTOPAY_ROUTE,
            fingerprint=f"autopay:{day}",
            prepay=False,  # the balance, and nothing more: a payment that landed meanwhile leaves less to charge
        )
    except PaymentDeclined as declined:
        return Attempt(
            client_id=client_id,
            business_date=day,
            outcome=Outcome.DECLINED,
            amount_cents=amount,
            payment_id=_payment_id(declined),
            payment_status=PaymentStatus.FAILED.value,
            decline_code=declined.decline_code,
            at=now,
        )
    except (Conflict, InvalidRequest) as refused:  # e.g. a staff payment for these invoices is in flight
        return _skip(client_id, day, refused.code, now)
    return _charged(client_id, day, payment, now)


def _payment_id(declined: PaymentDeclined) -> str | None:
    payment = declined.payment if isinstance(declined.payment, dict) else {}
    found = payment.get("payment_id")
    return str(found) if found else None


def _charged(client_id: str, day: date, payment: Payment, now: datetime) -> Attempt:
    return Attempt(
        client_id=client_id,
        business_date=day,
        outcome=Outcome.CHARGED,
        amount_cents=payment.amount_cents,
        payment_id=payment.payment_id,
        payment_status=payment.status.value,
        at=now,
    )


def _count(books: AutoPayStore, practice_id: str, client_id: str, attempt: Attempt) -> None:
    """Move the client's AutoPay state by this night's outcome, once per night however often it is recorded."""

    def step() -> None:
        state = books.get_autopay(practice_id, client_id)
        last = state.last_attempt
        if last is not None and (
            last.business_date > attempt.business_date
            or (last.business_date == attempt.business_date and last.outcome is not Outcome.SKIPPED)
        ):
            return  # this night's charge or decline (or a later night) is already counted
        after = state.next(last_attempt=attempt)
        if attempt.outcome is Outcome.CHARGED:
            after = after.model_copy(update={"consecutive_failures": 0})
        elif attempt.outcome is Outcome.DECLINED:
            code = attempt.decline_code or "generic_decline"
            if code == AUTHENTICATION_REQUIRED:
                after = after.model_copy(update={"requires_client_action": True})
            elif code in ENDING_DECLINES:
                after = after.model_copy(update={"enabled": False, "ended_reason": f"card declined: {code}"})
            else:
                failures = state.consecutive_failures + 1
                after = after.model_copy(update={"consecutive_failures": failures})
                if failures >= MAX_FAILED_NIGHTS:
                    ended = f"{MAX_FAILED_NIGHTS} failed nights in a row"
                    after = after.model_copy(update={"enabled": False, "ended_reason": ended})
        books.save_autopay(practice_id, client_id, after)

    optimistic(step)


class PreviewCharge(Model):
    client_id: str
    amount_cents: int
    card_id: str


class PreviewStore(AutoPayStore, NightStore, Protocol):
    """What the preview needs: AutoPay's state and the night's invoicing work list."""


def _added_that_night(books: PreviewStore, practice: Practice, day: date, client_id: str | None) -> dict[str, int]:
    """What the night of ``day`` invoices before AutoPay runs: billable appointments before ``day`` not yet on
    an invoice, by client (nothing on nights the practice does not invoice)."""
    adding: dict[str, int] = {}
    if is_invoicing_night(practice, day):
        for appointment in books.uninvoiced_appointments(practice.practice_id, before=day, client_id=client_id):
            if appointment.billable and appointment.invoice_id is None:
                adding[appointment.client_id] = adding.get(appointment.client_id, 0) + appointment.fee_cents
    return adding


def _will_charge(books: PreviewStore, practice: Practice, client_id: str, added: int) -> PreviewCharge | None:
    state = books.get_autopay(practice.practice_id, client_id)
    if not state.enabled or state.requires_client_action or state.card_id is None:
        return None
    amount = books.get_account(practice.practice_id, client_id).balance_cents + added
    if amount < max(1, minimum_charge_cents(practice.currency)):
        return None
    return PreviewCharge(client_id=client_id, amount_cents=amount, card_id=state.card_id)


def preview(books: PreviewStore, practice: Practice, day: date) -> list[PreviewCharge]:
    """What the night of business date ``day`` will charge each enrolled client: the balance now, plus what that
    night's invoicing adds first (billable appointments before ``day`` not yet invoiced); credit is in the balance.
    Clients who will not be charged (nothing owed, below the minimum, must pay in the portal) are left out."""
    if not practice.autopay_enabled:
        return []
    adding = _added_that_night(books, practice, day, None)
    charges = [_will_charge(books, practice, c, adding.get(c, 0)) for c in books.enrolled_clients(practice.practice_id)]
    return sorted((c for c in charges if c is not None), key=lambda c: c.client_id)


def night_charge(books: PreviewStore, practice: Practice, client_id: str, day: date) -> int | None:
    """What the night of ``day`` will charge this client (the preview's number for them), or None."""
    if not practice.autopay_enabled:
        return None
    added = _added_that_night(books, practice, day, client_id).get(client_id, 0)
    charge = _will_charge(books, practice, client_id, added)
    return charge.amount_cents if charge else None


def client_paid(books: AutoPayStore, practice_id: str, client_id: str) -> None:
    """The client paid in the portal: a night that needed them present may charge off-session again."""

    def step() -> None:
        state = books.get_autopay(practice_id, client_id)
        if state.requires_client_action:
            books.save_autopay(practice_id, client_id, state.next(requires_client_action=False))

    optimistic(step)


def night_report(books: AutoPayStore, practice_id: str, day: date) -> list[Attempt]:
    """Every AutoPay outcome of business date ``day``, for staff to work the declines in the morning."""
    return sorted(books.attempts_on(practice_id, day), key=lambda a: a.client_id)
