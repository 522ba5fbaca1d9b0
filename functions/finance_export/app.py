"""The nightly finance export, per time zone, for the previous local day: ``lambda_handler`` is the finance-export
schedule's entry (one SQS message per practice), ``worker_handler`` writes one practice's CSVs
(`billing_lambda.finance_exports`, which the documents function also uses for exports on demand).
"""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from billing.documents import DateRange
from billing.errors import existing
from billing.nightly import NightlyRun, PracticeNight, business_date
from billing_lambda import wiring
from billing_lambda.config import FunctionSettings, load_settings
from billing_lambda.fanout import send_all
from billing_lambda.finance_exports import FinanceExports, document_store
from billing_lambda.observability import logger, metrics, tracer


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


startup.ready()
