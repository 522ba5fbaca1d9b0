"""Cards on file: a processor PaymentMethod attached to the client's processor customer.

Only brand, last4 and expiry are stored; never a card number.
"""

from datetime import datetime
from typing import Annotated

from pydantic import StringConstraints

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
