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


def interleaved(runs: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second``, run alternately (after one warm-up each), so that load
    from anything else on the machine weighs on both alike."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for work, into in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            work()
            into.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    html = render_html([invoice(0)])
    ours, direct = interleaved(
        15, lambda: render_pdf([invoice(0)]), lambda: HTML(string=html, base_url=str(ROOT)).write_pdf()
    )
    report(
        f"invoice: render path {ours * 1000:.0f} ms, WeasyPrint alone {direct * 1000:.0f} ms, "
        f"ratio {ours / direct:.2f}x (target <= 1.3x)"
    )
    assert html_to_pdf(html).startswith(b"%PDF")
    for count, runs in ((1, 15), (10, 5), (100, 3)):
        docs = [invoice(n) for n in range(count)]
        single, total = interleaved(runs, lambda: render_pdf([invoice(0)]), lambda docs=docs: render_pdf(docs))  # type: ignore[misc]
        per_document = total / count
        report(
            f"series of {count:3d}: {total * 1000:.0f} ms, {per_document * 1000:.0f} ms per document, "
            f"{per_document / single:.2f}x a single render of {single * 1000:.0f} ms (target <= 1.1x)"
        )


if __name__ == "__main__":
    main()
