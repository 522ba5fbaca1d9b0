"""The one place that builds DynamoDB keys. See ACCESS_PATTERNS.md beside this file."""

from datetime import date

PRACTICE_SK = "PRACTICE"


def practice_pk(practice_id: str) -> str:
    return f"PRACTICE#{practice_id}"


def client_sk(client_id: str) -> str:
    return f"CLIENT#{client_id}"


def appointment_sk(appointment_id: str) -> str:
    return f"APPOINTMENT#{appointment_id}"


def invoice_sk(invoice_id: str) -> str:
    return f"INVOICE#{invoice_id}"


def payment_sk(payment_id: str) -> str:
    return f"PAYMENT#{payment_id}"


def idempotency_sk(key_digest: str) -> str:
    return f"IDEMPOTENCY#{key_digest}"


def refund_link_sk(processor_refund_id: str) -> str:
    return f"PROCESSOR_REFUND#{processor_refund_id}"


def key(practice_id: str, sort_key: str) -> dict[str, str]:
    return {"PK": practice_pk(practice_id), "SK": sort_key}


# GSI1: practices by time zone, and a practice's appointments by local date.
def zone_gsi1pk(timezone: str) -> str:
    return f"ZONE#{timezone}"


def calendar_gsi1pk(practice_id: str, day: date) -> str:
    return f"PRACTICE#{practice_id}#DATE#{day.isoformat()}"


# GSI2: a client's timeline (invoices, payments) in order.
def client_gsi2pk(practice_id: str, client_id: str) -> str:
    return f"PRACTICE#{practice_id}#CLIENT#{client_id}"


INVOICE_GSI2_PREFIX = "INVOICE#"
PAYMENT_GSI2_PREFIX = "PAYMENT#"


def invoice_gsi2sk(sequence: int) -> str:
    return f"{INVOICE_GSI2_PREFIX}{sequence:09d}"


CARD_GSI2_PREFIX = "CARD#"
REFUND_GSI2_PREFIX = "REFUND#"


def card_sk(card_id: str) -> str:
    return f"CARD#{card_id}"


def refund_sk(refund_id: str) -> str:
    return f"REFUND#{refund_id}"


def timeline_gsi2sk(prefix: str, created_at: str, object_id: str) -> str:
    return f"{prefix}{created_at}#{object_id}"


def payment_gsi2sk(created_at: str, payment_id: str) -> str:
    return f"{PAYMENT_GSI2_PREFIX}{created_at}#{payment_id}"


# GSI3 (sparse): a practice's appointments that are not on an invoice, by local date.
def uninvoiced_gsi3pk(practice_id: str) -> str:
    return f"PRACTICE#{practice_id}#UNINVOICED"


def uninvoiced_gsi3sk(day: date, appointment_id: str) -> str:
    return f"{day.isoformat()}#{appointment_id}"


# GSI3 (sparse): a practice's clients enrolled in AutoPay (the night's work list).
def autopay_gsi3pk(practice_id: str) -> str:
    return f"PRACTICE#{practice_id}#AUTOPAY"


def autopay_attempt_sk(business_date: date, client_id: str) -> str:
    return f"{autopay_attempts_prefix(business_date)}{client_id}"


def autopay_attempts_prefix(business_date: date) -> str:
    return f"AUTOPAY_ATTEMPT#{business_date.isoformat()}#"
