"""HTML templates (Jinja2) to PDF (WeasyPrint): the only module that imports either.

A whole series is laid out as one HTML document and rendered in one WeasyPrint pass, so exporting N
documents costs one start-up, not N.
"""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from weasyprint import HTML

from billing.documents import Document, InvoiceDocument, ReceiptDocument, StatementDocument, SuperbillDocument
from billing.money import format_amount

TEMPLATES = Path(__file__).resolve().parent / "templates"
_TEMPLATE_OF = {
    InvoiceDocument: "invoice.html",
    ReceiptDocument: "receipt.html",
    StatementDocument: "statement.html",
    SuperbillDocument: "superbill.html",
}
PAPER_SIZES = {"letter": "letter", "a4": "A4"}


def money(cents: int, currency: str = "usd") -> str:
    """``$1,234.50`` for dollars; other currencies as ``1,234.50 EUR``."""
    if currency.lower() == "usd":
        sign = "-" if cents < 0 else ""
        major, minor = divmod(abs(cents), 100)
        return f"{sign}${major:,}.{minor:02d}"
    return format_amount(cents, currency)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = money
    env.filters["day"] = lambda d: f"{d:%b} {d.day}, {d.year}"  # Nov 27, 2026: unambiguous for US and EU readers
    return env


_ENV = _environment()


def render_html(documents: list[Document], paper: str = "letter") -> str:
    """The series as one HTML document; each document starts on a new page."""
    parts = [(_TEMPLATE_OF[type(d)], d) for d in documents]
    return _ENV.get_template("series.html").render(parts=parts, paper=PAPER_SIZES.get(paper, "letter"))


def html_to_pdf(html: str) -> bytes:
    return HTML(string=html, base_url=str(TEMPLATES)).write_pdf()


def render_pdf(documents: list[Document], paper: str = "letter") -> bytes:
    """One PDF holding ``documents`` in the order given, rendered in one pass."""
    return html_to_pdf(render_html(documents, paper))
