"""The API keeps the promises of its OpenAPI document, under requests generated from that document.

Schemathesis reads ``/openapi.json`` and, for every operation, sends
- its coverage cases: the document's examples with each field in turn at its boundaries (minimum, maximum, each
  enum value, present and absent), naming objects that exist in the path, so they reach past "not found" into the
  rules;
- generated valid requests (the examples among them), naming existing objects or anything;
- generated invalid ones (missing or extra fields, wrong types, no token...);
then chains operations along the links it infers from the document (create a client, book an appointment, invoice
it, pay, refund...). Every answer is checked: never a 5xx, only statuses and content types the operation documents,
and bodies that match the documented schema. Staff routes get a clinician token, ``/portal`` routes the token of a
client of the same practice, which is set up through the API with a card, appointments, an invoice and a payment.

Deterministic: coverage cases are, and Hypothesis is derandomized, so every run sends the same requests for the
same document.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from local.stack import LocalStack
from local.tokens import make_token
from tests.e2e.conftest import Api, ApiSession, book

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# A check that failed (AssertionError), or several at once (schemathesis' FailureGroup, a BaseExceptionGroup).
BROKEN_PROMISE = (AssertionError, BaseExceptionGroup)

# What every answer is checked for.
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
COVERAGE_CASES = 15  # at most, per operation
EXAMPLES_PER_MODE = 4  # generated requests per operation, for each of positive and negative generation
SCENARIOS = 15  # stateful chains
STEPS_PER_SCENARIO = 8
PRACTICE = {
    "name": "Contract Practice",
    "timezone": "America/Chicago",
    "invoice_creation": "manual",
    "autopay_enabled": True,
    "npi": "1234567893",
    "tax_id": "12-3456789",
}
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_MODE,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found: shrinking HTTP calls costs minutes
    suppress_health_check=list(HealthCheck),
)


@dataclass(frozen=True)
class Practice:
    """A practice set up through the API, and the ids of what it holds (path parameters are filled by name)."""

    staff_token: str
    portal_token: str
    ids: dict[str, str]

    def token_for(self, path: str) -> str:
        """The role each route is for: the client's on ``/portal`` routes, the clinician's on the others."""
        return self.portal_token if path.startswith("/portal/") else self.staff_token

    def known(self, parameters: list[str]) -> dict[str, str]:
        return {name: self.ids[name] for name in parameters if name in self.ids}


@pytest.fixture(scope="module")
def practice(stack: LocalStack) -> Practice:
    """A practice with a client (diagnosed, with a card), appointments, an invoice and a cash payment on it."""
    staff = Api(stack.url).as_practice()

    def made(response: Any) -> dict[str, Any]:
        response.raise_for_status()
        return dict(response.json())

    made(staff.put("/practice", json=PRACTICE))
    client = made(
        staff.post("/clients", json={"first_name": "Fuzz", "last_name": "Target", "diagnosis_codes": ["F41.1"]})
    )
    client_id = client["client_id"]
    card = made(staff.post(f"/clients/{client_id}/cards", json={"payment_method_id": "pm_card_visa"}))
    booked = [made(book(staff, client_id, starts_at=f"2026-11-0{day}T15:00:00Z", status="show")) for day in (2, 3, 4)]
    appointment_ids = [appointment["appointment_id"] for appointment in booked]
    invoice = made(staff.post("/invoices", json={"client_id": client_id, "appointment_ids": appointment_ids[:2]}))
    cash = {"client_id": client_id, "amount_cents": 5000, "method": "cash"}
    payment = made(staff.post("/payments", json=cash, headers={"Idempotency-Key": uuid.uuid4().hex}))
    ids = {
        "client_id": client_id,
        "card_id": card["card_id"],
        "appointment_id": appointment_ids[2],
        "invoice_id": invoice["invoice_id"],
        "payment_id": payment["payment_id"],
    }
    portal_token = make_token(str(staff.practice_id), role="client", client_id=client_id)
    return Practice(staff.headers["Authorization"].removeprefix("Bearer "), portal_token, ids)


@pytest.fixture(scope="module")
def contract(stack: LocalStack, practice: Practice) -> Iterator[schemathesis.BaseSchema]:
    """The API's OpenAPI document, loaded by schemathesis, calling with the token of each route's role."""
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")

    @schema.auth(refresh_interval=None)
    class RoleToken:
        def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
            return practice.token_for(case.operation.path)

        def set(self, case: schemathesis.Case, token: str, context: schemathesis.AuthContext) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}

    yield schema


@pytest.fixture(scope="module")
def checks() -> list[Any]:
    load_all_checks()
    return CHECKS.get_by_names(list(CHECK_NAMES))


@pytest.fixture(scope="module")
def session(stack: LocalStack) -> Iterator[ApiSession]:
    """Schemathesis' HTTP session: straight to the local server, whatever HTTP(S)_PROXY says."""
    with ApiSession(stack.url) as http:
        yield http


def coverage_cases(contract: Any, operation: Any, practice: Practice) -> list[schemathesis.Case]:
    """The operation's valid coverage cases (its own method only), naming the practice's objects in the path, with
    the token of the route's role."""
    config = contract.config.generation_for(operation=operation)
    valid = contract.iter_coverage_cases(operation, generation_modes=[POSITIVE], generation_config=config)
    cases = [case for case in valid if case.method.upper() == operation.method.upper()][:COVERAGE_CASES]
    known = practice.known([parameter.name for parameter in operation.path_parameters])
    for case in cases:
        case.path_parameters = {**(case.path_parameters or {}), **known}
        contract.auth.set(case, schemathesis.AuthContext(operation=operation, app=None))  # as generated cases get it
    return cases


def generated(operation: Any, mode: GenerationMode, practice: Practice) -> st.SearchStrategy[schemathesis.Case]:
    """Generated requests: valid ones are the document's examples, or name the practice's objects, or anything."""
    if mode is NEGATIVE:
        return operation.as_strategy(mode)
    known = practice.known([parameter.name for parameter in operation.path_parameters])
    examples = operation.get_strategies_from_examples(path_parameters=known)
    return st.one_of(*examples, operation.as_strategy(mode, path_parameters=known), operation.as_strategy(mode))


def failures_of(operation: Any, contract: Any, practice: Practice, session: ApiSession, checks: list[Any]) -> list[str]:
    """What went wrong for ``operation``: one report per coverage case, and per generation mode, that failed."""

    def answer_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(session=session, checks=checks)

    found = []
    for case in coverage_cases(contract, operation, practice):
        try:
            answer_as_documented(case)
        except BROKEN_PROMISE as failure:  # schemathesis' report: what failed, and a curl command that repeats it
            found.append(f"{operation.label} (coverage):\n{failure}")
    for mode in (POSITIVE, NEGATIVE):
        try:
            FUZZ_SETTINGS(given(generated(operation, mode, practice))(answer_as_documented))()
        except BROKEN_PROMISE as failure:
            found.append(f"{operation.label} ({mode.value}):\n{failure}")
    return found


def test_every_operation_answers_as_documented(
    contract: schemathesis.BaseSchema, practice: Practice, session: ApiSession, checks: list[Any]
) -> None:
    operations = [result.ok() for result in contract.get_all_operations()]
    failures = [
        failure for operation in operations for failure in failures_of(operation, contract, practice, session, checks)
    ]
    assert not failures, "\n\n".join(failures)


def test_chains_of_operations_answer_as_documented(
    contract: schemathesis.BaseSchema, session: ApiSession, checks: list[Any]
) -> None:
    class Workflow(contract.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"session": session}

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=checks)

    Workflow.run(
        settings=settings(
            Workflow.TestCase.settings,
            max_examples=SCENARIOS,
            stateful_step_count=STEPS_PER_SCENARIO,
            derandomize=True,
            database=None,
            deadline=None,
        )
    )
