"""Domain errors. The Lambda edge maps each kind to one HTTP status in one place."""

from typing import Any, TypeVar

Found = TypeVar("Found")


class BillingError(Exception):
    """Base class: a machine-readable ``code``, a message for people, optional details."""

    code = "billing_error"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or []


class InvalidRequest(BillingError):
    """The caller asked for something malformed or impossible (HTTP 400/422)."""

    code = "invalid_request"


class NotFound(BillingError):
    """No such object for this practice (another practice's objects are also "not found")."""

    code = "not_found"

    def __init__(self, kind: str, object_id: str):
        super().__init__(f"{kind} {object_id} not found", code=f"{kind}_not_found")
        self.kind = kind


def existing(found: Found | None, kind: str, object_id: str) -> Found:
    """``found``, or NotFound for the ``kind`` and id asked for (the one way every lookup says 404)."""
    if found is None:
        raise NotFound(kind, object_id)
    return found


class Conflict(BillingError):
    """The request clashes with the current state (HTTP 409)."""

    code = "conflict"


class Forbidden(BillingError):
    """The caller's role may not do this (HTTP 403)."""

    code = "forbidden"


class PaymentDeclined(BillingError):
    """The card processor declined the charge (HTTP 402); ``decline_code`` is the processor's."""

    code = "card_declined"

    def __init__(self, message: str, *, decline_code: str, payment: Any = None):
        super().__init__(message, details=[{"decline_code": decline_code}])
        self.decline_code = decline_code
        self.payment = payment


class StaleState(Conflict):
    """What a change was planned from changed before it was committed; re-read and plan again."""

    code = "concurrent_change"


class ProcessorUnavailable(BillingError):
    """The card processor could not be reached; retrying with the same Idempotency-Key is safe (HTTP 503)."""

    code = "processor_unavailable"
