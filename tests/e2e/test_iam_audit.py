"""The IAM audit inside the workers catches a denied call of every service a function may call.

The fixture template's FixtureAuditFunction (tests/e2e/fixtures/functions/audit.py) makes the calls it is
told to; its statements allow some and not others, through inline statements and SAM policy templates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Api
from tests.e2e.iam_audit import IamAuditLog

AUDITED = "FixtureAuditFunction"
ALLOWED = [
    "get",
    "put",
    "query_index",
    "queue_send",
    "object_put",
    "object_get",
    "object_link",
    "secret_get",
    "schedule_create",
    "invoke",
    "parameter_get",
]
DENIED = {
    "queue_receive": ["sqs:ReceiveMessage on FixtureAuditQueue"],
    "object_put_outside": ["s3:PutObject on FixtureBucket/denied/audit.txt"],
    # The key a request names...
    "object_put_other_key": ["kms:GenerateDataKey on FixtureOtherKey"],
    # ...and the key the template encrypts a resource with.
    "sealed_secret_get": ["kms:Decrypt on FixtureOtherKey"],
    "secret_describe": ["secretsmanager:DescribeSecret on FixtureSecret"],
    "schedule_create_other_group": ["scheduler:CreateSchedule on default/audit"],
    "schedule_create_other_role": ["iam:PassRole on FixtureOtherRole"],
    "invoke_other": ["lambda:InvokeFunction on FixtureEchoFunction"],
    "parameter_get_other": ["ssm:GetParameter on fixture/denied"],
}


@pytest.fixture
def audit_log(fixture_iam_audit: IamAuditLog) -> Iterator[IamAuditLog]:
    """The fixture stack's audit log, with what this test caused on purpose forgotten afterwards."""
    try:
        yield fixture_iam_audit
    finally:
        fixture_iam_audit.forget(AUDITED)


def make(api: Api, *calls: str) -> None:
    response = api.post("/audit", json={"calls": list(calls)})
    assert response.status_code == 200, response.text
    assert response.json()["made"] == list(calls), "the audit reports; it does not refuse the call"


def test_calls_the_statements_allow_are_not_reported(fixture_api: Api, audit_log: IamAuditLog) -> None:
    before = audit_log.snapshot()
    make(fixture_api, *ALLOWED)
    assert audit_log.since(before) == []


@pytest.mark.parametrize("call", sorted(DENIED))
def test_a_denied_call_of_each_service_is_reported(fixture_api: Api, audit_log: IamAuditLog, call: str) -> None:
    before = audit_log.snapshot()
    make(fixture_api, call)
    assert audit_log.since(before) == [f"{AUDITED} calls {need} without permission" for need in DENIED[call]]
