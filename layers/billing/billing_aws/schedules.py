"""EventBridge Scheduler: one schedule per (nightly job, IANA zone), created the first time a zone is used."""

import json
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

from botocore.exceptions import ClientError

from billing.localtime import Clock
from billing.nightly import LATEST_LOCAL_TIME, NightlyJob, nightly_run_time

SCHEDULED_TIME_PLACEHOLDER = "<aws.scheduler.scheduled-time>"


def schedule_name(job: NightlyJob, timezone: str) -> str:
    """A valid, unique schedule name for the job in the zone (``daily_invoices--America.New_York``)."""
    return f"{job.value}--{timezone.replace('/', '.').replace('+', '_plus_')}"


def schedule_input(job: NightlyJob, timezone: str) -> dict[str, str]:
    """What the entry function receives; the Scheduler fills in the instant it fired for."""
    return {"schedule": job.value, "timezone": timezone, "scheduled_time": SCHEDULED_TIME_PLACEHOLDER}


def retry_policy(job: NightlyJob, run_at: time) -> dict[str, int]:
    """How long Scheduler keeps retrying a missed invocation. AutoPay's retries end before its 00:00-06:00 window
    does (the worker also refuses to charge outside it); other jobs may catch up within the hour."""
    age = 3600
    if job is NightlyJob.AUTOPAY:
        until_window_ends = datetime.combine(date.min, LATEST_LOCAL_TIME) - datetime.combine(date.min, run_at)
        age = max(60, min(age, int(until_window_ends.total_seconds()) - 300))
    return {"MaximumEventAgeInSeconds": age, "MaximumRetryAttempts": 10}


class NightlySchedules:
    """Creates the per-zone schedules idempotently (an existing schedule is left as it is).

    Every schedule retries a failed delivery within its `retry_policy` and then hands the invocation to the
    dead-letter queue ``dead_letter_arn`` (template.yaml's ``SchedulesDLQ``), so a missed night is never silent.
    """

    def __init__(
        self,
        client: Any,
        clock: Clock,
        group_name: str,
        role_arn: str,
        targets: Mapping[NightlyJob, str],
        dead_letter_arn: str,
    ):
        self._scheduler = client
        self._clock = clock
        self._group = group_name
        self._role_arn = role_arn
        self._targets = targets
        self._dead_letter_arn = dead_letter_arn

    def ensure_timezone(self, timezone: str) -> None:
        for job, target_arn in self._targets.items():
            run_at = nightly_run_time(timezone, job, self._clock.now())
            try:
                self._scheduler.create_schedule(
                    Name=schedule_name(job, timezone),
                    GroupName=self._group,
                    ScheduleExpression=f"cron({run_at.minute} {run_at.hour} * * ? *)",
                    ScheduleExpressionTimezone=timezone,
                    FlexibleTimeWindow={"Mode": "OFF"},
                    State="ENABLED",
                    Description=f"{job.value} for practices in {timezone}",
                    Target={
                        "Arn": target_arn,
                        "RoleArn": self._role_arn,
                        "Input": json.dumps(schedule_input(job, timezone)),
                        "RetryPolicy": retry_policy(job, run_at),
                        "DeadLetterConfig": {"Arn": self._dead_letter_arn},
                    },
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConflictException":
                    raise
