"""The documents domain: statement arithmetic, superbill rules, CSV rows and injection, without AWS."""

import ast
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing import documents
from billing.calendar import Appointment, Modality
from billing.clients import Client
from billing.documents import DateRange, EntryKind
from billing.errors import Conflict
from billing.invoices import Invoice, InvoiceAllocation, InvoiceLine
from billing.payments import Payment, Refund
from billing.practices import Practice

NOW = datetime(2026, 11, 27, 15, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def practice(**changes: object) -> Practice:
    values: dict[str, object] = {
        "practice_id": "prac_1",
        "name": "Calm Minds",
        "timezone": "America/Chicago",
        "invoice_creation": "manual",
        "npi": "1234567893",
        "tax_id": "12-3456789",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Practice.model_validate(values | changes)


def client(**changes: object) -> Client:
    values: dict[str, object] = {
        "client_id": "cli_1",
        "first_name": "Ada",
        "last_name": "Byron",
        "diagnosis_codes": ["F41.1", "F32.0"],
        "created_at": NOW,
    }
    return Client.model_validate(values | changes)


def invoice(sequence: int, issued: date, amounts: list[int], paid: int = 0, voided: bool = False) -> Invoice:
    lines = [
        InvoiceLine(
            appointment_id=f"apt_{sequence}_{n}", date=issued, service_code="90837", description="x", amount_cents=a
        )
        for n, a in enumerate(amounts)
    ]
    allocations = [InvoiceAllocation(payment_id="pay_x", amount_cents=paid)] if paid else []
    return Invoice(
        invoice_id=f"inv_{sequence}",
        sequence=sequence,
        client_id="cli_1",
        currency="usd",
        issue_date=issued,
        due_date=issued,
        lines=lines,
        total_cents=sum(amounts),
        allocations=allocations,
        voided=voided,
        created_at=NOW,
    )


def payment(payment_id: str, at: datetime, amount: int, status: str = "succeeded", **extra: object) -> Payment:
    return Payment.model_validate(
        {
            "payment_id": payment_id,
            "client_id": "cli_1",
            "amount_cents": amount,
            "currency": "usd",
            "method": "cash",
            "status": status,
            "created_at": at,
        }
        | extra
    )


def period(start: str, end: str) -> DateRange:
    return DateRange.model_validate({"from": start, "to": end})


def test_a_statement_reconciles_opening_entries_and_closing_to_the_cent() -> None:
    invoices = [
        invoice(1, date(2026, 9, 30), [15000]),
        invoice(2, date(2026, 10, 5), [12000]),
        invoice(3, date(2026, 10, 6), [9999], voided=True),
    ]
    payments = [
        payment("pay_a", datetime(2026, 10, 1, 4, 59, tzinfo=UTC), 5000),  # still Sep 30 in Chicago
        payment("pay_b", datetime(2026, 10, 7, 15, tzinfo=UTC), 20000),
        payment("pay_c", datetime(2026, 10, 8, 15, tzinfo=UTC), 7000, status="failed"),
    ]
    refunds = [
        Refund(
            refund_id="re_1",
            payment_id="pay_b",
            client_id="cli_1",
            amount_cents=1000,
            status="succeeded",
            created_at=datetime(2026, 10, 9, 15, tzinfo=UTC),
        )
    ]
    doc = documents.statement_document(
        practice(), client(), period("2026-10-01", "2026-10-31"), date(2026, 11, 1), invoices, payments, refunds
    )
    assert doc.opening_balance_cents == 15000 - 5000
    assert [(e.kind, e.reference) for e in doc.entries] == [
        (EntryKind.INVOICE, "INV-000002"),
        (EntryKind.PAYMENT, "pay_b"),
        (EntryKind.REFUND, "re_1"),
    ]
    assert [e.balance_cents for e in doc.entries] == [22000, 2000, 3000]
    assert (
        doc.closing_balance_cents
        == doc.opening_balance_cents + doc.invoiced_cents - doc.paid_cents + doc.refunded_cents
    )
    assert doc.closing_balance_cents == 15000 + 12000 - 5000 - 20000 + 1000  # the overview's formula


def test_a_statement_changes_version_only_when_what_it_shows_changes() -> None:
    args = (practice(), client(), period("2026-10-01", "2026-10-31"), date(2026, 11, 1))
    first = documents.statement_document(*args, [invoice(1, date(2026, 10, 1), [100])], [], [])
    same = documents.statement_document(*args, [invoice(1, date(2026, 10, 1), [100])], [], [])
    paid = invoice(1, date(2026, 10, 1), [100], paid=100).next()
    changed = documents.statement_document(*args, [paid], [], [])
    assert first.version_token == same.version_token != changed.version_token
    assert "Ada" not in first.version_token and first.number.startswith("ST-20261101-")


def test_ranges_are_ordered_and_bounded() -> None:
    with pytest.raises(ValidationError):
        period("2026-10-02", "2026-10-01")
    with pytest.raises(ValidationError):
        period("2024-01-01", "2026-01-01")


def test_the_invoice_is_stamped_paid_exactly_when_paid_and_void_when_void() -> None:
    today = date(2026, 11, 1)
    assert documents.invoice_document(practice(), client(), invoice(1, today, [100]), today).stamp is None
    assert documents.invoice_document(practice(), client(), invoice(1, today, [100], paid=50), today).stamp is None
    assert documents.invoice_document(practice(), client(), invoice(1, today, [100], paid=100), today).stamp == "PAID"
    void = invoice(1, today, [100], paid=100, voided=True)
    assert documents.invoice_document(practice(), client(), void, today).stamp == "VOID"


def test_a_superbill_needs_npi_tax_id_and_a_diagnosis_and_says_which_are_missing() -> None:
    with pytest.raises(Conflict) as refused:
        documents.require_superbill_details(practice(npi=None), client(diagnosis_codes=[]))
    assert refused.value.code == "superbill_details_missing"
    assert [d["field"] for d in refused.value.details] == ["practice.npi", "client.diagnosis_codes"]
    documents.require_superbill_details(practice(), client())


def _appointment(appointment_id: str, status: str = "show", **extra: object) -> Appointment:
    values: dict[str, object] = {
        "appointment_id": appointment_id,
        "client_id": "cli_1",
        "starts_at": NOW,
        "local_date": date(2026, 10, 1),
        "duration_minutes": 50,
        "service_code": "90837",
        "fee_cents": 100,
        "status": status,
        "billable": True,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Appointment.model_validate(values | extra)


def test_superbill_lines_place_of_service_pointers_and_paid_amounts() -> None:
    inv = invoice(1, date(2026, 10, 1), [100, 100, 100], paid=150)
    appointments = [
        _appointment("apt_1_0", modality=Modality.TELEHEALTH_HOME, modifiers=["95"]),
        _appointment("apt_1_1", modality=Modality.TELEHEALTH_OTHER, units=2),
        _appointment("apt_1_2", status="late_cancel"),
    ]
    doc = documents.superbill_document(
        practice(place_of_service="22"), client(), period("2026-10-01", "2026-10-31"), NOW.date(), [inv], appointments
    )
    assert [(line.place_of_service, line.modifiers, line.units) for line in doc.lines] == [
        ("10", ["95"], 1),
        ("02", [], 2),
    ]
    assert [line.paid_cents for line in doc.lines] == [100, 50]  # a partial payment pays the earliest line first
    assert {line.pointers for line in doc.lines} == {"AB"} and doc.diagnosis_codes == [("A", "F41.1"), ("B", "F32.0")]
    in_person = _appointment("apt_x", modality=Modality.IN_PERSON)
    assert documents.place_of_service(practice(place_of_service="22"), in_person) == "22"
    assert documents.place_of_service(practice(), in_person) == documents.DEFAULT_PLACE_OF_SERVICE


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("x") Smith'])
def test_csv_text_that_a_spreadsheet_would_run_is_neutralised(text: str) -> None:
    assert documents.neutralise(text) == "'" + text


def test_csv_money_cells_stay_numbers_and_names_are_neutralised() -> None:
    evil = client(first_name="=cmd", last_name="x")
    rows = documents.invoice_rows([invoice(2, date(2026, 10, 1), [100], paid=30)], {"cli_1": evil}, date(2026, 10, 2))
    assert rows == [["INV-000002", "inv_2", "cli_1", "'=cmd x", "2026-10-01", "2026-10-01", 100, 30, 70, "past_due"]]
    allocations = [{"invoice_id": "inv_2", "amount_cents": 1000}]
    pay = payment(
        "pay_1", NOW, 1000, fee_cents=59, processor_payment_id="pi_1", reference="-5", allocations=allocations
    )
    [row] = documents.payment_rows([pay], {"inv_2": "INV-000002"}, {}, "America/Chicago")
    assert dict(zip(documents.PAYMENT_COLUMNS, row, strict=True)) == {
        "payment_id": "pay_1",
        "date": "2026-11-27",
        "client_id": "cli_1",
        "client_name": "",
        "method": "cash",
        "reference": "'-5",
        "gross_cents": 1000,
        "fee_cents": 59,
        "net_cents": 941,
        "refunded_cents": 0,
        "allocations": "INV-000002:1000",
        "processor_payment_id": "pi_1",
    }


def test_only_the_render_function_imports_weasyprint_or_jinja2() -> None:
    importers = set()
    for path in [*ROOT.glob("functions/**/*.py"), *ROOT.glob("layers/**/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("weasyprint", "jinja2") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"functions/render_invoice/rendering.py"}


def test_claim_details_on_appointments_are_optional_and_validated() -> None:
    from billing.calendar import AppointmentChange, AppointmentRequest
    from billing.practices import PracticeSettings

    base = {"client_id": "cli_1", "starts_at": NOW, "duration_minutes": 50, "service_code": "90837", "fee_cents": 1}
    assert AppointmentRequest.model_validate(base).units == 1
    good = AppointmentRequest.model_validate(
        base | {"modality": "telehealth_home", "modifiers": ["95", "hq"], "units": 2}
    )
    assert good.modifiers == ["95", "HQ"]
    for bad in ({"modifiers": ["9"]}, {"modifiers": ["95"] * 5}, {"units": 0}, {"modality": "phone"}):
        with pytest.raises(ValidationError):
            AppointmentRequest.model_validate(base | bad)
    assert AppointmentChange.model_validate({"units": 3}).units == 3
    with pytest.raises(ValidationError):
        AppointmentChange.model_validate({})
    settings = {"name": "P", "timezone": "UTC", "invoice_creation": "manual"}
    assert PracticeSettings.model_validate(settings | {"license_state": "ny"}).license_state == "NY"
    for bad in ({"place_of_service": "1"}, {"license_state": "New York"}, {"license_number": "x" * 33}):
        with pytest.raises(ValidationError):
            PracticeSettings.model_validate(settings | bad)
