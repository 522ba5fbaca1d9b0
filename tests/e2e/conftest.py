"""End-to-end fixtures: a local stack started by the test process, and small HTTP clients for it.

Each pytest(-xdist) worker starts its own stack on free ports. ``stack`` serves the repository's
template.yaml (or the fixture template while there is none); ``fixture_stack`` always serves
tests/e2e/fixtures/template.yaml, sharing the same moto server. The functions run in worker
processes of their own (local/functions.py), so a test cannot monkeypatch a handler from here: use
``stack.server.functions.patched(...)`` to inject a fault into the workers instead. Every DynamoDB
call a function makes is checked against its own IAM statements inside its worker; a test after
which a violation was recorded fails (``iam_audit``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.stack import EMULATOR_SECRET_KEY, LocalStack, start_stack
from local.template import DEFAULT_TEMPLATE
from local.tokens import make_token
from tests.e2e.contract import undocumented
from tests.e2e.iam_audit import IamAuditLog

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_TEMPLATE = FIXTURES / "template.yaml"


class ApiSession(requests.Session):
    """A requests session whose paths are relative to the local API (``session.get("/practice")``)."""

    def __init__(self, base_url: str, token: str | None = None, practice_id: str | None = None) -> None:
        super().__init__()
        self.trust_env = False  # talk to 127.0.0.1 directly, whatever HTTP(S)_PROXY says
        self.base_url = base_url.rstrip("/")
        self.practice_id = practice_id
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        """Send a request; a ``url`` starting with ``/`` is relative to the local API."""
        if isinstance(url, bytes):
            url = url.decode()
        if url.startswith("/"):
            url = self.base_url + url
        kwargs.setdefault("timeout", 60)
        return super().request(method, url, *args, **kwargs)


class Api(ApiSession):
    """The anonymous client, plus `as_practice` for an authenticated one."""

    def as_practice(
        self, practice_id: str | None = None, role: str = "clinician", client_id: str | None = None
    ) -> ApiSession:
        """A session with a token for ``practice_id`` (a fresh random practice when omitted)."""
        practice_id = practice_id or f"prac_{uuid.uuid4().hex[:12]}"
        token = make_token(practice_id, role=role, client_id=client_id)
        return ApiSession(self.base_url, token, practice_id)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The documented local JWT secret is short on purpose; PyJWT's key-length warning is noise here."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning"))


@pytest.fixture(scope="session")
def iam_audit(tmp_path_factory: pytest.TempPathFactory) -> IamAuditLog:
    """Where the main stack's workers record DynamoDB calls their function's IAM statements do not allow."""
    return IamAuditLog(tmp_path_factory.mktemp("iam-audit"))


@pytest.fixture(scope="session")
def stack(iam_audit: IamAuditLog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The local stack for template.yaml, started once per test process.

    Without the once-a-minute cron thread: tests make the night happen with /_local/scheduler/fire,
    and a schedule firing on the wall clock in the middle of a test would make it flaky. Its functions
    record what leaves their processes in ``stack.capture`` (`local.capture`; the PHI canary reads it).
    """
    template = DEFAULT_TEMPLATE if DEFAULT_TEMPLATE.exists() else FIXTURE_TEMPLATE
    running = start_stack(
        port=0,
        template_path=template,
        scheduler=False,
        quiet=True,
        iam_audit=iam_audit.folder,
        capture=tmp_path_factory.mktemp("capture"),
    )
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def stack_environment(stack: LocalStack, iam_audit: IamAuditLog) -> Iterator[None]:
    """The stack's environment (AWS_ENDPOINT_URL, table names...) in this process only while an end-to-end
    test runs, and no IAM violation by the functions during the test.

    Tests elsewhere in the same worker process (moto's mock_aws in integration tests) must not send
    their AWS calls to this stack's moto server. The functions' workers do not depend on this: their
    environment was fixed when the stack started.
    """
    before = iam_audit.snapshot()
    stack.resume_environment()
    yield
    stack.suspend_environment()
    assert iam_audit.since(before) == [], "template.yaml does not allow what the functions call"


@pytest.fixture(scope="session")
def openapi_document(stack: LocalStack) -> dict[str, Any]:
    """What the API promises: the stack's ``/openapi.json``."""
    with ApiSession(stack.url) as session:
        response = session.get("/openapi.json")
    response.raise_for_status()
    return dict(response.json())


@pytest.fixture(autouse=True)
def documented_statuses(stack: LocalStack, openapi_document: dict[str, Any]) -> Iterator[None]:
    """Every status a route answered during an end-to-end test is one ``/openapi.json`` documents for it."""
    mark = stack.server.served.mark()
    yield
    assert undocumented(stack.server.served.since(mark), openapi_document) == [], "answers /openapi.json omits"


@pytest.fixture(scope="session")
def fixture_iam_audit(
    tmp_path_factory: pytest.TempPathFactory, iam_audit: IamAuditLog, stack: LocalStack
) -> IamAuditLog:
    """The fixture stack's audit folder (its functions break their IAM statements on purpose)."""
    if stack.template.path == FIXTURE_TEMPLATE:
        return iam_audit
    return IamAuditLog(tmp_path_factory.mktemp("fixture-iam-audit"))


@pytest.fixture(scope="session")
def fixture_stack(stack: LocalStack, fixture_iam_audit: IamAuditLog) -> Iterator[LocalStack]:
    """A second API serving the fixture template (fixture handlers), on the same moto server."""
    if stack.template.path == FIXTURE_TEMPLATE:
        yield stack
        return
    running = start_stack(
        port=0,
        template_path=FIXTURE_TEMPLATE,
        aws=stack.aws,
        stripe=False,
        scheduler=False,
        quiet=True,
        iam_audit=fixture_iam_audit.folder,
    )
    yield running
    running.stop()


@pytest.fixture
def api(stack: LocalStack) -> Iterator[Api]:
    """A client for the main stack."""
    with Api(stack.url) as client:
        yield client


@pytest.fixture
def fixture_api(fixture_stack: LocalStack) -> Iterator[Api]:
    """A client for the fixture-template stack."""
    with Api(fixture_stack.url) as client:
        yield client


def appointment_body(
    client_id: str, starts_at: str = "2026-11-20T15:00:00Z", fee_cents: int = 15000, status: str = "scheduled"
) -> dict[str, Any]:
    """A valid ``POST /appointments`` body (a 50-minute 90837 session)."""
    return {
        "client_id": client_id,
        "starts_at": starts_at,
        "duration_minutes": 50,
        "service_code": "90837",
        "fee_cents": fee_cents,
        "status": status,
    }


def book(session: ApiSession, client_id: str, **body: Any) -> requests.Response:
    """Put an appointment on the calendar; keyword arguments override `appointment_body`'s defaults."""
    return session.post("/appointments", json=appointment_body(client_id, **body))


def idempotency_key() -> dict[str, str]:
    """A fresh ``Idempotency-Key`` header (payments and refunds need one)."""
    return {"Idempotency-Key": f"key-{uuid.uuid4().hex}"}


def fire(api: ApiSession, schedule: str, timezone: str, scheduled_time: str) -> dict[str, Any]:
    """Make a night happen: ``schedule``'s entry for ``timezone`` at ``scheduled_time``, its queues drained."""
    body = {"schedule": schedule, "timezone": timezone, "scheduled_time": scheduled_time}
    response = api.post("/_local/scheduler/fire", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def download(url: str) -> bytes:
    """What a presigned URL serves (straight from the embedded S3, whatever HTTP(S)_PROXY says)."""
    with requests.Session() as plain:
        plain.trust_env = False
        response = plain.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def pdf_text(pdf: bytes) -> str:
    """A PDF's text as ``pdftotext`` reads it, runs of whitespace made one space."""
    assert pdf.startswith(b"%PDF")
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True).stdout
    return " ".join(out.decode().split())


def refund_at_stripe(stack: LocalStack, payment_intent: str, amount: int) -> dict[str, Any]:
    """A refund made in Stripe's dashboard: straight to the processor, nothing of ours in its metadata."""
    assert stack.stripe is not None
    response = requests.post(
        f"{stack.stripe.url}/v1/refunds",
        data={"payment_intent": payment_intent, "amount": amount},
        auth=(EMULATOR_SECRET_KEY, ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())
