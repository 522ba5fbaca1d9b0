"""The HTTP edge: one resolver factory, one error shape, and the tenant taken from the verified token only.

Errors always read ``{"error": {"code", "message", "details"}}``; domain errors map to statuses here. Before any
route runs, the caller's role and the body's shape (size, UTF-8, JSON depth and numbers) are checked once here,
so no route ever sees a body its parser or validator could choke on (docs/api.md, "Input rules").
"""

import base64
import json
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from itertools import accumulate
from typing import Annotated, Any, NoReturn

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Path
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import TypeAdapter, ValidationError

from billing.errors import (
    BillingError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PaymentDeclined,
    ProcessorUnavailable,
)
from billing.payments import IdempotencyKey
from billing.schema import Model
from billing_lambda import aws_clients
from billing_lambda.observability import logger
from billing_lambda.openapi import DocumentedResolver

_STATUS_OF: list[tuple[type[BillingError], HTTPStatus]] = [
    (NotFound, HTTPStatus.NOT_FOUND),
    (Conflict, HTTPStatus.CONFLICT),
    (Forbidden, HTTPStatus.FORBIDDEN),
    (PaymentDeclined, HTTPStatus.PAYMENT_REQUIRED),
    (InvalidRequest, HTTPStatus.BAD_REQUEST),
    (ProcessorUnavailable, HTTPStatus.SERVICE_UNAVAILABLE),
]
_ID_PATTERN = r"^[A-Za-z0-9_-]+$"

# A path id: anything longer or odder than our ids cannot exist, so it is refused before it reaches a key.
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID_PATTERN)]


# Limits on a request body, checked before it is parsed (docs/api.md, "Input rules"). The largest real body
# (practice settings with an address) is a few KiB; no model nests deeper than 3; no number has over 9 digits.
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 20
MAX_NUMBER_CHARACTERS = 20


def _error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(status: HTTPStatus, code: str, message: str, details: list[Any] | None = None) -> Response:
    body = _error_body(code, message, details)
    return Response(status_code=status.value, content_type=content_types.APPLICATION_JSON, body=body)


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    """One validation problem for the caller: where, what kind, and pydantic's message (never the input)."""
    location = [str(part) for part in error.get("loc", ())] or ["body"]
    return {
        "in": location[0],
        "field": ".".join(location[1:]) or location[0],
        "type": error.get("type"),
        "message": error.get("msg", "invalid value"),
    }


def build_resolver() -> APIGatewayHttpResolver:
    """An HTTP API resolver with request validation and the project's error mapping installed."""
    app = DocumentedResolver()

    @app.exception_handler(BillingError)
    def _billing_error(error: BillingError) -> Response:
        status = next((status for kind, status in _STATUS_OF if isinstance(error, kind)), HTTPStatus.BAD_REQUEST)
        logger.info("request refused", extra={"error_code": error.code, "status": status.value})
        response = error_response(status, error.code, error.message, error.details)
        if isinstance(error, PaymentDeclined):
            response.body["error"]["decline_code"] = error.decline_code  # type: ignore[index]
            response.body["decline_code"] = error.decline_code  # type: ignore[index]
            if error.payment is not None:
                response.body["payment"] = error.payment  # type: ignore[index]
        return response

    @app.exception_handler(RequestValidationError)
    def _invalid(error: RequestValidationError) -> Response:
        details = [_describe(e) for e in error.errors()]
        logger.info("request invalid", extra={"fields": [d["field"] for d in details]})
        return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_error", "the request is invalid", details)

    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported(_: RequestUnsupportedContentType) -> Response:
        return error_response(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the body as application/json"
        )

    @app.not_found
    def _no_route(_: NotFoundError) -> Response:
        return error_response(HTTPStatus.NOT_FOUND, "route_not_found", "no such route")

    @app.exception_handler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        return error_response(HTTPStatus(error.status_code), "request_error", str(error.msg))

    @app.exception_handler(Exception)
    def _bug(_: Exception) -> Response:
        # A 500 is always a bug; the traceback goes to the log (ids only, no request body).
        logger.exception("unhandled error")
        return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "something went wrong on our side")

    @app.exception_handler([ClientError, BotoCoreError])
    def _aws_error(error: Exception) -> Response:
        # AWS busy or out of reach after the SDK's retries is not a bug: a 503 the caller may retry as it is.
        if not aws_clients.unavailable(error):
            return _bug(error)
        code = getattr(error, "response", {}).get("Error", {}).get("Code") or type(error).__name__
        logger.warning("AWS unavailable", extra={"aws_error": code})
        message = "the service is busy; retry the request (payments and refunds with the same Idempotency-Key)"
        return error_response(HTTPStatus.SERVICE_UNAVAILABLE, "service_unavailable", message)

    return app


class Tenant(Model):
    """Who is calling, from the verified JWT claims (API Gateway's authorizer) and nothing else."""

    practice_id: str
    role: str
    client_id: str | None = None
    user_id: str = ""  # the token's subject: who acted (kept with consents), never a name


def tenant(app: APIGatewayHttpResolver) -> Tenant:
    claims = app.current_event.request_context.authorizer.jwt_claim
    practice_id = str(claims.get("custom:practice_id") or "")
    if not re.fullmatch(_ID_PATTERN, practice_id) or len(practice_id) > 64:
        raise Forbidden("the token names no practice", code="no_practice")
    client_id = claims.get("custom:client_id") or None
    if client_id is not None and (not re.fullmatch(_ID_PATTERN, str(client_id)) or len(str(client_id)) > 64):
        # admins set it; a malformed one must not reach a key, a log line or a lookup
        raise Forbidden("the token names no valid client", code="no_client")
    role = str(claims.get("custom:role") or "")
    return Tenant(practice_id=practice_id, role=role, client_id=client_id, user_id=str(claims.get("sub") or ""))


def clinician(app: APIGatewayHttpResolver) -> Tenant:
    """The calling clinician's tenant; any other role is refused (403)."""
    caller = tenant(app)
    if caller.role != "clinician":
        raise Forbidden("this route is for practice staff", code="wrong_role")
    return caller


def portal_client(app: APIGatewayHttpResolver) -> Tenant:
    """The calling client's tenant (``custom:client_id``); any other role is refused (403)."""
    caller = tenant(app)
    if caller.role != "client" or not caller.client_id:
        raise Forbidden("this route is for clients", code="wrong_role")
    return caller


CLINICIAN = "clinician"
CLIENT = "client"
PORTAL_PREFIX = "/portal/"


def role_for(route_key: str) -> str:
    """Who a route is for (API.md): ``/portal/...`` routes are the client's, every other route is staff's."""
    path = route_key.partition(" ")[2]
    return CLIENT if path.startswith(PORTAL_PREFIX) else CLINICIAN


class EdgeRefusal(Exception):
    """A request refused before the resolver runs: nothing has been looked up, validated or written."""

    def __init__(self, status: HTTPStatus, code: str, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = [{"in": "body", "field": "body", "type": problem, "message": message}] if problem else []

    def answer(self) -> dict[str, Any]:
        """The HTTP API (payload 2.0) answer, in the one error shape."""
        logger.info("request refused", extra={"error_code": self.code, "status": self.status.value})
        body = json.dumps(_error_body(self.code, self.message, self.details))
        return {"statusCode": self.status.value, "headers": {"Content-Type": "application/json"}, "body": body}


def check_role(event: Mapping[str, Any]) -> None:
    """403 unless the verified token's role is the route's (``role_for``)."""
    context_of_request = event.get("requestContext") or {}
    jwt = (context_of_request.get("authorizer") or {}).get("jwt") or {}
    role = role_for(str(event.get("routeKey") or context_of_request.get("routeKey") or ""))
    if (jwt.get("claims") or {}).get("custom:role") != role:
        message = "this route is for clients" if role == CLIENT else "this route is for practice staff"
        raise EdgeRefusal(HTTPStatus.FORBIDDEN, "wrong_role", message)


def _invalid_json(message: str, problem: str = "json_invalid") -> EdgeRefusal:
    return EdgeRefusal(HTTPStatus.BAD_REQUEST, "invalid_json", message, problem)


def _body_text(event: Mapping[str, Any]) -> str:
    """The body as UTF-8 text. API Gateway passes text as a string and other bytes base64-encoded, which is
    where bytes that are not UTF-8 arrive; a string body holding an unpaired surrogate is not UTF-8 either."""
    body = event.get("body") or ""
    try:
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8", "surrogatepass")
    except ValueError:  # API Gateway's own encoding broken: nothing readable arrived
        raise _invalid_json("the body could not be read", "body_unreadable") from None
    if len(raw) > MAX_BODY_BYTES:
        raise EdgeRefusal(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "body_too_large",
            f"the body is larger than {MAX_BODY_BYTES} bytes",
            "body_too_large",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json("the body is not UTF-8 text", "body_not_utf8") from None


# A string (to its closing quote, or to the end when unclosed, so each character is read once) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in JSON ``text``, counted in one linear scan without parsing (brackets
    in strings do not count), so a body nested thousands deep is refused before a recursive parser meets it."""
    brackets = (token for match in _JSON_TOKEN.finditer(text) if (token := match[0]) in "[]{}")
    return max(accumulate(+1 if bracket in "[{" else -1 for bracket in brackets), default=0)


def _number(parse: Callable[[str], int | float]) -> Callable[[str], int | float]:
    """A JSON number parser that refuses long literals (Python's int parser fails past 4300 digits)."""

    def bounded(literal: str) -> int | float:
        if len(literal) > MAX_NUMBER_CHARACTERS:
            raise ValueError(f"a number has at most {MAX_NUMBER_CHARACTERS} characters")
        return parse(literal)

    return bounded


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys repeat is refused: parsers disagree on which value wins."""
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("an object repeats a key")
    return dict(pairs)


def check_body(event: Mapping[str, Any]) -> None:
    """413 for a body over ``MAX_BODY_BYTES``; 400 ``invalid_json`` for one that is not UTF-8, nests deeper than
    ``MAX_JSON_DEPTH``, holds a number longer than ``MAX_NUMBER_CHARACTERS`` or NaN/Infinity, repeats a key or
    is not JSON at all; 415 for a body sent as anything but JSON. Routes then get a body that parses safely."""
    if not event.get("body"):
        return
    text = _body_text(event)
    content_type = str((event.get("headers") or {}).get("content-type", "")).strip()
    if content_type and not content_type.startswith(content_types.APPLICATION_JSON):
        raise EdgeRefusal(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the body as application/json"
        )
    if _nesting(text) > MAX_JSON_DEPTH:
        raise _invalid_json(f"the body nests deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    try:
        json.loads(
            text,
            parse_int=_number(int),
            parse_float=_number(float),
            parse_constant=_not_json,
            object_pairs_hook=_unique_keys,
        )
    except ValueError as error:  # JSONDecodeError included; its message gives a position, never the input
        raise _invalid_json(f"the body is not valid JSON: {error}") from None


def resolve(app: APIGatewayHttpResolver, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer an HTTP API event with ``app``, after the edge's checks. The role comes first: a token of the
    wrong role gets 403 before anything else runs (no body checks, no validation details, no lookups), so a
    caller learns nothing about a route that is not theirs; then the body (``check_body``)."""
    try:
        check_role(event)
        check_body(event)
    except EdgeRefusal as refusal:
        return refusal.answer()
    return app.resolve(event, context)


_KEY = TypeAdapter(IdempotencyKey)


def idempotency_key(app: APIGatewayHttpResolver) -> str:
    """The request's Idempotency-Key header (8-128 of ``A-Za-z0-9_.:-``); 400 when it is missing or malformed."""
    value = app.current_event.headers.get("idempotency-key")
    if value is None:
        raise InvalidRequest(
            "send an Idempotency-Key header with every payment and refund", code="idempotency_key_required"
        )
    try:
        return _KEY.validate_python(value)
    except ValidationError as error:
        raise InvalidRequest("the Idempotency-Key header is malformed", code="invalid_idempotency_key") from error
