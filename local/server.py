"""The local API Gateway: serves the routes ``template.yaml`` declares by calling the real handlers.

Each request becomes an HTTP API payload v2.0 event (JWT claims where the authorizer puts them) and
goes to the function's ``lambda_handler`` in this process. Local tokens are HS256, signed with
``BILLING_LOCAL_JWT_SECRET``. Besides the template's routes the server answers ``GET /openapi.json``
(the handlers' merged OpenAPI), ``GET /swagger`` (Swagger UI, offline), ``GET /_local/health`` and,
in local mode, ``POST /_local/scheduler/fire``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import mimetypes
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt

from local import scheduler as local_scheduler
from local.template import LOCAL_ACCOUNT_ID, HttpRoute, Resolver, Template
from local.token import local_jwt_secret

OPENAPI_TITLE = "Time-of-session billing API"
BEARER_SCHEME = "bearerAuth"
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


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """The API's error shape: ``{"error": {"code", "message", "details"}}``."""
    return {"error": {"code": code, "message": message, "details": details or []}}


# ---------------------------------------------------------------- functions in this process


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None

    @property
    def log_group_name(self) -> str:
        """``/aws/lambda/<function>``, as Lambda names it."""
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        """A per-invocation stream name (there is no real stream locally)."""
        return f"local/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's configured Timeout."""
        return max(0, int((self.deadline - time.monotonic()) * 1000))


# The template function whose handler runs on this thread (tests attribute AWS calls to functions with it).
running_function = threading.local()


class FunctionHost:
    """Loads and invokes the template's handlers in this process, like warm Lambda containers.

    Every concurrent invocation of a function gets its own copy of the handler module (its own
    "container"), so module-level state such as a Powertools resolver is never shared by two
    requests at once; idle copies are reused.
    """

    def __init__(self, template: Template, resolver: Resolver) -> None:
        self.template = template
        self.resolver = resolver
        self._idle: dict[str, list[ModuleType]] = {}
        self._lock = threading.Lock()
        self._import_lock = threading.RLock()
        self._generation = 0

    def environment(self, warn: bool = False) -> dict[str, str]:
        """The union of every function's resolved environment (one process serves them all)."""
        merged: dict[str, str] = {}
        for function_id in self.template.functions:
            for name, value in self.resolver.function_environment(function_id).items():
                conflict = name in merged and merged[name] != value and name != "POWERTOOLS_SERVICE_NAME"
                if warn and conflict:
                    print(
                        f"local api: {name} differs between functions; using {function_id}'s",
                        file=sys.stderr,
                    )
                merged[name] = value
        # Functions disagree on their service name and share one process: call it what it is.
        merged["POWERTOOLS_SERVICE_NAME"] = "local"
        return merged

    def apply_environment(self, overrides: Mapping[str, str] | None = None) -> None:
        """Put the functions' environment, then ``overrides``, into ``os.environ``."""
        os.environ.update(self.environment(warn=True))
        os.environ.update(overrides or {})
        for layer_dir in self.layer_dirs():
            if str(layer_dir) not in sys.path:
                sys.path.append(str(layer_dir))

    def layer_dirs(self) -> list[Path]:
        """Local folders of the template's layers (SAM's python3.12 build imports from there)."""
        layers = self.template.of_type("AWS::Serverless::LayerVersion")
        dirs = [self.template.root / str(props.get("ContentUri")) for props in layers.values()]
        return [path.resolve() for path in dirs if path.is_dir()]

    def _load(self, function_id: str) -> ModuleType:
        spec_info = self.template.functions[function_id]
        path = spec_info.handler_file
        if not path.is_file():
            raise FileNotFoundError(f"{function_id}: handler file {path} does not exist")
        with self._import_lock:
            self._generation += 1
            suffix = re.sub(r"\W", "_", spec_info.handler_module)
            name = f"_local_lambda_{function_id}_{suffix}_{self._generation}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"{function_id}: cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            self._forget_siblings()
            code_dir = str(spec_info.code_dir)
            # Lambda puts the CodeUri folder first on sys.path, so handlers may import siblings.
            sys.path.insert(0, code_dir)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            finally:
                sys.path.remove(code_dir)
            return module

    def _forget_siblings(self) -> None:
        """Drop handlers' sibling modules so each load imports its own ``models.py`` afresh."""
        code_dirs = tuple(
            str(spec.code_dir) + os.sep
            for spec in self.template.functions.values()
            if spec.code_dir != self.template.root  # CodeUri "." would take everything with it
        )
        for module_name, module in list(sys.modules.items()):
            module_file = getattr(module, "__file__", None) or ""
            if not module_name.startswith("_local_lambda_") and module_file.startswith(code_dirs):
                del sys.modules[module_name]

    def acquire(self, function_id: str) -> ModuleType:
        """An idle handler module of ``function_id``, loading a new one when all are busy."""
        with self._lock:
            idle = self._idle.setdefault(function_id, [])
            if idle:
                return idle.pop()
        return self._load(function_id)

    def release(self, function_id: str, module: ModuleType) -> None:
        """Return a module taken with `acquire` to the idle pool."""
        with self._lock:
            self._idle.setdefault(function_id, []).append(module)

    def context(self, function_id: str) -> LambdaContext:
        """A fresh Lambda context for one invocation of ``function_id``."""
        spec = self.template.functions[function_id]
        return LambdaContext(
            function_name=function_id,
            memory_limit_in_mb=spec.memory_size,
            invoked_function_arn=self.resolver.function_arn(function_id),
            aws_request_id=str(uuid.uuid4()),
            deadline=time.monotonic() + spec.timeout,
        )

    def invoke(self, function_id: str, event: Any) -> Any:
        """Call the function's handler with ``event``; its exceptions propagate to the caller."""
        spec = self.template.functions[function_id]
        module = self.acquire(function_id)
        outer = getattr(running_function, "id", None)
        running_function.id = function_id
        try:
            handler = getattr(module, spec.handler_function)
            started = time.monotonic()
            result = handler(event, self.context(function_id))
            elapsed = time.monotonic() - started
            if elapsed > spec.timeout:
                print(
                    f"local api: {function_id} took {elapsed:.1f}s, over its {spec.timeout}s"
                    " Timeout; Lambda would have stopped it",
                    file=sys.stderr,
                )
            return result
        finally:
            running_function.id = outer
            self.release(function_id, module)

    def preload(self, function_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Import each function once (a cold start up front); returns load errors by function."""
        errors: dict[str, str] = {}
        for function_id in function_ids or self.template.functions:
            try:
                self.release(function_id, self.acquire(function_id))
            except Exception as error:  # reported, the others still load
                errors[function_id] = f"{type(error).__name__}: {error}"
        return errors


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

    Valid means: HS256 (``none`` and every other algorithm are refused), signed with ``secret``,
    with an ``exp`` in the future.
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
            options={"require": ["exp"], "verify_aud": False, "verify_iss": False},
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


def _module_openapi(module: ModuleType) -> dict[str, Any] | None:
    app = getattr(module, "app", None)
    if app is None:
        return None
    if hasattr(app, "get_openapi_json_schema"):
        document = json.loads(app.get_openapi_json_schema())
        return document if isinstance(document, dict) else None
    if hasattr(app, "get_openapi_schema"):
        schema = app.get_openapi_schema()
        if hasattr(schema, "model_dump"):
            dumped = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
            return dumped if isinstance(dumped, dict) else None
        return schema if isinstance(schema, dict) else None
    return None


def merge_openapi(documents: Iterable[Mapping[str, Any]], public_routes: Iterable[HttpRoute] = ()) -> dict[str, Any]:
    """One OpenAPI 3 document from the functions' documents, secured by a bearer JWT.

    ``public_routes`` (no authorizer in the template) get ``security: []``.
    """
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": OPENAPI_TITLE, "version": "1.0.0"},
        "paths": {},
        "components": {"schemas": {}, "securitySchemes": {}},
    }
    for document in documents:
        merged["openapi"] = str(document.get("openapi", merged["openapi"]))
        version = (document.get("info") or {}).get("version")
        if version:
            merged["info"]["version"] = str(version)
        for path, operations in (document.get("paths") or {}).items():
            merged["paths"].setdefault(path, {}).update(operations)
        components = document.get("components") or {}
        for section, entries in components.items():
            merged["components"].setdefault(section, {}).update(entries or {})
    merged["components"]["securitySchemes"][BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "Cognito ID token; locally `make token` (HS256, BILLING_LOCAL_JWT_SECRET).",
    }
    merged["security"] = [{BEARER_SCHEME: []}]
    for route in public_routes:
        operation = merged["paths"].get(route.path, {}).get(route.method.lower())
        if isinstance(operation, dict):
            operation["security"] = []
    return merged


def swagger_ui_dir() -> Path:
    """The folder of Swagger UI's static files shipped by the ``swagger_ui_bundle`` package."""
    import swagger_ui_bundle  # imported here: only the Swagger page needs it

    return Path(str(swagger_ui_bundle.swagger_ui_path))


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>Time-of-session billing API</title>
    <link rel="stylesheet" href="/swagger/assets/swagger-ui.css">
    <link rel="icon" type="image/png" href="/swagger/assets/favicon-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/swagger/assets/swagger-ui-bundle.js"></script>
    <script src="/swagger/assets/swagger-ui-standalone-preset.js"></script>
    <script>
      window.onload = function () {
        window.ui = SwaggerUIBundle({
          url: "/openapi.json",
          dom_id: "#swagger-ui",
          deepLinking: true,
          persistAuthorization: true,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
          layout: "StandaloneLayout"
        });
      };
    </script>
  </body>
</html>
"""


# ---------------------------------------------------------------- the server


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    app: LocalServer


class _RequestHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections give their thread back
    server_version = "billing-local"

    def _handle(self) -> None:
        started = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
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

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

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
    ) -> None:
        self.template = template
        self.resolver = resolver
        self.functions = FunctionHost(template, resolver)
        self.routes = RouteTable(template.routes)
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

    def start(self, environment: Mapping[str, str] | None = None) -> str:
        """Apply the functions' environment (then ``environment``) and serve in a thread."""
        self.functions.apply_environment(environment)
        self._thread = threading.Thread(target=self._http.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(10)
            self._thread = None
        self._http.server_close()

    def invoke(self, function_id: str, event: Any) -> Any:
        """Invoke a template function in-process (what the scheduler uses)."""
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
            "/swagger": lambda _: self._swagger_page(),
            "/swagger/": lambda _: self._swagger_page(),
        }
        if path in pages:
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(["GET"])
            return pages[path](request)
        if path.startswith("/swagger/assets/"):
            if method not in ("GET", "HEAD"):
                return self._method_not_allowed(["GET"])
            return self._swagger_asset(path.removeprefix("/swagger/assets/"))
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
        except Exception:  # a raising handler is a bug: say so loudly, answer 500
            print(f"local api: {route.function_id} raised on {route.route_key}:", file=sys.stderr)
            traceback.print_exc()
            message = f"{route.function_id} raised; see the server's stderr"
            return json_response(500, error_body("internal_error", message))
        return lambda_response(result)

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
                module = self.functions.acquire(function_id)
            except Exception as error:  # the rest of the document still helps
                unavailable.append(f"{function_id}: {type(error).__name__}: {error}")
                continue
            try:
                document = _module_openapi(module)
            except Exception as error:  # one handler's broken schema must not hide the others'
                print(f"local api: {function_id} cannot describe its OpenAPI:", file=sys.stderr)
                traceback.print_exc()
                unavailable.append(f"{function_id}: {type(error).__name__}: {error}")
                continue
            finally:
                self.functions.release(function_id, module)
            if document is not None:
                documents.append(document)
        public = [route for route in self.template.routes if not route.requires_auth]
        merged = merge_openapi(documents, public)
        if unavailable:
            merged["x-local-unavailable"] = unavailable
        return merged

    @staticmethod
    def _swagger_page() -> OutgoingResponse:
        headers = [("Content-Type", "text/html; charset=utf-8")]
        return OutgoingResponse(200, headers, SWAGGER_PAGE.encode("utf-8"))

    @staticmethod
    def _swagger_asset(name: str) -> OutgoingResponse:
        folder = swagger_ui_dir()
        # Only plain file names that exist in the bundle: nothing outside it can be read.
        if "/" in name or name.startswith(".") or not (folder / name).is_file():
            return json_response(404, error_body("not_found", f"No asset {name}"))
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if name.endswith(".map"):
            content_type = JSON_TYPE
        headers = [("Content-Type", content_type), ("Cache-Control", "max-age=3600")]
        return OutgoingResponse(200, headers, (folder / name).read_bytes())

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
