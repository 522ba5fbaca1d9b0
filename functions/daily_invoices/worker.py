"""Nightly invoicing, worker: one SQS message = one practice's night. Partial batch failures are reported."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import invoice_service
from billing.nightly import PracticeNight
from billing_lambda import wiring
from billing_lambda.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)
_summary: dict[str, int] = {}


def invoice_practice_night(record: SQSRecord) -> None:
    night = PracticeNight.model_validate_json(record.body)
    result = invoice_service.invoice_night(wiring.store(), wiring.clock, night.practice_id, night.business_date)
    _summary["practices"] = _summary.get("practices", 0) + 1
    _summary["invoices_created"] = _summary.get("invoices_created", 0) + result.invoices_created
    logger.info(
        "practice night invoiced",
        extra={"practice_id": night.practice_id, "invoices": result.invoices_created, "skipped": result.skipped},
    )
    metrics.add_metric(name="NightlyInvoicesCreated", unit="Count", value=result.invoices_created)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _summary.clear()
    response = process_partial_response(
        event=event, record_handler=invoice_practice_night, processor=processor, context=context
    )
    # Lambda reads only batchItemFailures; the summary is for the local scheduler's report.
    return {**response, "summary": dict(_summary)}


startup.ready()
