"""Nightly invoicing, entry: fired per time zone by EventBridge Scheduler; one SQS message per practice."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.nightly import NightlyRun, business_date
from billing_lambda import wiring
from billing_lambda.config import DailyInvoicesSettings, load_settings
from billing_lambda.fanout import send_all
from billing_lambda.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = NightlyRun.model_validate(event)
    day = business_date(run.scheduled_time, run.timezone)
    practices = wiring.store().practices_in_zone(run.timezone)
    nights = [{"practice_id": p.practice_id, "business_date": day.isoformat()} for p in practices]
    send_all(load_settings(DailyInvoicesSettings).daily_invoices_queue_url, nights)
    logger.info("nightly invoicing queued", extra={"timezone": run.timezone, "practices": len(practices)})
    metrics.add_metric(name="NightlyInvoicingPractices", unit="Count", value=len(practices))
    return {"timezone": run.timezone, "business_date": day.isoformat(), "practices": len(practices)}


startup.ready()
