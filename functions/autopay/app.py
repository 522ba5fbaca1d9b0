"""AutoPay, entry: fired per time zone by EventBridge Scheduler inside 00:00-06:00 local; one SQS message per
enrolled client of the zone's practices (found through the sparse AutoPay index, no Scan)."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billing.nightly import NightlyRun, business_date
from billing_lambda import wiring
from billing_lambda.config import AutoPaySettings, load_settings
from billing_lambda.fanout import send_all
from billing_lambda.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = NightlyRun.model_validate(event)
    day = business_date(run.scheduled_time, run.timezone)
    attempt_at = (run.invoked_at or wiring.clock.now()).isoformat()
    store = wiring.store()
    nights = [
        {
            "practice_id": practice.practice_id,
            "client_id": client_id,
            "business_date": day.isoformat(),
            "at": attempt_at,
        }
        for practice in store.practices_in_zone(run.timezone)
        if practice.autopay_enabled
        for client_id in store.enrolled_clients(practice.practice_id)
    ]
    send_all(load_settings(AutoPaySettings).autopay_queue_url, nights)
    logger.info("autopay queued", extra={"timezone": run.timezone, "clients": len(nights)})
    metrics.add_metric(name="AutoPayClientsQueued", unit="Count", value=len(nights))
    return {"timezone": run.timezone, "business_date": day.isoformat(), "clients": len(nights)}


startup.ready()
