"""End-to-end fixtures: a local stack in the test process, and small HTTP clients for it.

Each pytest(-xdist) worker starts its own stack on free ports. ``stack`` serves the repository's
template.yaml (or the fixture template while there is none); ``fixture_stack`` always serves
tests/e2e/fixtures/template.yaml, sharing the same moto server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from billing_lambda.aws_clients import client
from local.stack import LocalStack, start_stack
from local.template import DEFAULT_TEMPLATE
from local.token import make_token
from tests.e2e.iam_audit import IamAudit

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
def stack() -> Iterator[LocalStack]:
    """The local stack for template.yaml, started once per test process.

    Without the once-a-minute cron thread: tests make the night happen with /_local/scheduler/fire,
    and a schedule firing on the wall clock in the middle of a test would make it flaky.
    """
    template = DEFAULT_TEMPLATE if DEFAULT_TEMPLATE.exists() else FIXTURE_TEMPLATE
    running = start_stack(port=0, template_path=template, scheduler=False, quiet=True)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def iam_audit(stack: LocalStack) -> IamAudit:
    """Watches the handlers' DynamoDB client (shared by all functions of the process) for calls that the
    calling function's IAM statements in template.yaml would not allow."""
    table = stack.resolver.physical_name("BillingTable")
    audit = IamAudit.from_template(stack.template, "BillingTable", table)
    stack.resume_environment()
    client("dynamodb").meta.events.register(
        "before-parameter-build.dynamodb", lambda model, params, **_: audit.check_call(model.name, params)
    )
    return audit


@pytest.fixture(autouse=True)
def stack_environment(stack: LocalStack, iam_audit: IamAudit) -> Iterator[None]:
    """The stack's environment (AWS_ENDPOINT_URL, table names...) only while an end-to-end test runs.

    Tests elsewhere in the same worker process (moto's mock_aws in integration tests) must not send
    their AWS calls to this stack's moto server.
    """
    stack.resume_environment()
    already = len(iam_audit.violations)
    yield
    stack.suspend_environment()
    assert iam_audit.violations[already:] == [], "template.yaml does not allow what the functions call"


@pytest.fixture(scope="session")
def fixture_stack(stack: LocalStack) -> Iterator[LocalStack]:
    """A second API serving the fixture template (fixture handlers), on the same moto server."""
    if stack.template.path == FIXTURE_TEMPLATE:
        yield stack
        return
    running = start_stack(
        port=0, template_path=FIXTURE_TEMPLATE, aws=stack.aws, stripe=False, scheduler=False, quiet=True
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
