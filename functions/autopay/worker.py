"""AutoPay, worker: one SQS message = one client's night. A processor outage fails the message (retried while
the window lasts, then the DLQ); every other outcome is recorded and reported."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from datetime import UTC, date, datetime, timedelta
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AwareDatetime

from billing import autopay
from billing.schema import Model
from billing_lambda import wiring
from billing_lambda.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)
_summary: dict[str, int] = {}


class ClientNight(Model):
    practice_id: str
    client_id: str
    business_date: date
    at: AwareDatetime  # when the night's entry ran


def _attempt_at(night: ClientNight, record: SQSRecord) -> datetime:
    """When this attempt happens: the entry's instant plus how long the message has waited (a redelivery an
    hour later is an hour later), so the 00:00-06:00 window is judged on the real moment of the charge."""
    sent = datetime.fromtimestamp(int(record.attributes.sent_timestamp) / 1000, UTC)
    return night.at + max(timedelta(0), wiring.clock.now() - sent)


def charge_client_night(record: SQSRecord) -> None:
    night = ClientNight.model_validate_json(record.body)
    attempt = autopay.charge_night(
        wiring.store(),
        wiring.gateway(),
        wiring.clock,
        night.practice_id,
        night.client_id,
        night.business_date,
        _attempt_at(night, record),
    )
    outcome = attempt.outcome.value if attempt.reason is None else f"{attempt.outcome.value}_{attempt.reason}"
    _summary[attempt.outcome.value] = _summary.get(attempt.outcome.value, 0) + 1
    logger.info(
        "autopay night",
        extra={"client_id": night.client_id, "outcome": outcome, "decline_code": attempt.decline_code},
    )
    metrics.add_metric(name=f"AutoPay_{outcome}", unit="Count", value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _summary.clear()
    response = process_partial_response(
        event=event, record_handler=charge_client_night, processor=processor, context=context
    )
    return {**response, "summary": dict(_summary)}


startup.ready()
