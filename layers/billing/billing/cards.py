"""Cards on file: a processor PaymentMethod attached to the client's processor customer.

Only brand, last4 and expiry are stored; never a card number.
"""

from datetime import datetime
from typing import Annotated, Protocol

from pydantic import StringConstraints

from billing.clients import Client, require_client
from billing.errors import NotFound
from billing.gateway import PaymentGateway
from billing.ids import new_id
from billing.localtime import Clock
from billing.payments import idempotent_id, processor_idempotency_key
from billing.schema import Record, RequestModel

PaymentMethodId = Annotated[str, StringConstraints(min_length=3, max_length=255, pattern=r"^pm_[A-Za-z0-9_]+$")]


class CardRequest(RequestModel):
    """Body of ``POST /clients/{id}/cards``: a Stripe PaymentMethod made by the client-side SDK."""

    payment_method_id: PaymentMethodId


class CardDetails(Record):
    """What the processor tells us about an attached card."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


class Card(CardDetails):
    card_id: str
    client_id: str
    is_default: bool
    created_at: datetime


class CardStore(Protocol):
    def get_client(self, practice_id: str, client_id: str) -> Client | None: ...

    def cards_of(self, practice_id: str, client_id: str) -> list[Card]: ...

    def set_processor_customer(self, practice_id: str, client_id: str, customer_id: str) -> None: ...

    def add_card(self, practice_id: str, card: Card) -> None: ...

    def remove_card(self, practice_id: str, card: Card, new_default: Card | None) -> None: ...


def add_card(
    store: CardStore, gateway: PaymentGateway, clock: Clock, practice_id: str, client_id: str, request: CardRequest
) -> Card:
    """Attach a PaymentMethod to the client's processor customer (made on first use). The first card is the default."""
    customer_id = require_client(store, practice_id, client_id).processor_customer_id
    if customer_id is None:
        key = processor_idempotency_key(idempotent_id("cus", practice_id, client_id))
        store.set_processor_customer(practice_id, client_id, gateway.create_customer(practice_id, client_id, key))
        # A concurrent first card may have set another customer first: use whichever was kept.
        customer_id = require_client(store, practice_id, client_id).processor_customer_id
        assert customer_id is not None
    attached = gateway.attach_card(customer_id, request.payment_method_id)
    has_default = any(card.is_default for card in store.cards_of(practice_id, client_id))
    card = Card(
        payment_method_id=attached.payment_method_id,
        brand=attached.brand,
        last4=attached.last4,
        exp_month=attached.exp_month,
        exp_year=attached.exp_year,
        card_id=new_id("card"),
        client_id=client_id,
        is_default=not has_default,
        created_at=clock.now(),
    )
    store.add_card(practice_id, card)
    return card


def remove_card(store: CardStore, gateway: PaymentGateway, practice_id: str, client_id: str, card_id: str) -> None:
    """Detach the card at the processor and forget it; the oldest remaining card becomes the default."""
    cards = store.cards_of(practice_id, client_id)
    card = next((c for c in cards if c.card_id == card_id), None)
    if card is None:
        raise NotFound("card", card_id)
    gateway.detach_card(card.payment_method_id)
    others = sorted((c for c in cards if c.card_id != card_id), key=lambda c: c.created_at)
    store.remove_card(practice_id, card, others[0] if card.is_default and others else None)
