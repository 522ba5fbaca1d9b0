"""The per-zone schedules as EventBridge Scheduler stores them (moto in process): a schedule that cannot
invoke its entry function retries for a bounded time, then leaves the invocation in the dead-letter queue."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from billing.nightly import NightlyJob, nightly_run_time
from billing_aws.schedules import NightlySchedules, retry_policy, schedule_name
from tests.integration.conftest import FixedClock

GROUP = "InvoicingScheduleGroup"
DEAD_LETTERS = "arn:aws:sqs:us-east-1:123456789012:SchedulesDLQ"
ZONE = "America/Chicago"
NOW = datetime(2026, 11, 27, tzinfo=UTC)


@pytest.fixture
def scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An in-process Scheduler with the schedule group (not the test process's moto server, if one runs)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("scheduler", region_name="us-east-1")
        client.create_schedule_group(Name=GROUP)
        yield client


def test_every_nightly_schedule_retries_a_bounded_time_then_dead_letters(scheduler: Any) -> None:
    schedules = NightlySchedules(
        scheduler,
        FixedClock(NOW),
        group_name=GROUP,
        role_arn="arn:aws:iam::123456789012:role/SchedulerInvokeRole",
        targets={job: f"arn:aws:lambda:us-east-1:123456789012:function:{job.value}" for job in NightlyJob},
        dead_letter_arn=DEAD_LETTERS,
    )
    schedules.ensure_timezone(ZONE)
    for job in NightlyJob:
        target = scheduler.get_schedule(Name=schedule_name(job, ZONE), GroupName=GROUP)["Target"]
        assert target["DeadLetterConfig"] == {"Arn": DEAD_LETTERS}, job
        # Not Scheduler's default when none is given (185 retries over 24 hours): AutoPay's end inside its window.
        assert target["RetryPolicy"] == retry_policy(job, nightly_run_time(ZONE, job, NOW)), job
