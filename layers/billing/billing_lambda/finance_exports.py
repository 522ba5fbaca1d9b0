"""Finance CSV exports (invoices, payments) of one practice and period to the documents bucket: written on demand
by the documents function (``POST /exports/finance``) and nightly by the finance-export worker.

Columns are fixed and documented in README ("Finance exports"); money is integer minor units throughout.
"""

import csv
import io
from dataclasses import dataclass
from functools import cache

from pydantic import Field

from billing import documents
from billing.documents import DateRange, FinanceExportLinks
from billing.localtime import Clock, local_date
from billing.practices import Practice
from billing_aws.archive import CSV, DocumentArchive
from billing_aws.documents import DocumentStore
from billing_lambda.aws_clients import client
from billing_lambda.config import FunctionSettings, load_settings
from billing_lambda.observability import logger


class DocumentSettings(FunctionSettings):
    documents_bucket: str = Field(alias="DOCUMENTS_BUCKET", min_length=1)
    documents_key_id: str | None = Field(default=None, alias="DOCUMENTS_KMS_KEY_ID")


def export_settings() -> DocumentSettings:
    return load_settings(DocumentSettings)


@cache
def document_store() -> DocumentStore:
    return DocumentStore(client("dynamodb"), load_settings(FunctionSettings).table_name)


def to_csv(columns: list[str], rows: list[list[str | int]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


@dataclass
class FinanceExports:
    store: DocumentStore
    archive: DocumentArchive
    clock: Clock

    @classmethod
    def from_settings(cls, store: DocumentStore, clock: Clock) -> "FinanceExports":
        settings = export_settings()
        return cls(store, DocumentArchive(client("s3"), settings.documents_bucket, settings.documents_key_id), clock)

    def write(self, practice: Practice, period: DateRange) -> tuple[str, str]:
        """Write both CSVs for ``period`` (local dates); returns their keys (the practice id and the range only)."""
        pid = practice.practice_id
        today = local_date(self.clock.now(), practice.timezone)
        invoices = [i for i in self.store.practice_invoices(pid) if period.covers(i.issue_date)]
        payments = [
            p for p in self.store.practice_payments(pid) if period.covers(local_date(p.created_at, practice.timezone))
        ]
        client_ids = {i.client_id for i in invoices} | {p.client_id for p in payments}
        clients = {c: found for c in sorted(client_ids) if (found := self.store.get_client(pid, c)) is not None}
        allocated = {a.invoice_id for p in payments for a in p.allocations}
        numbers = {i.invoice_id: i.number for i in self.store.invoices_by_id(pid, sorted(allocated))}
        folder = f"exports/{pid}/finance/{period.start.isoformat()}--{period.end.isoformat()}"
        invoices_csv = to_csv(documents.INVOICE_COLUMNS, documents.invoice_rows(invoices, clients, today))
        payments_csv = to_csv(
            documents.PAYMENT_COLUMNS, documents.payment_rows(payments, numbers, clients, practice.timezone)
        )
        self.archive.put(f"{folder}/invoices.csv", invoices_csv, CSV)
        self.archive.put(f"{folder}/payments.csv", payments_csv, CSV)
        logger.info("finance export written", extra={"practice_id": pid, "invoices": len(invoices)})
        return f"{folder}/invoices.csv", f"{folder}/payments.csv"

    def export(self, practice: Practice, period: DateRange) -> FinanceExportLinks:
        invoices_key, payments_key = self.write(practice, period)
        now = self.clock.now()
        invoices_url, expires_at = self.archive.link(invoices_key, now, "invoices.csv")
        payments_url, _ = self.archive.link(payments_key, now, "payments.csv")
        return FinanceExportLinks(invoices_url=invoices_url, payments_url=payments_url, expires_at=expires_at)
