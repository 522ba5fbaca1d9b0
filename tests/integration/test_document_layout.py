"""Golden renderings: one fixed document of each type, rendered by WeasyPrint and read back as text.

Text (pdftotext, reading order), not pixels, so font hinting cannot make them flaky; a layout change that moves,
drops or reorders what a document says shows up here. After an intended change, regenerate with
``BILLING_UPDATE_GOLDEN=1 pytest tests/integration/test_document_layout.py`` and review the diff."""

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from billing import documents
from billing.calendar import Appointment
from billing.clients import Client
from billing.invoices import Invoice, InvoiceAllocation, InvoiceLine
from billing.payments import Payment, Refund
from billing.practices import Practice

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(ROOT / "functions" / "render_invoice"))

from rendering import render_pdf  # noqa: E402

NOW = datetime(2026, 11, 27, 15, tzinfo=UTC)
PRACTICE = Practice.model_validate(
    {
        "practice_id": "prac_golden",
        "name": "Calm Minds Counselling",
        "timezone": "America/Chicago",
        "npi": "1234567893",
        "tax_id": "12-3456789",
        "license_number": "LPC 80211",
        "license_state": "IL",
        "address": {
            "line1": "200 Lakeshore Dr",
            "line2": "Suite 4",
            "city": "Chicago",
            "state": "IL",
            "postal_code": "60601",
        },
        "phone": "(312) 555-0199",
        "email": "billing@calmminds.example",
        "invoice_creation": "daily",
        "created_at": NOW,
        "updated_at": NOW,
    }
)
CLIENT = Client.model_validate(
    {
        "client_id": "cli_golden",
        "first_name": "Ada",
        "last_name": "Byron",
        "date_of_birth": "1990-12-10",
        "address": {"line1": "12 Elm St", "city": "Evanston", "state": "IL", "postal_code": "60201"},
        "diagnosis_codes": ["F41.1", "F32.0"],
        "created_at": NOW,
    }
)
LINES = [
    InvoiceLine(
        appointment_id=f"apt_{i}",
        date=date(2026, 11, 20 + i),
        service_code="90837",
        description="Psychotherapy, 53+ minutes",
        amount_cents=15000,
    )
    for i in range(3)
]
INVOICE = Invoice(
    invoice_id="inv_golden",
    sequence=42,
    client_id="cli_golden",
    currency="usd",
    issue_date=date(2026, 11, 23),
    due_date=date(2026, 12, 7),
    lines=LINES,
    total_cents=45000,
    allocations=[InvoiceAllocation(payment_id="pay_golden", amount_cents=45000)],
    created_at=NOW,
)
PAYMENT = Payment.model_validate(
    {
        "payment_id": "pay_golden",
        "client_id": "cli_golden",
        "amount_cents": 50000,
        "currency": "usd",
        "method": "check",
        "reference": "1042",
        "status": "succeeded",
        "allocations": [{"invoice_id": "inv_golden", "amount_cents": 45000}],
        "unallocated_cents": 3000,
        "refunded_cents": 2000,
        "created_at": NOW,
    }
)
REFUND = Refund(
    refund_id="re_golden",
    payment_id="pay_golden",
    client_id="cli_golden",
    amount_cents=2000,
    status="succeeded",
    created_at=NOW,
)
APPOINTMENTS = [
    Appointment.model_validate(
        {
            "appointment_id": f"apt_{i}",
            "client_id": "cli_golden",
            "starts_at": NOW,
            "local_date": date(2026, 11, 20 + i),
            "duration_minutes": 53,
            "service_code": "90837",
            "fee_cents": 15000,
            "status": "show",
            "billable": True,
            "modality": ["in_person", "telehealth_home", "telehealth_other"][i],
            "modifiers": ["95"] if i else [],
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    for i in range(3)
]
PERIOD = documents.DateRange.model_validate({"from": "2026-11-01", "to": "2026-11-30"})
ISSUED = date(2026, 11, 28)
DOCUMENTS = {
    "invoice": documents.invoice_document(PRACTICE, CLIENT, INVOICE, ISSUED),
    "receipt": documents.receipt_document(PRACTICE, CLIENT, PAYMENT, [INVOICE], None, [REFUND]),
    "statement": documents.statement_document(PRACTICE, CLIENT, PERIOD, ISSUED, [INVOICE], [PAYMENT], [REFUND]),
    "superbill": documents.superbill_document(PRACTICE, CLIENT, PERIOD, ISSUED, [INVOICE], APPOINTMENTS),
}


def text_of(pdf: bytes) -> str:
    """Non-empty lines, spaces collapsed; single letters dropped (the rotated PAID/VOID stamp reads letter by
    letter, in an order that depends on glyph positions; the status is asserted from the meta table)."""
    out = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    lines = [" ".join(line.split()) for line in out.splitlines()]
    return "\n".join(line for line in lines if len(line) > 1) + "\n"


@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_the_rendered_document_says_what_it_said(kind: str) -> None:
    text = text_of(render_pdf([DOCUMENTS[kind]]))
    golden = GOLDEN / f"{kind}.txt"
    if os.environ.get("BILLING_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
