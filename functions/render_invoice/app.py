"""Billing documents: invoice, receipt, statement and superbill PDFs, a client's series as one PDF, and
finance CSV exports on demand. Every route checks the caller may see the object (tenant from the token,
a portal client only their own), then answers a presigned URL valid for at most 5 minutes."""

from billing_lambda import startup  # first: the cold start's imports run with the GC paused

# isort: split

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from publisher import Publisher
from pydantic import ValidationError

from billing.documents import DateRange, DocumentLink, ExportLink, ExportRequest, FinanceExportLinks, StatementLink
from billing.errors import InvalidRequest
from billing.schema import ServiceDate
from billing_aws.archive import DocumentArchive
from billing_lambda import wiring
from billing_lambda.aws_clients import client
from billing_lambda.finance_exports import FinanceExports, document_store, export_settings
from billing_lambda.http import PathId, Tenant, build_resolver, clinician, portal_client, resolve
from billing_lambda.observability import logger, metrics, tracer
from billing_lambda.openapi import EVERY_ROUTE, EXPORT_BODY, INVALID, PERIOD_BODY, created, ok, responses

app = build_resolver()
LINK = "A presigned link to the PDF, valid for at most 5 minutes"


def publisher(caller: Tenant) -> Publisher:
    settings = export_settings()
    archive = DocumentArchive(client("s3"), settings.documents_bucket, settings.documents_key_id)
    return Publisher(document_store(), archive, wiring.clock, wiring.practice(caller.practice_id))


@app.get(
    "/invoices/<invoice_id>/pdf",
    tags=["Documents"],
    summary="Download an invoice as PDF",
    responses=responses(ok(LINK), *EVERY_ROUTE, 404, INVALID),
)
def get_invoice_pdf(invoice_id: PathId) -> DocumentLink:
    return publisher(clinician(app)).invoice(invoice_id)


@app.get(
    "/payments/<payment_id>/receipt",
    tags=["Documents"],
    summary="Download a payment's receipt as PDF",
    responses=responses(ok(LINK), *EVERY_ROUTE, 404, 409, INVALID),
)
def get_receipt(payment_id: PathId) -> DocumentLink:
    return publisher(clinician(app)).receipt(payment_id)


@app.post(
    "/clients/<client_id>/statements",
    status_code=201,
    tags=["Documents"],
    summary="A statement",
    description="Opening balance, the invoices and payments of the range, closing balance.",
    responses=responses(created(LINK), *EVERY_ROUTE, 404, INVALID),
)
def post_statement(client_id: PathId, period: Annotated[DateRange, PERIOD_BODY]) -> StatementLink:
    return publisher(clinician(app)).statement(client_id, period)


@app.post(
    "/clients/<client_id>/superbills",
    status_code=201,
    tags=["Documents"],
    summary="A superbill",
    description="A statement for insurance reimbursement (CPT and ICD-10 codes, NPI, tax ID); 409 "
    "`superbill_details_missing` names what the practice or client still lacks.",
    responses=responses(created(LINK), *EVERY_ROUTE, 404, 409, INVALID),
)
def post_superbill(client_id: PathId, period: Annotated[DateRange, PERIOD_BODY]) -> DocumentLink:
    return publisher(clinician(app)).superbill(client_id, period)


@app.post(
    "/clients/<client_id>/billing-documents/export",
    status_code=201,
    tags=["Documents"],
    summary="A client's documents in a date range as one PDF",
    description="409 `no_documents` when the range holds none of the types asked for.",
    responses=responses(created(LINK), *EVERY_ROUTE, 404, 409, INVALID),
)
def post_series(client_id: PathId, request: Annotated[ExportRequest, EXPORT_BODY]) -> ExportLink:
    return publisher(clinician(app)).series(client_id, request, request.types)


@app.post(
    "/exports/finance",
    status_code=201,
    tags=["Exports"],
    summary="Invoices and payments CSVs for a range",
    responses=responses(created("Links to the two CSVs, valid for at most 5 minutes"), *EVERY_ROUTE, 404, INVALID),
)
def post_finance_export(period: Annotated[DateRange, PERIOD_BODY]) -> FinanceExportLinks:
    caller = clinician(app)
    return FinanceExports.from_settings(document_store(), wiring.clock).export(
        wiring.practice(caller.practice_id), period
    )


@app.get(
    "/portal/invoices/<invoice_id>/pdf",
    tags=["Portal"],
    summary="One of my invoices as PDF",
    responses=responses(ok(LINK), *EVERY_ROUTE, 404, INVALID),
)
def get_portal_invoice_pdf(invoice_id: PathId) -> DocumentLink:
    caller = portal_client(app)
    return publisher(caller).invoice(invoice_id, client_id=caller.client_id)


@app.get(
    "/portal/payments/<payment_id>/receipt",
    tags=["Portal"],
    summary="The receipt of one of my payments",
    responses=responses(ok(LINK), *EVERY_ROUTE, 404, 409, INVALID),
)
def get_portal_receipt(payment_id: PathId) -> DocumentLink:
    caller = portal_client(app)
    return publisher(caller).receipt(payment_id, client_id=caller.client_id)


@app.get(
    "/portal/statements",
    tags=["Portal"],
    summary="My statement for a date range",
    responses=responses(ok(LINK), *EVERY_ROUTE, 404, INVALID),
)
def get_portal_statement(
    start: Annotated[ServiceDate, Query(alias="from")], end: Annotated[ServiceDate, Query(alias="to")]
) -> StatementLink:
    caller = portal_client(app)
    try:
        period = DateRange.model_validate({"from": start, "to": end})
    except ValidationError as error:
        raise InvalidRequest(error.errors()[0]["msg"], code="invalid_range") from None
    return publisher(caller).statement(str(caller.client_id), period)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)


startup.ready()
