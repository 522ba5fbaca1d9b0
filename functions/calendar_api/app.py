"""Calendar API: the practice and its settings, clients, appointments, and a client's billing overview."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import accounts, autopay, calendar, clients, practices
from billing.accounts import BillingOverview
from billing.calendar import Appointment, AppointmentChange, AppointmentRequest
from billing.clients import Client, ClientDetails
from billing.practices import Practice, PracticeSettings
from billing.schema import ServiceDate
from billing_lambda import wiring
from billing_lambda.http import PathId, build_resolver, clinician, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import (
    APPOINTMENT_BODY,
    ATTENDANCE_BODY,
    CLIENT_BODY,
    EVERY_ROUTE,
    INVALID,
    PRACTICE_BODY,
    created,
    ok,
    responses,
)

app = build_resolver()


@app.put(
    "/practice",
    tags=["Practice"],
    summary="Create or update the practice and its billing settings",
    description="The first call creates the practice of the token's `custom:practice_id`; later calls replace its "
    "settings. Its IANA time zone decides every local date.",
    responses=responses(ok("The practice as saved"), *EVERY_ROUTE, 409, INVALID),
)
def put_practice(settings: Annotated[PracticeSettings, PRACTICE_BODY]) -> Practice:
    caller = clinician(app)
    store = wiring.store()
    before = store.get_practice(caller.practice_id)
    saved = practices.save_practice(store, wiring.nightly_schedules(), wiring.clock, caller.practice_id, settings)
    autopay.practice_saved(store, before, saved)
    return saved


@app.get(
    "/practice",
    tags=["Practice"],
    summary="The practice and its billing settings",
    responses=responses(ok("The practice"), *EVERY_ROUTE, 404),
)
def get_practice() -> Practice:
    return wiring.practice(clinician(app).practice_id)


@app.post(
    "/clients",
    status_code=201,
    tags=["Clients"],
    summary="Register a client",
    responses=responses(created("The client"), *EVERY_ROUTE, 404, INVALID),
)
def post_client(details: Annotated[ClientDetails, CLIENT_BODY]) -> Client:
    caller = clinician(app)
    wiring.practice(caller.practice_id)
    client = clients.add_client(wiring.store(), wiring.clock, caller.practice_id, details)
    metrics.add_metric(name="ClientsCreated", unit="Count", value=1)
    return client


@app.get(
    "/clients/<client_id>",
    tags=["Clients"],
    summary="A client",
    responses=responses(ok("The client"), *EVERY_ROUTE, 404, INVALID),
)
def get_client(client_id: PathId) -> Client:
    return clients.require_client(wiring.store(), clinician(app).practice_id, client_id)


@app.get(
    "/clients/<client_id>/billing-overview",
    tags=["Clients"],
    summary="What the client owes and why",
    description="Balance, invoiced, paid, unpaid invoices, credit, uninvoiced work, cards and AutoPay: what staff "
    "review before enrolling a client in AutoPay.",
    responses=responses(ok("The client's billing overview"), *EVERY_ROUTE, 404, INVALID),
)
def get_billing_overview(client_id: PathId) -> BillingOverview:
    practice = wiring.practice(clinician(app).practice_id)
    return accounts.billing_overview(wiring.store(), wiring.clock.now(), practice, client_id)


@app.post(
    "/appointments",
    status_code=201,
    tags=["Calendar"],
    summary="Put an appointment on the calendar",
    description="Its `local_date` is the date of `starts_at` in the practice's time zone.",
    responses=responses(created("The appointment (`invoice_id` null)"), *EVERY_ROUTE, 404, INVALID),
)
def post_appointment(request: Annotated[AppointmentRequest, APPOINTMENT_BODY]) -> Appointment:
    caller = clinician(app)
    practice = wiring.practice(caller.practice_id)
    clients.require_client(wiring.store(), caller.practice_id, request.client_id)
    return calendar.schedule_appointment(wiring.store(), wiring.clock, practice, request)


@app.get(
    "/appointments",
    tags=["Calendar"],
    summary="The appointments of one practice-local day",
    responses=responses(ok('`{"appointments": [...]}`'), *EVERY_ROUTE, INVALID),
)
def list_appointments(day: Annotated[ServiceDate, Query(alias="date")]) -> dict[str, list[Appointment]]:
    caller = clinician(app)
    return {"appointments": wiring.store().appointments_on(caller.practice_id, day)}


@app.patch(
    "/appointments/<appointment_id>",
    tags=["Calendar"],
    summary="Mark attendance or change the fee",
    description="An invoiced appointment keeps its fee and stays billable (409 `appointment_invoiced`: void the "
    "invoice first); its modality, modifiers and units may still change.",
    responses=responses(ok("The appointment as changed"), *EVERY_ROUTE, 404, 409, INVALID),
)
def patch_appointment(appointment_id: PathId, change: Annotated[AppointmentChange, ATTENDANCE_BODY]) -> Appointment:
    caller = clinician(app)
    return calendar.change_appointment(wiring.store(), wiring.clock, caller.practice_id, appointment_id, change)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
