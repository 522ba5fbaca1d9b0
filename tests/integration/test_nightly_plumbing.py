"""The nightly plumbing with real AWS APIs (moto): schedules per zone, entry fan-out, worker partial failures."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from billing.nightly import NightlyJob
from billing_aws.schedules import NightlySchedules, schedule_name
from local.aws import LocalAws
from local.template import Resolver
from tests.integration.conftest import FixedClock


def test_schedules_are_created_once_per_zone_with_the_zone_and_a_safe_time(
    local_aws: tuple[LocalAws, Resolver],
) -> None:
    aws, resolver = local_aws
    scheduler = aws.client("scheduler")
    group = resolver.physical_name("InvoicingScheduleGroup")
    target = resolver.function_arn("DailyInvoicesFunction")
    schedules = NightlySchedules(
        scheduler,
        FixedClock(datetime(2026, 11, 27, tzinfo=UTC)),
        group_name=group,
        role_arn="arn:aws:iam::123456789012:role/SchedulerInvokeRole",
        targets={NightlyJob.DAILY_INVOICES: target},
        dead_letter_arn=resolver.arn("SchedulesDLQ"),
    )
    for zone in ("America/Santiago", "America/Santiago", "Europe/London"):
        schedules.ensure_timezone(zone)  # saving a practice again, or a second practice in the zone
    santiago = scheduler.get_schedule(
        Name=schedule_name(NightlyJob.DAILY_INVOICES, "America/Santiago"), GroupName=group
    )
    assert santiago["ScheduleExpressionTimezone"] == "America/Santiago"
    assert santiago["ScheduleExpression"] == "cron(0 1 * * ? *)"  # 00:xx does not exist there once a year
    assert json.loads(santiago["Target"]["Input"]) == {
        "schedule": "daily_invoices",
        "timezone": "America/Santiago",
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }
    london = scheduler.get_schedule(Name=schedule_name(NightlyJob.DAILY_INVOICES, "Europe/London"), GroupName=group)
    assert london["ScheduleExpression"] == "cron(5 0 * * ? *)"
    names = [s["Name"] for s in scheduler.list_schedules(GroupName=group)["Schedules"]]
    assert names.count(schedule_name(NightlyJob.DAILY_INVOICES, "America/Santiago")) == 1


def _sqs_record(message_id: str, body: str) -> dict[str, object]:
    return {
        "messageId": message_id,
        "receiptHandle": f"handle-{message_id}",
        "body": body,
        "attributes": {},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
        "awsRegion": "us-east-1",
    }


def test_the_worker_reports_only_the_bad_message_as_failed(
    monkeypatch: pytest.MonkeyPatch, local_aws: tuple[LocalAws, Resolver]
) -> None:
    from local.server import FunctionHost
    from local.template import load_template

    _, resolver = local_aws
    host = FunctionHost(load_template(), resolver)
    for name, value in host.environment().items():
        monkeypatch.setenv(name, value)
    good = {"practice_id": f"prac_{uuid.uuid4().hex}", "business_date": "2026-11-27"}
    records = [_sqs_record("ok-1", json.dumps(good)), _sqs_record("bad-1", "{not json")]
    result = host.invoke("DailyInvoicesWorkerFunction", {"Records": records})
    assert result["batchItemFailures"] == [{"itemIdentifier": "bad-1"}]
    assert result["summary"]["practices"] == 1
