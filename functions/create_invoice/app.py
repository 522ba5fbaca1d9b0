"""Invoices by hand: create from chosen appointments, read, list a client's, void."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from billing import invoice_service, payment_service
from billing.clients import require_client
from billing.invoices import Invoice, InvoiceRequest, require_invoice
from billing.localtime import local_date
from billing_lambda import wiring
from billing_lambda.http import PathId, build_resolver, clinician, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import EVERY_ROUTE, INVALID, INVOICE_BODY, created, ok, responses

app = build_resolver()


@app.post(
    "/invoices",
    status_code=201,
    tags=["Invoices"],
    summary="Invoice chosen appointments of one client",
    description="The next gapless number of the practice; the client's credit is applied, oldest first. 409 when "
    "an appointment is already on a live invoice or is not billable.",
    responses=responses(created("The invoice"), *EVERY_ROUTE, 404, 409, INVALID),
)
def post_invoice(request: Annotated[InvoiceRequest, INVOICE_BODY]) -> Invoice:
    caller = clinician(app)
    require_client(wiring.store(), caller.practice_id, request.client_id)
    invoice = invoice_service.create_invoice(wiring.store(), wiring.clock, caller.practice_id, request)
    metrics.add_metric(name="InvoicesCreated", unit="Count", value=1)
    logger.info("invoice created", extra={"invoice_id": invoice.invoice_id, "lines": len(invoice.lines)})
    return invoice


@app.get(
    "/invoices/<invoice_id>",
    tags=["Invoices"],
    summary="An invoice",
    responses=responses(ok("The invoice"), *EVERY_ROUTE, 404, INVALID),
)
def get_invoice(invoice_id: PathId) -> Invoice:
    practice = wiring.practice(clinician(app).practice_id)
    invoice = require_invoice(wiring.store(), practice.practice_id, invoice_id)
    return invoice.reported_on(local_date(wiring.clock.now(), practice.timezone))


@app.get(
    "/clients/<client_id>/invoices",
    tags=["Invoices"],
    summary="A client's invoices, newest first",
    responses=responses(ok('`{"invoices": [...]}`'), *EVERY_ROUTE, 404, INVALID),
)
def list_client_invoices(client_id: PathId) -> dict[str, list[Invoice]]:
    practice = wiring.practice(clinician(app).practice_id)
    require_client(wiring.store(), practice.practice_id, client_id)
    return {"invoices": invoice_service.client_invoices(wiring.store(), wiring.clock, practice, client_id)}


@app.post(
    "/invoices/<invoice_id>/void",
    tags=["Invoices"],
    summary="Void an invoice (its number stays used)",
    description="Its appointments can be invoiced again and what was paid on it becomes credit. A payment still "
    "in flight on it is settled from the processor first (503 when the processor cannot be asked), or the void is "
    "refused with 409 while that charge may still be sent.",
    responses=responses(ok("The void invoice"), *EVERY_ROUTE, 404, 409, INVALID),
)
def post_void(invoice_id: PathId) -> Invoice:
    practice_id = clinician(app).practice_id
    store = wiring.store()

    def resolve_in_flight(payment_id: str) -> object:
        return payment_service.resolve_payment(store, wiring.gateway(), wiring.clock, practice_id, payment_id)

    invoice = invoice_service.void_invoice(store, wiring.clock, practice_id, invoice_id, resolve_in_flight)
    metrics.add_metric(name="InvoicesVoided", unit="Count", value=1)
    return invoice


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
