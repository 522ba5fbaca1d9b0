"""The API's OpenAPI description, shared by every function: the error shape, the responses a route declares,
the JWT bearer scheme, the headers a handler checks itself, and the one correction Powertools' document needs.

A route states what it can answer with Powertools' own ``responses=``, built here so that each status reads the
same everywhere: ``responses(created("..."), accepted(Payment, "..."), *EVERY_ROUTE, 404, 409, INVALID)``.
Integers name error statuses (their description, body schema and examples live in `ERRORS`); dicts are the
route's successes. Headers a handler checks itself are listed with ``openapi_extensions=requires(...)``.
"""

from typing import TYPE_CHECKING, Any, cast

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel, Field, TypeAdapter

from billing.payments import IdempotencyKey, Payment
from billing.schema import Model

if TYPE_CHECKING:  # loaded only when a document is asked for: importing them costs every HTTP cold start ~100 ms
    from aws_lambda_powertools.event_handler.openapi.models import Example, OpenAPI

JSON = "application/json"
BEARER = "bearerAuth"
TITLE = "Time-of-session billing API"
VERSION = "1.0.0"
DESCRIPTION = """Billing for pay-as-you-go clinicians: the calendar, invoices, payments, refunds, AutoPay, billing
documents and the client portal.

Every route but the Stripe webhook needs `Authorization: Bearer <JWT>` (a Cognito ID token; locally `make token`).
The practice is the token's `custom:practice_id`; `/portal/...` routes need `custom:role = client` and act for
`custom:client_id`, every other route needs `custom:role = clinician`. Money is integer cents (`*_cents`), dates
are practice-local `YYYY-MM-DD`, instants ISO-8601 with an offset. Every error is
`{"error": {"code", "message", "details"}}`; `code` is stable and machine-readable."""


class ErrorDetail(Model):
    """What went wrong: a stable ``code`` for programs, a ``message`` for people, and the specifics."""

    code: str = Field(description="Stable and machine-readable, e.g. `client_not_found`.")
    message: str = Field(description="For people; never carries what was sent.")
    details: list[dict[str, Any]] = Field(description="The specifics: fields, ids or amounts involved.")


class ErrorResponse(Model):
    """The body of every error the API answers."""

    error: ErrorDetail


class FieldProblem(Model):
    """One invalid input: where it is, pydantic's kind of error and its message (never the value sent)."""

    in_: str = Field(alias="in", description="`body`, `path`, `query` or `header`.")
    field: str = Field(description="The dotted path of the field within `in`.")
    type: str | None = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`.")
    message: str


class ValidationErrorDetail(ErrorDetail):
    details: list[FieldProblem]  # type: ignore[assignment]  # narrower than any error's details


class ValidationErrorResponse(Model):
    """A request the API could not read or validate (``code`` is ``validation_error``)."""

    error: ValidationErrorDetail


class DeclineDetail(ErrorDetail):
    decline_code: str = Field(description="The processor's decline code, e.g. `insufficient_funds`.")


class DeclinedResponse(Model):
    """A declined card: the decline code twice (in the error and at the top) and the failed payment, recorded."""

    error: DeclineDetail
    decline_code: str
    payment: Payment | None = Field(default=None, description="The failed payment, when one was recorded.")


class Unauthorized(Model):
    """API Gateway's own answer to a missing or rejected JWT (the local server adds the usual ``error``)."""

    message: str = Field(examples=["Unauthorized"])
    error: ErrorDetail | None = None


def _example(code: str, message: str) -> dict[str, Any]:
    return {"summary": message, "value": {"error": {"code": code, "message": message, "details": []}}}


def _error(description: str, model: type[BaseModel], *examples: dict[str, Any]) -> OpenAPIResponse:
    named = {str(example["value"]["error"]["code"]): example for example in examples}
    return {"description": description, "content": {JSON: {"model": model, "examples": named}}}


ERRORS: dict[int, OpenAPIResponse] = {
    400: _error(
        "The request cannot be done as asked: a body that is not well-formed JSON (`invalid_json`), a missing or "
        "malformed `Idempotency-Key`, an amount below the processor's minimum, a payment method the processor "
        "refuses, an invalid date range... Nothing was changed.",
        ErrorResponse,
        _example("invalid_json", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        _example("idempotency_key_required", "send an Idempotency-Key header with every payment and refund"),
    ),
    401: {
        "description": "No bearer token, or one the JWT authorizer rejects (expired, wrong issuer or audience).",
        "content": {
            JSON: {"model": Unauthorized, "examples": {"unauthorized": {"value": {"message": "Unauthorized"}}}}
        },
    },
    402: _error(
        "The card was declined. No money moved; the failed payment is recorded and returned.",
        DeclinedResponse,
        {
            "summary": "Your card has insufficient funds.",
            "value": {
                "error": {
                    "code": "card_declined",
                    "message": "Your card has insufficient funds.",
                    "details": [{"decline_code": "insufficient_funds"}],
                    "decline_code": "insufficient_funds",
                },
                "decline_code": "insufficient_funds",
            },
        },
    ),
    403: _error(
        "The token's role may not use this route (staff routes need `custom:role` `clinician`, `/portal` routes "
        "`client`), or the token names no practice.",
        ErrorResponse,
        _example("wrong_role", "this route is for practice staff"),
    ),
    404: _error(
        "No such object in the caller's practice (another practice's objects are not found either), or the "
        "practice is not set up yet (`PUT /practice`).",
        ErrorResponse,
        _example("client_not_found", "client cli_x not found"),
        _example("practice_not_found", "practice prac_x not found"),
    ),
    409: _error(
        "The request conflicts with the current state (`code` says how); nothing was changed.",
        ErrorResponse,
        _example("payment_in_progress", "a payment on this invoice is still processing; try again later"),
        _example("idempotency_key_reused", "this Idempotency-Key was already used for a different request"),
        _example("concurrent_change", "the data kept changing while the request was handled; retry"),
    ),
    413: _error(
        'The body is larger than any request of this API needs (docs/api.md, "Input rules").',
        ErrorResponse,
        _example("body_too_large", "the body is larger than 65536 bytes"),
    ),
    415: _error(
        "The body is not JSON (send `Content-Type: application/json`).",
        ErrorResponse,
        _example("unsupported_media_type", "send the body as application/json"),
    ),
    422: _error(
        "The request does not match this document: a missing or unknown field, a wrong type, a value out of "
        "range. `details` names each field; nothing was changed.",
        ValidationErrorResponse,
        {
            "summary": "a field is missing",
            "value": {
                "error": {
                    "code": "validation_error",
                    "message": "the request is invalid",
                    "details": [{"in": "body", "field": "client_id", "type": "missing", "message": "Field required"}],
                }
            },
        },
    ),
    503: _error(
        "The card processor or AWS could not be reached, or stayed busy past the retries. Nothing is lost: retry "
        "the request as it is (payments and refunds with the same `Idempotency-Key`: a card is never charged twice "
        "for one key).",
        ErrorResponse,
        _example("service_unavailable", "the service is busy; retry the request"),
        _example("processor_unavailable", "Stripe is unavailable: connection refused"),
    ),
}

# What any route behind the JWT authorizer can answer, whatever it does: 401 from the authorizer; from
# `billing_lambda.http.resolve` 403 for the wrong role and 400/413/415 for a body that is not small JSON; 503 when
# AWS stays busy or out of reach after the SDK's retries.
EVERY_ROUTE = (400, 401, 403, 413, 415, 503)
# What a route that takes parameters or a body can answer when they do not validate.
INVALID = 422


def ok(description: str, status: int = 200) -> dict[int, OpenAPIResponse]:
    """A success whose body is what the handler's return annotation says (Powertools fills the schema in)."""
    return {status: {"description": description}}


def created(description: str) -> dict[int, OpenAPIResponse]:
    return ok(description, 201)


def accepted(model: type, description: str) -> dict[int, OpenAPIResponse]:
    """A 202: the processor took the request but has not finished it (never a decline); a webhook settles it."""
    return {202: {"description": description, "content": {JSON: {"model": model}}}}


def card_charge(model: type, succeeded: str) -> dict[int, OpenAPIResponse]:
    """What a route that may charge a card answers: 201 settled, 202 still processing, 402 declined, 404 (the
    client, invoice or card), 409 (a payment in progress with the same key, or nothing owed) and the rest."""
    processing = accepted(model, "The charge is processing (not a decline); a webhook settles it")
    return responses(created(succeeded), processing, *EVERY_ROUTE, 402, 404, 409, INVALID)


def no_content(description: str) -> dict[int, OpenAPIResponse]:
    return {204: {"description": description, "content": {}}}


def responses(*outcomes: int | dict[int, OpenAPIResponse]) -> dict[int, OpenAPIResponse]:
    """A route's ``responses=``: its successes (dicts) and the error statuses it can answer (from `ERRORS`)."""
    documented: dict[int, OpenAPIResponse] = {}
    for outcome in outcomes:
        documented.update(outcome if isinstance(outcome, dict) else {int(outcome): ERRORS[int(outcome)]})
    return documented


# ---------------------------------------------------------------- headers a handler checks itself

# Handlers check these headers themselves (a missing or malformed one is a 400 with its own code, not
# Powertools' 422), so they are not Powertools parameters; a route lists them with `requires`.
_HEADERS_EXTENSION = "x-billing-headers"


def _header(name: str, description: str, schema: dict[str, Any], example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": schema,
        "example": example,
    }


IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    "Makes the request safe to retry: the same key with the same body answers the first result again; the same "
    "key on another route or with another body is a 409. Missing or malformed: 400.",
    TypeAdapter(IdempotencyKey).json_schema(),  # the rule `billing_lambda.http.idempotency_key` applies
    "6f1c2a7e-0b4d-4d8e-9a51-3c2f1e0d9b7a",
)
STRIPE_SIGNATURE = _header(
    "Stripe-Signature",
    "Stripe's signature of the raw body with the webhook secret; an unsigned or forged event is a 400.",
    {"type": "string"},
    "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
)


def requires(*headers: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extensions=`` for a route whose handler requires ``headers`` (see `finish`)."""
    return {_HEADERS_EXTENSION: list(headers)}


# ---------------------------------------------------------------- example request bodies

# Made-up people and ids: what a request looks like, never anyone's data.
_CLIENT, _CARD, _INVOICE = "cli_5f2c9a0e", "card_81d0b7c4", "inv_3a9e61f0"
_PERIOD = {"from": "2026-11-01", "to": "2026-11-30"}


def body(**examples: tuple[str, Any]) -> Body:
    """A request body (Powertools ``Body``) documented with ``name=(summary, value)`` examples (plain dicts, which
    the document validates as Powertools' ``Example``)."""
    named = {name: {"summary": summary, "value": value} for name, (summary, value) in examples.items()}
    return Body(openapi_examples=cast("dict[str, Example]", named))


PRACTICE_BODY = body(
    daily=(
        "Invoices each local night, AutoPay on",
        {
            "name": "Calm Minds Counselling",
            "timezone": "America/Chicago",
            "invoice_creation": "daily",
            "invoice_due_days": 14,
            "autopay_enabled": True,
            "npi": "1234567893",
            "tax_id": "12-3456789",
        },
    )
)
CLIENT_BODY = body(client=("A client", {"first_name": "Ada", "last_name": "Byron", "diagnosis_codes": ["F41.1"]}))
APPOINTMENT_BODY = body(
    attended=(
        "A 50-minute session that took place",
        {
            "client_id": _CLIENT,
            "starts_at": "2026-11-27T15:00:00Z",
            "duration_minutes": 50,
            "service_code": "90837",
            "fee_cents": 15000,
            "status": "show",
        },
    )
)
ATTENDANCE_BODY = body(no_show=("A no-show, with its fee", {"status": "no_show", "fee_cents": 5000}))
INVOICE_BODY = body(
    invoice=(
        "Two appointments of one client",
        {"client_id": _CLIENT, "appointment_ids": ["apt_0c7e21aa", "apt_4b9d03f1"]},
    )
)
PAYMENT_BODY = body(
    card=("Charge the default card", {"client_id": _CLIENT, "amount_cents": 15000, "method": "card_on_file"}),
    cash=(
        "Record cash for one invoice",
        {
            "client_id": _CLIENT,
            "amount_cents": 5000,
            "method": "cash",
            "reference": "front desk",
            "invoice_ids": [_INVOICE],
        },
    ),
)
TIME_OF_SERVICE_BODY = body(card=("Charge the default card", {"method": "card_on_file"}))
REFUND_BODY = body(part=("Refund $25.00", {"amount_cents": 2500}), everything=("All that is refundable", {}))
CARD_BODY = body(visa=("A card collected by Stripe.js", {"payment_method_id": "pm_card_visa"}))
AUTOPAY_BODY = body(
    enrol=("Enrol with this card", {"enabled": True, "card_id": _CARD}), end=("End AutoPay", {"enabled": False})
)
PERIOD_BODY = body(month=("November 2026", _PERIOD))
EXPORT_BODY = body(month=("Invoices and receipts of November 2026", {**_PERIOD, "types": ["invoice", "receipt"]}))
PORTAL_PAYMENT_BODY = body(
    balance=("The whole balance, by the default card", {}),
    invoice=(
        "One invoice, by a new card kept on file",
        {"invoice_ids": [_INVOICE], "payment_method_id": "pm_card_visa", "save_card": True},
    ),
)


# ---------------------------------------------------------------- the resolver and its document


class DocumentedResolver(APIGatewayHttpResolver):
    """Powertools' HTTP API resolver (validation on) whose OpenAPI document says what the API really answers."""

    def __init__(self) -> None:
        super().__init__(enable_validation=True)
        self.configure_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, security=[{BEARER: []}])

    def get_openapi_schema(self, **settings: Any) -> "OpenAPI":
        from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, OpenAPI

        bearer = HTTPBearer(bearerFormat="JWT", description="A Cognito ID token; locally `make token` (HS256).")
        settings["security_schemes"] = settings.get("security_schemes") or {BEARER: bearer}
        generated = super().get_openapi_schema(**settings)
        document = finish(generated.model_dump(mode="json", by_alias=True, exclude_none=True))
        return OpenAPI.model_validate(document)


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Correct what Powertools 3.37 generates and cannot be told otherwise, in place.

    - A validating resolver gives every operation its own 422 (``HTTPValidationError``, a ``{"detail"}`` body the
      API never answers: http.py answers the error shape). A route replaces it by declaring `INVALID`, as every
      route that takes input does, but cannot remove it (``schema_generator._add_validation_responses``; issue
      #3600 made it unconditional): an operation that takes no input cannot answer 422, so Powertools' is dropped
      there, and its now unused schemas with it.
    - Headers a handler checks itself (`requires`) become the operation's required header parameters: declared
      as Powertools parameters they would be validated by Powertools, a 422 instead of the handler's 400.
    """
    for operation in _operations(document):
        operation.setdefault("parameters", []).extend(operation.pop(_HEADERS_EXTENSION, []))
        if not operation["parameters"]:
            del operation["parameters"]
        responses = operation.get("responses") or {}
        if _is_powertools_validation_error(responses.get("422")):
            del responses["422"]
    _drop_unused_schemas(document)
    return document


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for path in (document.get("paths") or {}).values() for operation in path.values()]


def _is_powertools_validation_error(response: dict[str, Any] | None) -> bool:
    schema = ((response or {}).get("content") or {}).get(JSON, {}).get("schema") or {}
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _drop_unused_schemas(document: dict[str, Any]) -> None:
    """Remove component schemas nothing refers to (directly or through other schemas)."""
    schemas: dict[str, Any] = (document.get("components") or {}).get("schemas") or {}
    used: set[str] = set()
    pending = _references({key: value for key, value in document.items() if key != "components"})
    while pending:
        name = pending.pop()
        if name not in used and name in schemas:
            used.add(name)
            pending |= _references(schemas[name])
    for name in set(schemas) - used:
        del schemas[name]


def _references(node: Any) -> set[str]:
    """The component schema names ``node`` refers to with ``$ref``."""
    if isinstance(node, dict):
        found = {str(node["$ref"]).rpartition("/")[2]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_references(value) for value in node))
    return set()
