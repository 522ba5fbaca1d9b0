"""Finance CSV exports (invoices, payments) per practice to the documents bucket: on demand
(``POST /exports/finance``) and nightly per time zone for the previous local day: ``lambda_handler`` is the
finance-export schedule's entry (one SQS message per practice), ``worker_handler`` writes one practice's CSVs.

Columns are fixed and documented in README ("Finance exports"); money is integer minor units throughout.
"""

import csv
import io
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from archive import CSV, DocumentArchive
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from billing import documents
from billing.documents import DateRange, FinanceExportLinks
from billing.errors import existing
from billing.localtime import Clock, local_date
from billing.nightly import NightlyRun, PracticeNight, business_date
from billing.practices import Practice
from billing_aws.documents import DocumentStore
from billing_lambda import wiring
from billing_lambda.aws_clients import client
from billing_lambda.config import FunctionSettings, load_settings
from billing_lambda.fanout import send_all
from billing_lambda.observability import logger, metrics, tracer


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


class FinanceExportSettings(FunctionSettings):
    finance_export_queue_url: str = Field(alias="FINANCE_EXPORT_QUEUE_URL", min_length=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The nightly entry of one zone: one SQS message per practice, for the local day before the business date."""
    run = NightlyRun.model_validate(event)
    day = business_date(run.scheduled_time, run.timezone) - timedelta(days=1)
    practices = document_store().practices_in_zone(run.timezone)
    nights = [PracticeNight(practice_id=p.practice_id, business_date=day).model_dump(mode="json") for p in practices]
    send_all(load_settings(FinanceExportSettings).finance_export_queue_url, nights)
    metrics.add_metric(name="FinanceExportPractices", unit="Count", value=len(practices))
    return {"timezone": run.timezone, "date": day.isoformat(), "practices": len(practices)}


processor = BatchProcessor(event_type=EventType.SQS)


def export_practice_day(record: SQSRecord) -> None:
    """One practice's CSVs for one local day (writing them again for the same day replaces them)."""
    night = PracticeNight.model_validate_json(record.body)
    practice = existing(document_store().get_practice(night.practice_id), "practice", night.practice_id)
    period = DateRange.model_validate({"from": night.business_date, "to": night.business_date})
    FinanceExports.from_settings(document_store(), wiring.clock).write(practice, period)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def worker_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response = process_partial_response(
        event=event, record_handler=export_practice_day, processor=processor, context=context
    )
    return dict(response)
