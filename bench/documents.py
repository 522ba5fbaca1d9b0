"""Document rendering time (the documents function's render path, in process).

1. One invoice through the render path (assemble, Jinja2, WeasyPrint) against WeasyPrint rendering the very
   same HTML directly; target: at most 1.3x.
2. A series export of 1, 10 and 100 documents in one pass, time per document against one single render;
   target: at most 1.1x.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench.measure import interleaved, median, progress
from bench.report import Row, Section, milliseconds
from billing import documents
from billing.clients import Client
from billing.invoices import Invoice, InvoiceLine
from billing.practices import Practice

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "functions" / "render_invoice"))  # the function's own modules, as in Lambda

from rendering import TEMPLATES, render_html, render_pdf  # noqa: E402
from weasyprint import HTML  # noqa: E402

NOW = datetime(2026, 11, 27, 15, tzinfo=UTC)
PRACTICE = Practice.model_validate(
    {
        "practice_id": "prac_bench",
        "name": "Calm Minds Counselling",
        "timezone": "America/Chicago",
        "npi": "1234567893",
        "tax_id": "12-3456789",
        "address": {"line1": "200 Lakeshore Dr", "city": "Chicago", "state": "IL", "postal_code": "60601"},
        "invoice_creation": "daily",
        "created_at": NOW,
        "updated_at": NOW,
    }
)
CLIENT = Client(client_id="cli_bench", first_name="Ada", last_name="Byron", created_at=NOW)
SERIES = {1: 15, 10: 5, 100: 2}  # documents in the series: measured rounds
QUICK_SERIES = {1: 3, 10: 2}


def invoice(n: int) -> documents.InvoiceDocument:
    issued = date(2026, 1, 1) + timedelta(days=n)
    lines = [
        InvoiceLine(
            appointment_id=f"apt_{n}_{i}",
            date=issued,
            service_code="90837",
            description="Psychotherapy",
            amount_cents=15000,
        )
        for i in range(3)
    ]
    inv = Invoice(
        invoice_id=f"inv_{n}",
        sequence=n + 1,
        client_id="cli_bench",
        currency="usd",
        issue_date=issued,
        due_date=issued,
        lines=lines,
        total_cents=45000,
        created_at=NOW,
    )
    return documents.invoice_document(PRACTICE, CLIENT, inv, issued)


def run(quick: bool = False) -> Section:
    html = render_html([invoice(0)])
    ours, direct = interleaved(
        3 if quick else 15,
        lambda: render_pdf([invoice(0)]),
        lambda: HTML(string=html, base_url=str(TEMPLATES)).write_pdf(),
    )
    rows = [
        Row(
            "one invoice PDF (target ≤ 1.3)",
            milliseconds(median(ours)),
            f"WeasyPrint alone {milliseconds(median(direct))}",
            median(ours) / median(direct),
        )
    ]
    progress(f"documents: invoice {rows[0].ours} against {rows[0].baseline}")
    for count, runs in (QUICK_SERIES if quick else SERIES).items():
        docs = [invoice(n) for n in range(count)]
        single, series = interleaved(runs, lambda: render_pdf([invoice(0)]), lambda docs=docs: render_pdf(docs))  # type: ignore[misc]
        per_document = median(series) / count
        rows.append(
            Row(
                f"series export of {count}, per document (target ≤ 1.1)",
                f"{milliseconds(per_document)} ({milliseconds(median(series))} in all)",
                f"one single render {milliseconds(median(single))}",
                per_document / median(single),
            )
        )
        progress(f"documents: series of {count}: {rows[-1].ours}")
    notes = (
        "Medians of interleaved runs (ours, then the baseline, in turn), so machine load weighs on both. The render "
        "path is the documents function's own (`functions/render_invoice/rendering.py`: Jinja2 templates to "
        "WeasyPrint), in process; S3 and DynamoDB are not part of these figures (their round-trips are above). "
        "A series is one HTML document rendered in one WeasyPrint pass."
    )
    return Section("Documents", rows, notes)
