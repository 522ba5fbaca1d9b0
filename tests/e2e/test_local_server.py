"""The local stack behaves like API Gateway + Lambda + EventBridge Scheduler + SQS where handlers can tell."""

from __future__ import annotations

import base64
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import requests
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model, SqsModel

from local.aws import provision
from local.scheduler import LocalScheduler, drain_queues
from local.stack import LocalStack
from local.token import DEFAULT_SECRET, make_token

if TYPE_CHECKING:
    from tests.e2e.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
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
    return {"sub": "s", "custom:practice_id": "prac_x", "custom:role": "clinician", **extra}


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
    assert os.environ["STRIPE_SECRET_KEY"] == "sk_test_local_emulator"
    assert os.environ["STRIPE_WEBHOOK_SECRET"] == "whsec_local"
    assert os.environ["STRIPE_API_BASE"].startswith("http://127.0.0.1:")
    assert stack.stripe.webhook_url == f"{stack.url}/webhooks/stripe"
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


def test_swagger_page_loads_its_assets_from_the_local_server(api: Api) -> None:
    page = api.get("/swagger")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/openapi.json" in page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/swagger/assets/swagger-ui-bundle.js" in sources
    for source in sources:
        assert source.startswith("/swagger/assets/"), "Swagger UI must work offline"
        asset = api.get(source)
        assert asset.status_code == 200, source
        assert asset.content
    script = api.get("/swagger/assets/swagger-ui-bundle.js")
    assert "javascript" in script.headers["Content-Type"]
    assert b"SwaggerUIBundle" in script.content


def test_swagger_assets_cannot_be_used_to_read_other_files(api: Api) -> None:
    for path in ("/swagger/assets/..%2F__init__.py", "/swagger/assets/missing.js", "/swagger/assets/"):
        assert api.get(path).status_code == 404


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


def test_environment_is_resolved_from_the_template(fixture_stack: LocalStack) -> None:
    assert os.environ["FIXTURE_TABLE_NAME"] == "FixtureTable"
    assert os.environ["FIXTURE_BUCKET_NAME"] == "fixturebucket"
    assert os.environ["FIXTURE_ENTRY_ARN"] == "arn:aws:lambda:us-east-1:123456789012:function:FixtureEntryFunction"
    assert os.environ["FIXTURE_QUEUE_ARN"] == "arn:aws:sqs:us-east-1:123456789012:FixtureWorkQueue"
    assert os.environ["FIXTURE_WORK_QUEUE_URL"].endswith("/123456789012/FixtureWorkQueue")
    assert os.environ["FIXTURE_STACK"] == "local"
    assert os.environ["FIXTURE_FLAVOUR"] == "plain"
    assert os.environ["AWS_ENDPOINT_URL"] == fixture_stack.aws_endpoint


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
