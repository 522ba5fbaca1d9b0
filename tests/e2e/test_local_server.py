"""The local stack behaves like API Gateway + Lambda + EventBridge Scheduler + SQS where handlers can tell."""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeVar

import jwt
import pytest
import requests
from aws_lambda_powertools.event_handler.openapi import swagger_ui
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model, SqsModel

from local.aws import provision
from local.functions import FunctionError, FunctionHost, FunctionTimeout, InvocationError
from local.scheduler import LocalScheduler, drain_queues
from local.server import JSON_TYPE, LocalServer
from local.stack import LocalStack
from local.template import Resolver, load_template
from local.tokens import DEFAULT_SECRET, LOCAL_AUDIENCE, LOCAL_ISSUER, make_token
from tests.e2e.conftest import ApiSession
from tests.e2e.iam_audit import IamAuditLog

if TYPE_CHECKING:
    from tests.e2e.conftest import Api

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Swagger UI as Powertools ships it.
SWAGGER_UI = Path(swagger_ui.__file__).parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIXTURE_GROUP = "FixtureScheduleGroup"
FIXTURE_ZONE = "Pacific/Chatham"


def protected_path(stack: LocalStack) -> str:
    """A GET path of the stack's template that needs a JWT (path parameters filled in)."""
    route = next(r for r in stack.template.routes if r.requires_auth and r.method == "GET")
    return re.sub(r"\{[^}]+\}", "x", route.path)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)


def unsigned_token() -> str:
    """A token with ``alg: none`` and no signature, which must never be accepted."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"custom:practice_id": "prac_x", "custom:role": "clinician", "exp": int(time.time()) + 600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def claims(**extra: Any) -> dict[str, Any]:
    return {
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "sub": "s",
        "custom:practice_id": "prac_x",
        "custom:role": "clinician",
        **extra,
    }


def _soon() -> int:
    return int(time.time()) + 600


def _without(values: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key != name}


BAD_AUTHORIZATIONS: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "empty bearer": lambda: "Bearer ",
    "not a jwt": lambda: "Bearer not-a-jwt",
    "basic scheme": lambda: "Basic " + make_token("prac_x"),
    "wrong secret": lambda: "Bearer " + make_token("prac_x", secret="not-the-local-secret"),
    "expired": lambda: "Bearer " + make_token("prac_x", ttl=-60),
    "alg none": lambda: "Bearer " + unsigned_token(),
    "right secret, HS512": lambda: "Bearer " + jwt.encode(claims(exp=int(time.time()) + 600), DEFAULT_SECRET, "HS512"),
    "no exp": lambda: "Bearer " + jwt.encode(claims(), DEFAULT_SECRET, "HS256"),
    "another issuer": lambda: "Bearer " + jwt.encode(claims(exp=_soon(), iss="https://evil.example"), DEFAULT_SECRET),
    "another audience": lambda: "Bearer " + jwt.encode(claims(exp=_soon(), aud="another-app"), DEFAULT_SECRET),
    "no issuer": lambda: "Bearer " + jwt.encode(_without(claims(exp=_soon()), "iss"), DEFAULT_SECRET),
    "no audience": lambda: "Bearer " + jwt.encode(_without(claims(exp=_soon()), "aud"), DEFAULT_SECRET),
}


# ---------------------------------------------------------------- the template's API


def test_health_answers_ok(api: Api) -> None:
    assert api.get("/_local/health").status_code == 200


@pytest.mark.parametrize("case", BAD_AUTHORIZATIONS, ids=list(BAD_AUTHORIZATIONS))
def test_protected_route_rejects_a_bad_token_with_401(api: Api, stack: LocalStack, case: str) -> None:
    header = BAD_AUTHORIZATIONS[case]()
    headers = {"Authorization": header} if header is not None else {}
    response = api.get(protected_path(stack), headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.json()["message"] == "Unauthorized"


def test_valid_token_gets_past_the_authorizer(api: Api, stack: LocalStack) -> None:
    response = api.as_practice().get(protected_path(stack))
    assert response.status_code != 401, response.text


def test_stripe_emulator_is_wired_into_the_handlers_environment(stack: LocalStack) -> None:
    if stack.stripe is None:
        pytest.skip("no Stripe emulator: STRIPE_SECRET_KEY is a real test key")
    assert stack.stripe.webhook_url == f"{stack.url}/webhooks/stripe"
    for function_id in stack.template.functions:
        environment = stack.server.functions.function_environment(function_id)
        assert environment["STRIPE_SECRET_KEY"] == "sk_test_local_emulator"
        assert environment["STRIPE_WEBHOOK_SECRET"] == "whsec_local"
        assert environment["STRIPE_API_BASE"].startswith("http://127.0.0.1:")
        assert environment["AWS_ENDPOINT_URL"] == stack.aws_endpoint
    if "StripeSecret" in stack.template.resources:
        stored = stack.aws.client("secretsmanager").get_secret_value(SecretId="StripeSecret")["SecretString"]
        assert json.loads(stored) == {"secret_key": "sk_test_local_emulator", "webhook_secret": "whsec_local"}


def test_unknown_route_is_404_in_the_error_shape(api: Api) -> None:
    assert_error(api.as_practice().get("/no/such/route"), 404, "not_found")


def test_known_path_with_another_method_is_405(api: Api, stack: LocalStack) -> None:
    route = stack.template.routes[0]
    declared = {r.method for r in stack.template.routes if r.path == route.path}
    method = next(m for m in ("DELETE", "PATCH", "PUT", "POST", "GET") if m not in declared)
    path = re.sub(r"\{[^}]+\}", "x", route.path)
    response = api.as_practice().request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == declared


def test_openapi_json_is_an_openapi_3_document(api: Api) -> None:
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Time-of-session billing API"
    assert isinstance(document["paths"], dict)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]


class _PageReferences(HTMLParser):
    """The ``src`` and ``href`` of a page's elements (script contents are not parsed as elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.references.extend(value or "" for name, value in attrs if name in ("src", "href"))


def test_swagger_page_works_offline_with_the_document_inline(api: Api) -> None:
    page = api.get("/swagger")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    parser = _PageReferences()
    parser.feed(page.text)
    external = [ref for ref in parser.references if re.match(r"(?:https?:)?//", ref)]
    assert external == [], "Swagger UI must work offline"
    assert (SWAGGER_UI / "swagger-ui-bundle.min.js").read_text(encoding="utf-8") in page.text
    assert (SWAGGER_UI / "swagger-ui.min.css").read_text(encoding="utf-8") in page.text
    assert "persistAuthorization: true" in page.text
    document = api.get("/openapi.json").json()
    assert json.dumps(document["info"]["title"]) in page.text
    assert all(json.dumps(path) in page.text for path in document["paths"])


def test_swagger_json_format_is_the_openapi_document(api: Api) -> None:
    response = api.get("/swagger?format=json")
    assert response.status_code == 200
    assert response.json() == api.get("/openapi.json").json()


def test_swagger_has_no_asset_routes(api: Api) -> None:
    for path in ("/swagger/assets/swagger-ui-bundle.js", "/swagger/assets/..%2F__init__.py", "/swagger/assets/"):
        assert_error(api.get(path), 404, "not_found")


def test_fire_for_a_schedule_that_does_not_exist_is_404(api: Api) -> None:
    body = {"schedule": "daily_invoices", "timezone": "Antarctica/Troll", "scheduled_time": "2026-11-28T06:15:00Z"}
    assert_error(api.post("/_local/scheduler/fire", json=body), 404, "schedule_not_found")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"schedule": "daily_invoices", "timezone": "UTC"}).encode(),
        json.dumps(
            {"schedule": "daily_invoices", "timezone": "Mars/Olympus", "scheduled_time": "2026-11-28T06:15:00"}
        ).encode(),
        json.dumps({"schedule": "daily_invoices", "timezone": "UTC", "scheduled_time": "tomorrow"}).encode(),
        json.dumps({"schedule": "", "timezone": "UTC", "scheduled_time": "2026-11-28T06:15:00Z"}).encode(),
        json.dumps(
            {"schedule": "daily_invoices", "timezone": "UTC", "scheduled_time": "2026-11-28T06:15:00Z", "extra": 1}
        ).encode(),
    ],
    ids=["bad json", "not an object", "no time", "bad zone", "bad time", "empty kind", "unknown field"],
)
def test_fire_with_a_bad_body_is_422(api: Api, body: bytes) -> None:
    response = api.post("/_local/scheduler/fire", data=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["details"]


def test_fire_only_accepts_post(api: Api) -> None:
    assert_error(api.get("/_local/scheduler/fire"), 405, "method_not_allowed")


# ---------------------------------------------------------------- events the handlers receive (fixture template)


def test_http_event_is_an_api_gateway_payload_v2(fixture_api: Api) -> None:
    client = fixture_api.as_practice("prac_echo")
    response = client.post(
        "/echo/item%201?a=1&a=2&empty=",
        json={"hello": "world"},
        headers={"X-Custom-Header": "Value", "Cookie": "session=abc; theme=dark"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-fixture"] == "echo"
    assert response.raw.headers.getlist("Set-Cookie") == ["fixture=1; Path=/", "other=2; Path=/"]
    echoed = response.json()
    event = echoed["event"]
    APIGatewayProxyEventV2Model.model_validate(event)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /echo/{item_id}"
    assert event["rawPath"] == "/echo/item%201"
    assert event["rawQueryString"] == "a=1&a=2&empty="
    assert event["queryStringParameters"] == {"a": "1,2", "empty": ""}
    assert event["pathParameters"] == {"item_id": "item 1"}
    assert event["headers"]["x-custom-header"] == "Value"
    assert all(name == name.lower() for name in event["headers"])
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert json.loads(event["body"]) == {"hello": "world"}
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"]["method"] == "POST"
    assert context["http"]["path"] == "/echo/item 1"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["http"]["userAgent"].startswith("python-requests")
    assert context["routeKey"] == "POST /echo/{item_id}"
    assert context["stage"] == "$default"
    assert context["requestId"]
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60
    jwt_claims = context["authorizer"]["jwt"]["claims"]
    assert jwt_claims["custom:practice_id"] == "prac_echo"
    assert jwt_claims["custom:role"] == "clinician"
    assert jwt_claims["token_use"] == "id"
    assert all(isinstance(value, str) for value in jwt_claims.values()), "API Gateway passes claims as strings"
    assert "authorizer" in context and context["authorizer"]["jwt"]["scopes"] is None
    lambda_context = echoed["context"]
    assert lambda_context["function_name"] == "FixtureEchoFunction"
    assert lambda_context["invoked_function_arn"] == (
        "arn:aws:lambda:us-east-1:123456789012:function:FixtureEchoFunction"
    )
    assert lambda_context["memory_limit_in_mb"] == 256
    assert 0 < lambda_context["remaining_ms"] <= 10_000


def test_public_route_needs_no_token_and_gets_no_authorizer(fixture_api: Api) -> None:
    response = fixture_api.get("/public/echo")
    assert response.status_code == 200, response.text
    event = response.json()["event"]
    assert "authorizer" not in event["requestContext"]
    assert "queryStringParameters" not in event and "body" not in event


def test_binary_request_body_arrives_base64_encoded(fixture_api: Api) -> None:
    payload = bytes(range(256))
    response = fixture_api.as_practice().post(
        "/echo/bin", data=payload, headers={"content-type": "application/octet-stream"}
    )
    event = response.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_base64_response_body_is_decoded(fixture_api: Api) -> None:
    response = fixture_api.get("/public/binary")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == PNG_SIGNATURE


def test_each_function_runs_with_its_own_environment_path_and_folder(
    fixture_api: Api, fixture_stack: LocalStack
) -> None:
    worker = fixture_api.get("/public/echo").json()["worker"]
    assert worker["pid"] != os.getpid(), "the handler runs in a worker process, not in the server's"
    environment = worker["environment"]
    assert environment["FIXTURE_TABLE_NAME"] == "FixtureTable"
    assert environment["FIXTURE_BUCKET_NAME"] == "fixturebucket"
    assert environment["FIXTURE_ENTRY_ARN"] == "arn:aws:lambda:us-east-1:123456789012:function:FixtureEntryFunction"
    assert environment["FIXTURE_QUEUE_ARN"] == "arn:aws:sqs:us-east-1:123456789012:FixtureWorkQueue"
    assert environment["FIXTURE_STACK"] == "local"
    assert environment["FIXTURE_FLAVOUR"] == "plain"
    assert environment["AWS_ENDPOINT_URL"] == fixture_stack.aws_endpoint
    assert "FIXTURE_WORK_QUEUE_URL" not in environment, "FixtureEntryFunction's variable, not this function's"
    entry = fixture_stack.server.functions.function_environment("FixtureEntryFunction")
    assert entry["FIXTURE_WORK_QUEUE_URL"].endswith("/123456789012/FixtureWorkQueue")
    code_dir = str(FIXTURES / "functions")
    assert worker["sys_path"][0] == code_dir and worker["cwd"] == code_dir, "Lambda's /var/task"


def test_workers_started_later_keep_the_stack_environment(
    fixture_api: Api, fixture_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests suspend the stack's environment in this process between tests; workers never see that."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("FIXTURE_TABLE_NAME", "not-the-stack-one")
    functions = fixture_stack.server.functions
    known = set(functions.started_pids("FixtureEchoFunction"))
    functions.recycle("FixtureEchoFunction")  # the next event starts a new zygote and worker, now
    worker = fixture_api.get("/public/echo").json()["worker"]
    assert worker["pid"] not in known
    assert worker["environment"]["AWS_ENDPOINT_URL"] == fixture_stack.aws_endpoint
    assert worker["environment"]["FIXTURE_TABLE_NAME"] == "FixtureTable"


def test_declared_table_exists_with_its_index_and_ttl(fixture_stack: LocalStack) -> None:
    dynamodb = fixture_stack.aws.client("dynamodb")
    table = dynamodb.describe_table(TableName="FixtureTable")["Table"]
    assert [index["IndexName"] for index in table["GlobalSecondaryIndexes"]] == ["GSI1"]
    ttl = dynamodb.describe_time_to_live(TableName="FixtureTable")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"
    sqs = fixture_stack.aws.client("sqs")
    url = sqs.get_queue_url(QueueName="FixtureWorkQueue")["QueueUrl"]
    redrive = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":FixtureWorkDLQ")


def test_raising_handler_is_a_500_with_the_traceback_on_stderr(
    fixture_api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    response = fixture_api.as_practice().post("/boom", json={})
    assert_error(response, 500, "internal_error")
    assert "the fixture handler failed on purpose" in capsys.readouterr().err


def test_powertools_resolver_serves_the_event(fixture_api: Api) -> None:
    client = fixture_api.as_practice()
    item = client.get("/items/abc")
    assert item.status_code == 200, item.text
    assert item.json() == {"item_id": "abc", "practice_id": client.practice_id}
    # The literal route wins over the parameterised one, and it is public.
    assert fixture_api.get("/items/status").json() == {"status": "ok"}


def test_concurrent_requests_to_one_function_do_not_share_a_resolver(fixture_api: Api) -> None:
    client = fixture_api.as_practice()
    item_ids = [f"item{n}" for n in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda item_id: client.get(f"/items/{item_id}").json()["item_id"], item_ids))
    assert answers == item_ids


def test_openapi_merges_the_handlers_documents(fixture_api: Api) -> None:
    document = fixture_api.get("/openapi.json").json()
    assert {"/items/{item_id}", "/items/status"} <= set(document["paths"])
    assert "FixtureItem" in document["components"]["schemas"]
    assert document["paths"]["/items/status"]["get"]["security"] == []
    assert "security" not in document["paths"]["/items/{item_id}"]["get"]


# ---------------------------------------------------------------- functions in worker processes (fixture template)


def at_once(count: int, call: Callable[[int], T]) -> list[T]:
    """``call(0..count-1)`` from ``count`` threads released by one barrier at the same instant."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = call(index)
        except BaseException as error:  # reported below, with the others' results
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def assert_one_event_at_a_time(workers: list[dict[str, Any]]) -> None:
    """No worker process ran two events at once: its intervals never overlap and it never saw two in flight."""
    assert all(worker["in_flight"] == 1 for worker in workers), workers
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for worker in workers:
        by_pid.setdefault(worker["pid"], []).append((worker["started"], worker["finished"]))
    for pid, intervals in by_pid.items():
        assert most_at_once(intervals) == 1, f"worker {pid} ran two events at once: {intervals}"


def echo_session(fixture_api: Api, token_session: ApiSession) -> ApiSession:
    """A session of its own (its own connection) with the same token."""
    own = ApiSession(fixture_api.base_url)
    own.headers.update(token_session.headers)
    return own


def test_sixteen_mixed_concurrent_requests_are_each_answered_from_their_own_event(fixture_api: Api) -> None:
    client = fixture_api.as_practice()
    kinds = ["json", "text", "binary", "empty"]

    def send(index: int) -> tuple[int, requests.Response]:
        marker = f"marker-{index}-{uuid.uuid4().hex[:8]}"
        method = "POST" if index % 2 else "GET"
        body: bytes = {
            "json": json.dumps({"index": index, "marker": marker}).encode(),
            "text": f"text body {marker}".encode(),
            "binary": bytes([index]) * 16 + marker.encode(),
            "empty": b"",
        }[kinds[index % 4]]
        content_type = {"json": JSON_TYPE, "text": "text/plain", "binary": "application/octet-stream", "empty": ""}
        headers = {"X-Marker": marker, "Content-Type": content_type[kinds[index % 4]]}
        with echo_session(fixture_api, client) as own:
            response = own.request(method, f"/echo/item-{index}?sleep_ms=300", data=body, headers=headers)
        return index, response

    answers = at_once(16, send)
    workers = []
    for index, response in answers:
        assert response.status_code == 200, response.text
        answer = response.json()
        event, sent = answer["event"], response.request
        assert event["headers"]["x-marker"] == sent.headers["X-Marker"]
        assert event["requestContext"]["http"]["method"] == ("POST" if index % 2 else "GET")
        assert event["pathParameters"] == {"item_id": f"item-{index}"}
        received = event.get("body", "")
        received_bytes = base64.b64decode(received) if event["isBase64Encoded"] else received.encode()
        assert received_bytes == (sent.body or b""), f"request {index} was answered from another event"
        workers.append(answer["worker"])
    assert_one_event_at_a_time(workers)
    pids = {worker["pid"] for worker in workers}
    assert len(pids) >= 4, f"16 simultaneous events ran in only {len(pids)} worker processes"
    assert most_at_once([(w["started"], w["finished"]) for w in workers]) >= 4, "the events did not run at once"


def test_sixteen_mixed_concurrent_payments_are_answered_from_their_own_idempotency_key_and_body(
    api: Api, stack: LocalStack
) -> None:
    """The bug workers fix: with one process, a payment sent with a key was answered as if it had none."""
    session = api.as_practice()
    settings = {"name": "Mixed", "timezone": "America/Chicago", "invoice_creation": "manual"}
    assert session.put("/practice", json=settings).status_code == 200
    client_id = session.post("/clients", json={"first_name": "Mia", "last_name": "Xed"}).json()["client_id"]
    functions = stack.server.functions
    functions.recycle("AddPaymentFunction")  # start from no warm worker: the burst makes the pool grow
    started = len(functions.started_pids("AddPaymentFunction"))

    def pay(index: int) -> requests.Response:
        body = {"client_id": client_id, "amount_cents": 100 + index, "method": "cash", "reference": f"ref-{index}"}
        headers = {}
        if index % 3 == 1:
            headers["Idempotency-Key"] = f"mixed-{index}-{uuid.uuid4().hex}"
        elif index % 3 == 2:
            headers["Idempotency-Key"] = "not a key!"
        with echo_session(api, session) as own:
            return own.post("/payments", json=body, headers=headers)

    answers = at_once(16, pay)
    for index, answer in enumerate(answers):
        if index % 3 == 1:
            assert answer.status_code == 201, (index, answer.text)
            payment = answer.json()
            assert (payment["amount_cents"], payment["reference"]) == (100 + index, f"ref-{index}")
        else:
            expected = "idempotency_key_required" if index % 3 == 0 else "invalid_idempotency_key"
            assert_error(answer, 400, expected)
    assert len(functions.started_pids("AddPaymentFunction")) - started >= 2, "one worker served the whole burst"
    listed = session.get(f"/clients/{client_id}/payments").json()["payments"]
    assert sorted(p["amount_cents"] for p in listed) == [100 + i for i in range(16) if i % 3 == 1]


def test_at_the_cap_events_queue_for_the_one_worker_and_never_overlap(fixture_stack: LocalStack) -> None:
    """The measures above can fail: one worker at most gives one pid and no overlap."""
    host = FunctionHost(fixture_stack.template, fixture_stack.resolver, max_workers=1)
    try:
        event = {"rawPath": "/echo/x", "queryStringParameters": {"sleep_ms": "200"}}
        started = time.monotonic()
        answers = at_once(4, lambda index: json.loads(host.invoke("FixtureEchoFunction", event)["body"]))
        elapsed = time.monotonic() - started
        workers = [answer["worker"] for answer in answers]
        assert len({worker["pid"] for worker in workers}) == 1
        assert most_at_once([(w["started"], w["finished"]) for w in workers]) == 1
        assert elapsed >= 0.8, "four 200 ms events, one after the other"
        assert host.pool_size("FixtureEchoFunction") == 1
    finally:
        host.stop()


def test_the_in_flight_probe_sees_two_events_sharing_one_process() -> None:
    """What the echo reports would expose handlers running side by side in one process (the old design)."""
    spec = importlib.util.spec_from_file_location("_echo_probe", FIXTURES / "functions" / "echo.py")
    assert spec is not None and spec.loader is not None
    echo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(echo)
    context = SimpleNamespace(
        function_name="probe", invoked_function_arn="arn", memory_limit_in_mb=128, aws_request_id="r"
    )
    context.get_remaining_time_in_millis = lambda: 1000
    event = {"rawPath": "/echo/x", "queryStringParameters": {"sleep_ms": "300"}}
    answers = at_once(2, lambda _: json.loads(echo.lambda_handler(event, context)["body"])["worker"])
    assert max(answer["in_flight"] for answer in answers) == 2
    assert len({answer["pid"] for answer in answers}) == 1


def test_forty_simultaneous_connections_are_all_answered(fixture_stack: LocalStack) -> None:
    def get(index: int) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", fixture_stack.server.port, timeout=60)
        try:
            connection.request("GET", "/public/echo?sleep_ms=200", headers={"X-Marker": f"m{index}"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    answers = at_once(40, get)
    assert [status for status, _ in answers] == [200] * 40
    assert [answer["event"]["headers"]["x-marker"] for _, answer in answers] == [f"m{i}" for i in range(40)]
    workers = [answer["worker"] for _, answer in answers]
    assert_one_event_at_a_time(workers)
    pids = {worker["pid"] for worker in workers}
    assert 2 <= len(pids) <= fixture_stack.server.functions.max_workers, "the pool grows, up to its cap"


def test_a_handler_past_its_timeout_is_stopped_and_answered_504(fixture_api: Api, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    response = fixture_api.post("/limits/sleep", json={"seconds": 30, "pid_file": str(pid_file)})
    assert_error(response, 504, "function_timeout")
    assert "1 s Timeout" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10, "answered at the Timeout (1 s), not when the handler would end"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"worker {pid} still runs after its Timeout"
        time.sleep(0.05)
    again = fixture_api.post("/limits/sleep", json={"seconds": 0})
    assert again.status_code == 200 and again.json()["pid"] != pid, "a fresh worker replaces the stopped one"


def test_a_crashed_worker_is_answered_502_and_replaced(fixture_api: Api) -> None:
    # Sequential requests take the most recently idle worker: the crash ends the one that answered `before`.
    before = fixture_api.post("/limits/sleep", json={"seconds": 0}).json()["pid"]
    assert_error(fixture_api.post("/limits/crash", json={}), 502, "function_crashed")
    after = fixture_api.post("/limits/sleep", json={"seconds": 0})
    assert after.status_code == 200, after.text
    assert after.json()["pid"] != before
    descriptors = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    for _ in range(5):
        assert_error(fixture_api.post("/limits/crash", json={}), 502, "function_crashed")
        assert fixture_api.post("/limits/sleep", json={"seconds": 0}).status_code == 200
    if descriptors is not None:
        assert len(os.listdir("/proc/self/fd")) <= descriptors, "replaced workers leave no descriptor behind"


def test_patched_replaces_code_in_the_workers_until_the_block_ends(
    fixture_api: Api, fixture_stack: LocalStack, tmp_path: Path
) -> None:
    functions = fixture_stack.server.functions

    def note() -> str:
        return str(fixture_api.get("/public/echo").json()["worker"]["note"])

    assert note() == "original"
    with functions.patched("echo:note", "tests.e2e.fixtures.faults:constant", "patched"):
        assert note() == "patched"
    assert note() == "original"
    crashes = str(tmp_path / "crashes")
    with functions.patched("echo:note", "tests.e2e.fixtures.faults:raise_times", crashes, 1, "injected fault"):
        assert_error(fixture_api.get("/public/echo"), 500, "internal_error")
        assert note() == "original", "raise_times fails the first call only, whichever worker makes it"


def test_stop_ends_every_worker_process(fixture_stack: LocalStack) -> None:
    host = FunctionHost(fixture_stack.template, fixture_stack.resolver)
    assert host.preload(["FixtureEchoFunction", "FixtureLimitsFunction"]) == {}
    pids = host.started_pids("FixtureEchoFunction") + host.started_pids("FixtureLimitsFunction")
    assert len(pids) == 2
    host.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(InvocationError):
        host.invoke("FixtureEchoFunction", {"rawPath": "/echo/x"})


def test_spawn_mode_cold_starts_each_worker_and_behaves_the_same(fixture_stack: LocalStack) -> None:
    host = FunctionHost(fixture_stack.template, fixture_stack.resolver, start_method="spawn")
    try:
        event = {"rawPath": "/echo/x", "queryStringParameters": {"sleep_ms": "300"}}
        workers = at_once(2, lambda _: json.loads(host.invoke("FixtureEchoFunction", event)["body"])["worker"])
        assert len({worker["pid"] for worker in workers}) == 2
        assert_one_event_at_a_time(workers)
        assert workers[0]["environment"]["FIXTURE_TABLE_NAME"] == "FixtureTable"
        with pytest.raises(FunctionError) as raised:
            host.invoke("FixtureEchoFunction", {"rawPath": "/boom"})
        assert "the fixture handler failed on purpose" in raised.value.stack_trace
        with pytest.raises(FunctionTimeout):
            host.invoke("FixtureLimitsFunction", {"rawPath": "/limits/sleep", "body": json.dumps({"seconds": 30})})
        with host.patched("echo:note", "tests.e2e.fixtures.faults:constant", "spawned"):
            assert json.loads(host.invoke("FixtureEchoFunction", event)["body"])["worker"]["note"] == "spawned"
    finally:
        pids = host.started_pids("FixtureEchoFunction") + host.started_pids("FixtureLimitsFunction")
        host.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_handler_that_cannot_load_is_answered_502_with_its_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text('raise ImportError("broken on purpose")\n')
    (tmp_path / "template.yaml").write_text(
        "Resources:\n"
        "  BrokenFunction:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties: {CodeUri: ., Handler: broken.lambda_handler, Runtime: python3.12,\n"
        "      Events: {Get: {Type: HttpApi, Properties: {Path: /broken, Method: GET, Auth: {Authorizer: NONE}}}}}\n"
    )
    template = load_template(tmp_path / "template.yaml")
    server = LocalServer(template, Resolver(template), clients=lambda service: None, quiet=True)
    server.start()
    try:
        response = requests.get(f"{server.url}/broken", timeout=60)
    finally:
        server.stop()
    assert_error(response, 502, "function_init_error")
    assert "broken on purpose" in capsys.readouterr().err


# ---------------------------------------------------------------- the HTTP layer's own answers


def raw_exchange(stack: LocalStack, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a connection of their own; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 70_000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        (b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n", 400, "bad_request"),
    ],
    ids=["uri too long", "header too long", "unknown method", "trace", "bad content-length"],
)
def test_what_the_http_layer_refuses_is_answered_in_the_error_shape(
    fixture_stack: LocalStack, request_bytes: bytes, status: int, code: str
) -> None:
    answered, headers, body = raw_exchange(fixture_stack, request_bytes)
    assert answered == status
    assert headers["content-type"] == JSON_TYPE
    error = json.loads(body)["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    assert error["details"] == []


def test_unknown_route_and_wrong_method_on_a_function_route_are_404_and_405(fixture_api: Api) -> None:
    assert_error(fixture_api.get("/no/such/thing"), 404, "not_found")
    wrong = fixture_api.delete("/limits/sleep")
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["Allow"] == "POST"


# ---------------------------------------------------------------- the IAM audit inside the workers


def test_iam_audit_reports_dynamodb_calls_the_function_statements_do_not_allow(
    fixture_api: Api, fixture_iam_audit: IamAuditLog
) -> None:
    before = fixture_iam_audit.snapshot()
    try:
        allowed = fixture_api.post("/audit", json={"calls": ["get", "put", "query_index"]})
        assert allowed.status_code == 200, allowed.text
        assert fixture_iam_audit.since(before) == []
        denied = fixture_api.post("/audit", json={"calls": ["delete", "query_table", "transact_delete"]})
        assert denied.status_code == 200, "the audit reports; it does not refuse the call"
        assert sorted(fixture_iam_audit.since(before)) == [
            "FixtureAuditFunction calls dynamodb:DeleteItem on FixtureTable without permission",
            "FixtureAuditFunction calls dynamodb:DeleteItem on FixtureTable without permission",
            "FixtureAuditFunction calls dynamodb:Query on FixtureTable without permission",
        ]
    finally:
        fixture_iam_audit.forget("FixtureAuditFunction")


# ---------------------------------------------------------------- the scheduler (fixture template)


def create_fixture_schedule(stack: LocalStack, kind: str, expression: str, zone: str, **extra: Any) -> str:
    """A schedule shaped like the billing ones, targeting the fixture entry function."""
    name = f"{kind}--{zone.replace('/', '.')}"
    target_input = {"schedule": kind, "timezone": zone, "scheduled_time": "<aws.scheduler.scheduled-time>", **extra}
    stack.aws.client("scheduler").create_schedule(
        Name=name,
        GroupName=FIXTURE_GROUP,
        ScheduleExpression=expression,
        ScheduleExpressionTimezone=zone,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={
            "Arn": stack.resolver.function_arn("FixtureEntryFunction"),
            "RoleArn": "arn:aws:iam::123456789012:role/FixtureSchedulerRole",
            "Input": json.dumps(target_input),
        },
    )
    return name


@pytest.fixture
def work_queue(fixture_stack: LocalStack) -> Iterator[str]:
    """The fixture work queue, empty before and after the test (failed messages stay invisible otherwise)."""

    def recreate() -> str:
        sqs = fixture_stack.aws.client("sqs")
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName="FixtureWorkQueue")["QueueUrl"])
        # PurgeQueue is limited to once a minute; provisioning again is not.
        provision(fixture_stack.aws, fixture_stack.template)
        return str(sqs.get_queue_url(QueueName="FixtureWorkQueue")["QueueUrl"])

    yield recreate()
    recreate()


def test_fire_invokes_the_entry_and_drains_the_queue_through_the_worker(
    fixture_stack: LocalStack, fixture_api: Api, work_queue: str
) -> None:
    kind = f"fixture_{uuid.uuid4().hex[:8]}"
    bodies = [{"n": 1}, {"n": 2}, {"fail": True}]
    name = create_fixture_schedule(fixture_stack, kind, "cron(15 19 * * ? *)", FIXTURE_ZONE, bodies=bodies)
    sqs = fixture_stack.aws.client("sqs")
    try:
        body = {"schedule": kind, "timezone": FIXTURE_ZONE, "scheduled_time": "2026-11-28T06:15:00+00:00"}
        response = fixture_api.post("/_local/scheduler/fire", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["schedule"] == kind
        assert result["timezone"] == FIXTURE_ZONE
        assert result["scheduled_time"] == "2026-11-28T06:15:00Z"
        assert result["entry"]["enqueued"] == 3
        assert result["entry"]["received"]["scheduled_time"] == "2026-11-28T06:15:00Z"
        assert result["messages"] == 3
        assert result["failed"] == 1
        assert result["summary"] == {"processed": 2, "failed": 1}
        attributes = sqs.get_queue_attributes(QueueUrl=work_queue, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0"
        assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1", "the failed message waits for a retry"
    finally:
        fixture_stack.aws.client("scheduler").delete_schedule(Name=name, GroupName=FIXTURE_GROUP)


def test_drained_messages_arrive_as_a_lambda_sqs_event(fixture_stack: LocalStack, work_queue: str) -> None:
    sqs = fixture_stack.aws.client("sqs")
    queue_url = work_queue
    sqs.send_message(
        QueueUrl=queue_url,
        MessageBody='{"n": 1}',
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "fixture"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    events: list[dict[str, Any]] = []

    def invoke(function_id: str, event: dict[str, Any]) -> dict[str, Any]:
        assert function_id == "FixtureWorkerFunction"
        events.append(event)
        return {"batchItemFailures": []}

    report = drain_queues(sqs, fixture_stack.server.targets, invoke)
    assert (report.messages, report.failed) == (1, 0)
    (event,) = events
    SqsModel.model_validate(event)
    (record,) = event["Records"]
    assert record["body"] == '{"n": 1}'
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:FixtureWorkQueue"
    assert record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["attributes"]["SentTimestamp"].isdigit()
    assert record["messageAttributes"]["kind"]["stringValue"] == "fixture"
    assert base64.b64decode(record["messageAttributes"]["blob"]["binaryValue"]) == b"\x00\x01"
    assert record["md5OfBody"] and record["messageId"] and record["receiptHandle"]
    after = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert after["ApproximateNumberOfMessages"] == after["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_raising_worker_fails_its_whole_batch_and_the_drain_still_ends(
    fixture_stack: LocalStack, work_queue: str
) -> None:
    sqs = fixture_stack.aws.client("sqs")
    queue_url = work_queue
    for n in range(3):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": n}))
    calls: list[int] = []

    def invoke(function_id: str, event: dict[str, Any]) -> None:
        calls.append(len(event["Records"]))
        raise RuntimeError("worker bug")

    report = drain_queues(sqs, fixture_stack.server.targets, invoke)
    assert (report.messages, report.failed) == (3, 3)
    assert sum(calls) == 3 and max(calls) <= 2, "batches respect BatchSize"
    after = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert after["ApproximateNumberOfMessagesNotVisible"] == "3"


def test_local_scheduler_fires_a_daily_cron_at_its_local_minute(
    fixture_stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = f"fixture_{uuid.uuid4().hex[:8]}"
    # 02:30 in Kolkata (UTC+05:30) is 21:00 UTC.
    due = create_fixture_schedule(fixture_stack, kind, "cron(30 2 * * ? *)", "Asia/Kolkata")
    other = create_fixture_schedule(fixture_stack, kind + "_rate", "rate(5 minutes)", "Asia/Kolkata")
    local_scheduler = LocalScheduler(
        fixture_stack.server.targets,
        fixture_stack.server.invoke,
        fixture_stack.aws.client("scheduler"),
        fixture_stack.aws.client("sqs"),
    )
    try:
        minute = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
        assert due in local_scheduler.tick(minute)
        assert due not in local_scheduler.tick(minute + timedelta(minutes=1))
        assert other not in local_scheduler.tick(minute)
        assert f"{other}: rate(5 minutes) in Asia/Kolkata is not supported" in capsys.readouterr().err
    finally:
        for name in (due, other):
            fixture_stack.aws.client("scheduler").delete_schedule(Name=name, GroupName=FIXTURE_GROUP)


# ---------------------------------------------------------------- `make run`


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stack_command_prints_one_ready_line_and_stops_cleanly(signum: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    local_variables = ("AWS_ENDPOINT_URL", "STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")
    environment = {key: value for key, value in os.environ.items() if key not in local_variables}
    environment.update(PORT=str(port), PYTHONPATH=f"{ROOT / 'layers' / 'billing'}{os.pathsep}{ROOT}")
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            ready = lines.get(timeout=90)
            assert ready is not None, (tmp_path / "stderr.txt").read_text()
            assert "ready" in ready and f"http://127.0.0.1:{port}" in ready
            assert requests.get(f"http://127.0.0.1:{port}/_local/health", timeout=10).status_code == 200
            process.send_signal(signum)
            assert process.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    rest: list[str] = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert not [line for line in rest if "ready" in line], "exactly one ready line"
