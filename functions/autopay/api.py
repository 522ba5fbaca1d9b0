"""AutoPay for staff: enrol a client (consent recorded), the evening preview, and the nightly report."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import autopay
from billing.autopay import Attempt, AutoPayRequest, AutoPayView, PreviewCharge
from billing.schema import ServiceDate
from billing_lambda import wiring
from billing_lambda.http import PathId, build_resolver, clinician, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import AUTOPAY_BODY, EVERY_ROUTE, INVALID, ok, responses

app = build_resolver()


@app.put(
    "/clients/<client_id>/autopay",
    tags=["AutoPay"],
    summary="Enrol one client in AutoPay, or end it",
    description="Enrolment records consent (who, when, which card, which authorisation text). 409 when the client "
    "has no card on file or AutoPay is off for the practice.",
    responses=responses(ok("The AutoPay state, with the consent recorded"), *EVERY_ROUTE, 404, 409, INVALID),
)
def put_autopay(client_id: PathId, request: Annotated[AutoPayRequest, AUTOPAY_BODY]) -> AutoPayView:
    caller = clinician(app)
    practice = wiring.practice(caller.practice_id)
    state = autopay.set_autopay(wiring.store(), wiring.clock, practice, client_id, request, caller.user_id)
    metrics.add_metric(name="AutoPayEnrolled" if state.enabled else "AutoPayEnded", unit="Count", value=1)
    return state


@app.get(
    "/autopay/preview",
    tags=["AutoPay"],
    summary="What the night of a business date will charge",
    description="`date` is the local date on which the night's 00:00-06:00 falls; the amounts include what that "
    "night's daily invoicing adds first.",
    responses=responses(ok('`{"date", "charges": [{client_id, amount_cents, card_id}]}`'), *EVERY_ROUTE, 404, INVALID),
)
def get_preview(day: Annotated[ServiceDate, Query(alias="date")]) -> dict[str, Any]:
    practice = wiring.practice(clinician(app).practice_id)
    charges: list[PreviewCharge] = autopay.preview(wiring.store(), practice, day)
    return {"date": day.isoformat(), "charges": [c.model_dump() for c in charges]}


@app.get(
    "/autopay/runs",
    tags=["AutoPay"],
    summary="Every AutoPay outcome of a business date",
    responses=responses(ok('`{"date", "outcomes": [...]}`: charged, declined or skipped'), *EVERY_ROUTE, INVALID),
)
def get_runs(day: Annotated[ServiceDate, Query(alias="date")]) -> dict[str, Any]:
    practice_id = clinician(app).practice_id
    outcomes: list[Attempt] = autopay.night_report(wiring.store(), practice_id, day)
    return {"date": day.isoformat(), "outcomes": [o.model_dump(mode="json") for o in outcomes]}


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
