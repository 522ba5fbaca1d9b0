"""Money is an integer number of minor units (cents) of the practice's one currency. Never a float."""

from typing import Annotated

from pydantic import Field

# Strict: JSON 12.5 or "1250" is rejected rather than silently coerced into cents.
MAX_CENTS = 100_000_000  # one million in major units; anything larger is a typo, not a session fee
Cents = Annotated[int, Field(strict=True, ge=0, le=MAX_CENTS)]
PositiveCents = Annotated[int, Field(strict=True, gt=0, le=MAX_CENTS)]

# Currencies without minor units print without decimals (ISO 4217 exponent 0).
_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


def has_minor_units(currency: str) -> bool:
    """False for currencies counted in whole units (``jpy``: 1250 is ¥1250, not ¥12.50)."""
    return currency.lower() not in _ZERO_DECIMAL


def format_amount(cents: int, currency: str) -> str:
    """Render cents for people, e.g. ``format_amount(-1250, "usd") == "-12.50 USD"``."""
    code = currency.upper()
    if not has_minor_units(currency):
        return f"{cents} {code}"
    sign = "-" if cents < 0 else ""
    major, minor = divmod(abs(cents), 100)
    return f"{sign}{major:,}.{minor:02d} {code}"


# The smallest card charge the processor accepts (Stripe's minimum charge amounts), in minor units; a
# currency not listed here is left to the processor to judge.
_MINIMUM_CHARGE_CENTS = {"usd": 50, "eur": 50, "cad": 50, "aud": 50, "nzd": 50, "chf": 50, "gbp": 30}


def minimum_charge_cents(currency: str) -> int:
    """The smallest amount a card can be charged in ``currency`` (1 when the processor states no minimum)."""
    return _MINIMUM_CHARGE_CENTS.get(currency.lower(), 1)
