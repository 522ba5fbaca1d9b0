"""The local API Gateway: serves the routes ``template.yaml`` declares by invoking the real handlers.

Each request becomes an HTTP API payload v2.0 event (JWT claims where the authorizer puts them) and
is invoked on the route's function through `local.functions.FunctionHost`: every function runs in
worker processes of its own, one event at a time, with its own environment and its Timeout enforced,
like Lambda execution environments (see that module). What API Gateway would answer when the
function fails is answered here too, in the API's error shape
``{"error": {"code", "message", "details"}}``: 500 when the handler raised, 502 when its worker
crashed or it cannot load, 504 past its Timeout. The server's own answers use the same shape: 404 for
an unknown route, 405 (with ``Allow``) for a known path with another method, 400/414/431/501... for
what the HTTP layer refuses.

Local tokens are HS256, signed with ``BILLING_LOCAL_JWT_SECRET``. Besides the template's routes the
server answers ``GET /openapi.json`` (the handlers' merged OpenAPI), ``GET /swagger`` (Swagger UI,
offline), ``GET /_local/health`` and, in local mode, ``POST /_local/scheduler/fire``.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt

from local import scheduler as local_scheduler
from local.functions import (
    DEFAULT_MAX_WORKERS,
    FunctionError,
    FunctionHost,
    FunctionInitError,
    FunctionTimeout,
    InvocationError,
)
from local.template import LOCAL_ACCOUNT_ID, HttpRoute, Resolver, Template
from local.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, local_jwt_secret

OPENAPI_TITLE = "Time-of-session billing API"
JSON_TYPE = "application/json"
_TEXT_TYPES = (
    "text/",
    "application/json",
    "+json",
    "application/xml",
    "+xml",
    "application/x-www-form-urlencoded",
    "application/javascript",
    "application/graphql",
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}


__all__ = ["FunctionHost", "LocalServer", "RouteTable", "error_body", "http_event", "lambda_response"]

# Error codes for statuses the HTTP layer answers by itself (others: the status phrase in snake case).
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    505: "http_version_not_supported",
}


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """The API's error shape: ``{"error": {"code", "message", "details"}}``."""
    return {"error": {"code": code, "message": message, "details": details or []}}


def status_code_name(status: int) -> str:
    """The error ``code`` for an HTTP status the server answers itself (``414`` -> ``uri_too_long``)."""
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


# ---------------------------------------------------------------- routes and auth


@dataclass(frozen=True)
class _CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]
    parameters: tuple[str, ...]
    specificity: tuple[int, int]


def _compile(route: HttpRoute) -> _CompiledRoute:
    parts: list[str] = []
    names: list[str] = []
    literal = 0
    greedy = 0
    for segment in route.path.strip("/").split("/"):
        found = re.fullmatch(r"\{([^{}]+?)(\+?)\}", segment)
        if found:
            names.append(found.group(1))
            greedy += bool(found.group(2))
            parts.append("(.+)" if found.group(2) else "([^/]+)")
        else:
            literal += 1
            parts.append(re.escape(segment))
    pattern = re.compile("^/" + "/".join(parts) + "$")
    return _CompiledRoute(route, pattern, tuple(names), (literal, -greedy))


class RouteTable:
    """Matches request paths to the template's routes the way API Gateway does."""

    def __init__(self, routes: Iterable[HttpRoute]) -> None:
        self._routes = [_compile(route) for route in routes]

    def match(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | list[str]:
        """The route and path parameters for a request, or the allowed methods when none fits.

        An empty list means no route has that path (404); a non-empty one means 405.
        """
        candidates: list[tuple[_CompiledRoute, dict[str, str]]] = []
        for compiled in self._routes:
            found = compiled.pattern.match(path)
            if found:
                values = {name: unquote(value) for name, value in zip(compiled.parameters, found.groups(), strict=True)}
                candidates.append((compiled, values))
        usable = [c for c in candidates if c[0].route.method in (method, "ANY")]
        if not usable:
            return sorted({c[0].route.method for c in candidates})
        # Most literal segments first, then an exact method over ANY.
        usable.sort(
            key=lambda c: (c[0].specificity, c[0].route.method == method),
            reverse=True,
        )
        compiled, values = usable[0]
        return compiled.route, values


def verify_token(authorization: str | None, secret: str) -> dict[str, Any] | None:
    """The claims of a valid local JWT in an ``Authorization`` header, or None.

    Valid means: HS256 (``none`` and every other algorithm are refused), signed with ``secret``, with an ``exp``
    in the future, issued by the local issuer for the local audience (as API Gateway checks the user pool's).
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if not token:
        token = scheme  # API Gateway's JWT authorizer also takes the bare token
    elif scheme.lower() != "bearer":
        return None
    try:
        if jwt.get_unverified_header(token).get("alg") != "HS256":
            return None
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=LOCAL_AUDIENCE,
            issuer=LOCAL_ISSUER,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def claim_text(value: Any) -> str:
    """A claim value as API Gateway hands it to Lambda: always a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(claim_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# ---------------------------------------------------------------- events and responses


@dataclass
class IncomingRequest:
    """What the HTTP server read from the socket."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    received: datetime = field(default_factory=lambda: datetime.now(UTC))


def _is_text(content_type: str, body: bytes) -> bool:
    content_type = content_type.lower()
    if content_type and not any(kind in content_type for kind in _TEXT_TYPES):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def http_event(
    request: IncomingRequest,
    route: HttpRoute,
    path_parameters: Mapping[str, str],
    claims: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """An API Gateway HTTP API payload v2.0 event for ``request`` on ``route``."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    query: dict[str, str] = {}
    for name, value in parse_qsl(request.raw_query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    received = request.received
    epoch_ms = int(received.timestamp() * 1000)
    route_key = route.route_key
    request_context: dict[str, Any] = {
        "accountId": LOCAL_ACCOUNT_ID,
        "apiId": "local",
        "domainName": headers.get("host", "127.0.0.1").split(":")[0],
        "domainPrefix": "local",
        "http": {
            "method": request.method,
            "path": unquote(request.raw_path),
            "protocol": "HTTP/1.1",
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": uuid.uuid4().hex,
        "routeKey": route_key,
        "stage": "$default",
        "time": (f"{received:%d}/{_MONTHS[received.month - 1]}/{received:%Y:%H:%M:%S} +0000"),
        "timeEpoch": epoch_ms,
    }
    if claims is not None:
        scopes = claims.get("scope")
        request_context["authorizer"] = {
            "jwt": {
                "claims": {name: claim_text(value) for name, value in claims.items()},
                "scopes": str(scopes).split() if scopes else None,
            }
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query,
        "headers": headers,
        "requestContext": request_context,
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if request.body:
        if _is_text(headers.get("content-type", ""), request.body):
            event["body"] = request.body.decode("utf-8")
        else:
            event["body"] = base64.b64encode(request.body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


@dataclass
class OutgoingResponse:
    """What the HTTP server writes back."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> OutgoingResponse:
    """A JSON response (values JSON cannot express are written as strings)."""
    body = json.dumps(payload, default=str).encode("utf-8")
    return OutgoingResponse(status, [("Content-Type", JSON_TYPE), *headers], body)


def lambda_response(result: Any) -> OutgoingResponse:
    """Translate a handler's return value as API Gateway does for payload v2.0."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # Without a statusCode API Gateway assumes 200 and a JSON body of the returned value.
        return json_response(200, result)
    headers: list[tuple[str, str]] = []
    for name, value in (result.get("headers") or {}).items():
        if name.lower() not in _HOP_BY_HOP:
            headers.append((name, str(value)))
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if name.lower() not in _HOP_BY_HOP:
            headers.extend((name, str(value)) for value in values)
    headers.extend(("Set-Cookie", str(cookie)) for cookie in result.get("cookies") or [])
    body = result.get("body")
    if body is None:
        payload = b""
    elif result.get("isBase64Encoded"):
        payload = base64.b64decode(body)
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        payload = json.dumps(body, default=str).encode("utf-8")
    if payload and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", JSON_TYPE))
    return OutgoingResponse(int(result["statusCode"]), headers, payload)


# ---------------------------------------------------------------- OpenAPI and Swagger UI


def merge_openapi(documents: Sequence[Mapping[str, Any]], public_routes: Iterable[HttpRoute] = ()) -> dict[str, Any]:
    """One OpenAPI document from the functions' documents, merged by Powertools' ``OpenAPIMerge``.

    ``OpenAPIMerge`` takes the info and the global security from its arguments, not from the documents; every
    function states the same ones (``billing_lambda.openapi``), so the first function's are used. Two functions
    documenting one path and method is a bug: ``OpenAPIMergeError``. The gateway decides which routes skip the JWT
    authorizer, so ``public_routes`` (no authorizer in the template) get ``security: []`` whatever their function
    says.
    """
    # Imported here: Powertools takes ~0.2 s to import and only /openapi.json and /swagger need it.
    from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

    first = documents[0] if documents else {}
    info = first.get("info") or {}
    merge = OpenAPIMerge(
        title=info.get("title", OPENAPI_TITLE),
        version=info.get("version", "1.0.0"),
        openapi_version=first.get("openapi", "3.1.0"),
        description=info.get("description"),
        security=first.get("security"),
        on_conflict="error",
    )
    for document in documents:
        merge.add_schema(dict(document))
    merged = merge.get_openapi_schema()
    for route in public_routes:
        operation = merged.get("paths", {}).get(route.path, {}).get(route.method.lower())
        if isinstance(operation, dict):
            operation["security"] = []
    return merged


def swagger_page(document: Mapping[str, Any]) -> str:
    """Swagger UI showing ``document``, as Powertools' ``enable_swagger()`` serves it offline: the document and
    Swagger UI's JS and CSS (shipped with Powertools) inlined in the page, the authorization kept across reloads."""
    from aws_lambda_powertools.event_handler.openapi import swagger_ui

    assets = Path(swagger_ui.__file__).parent
    return swagger_ui.generate_swagger_html(
        # "</" escaped, as enable_swagger does, so no string in the document can close the page's <script>.
        json.dumps(document, default=str).replace("</", "<\\/"),
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        swagger_base_url="",
        oauth2_config=None,
        persist_authorization=True,
    )


class ServedStatuses:
    """Which status each template route answered, in order: ``(method, path template, status)``. The end-to-end
    tests check every one against ``/openapi.json`` (a status the document does not list is a broken promise)."""

    def __init__(self) -> None:
        self._served: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def record(self, route: HttpRoute, status: int) -> None:
        with self._lock:
            self._served.append((route.method, route.path, status))

    def mark(self) -> int:
        """A point to ask `since` about."""
        with self._lock:
            return len(self._served)

    def since(self, mark: int) -> list[tuple[str, str, int]]:
        """What was answered after ``mark``."""
        with self._lock:
            return self._served[mark:]


# ---------------------------------------------------------------- the server


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver's default of 5 resets connections when many arrive at once.
    request_queue_size = 1024
    app: LocalServer


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections give their thread back
    server_version = "billing-local"

    def _handle(self) -> None:
        started = time.monotonic()
        body = self._read_body()
        if body is None:
            return
        split = urlsplit(self.path)
        request = IncomingRequest(
            method=self.command.upper(),
            raw_path=split.path or "/",
            raw_query=split.query,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
        )
        response = self.server.app.handle(request)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if request.method != "HEAD":
            self.wfile.write(response.body)
        if not self.server.app.quiet:
            elapsed = (time.monotonic() - started) * 1000
            print(
                f"local api: {request.method} {request.raw_path} -> {response.status} ({elapsed:.0f} ms)",
                file=sys.stderr,
            )

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None after answering 400 for a malformed one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.send_error(400, "Bad chunked body")
                    return None
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return None
        return self.rfile.read(length) if length > 0 else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What the HTTP layer refuses by itself (400, 414, 431, 501, 505...), in the API's error shape."""
        phrase = self.responses.get(code, ("Error", ""))[0]
        body = json.dumps(error_body(status_code_name(code), message or explain or phrase)).encode("utf-8")
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        with_body = code >= 200 and code not in (204, 304) and self.command != "HEAD"
        if with_body:
            self.send_header("Content-Type", JSON_TYPE)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)
        self._linger()
        if not self.server.app.quiet:
            print(f"local api: {self.requestline[:80]!r} -> {code} ({message or phrase})", file=sys.stderr)

    def _linger(self, seconds: float = 1.0, limit: int = 1 << 20) -> None:
        """Read what is left of a refused request before closing, so the answer is not lost to a reset.

        Closing a socket with unread input makes the kernel send RST, which can destroy the answer
        before the client reads it (a 414 leaves most of the request line unread).
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(seconds)
            deadline = time.monotonic() + seconds
            drained = 0
            while drained < limit and time.monotonic() < deadline:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass  # the client is gone or slow: nothing more to do

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log; `_handle` writes a shorter one."""


class LocalServer:
    """The local HTTP API on 127.0.0.1: the template's routes plus the local endpoints."""

    def __init__(
        self,
        template: Template,
        resolver: Resolver,
        *,
        clients: Callable[[str], Any],
        host: str = "127.0.0.1",
        port: int = 0,
        jwt_secret: str | None = None,
        local_endpoints: bool = True,
        quiet: bool = False,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        self.template = template
        self.resolver = resolver
        self.functions = FunctionHost(template, resolver, max_workers=max_workers)
        self.routes = RouteTable(template.routes)
        self.served = ServedStatuses()
        self.targets = local_scheduler.LocalTargets.from_template(template, resolver)
        self.clients = clients
        self.jwt_secret = jwt_secret
        self.local_endpoints = local_endpoints
        self.quiet = quiet
        # Bound now so the URL is known (e.g. for Stripe webhooks) before anything is imported.
        self.host = host
        self._http = _HttpServer((host, port), _RequestHandler)
        self._http.app = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port the server is bound to."""
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def start(
        self, environment: Mapping[str, str] | None = None, *, worker_environment: Mapping[str, str] | None = None
    ) -> str:
        """Fix the functions' environment and serve in a thread.

        Workers get their function's environment, then ``environment``, then ``worker_environment``;
        this process's os.environ gets the functions' and ``environment`` (see
        `FunctionHost.apply_environment`). Workers start on demand; `FunctionHost.preload` warms them.
        """
        self.functions.apply_environment(environment, worker_only=worker_environment)
        self._thread = threading.Thread(target=self._http.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving, close the socket and stop every function's workers."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(10)
            self._thread = None
        self._http.server_close()
        self.functions.stop()

    def invoke(self, function_id: str, event: Any) -> Any:
        """Invoke a template function in its worker pool (what the scheduler uses); see `FunctionHost.invoke`."""
        return self.functions.invoke(function_id, event)

    # -- request dispatch

    def handle(self, request: IncomingRequest) -> OutgoingResponse:
        """Answer one request; never raises."""
        try:
            builtin = self._builtin(request)
            if builtin is not None:
                return builtin
            return self._route(request)
        except Exception:  # a 500 with a traceback, never a dropped connection
            print(f"local api: {request.method} {request.raw_path} failed:", file=sys.stderr)
            traceback.print_exc()
            return json_response(500, error_body("internal_error", "Internal server error"))

    def _builtin(self, request: IncomingRequest) -> OutgoingResponse | None:
        path, method = request.raw_path, request.method
        pages: dict[str, Callable[[IncomingRequest], OutgoingResponse]] = {
            "/_local/health": lambda _: json_response(200, {"status": "ok"}),
            "/openapi.json": lambda _: json_response(200, self.openapi()),
            "/swagger": self._swagger,
            "/swagger/": self._swagger,
        }
        if path in pages:
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(["GET"])
            return pages[path](request)
        if self.local_endpoints and path == "/_local/scheduler/fire":
            if method != "POST":
                return self._method_not_allowed(["POST"])
            return self._fire(request.body)
        return None

    @staticmethod
    def _method_not_allowed(allowed: list[str]) -> OutgoingResponse:
        message = f"Method not allowed; allowed: {', '.join(allowed)}"
        body = error_body("method_not_allowed", message)
        return json_response(405, body, [("Allow", ", ".join(allowed))])

    def _route(self, request: IncomingRequest) -> OutgoingResponse:
        matched = self.routes.match(request.method, request.raw_path)
        if isinstance(matched, list):
            if matched:
                return self._method_not_allowed(matched)
            message = f"No route for {request.method} {request.raw_path}"
            return json_response(404, error_body("not_found", message))
        route, parameters = matched
        response = self._invoke_route(request, route, parameters)
        self.served.record(route, response.status)
        return response

    def _invoke_route(self, request: IncomingRequest, route: HttpRoute, parameters: dict[str, str]) -> OutgoingResponse:
        """What API Gateway answers for a matched route: 401 from the authorizer, else the function's answer."""
        claims: dict[str, Any] | None = None
        if route.requires_auth:
            secret = self.jwt_secret or local_jwt_secret()
            claims = verify_token(self._header(request, "authorization"), secret)
            if claims is None:
                # "message" at the top too: what API Gateway itself answers for a rejected JWT.
                body = {"message": "Unauthorized", **error_body("unauthorized", "Unauthorized")}
                return json_response(401, body, [("WWW-Authenticate", "Bearer")])
        event = http_event(request, route, parameters, claims)
        try:
            result = self.functions.invoke(route.function_id, event)
        except InvocationError as error:
            return self._failed(route, error)
        return lambda_response(result)

    @staticmethod
    def _failed(route: HttpRoute, error: InvocationError) -> OutgoingResponse:
        """What API Gateway answers when the integration fails, in the error shape; details on stderr."""
        if isinstance(error, FunctionTimeout):
            print(f"local api: {route.route_key}: {error}; its worker was stopped", file=sys.stderr)
            return json_response(504, error_body("function_timeout", str(error)))
        if isinstance(error, FunctionInitError) or not isinstance(error, FunctionError):
            print(f"local api: {route.route_key}: {error}", file=sys.stderr)
            if isinstance(error, FunctionError) and error.stack_trace:
                print(error.stack_trace, file=sys.stderr)
            code = "function_init_error" if isinstance(error, FunctionInitError) else "function_crashed"
            return json_response(502, error_body(code, str(error)))
        if error.error_type == "Runtime.MarshalError":
            print(f"local api: {route.function_id} returned what JSON cannot carry: {error}", file=sys.stderr)
            return json_response(502, error_body("invalid_function_response", str(error)))
        # A raising handler is a bug: say so loudly, answer 500.
        print(f"local api: {route.function_id} raised on {route.route_key}:", file=sys.stderr)
        print(error.stack_trace.rstrip(), file=sys.stderr)
        message = f"{route.function_id} raised; see the server's stderr"
        return json_response(500, error_body("internal_error", message))

    @staticmethod
    def _header(request: IncomingRequest, name: str) -> str | None:
        for key, value in request.headers:
            if key.lower() == name:
                return value
        return None

    # -- local endpoints

    def openapi(self) -> dict[str, Any]:
        """The merged OpenAPI document of every function that serves HTTP routes."""
        documents: list[dict[str, Any]] = []
        unavailable: list[str] = []
        for function_id in dict.fromkeys(route.function_id for route in self.template.routes):
            try:
                document = self.functions.openapi(function_id)
            except InvocationError as error:  # the rest of the document still helps
                print(f"local api: {function_id} cannot describe its OpenAPI: {error}", file=sys.stderr)
                if isinstance(error, FunctionError) and error.stack_trace:
                    print(error.stack_trace, file=sys.stderr)
                unavailable.append(str(error))
                continue
            if document is not None:
                documents.append(document)
        public = [route for route in self.template.routes if not route.requires_auth]
        merged = merge_openapi(documents, public)
        if unavailable:
            merged["x-local-unavailable"] = unavailable
        return merged

    def _swagger(self, request: IncomingRequest) -> OutgoingResponse:
        # ?format=json is the document's URL Powertools' page shows, as enable_swagger() answers it.
        if ("format", "json") in parse_qsl(request.raw_query):
            return json_response(200, self.openapi())
        headers = [("Content-Type", "text/html; charset=utf-8")]
        return OutgoingResponse(200, headers, swagger_page(self.openapi()).encode("utf-8"))

    def _fire(self, body: bytes) -> OutgoingResponse:
        try:
            request = local_scheduler.parse_fire_request(body)
        except local_scheduler.FireRequestError as error:
            invalid = error_body("invalid_request", "Invalid fire request", error.details)
            return json_response(422, invalid)
        try:
            result = local_scheduler.fire(
                request,
                self.targets,
                self.invoke,
                self.clients("scheduler"),
                self.clients("sqs"),
            )
        except local_scheduler.ScheduleNotFound as error:
            return json_response(404, error_body("schedule_not_found", str(error)))
        except local_scheduler.TargetNotFound as error:
            return json_response(500, error_body("schedule_target_not_found", str(error)))
        except Exception:  # the entry raised: a bug, reported like a handler's
            print(f"local scheduler: firing {request.schedule} failed:", file=sys.stderr)
            traceback.print_exc()
            message = f"the {request.schedule} entry raised; see the server's stderr"
            return json_response(500, error_body("internal_error", message))
        return json_response(200, result)
