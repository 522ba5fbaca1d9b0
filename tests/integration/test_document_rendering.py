"""Billing documents against moto: rendered with WeasyPrint, read back with pdftotext, cached in S3 by version."""

import csv
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from billing import invoice_service
from billing.calendar import (
    AppointmentChange,
    AppointmentRequest,
    AppointmentStatus,
    Modality,
    change_appointment,
    schedule_appointment,
)
from billing.clients import ClientDetails, add_client
from billing.documents import DateRange, DocumentType
from billing.errors import Conflict, NotFound
from billing.invoices import InvoiceRequest
from billing.payment_service import take_payment
from billing.payments import PaymentMethod, PaymentRequest
from billing.practices import InvoiceCreation, PracticeSettings, save_practice
from billing.refund_service import refund_payment
from billing_aws.archive import DocumentArchive
from billing_aws.documents import DocumentStore
from billing_lambda.finance_exports import FinanceExports
from local.aws import LocalAws
from local.template import Resolver
from tests.fakes.gateway import FakeGateway
from tests.integration.conftest import FixedClock, NoSchedules

RENDER_FUNCTION = Path(__file__).resolve().parents[2] / "functions" / "render_invoice"
sys.path.insert(0, str(RENDER_FUNCTION))

from publisher import Publisher  # noqa: E402


def pdf_text(pdf: bytes) -> str:
    """The PDF's text in reading order (pdftotext -layout), spaces collapsed."""
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True).stdout
    return " ".join(out.decode().split())


class Office:
    """A practice with a client, appointments, invoices and payments, and a publisher for its documents."""

    def __init__(self, local_aws: tuple[LocalAws, Resolver], **settings: Any):
        aws, resolver = local_aws
        self.store = DocumentStore(aws.client("dynamodb"), resolver.physical_name("BillingTable"))
        self.s3 = aws.client("s3")
        self.bucket = resolver.physical_name("DocumentsBucket")
        self.archive = DocumentArchive(self.s3, self.bucket, None)
        self.clock = FixedClock(datetime(2026, 9, 1, 15, tzinfo=UTC))
        values: dict[str, Any] = {
            "name": "Calm Minds Counselling",
            "timezone": "America/Chicago",
            "invoice_creation": InvoiceCreation.MANUAL,
            "invoice_due_days": 14,
            "npi": "1234567893",
            "tax_id": "12-3456789",
            "license_number": "LPC80211",
            "license_state": "IL",
            "place_of_service": "11",
            "address": {"line1": "200 Lakeshore Dr", "city": "Chicago", "state": "IL", "postal_code": "60601"},
            "phone": "(312) 555-0199",
        } | settings
        self.practice = save_practice(
            self.store, NoSchedules(), self.clock, f"prac_{uuid.uuid4().hex[:12]}", PracticeSettings(**values)
        )
        self.gateway = FakeGateway()

    @property
    def pid(self) -> str:
        return self.practice.practice_id

    def publisher(self) -> Publisher:
        return Publisher(self.store, self.archive, self.clock, self.practice)

    def client(self, first: str = "Ada", last: str = "Byron", codes: tuple[str, ...] = ("F41.1", "F32.0")) -> str:
        details = ClientDetails(
            first_name=first,
            last_name=last,
            date_of_birth=date(1990, 12, 10),
            address={"line1": "12 Elm St", "city": "Evanston", "state": "IL", "postal_code": "60201"},
            diagnosis_codes=list(codes),
        )
        return add_client(self.store, self.clock, self.pid, details).client_id

    def appointment(self, client_id: str, starts_at: str, status: str = "show", fee: int = 15000, **extra: Any) -> str:
        request = AppointmentRequest(
            client_id=client_id,
            starts_at=datetime.fromisoformat(starts_at),
            duration_minutes=53,
            service_code="90837",
            service_description="Psychotherapy, 53 minutes",
            fee_cents=fee,
            status=AppointmentStatus(status),
            **extra,
        )
        return schedule_appointment(self.store, self.clock, self.practice, request).appointment_id

    def invoice(self, client_id: str, *appointment_ids: str) -> str:
        request = InvoiceRequest(client_id=client_id, appointment_ids=list(appointment_ids))
        return invoice_service.create_invoice(self.store, self.clock, self.pid, request).invoice_id

    def pay(self, client_id: str, amount: int, *invoice_ids: str, method: str = "cash") -> str:
        request = PaymentRequest(
            client_id=client_id,
            amount_cents=amount,
            method=PaymentMethod(method),
            reference="1042" if method == "check" else None,
            invoice_ids=list(invoice_ids) or None,
        )
        payment = take_payment(self.store, self.gateway, self.clock, self.practice, request, uuid.uuid4().hex)
        return payment.payment_id

    def download(self, url: str) -> bytes:
        key = url.split(f"/{self.bucket}/", 1)[1].split("?", 1)[0]
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture
def office(local_aws: tuple[LocalAws, Resolver]) -> Iterator[Office]:
    yield Office(local_aws)


def test_an_invoice_shows_every_line_and_total_and_is_paid_exactly_when_paid(office: Office) -> None:
    client = office.client()
    first = office.appointment(client, "2026-09-01T15:00:00Z")
    second = office.appointment(client, "2026-09-08T15:00:00Z", fee=9500)
    invoice_id = office.invoice(client, first, second)
    link = office.publisher().invoice(invoice_id)
    text = pdf_text(office.download(link.url))
    for expected in (
        "Calm Minds Counselling", "200 Lakeshore Dr", "Chicago, IL 60601", "(312) 555-0199", "NPI 1234567893",
        "Tax ID 12-3456789", "Ada Byron", "12 Elm St", "INV-000001", "Sep 8, 2026", "Sep 15, 2026",
        "Sep 1, 2026", "90837", "Psychotherapy, 53 minutes", "$150.00", "$95.00", "Total $245.00",
        "Amount paid $0.00", "Balance due $245.00",
    ):  # fmt: skip
        assert expected in text, expected
    assert "PAID" not in text and "VOID" not in text
    assert "Byron" not in link.url and "Ada" not in link.url and invoice_id in link.url

    office.pay(client, 10000, invoice_id)
    partly = pdf_text(office.download(office.publisher().invoice(invoice_id).url))
    assert "Amount paid $100.00" in partly and "Balance due $145.00" in partly and "PAID" not in partly
    office.pay(client, 14500, invoice_id)
    paid = pdf_text(office.download(office.publisher().invoice(invoice_id).url))
    assert "Status PAID" in paid and "Balance due $0.00" in paid


def test_a_pdf_is_rendered_once_per_version(office: Office) -> None:
    client = office.client()
    invoice_id = office.invoice(client, office.appointment(client, "2026-09-01T15:00:00Z"))
    prefix = f"documents/{office.pid}/invoice/{invoice_id}/"
    first = office.publisher().invoice(invoice_id)
    again = office.publisher().invoice(invoice_id)
    assert len(office.keys(prefix)) == 1 and first.url.split("?")[0] == again.url.split("?")[0]
    assert (again.expires_at - office.clock.now()).total_seconds() <= 300
    office.pay(client, 15000, invoice_id)
    office.publisher().invoice(invoice_id)
    assert len(office.keys(prefix)) == 2  # the payment made a new version: rendered again


def test_a_void_invoice_says_void(office: Office) -> None:
    client = office.client()
    invoice_id = office.invoice(client, office.appointment(client, "2026-09-01T15:00:00Z"))
    invoice_service.void_invoice(office.store, office.clock, office.pid, invoice_id, lambda _: None)
    text = pdf_text(office.download(office.publisher().invoice(invoice_id).url))
    assert "Status VOID" in text and "PAID" not in text and "INV-000001" in text


def test_another_practices_invoice_is_not_found(office: Office, local_aws: tuple[LocalAws, Resolver]) -> None:
    client = office.client()
    invoice_id = office.invoice(client, office.appointment(client, "2026-09-01T15:00:00Z"))
    other = Office(local_aws)
    with pytest.raises(NotFound):
        other.publisher().invoice(invoice_id)
    with pytest.raises(NotFound):
        office.publisher().invoice(invoice_id, client_id="cli_someone_else")  # the portal: own invoices only


def test_a_receipt_shows_method_allocations_and_refunds(office: Office) -> None:
    client = office.client()
    invoice_id = office.invoice(client, office.appointment(client, "2026-09-01T15:00:00Z"))
    payment_id = office.pay(client, 20000, invoice_id, method="check")
    refund_payment(office.store, office.gateway, office.clock, office.pid, payment_id, 3000, uuid.uuid4().hex)
    text = pdf_text(office.download(office.publisher().receipt(payment_id).url))
    for expected in (
        "Receipt", payment_id, "Check (ref 1042)", "INV-000001", "$150.00", "Credit on account $20.00",
        "Refunded $30.00", "Net paid $170.00", "Ada Byron",
    ):  # fmt: skip
        assert expected in text, expected


def test_a_statement_reconciles_with_the_billing_overview(office: Office) -> None:
    client = office.client()
    office.clock.current = datetime(2026, 8, 20, 18, tzinfo=UTC)
    august = office.invoice(client, office.appointment(client, "2026-08-20T15:00:00Z"))
    office.clock.current = datetime(2026, 9, 2, 15, tzinfo=UTC)
    office.pay(client, 5000, august)
    office.clock.current = datetime(2026, 9, 10, 15, tzinfo=UTC)
    september = office.invoice(client, office.appointment(client, "2026-09-09T15:00:00Z", fee=12000))
    payment = office.pay(client, 20000, method="check")
    refund_payment(office.store, office.gateway, office.clock, office.pid, payment, 1000, uuid.uuid4().hex)
    office.clock.current = datetime(2026, 10, 1, 15, tzinfo=UTC)
    period = DateRange.model_validate({"from": "2026-09-01", "to": "2026-09-30"})
    link = office.publisher().statement(client, period)
    assert link.opening_balance_cents == 15000  # August's invoice
    account = office.store.get_account(office.pid, client)
    assert link.closing_balance_cents == account.balance_cents == 15000 - 5000 + 12000 - 20000 + 1000
    text = pdf_text(office.download(link.url))
    for expected in ("Statement", "Opening balance", "Closing balance", "INV-000002", "$120.00", "$200.00", "$10.00"):
        assert expected in text, expected
    assert text.index("INV-000002") < text.index(payment)  # date order
    assert september


def test_a_superbill_has_codes_and_leaves_out_no_shows(office: Office) -> None:
    client = office.client()
    show = office.appointment(client, "2026-09-01T15:00:00Z", modifiers=["95"], modality=Modality.TELEHEALTH_HOME)
    office_visit = office.appointment(client, "2026-09-03T15:00:00Z", units=2)
    no_show = office.appointment(client, "2026-09-08T15:00:00Z", status="no_show", fee=5000)
    invoice_id = office.invoice(client, show, office_visit, no_show)
    office.pay(client, 15000, invoice_id)
    period = DateRange.model_validate({"from": "2026-09-01", "to": "2026-09-30"})
    text = pdf_text(office.download(office.publisher().superbill(client, period).url))
    for expected in (
        "Superbill", "1234567893", "12-3456789", "LPC80211 (IL)", "Ada Byron", "Dec 10, 1990", "A. F41.1",
        "B. F32.0", "09/01/2026 10 90837 95 1 AB", "09/03/2026 11 90837 2 AB", "$150.00", "Total charges (28) $300.00",
        "Amount paid (29) $150.00",
    ):  # fmt: skip
        assert expected in text, expected
    assert "09/08/2026" not in text  # the no-show is on the invoice but never on a superbill

    change = AppointmentChange(modality=Modality.TELEHEALTH_OTHER, modifiers=["GT"])  # allowed once invoiced
    change_appointment(office.store, office.clock, office.pid, office_visit, change)
    again = pdf_text(office.download(office.publisher().superbill(client, period).url))
    assert "09/03/2026 02 90837 GT 2 AB" in again  # a new appointment version: rendered again


def test_a_superbill_without_npi_tax_id_or_diagnosis_names_what_is_missing(
    local_aws: tuple[LocalAws, Resolver],
) -> None:
    office = Office(local_aws, npi=None, tax_id=None)
    client = office.client(codes=())
    period = DateRange.model_validate({"from": "2026-09-01", "to": "2026-09-30"})
    with pytest.raises(Conflict) as refused:
        office.publisher().superbill(client, period)
    assert [d["field"] for d in refused.value.details] == ["practice.npi", "practice.tax_id", "client.diagnosis_codes"]


def test_a_series_of_three_months_holds_every_document_in_date_order(office: Office) -> None:
    client = office.client()
    numbers = []
    for month in (9, 10, 11):
        office.clock.current = datetime(2026, month, 5, 18, tzinfo=UTC)
        invoice_id = office.invoice(client, office.appointment(client, f"2026-{month:02d}-05T15:00:00Z"))
        numbers.append(invoice_id)
        office.pay(client, 15000, invoice_id)
    period = DateRange.model_validate({"from": "2026-09-01", "to": "2026-11-30"})
    types = [DocumentType.INVOICE, DocumentType.RECEIPT, DocumentType.STATEMENT, DocumentType.SUPERBILL]
    link = office.publisher().series(client, period, types)
    assert link.documents == 3 + 3 + 1 + 1
    text = pdf_text(office.download(link.url))
    positions = [text.index(f"INV-00000{n}") for n in (1, 2, 3)]
    assert positions == sorted(positions)
    assert text.count("Receipt for") == 3 and "Statement" in text and "Superbill" in text
    assert text.index("Superbill") > positions[-1]


def test_finance_csvs_neutralise_formulas_and_total_like_the_api(office: Office) -> None:
    evil = office.client(first='=HYPERLINK("x")', last="Smith")
    plain = office.client()
    a = office.invoice(evil, office.appointment(evil, "2026-09-01T15:00:00Z"))
    b = office.invoice(plain, office.appointment(plain, "2026-09-02T15:00:00Z", fee=9000))
    office.pay(evil, 15000, a)
    office.pay(plain, 4000, b, method="check")
    period = DateRange.model_validate({"from": "2026-09-01", "to": "2026-09-30"})
    exports = FinanceExports(office.store, office.archive, office.clock)
    links = exports.export(office.practice, period)
    assert "Smith" not in links.invoices_url and "HYPERLINK" not in links.invoices_url
    invoices = list(csv.DictReader(io.StringIO(office.download(links.invoices_url).decode())))
    payments = list(csv.DictReader(io.StringIO(office.download(links.payments_url).decode())))
    names = [row["client_name"] for row in invoices]
    assert names[0] == '\'=HYPERLINK("x") Smith' and not any(n.startswith(("=", "+", "-", "@")) for n in names)
    api_invoices = office.store.invoices_by_id(office.pid, [a, b])
    assert sum(int(r["total_cents"]) for r in invoices) == sum(i.total_cents for i in api_invoices) == 24000
    assert sum(int(r["paid_cents"]) for r in invoices) == sum(i.paid_cents for i in api_invoices) == 19000
    assert sum(int(r["gross_cents"]) for r in payments) == 19000
    assert {r["allocations"] for r in payments} == {"INV-000001:15000", "INV-000002:4000"}
