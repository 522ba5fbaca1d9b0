"""Benchmark (not a test): document rendering time. ``make bench-documents``.

1. One invoice through the render path (assemble, Jinja2, WeasyPrint) against WeasyPrint rendering the very
   same HTML directly; target: at most 1.3x.
2. A series export of 1, 10 and 100 documents in one pass, time per document against one single render;
   target: at most 1.1x.
"""

import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "functions" / "render_invoice"))

from rendering import html_to_pdf, render_html, render_pdf  # noqa: E402
from weasyprint import HTML  # noqa: E402

from billing import documents  # noqa: E402
from billing.clients import Client  # noqa: E402
from billing.invoices import Invoice, InvoiceLine  # noqa: E402
from billing.practices import Practice  # noqa: E402

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


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Median seconds of ``runs`` calls (after one warm-up call)."""
    work()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    doc = invoice(0)
    html = render_html([doc])
    ours = best_of(15, lambda: render_pdf([invoice(0)]))
    direct = best_of(15, lambda: HTML(string=html, base_url=str(ROOT)).write_pdf())
    report(
        f"invoice: render path {ours * 1000:.0f} ms, WeasyPrint alone {direct * 1000:.0f} ms, "
        f"ratio {ours / direct:.2f}x (target <= 1.3x)"
    )
    assert html_to_pdf(html).startswith(b"%PDF")
    for count in (1, 10, 100):
        docs = [invoice(n) for n in range(count)]
        total = best_of(3 if count == 100 else 5, lambda docs=docs: render_pdf(docs))  # type: ignore[misc]
        per_document = total / count
        report(
            f"series of {count:3d}: {total * 1000:.0f} ms, {per_document * 1000:.0f} ms per document, "
            f"{per_document / ours:.2f}x a single render (target <= 1.1x)"
        )


if __name__ == "__main__":
    main()
