"""The local EventBridge Scheduler: fire schedules stored in moto and drain the SQS fan-out.

Firing does what the cloud does at a schedule's instant: substitute the context attributes in the
target's Input, invoke the target function, then (as Lambda's SQS event source mappings would) feed
every queue with an SQS event source to its worker until the queues are empty. `fire` serves
``POST /_local/scheduler/fire``; `LocalScheduler` fires due ``cron(M H * * ? *)`` schedules once a
minute through the same path.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from local.template import Resolver, Template

Invoke = Callable[[str, Any], Any]
"""Calls a template function by logical id with an event; returns what the handler returns."""

SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
SCHEDULE_ARN = "<aws.scheduler.schedule-arn>"
EXECUTION_ID = "<aws.scheduler.execution-id>"
ATTEMPT_NUMBER = "<aws.scheduler.attempt-number>"
FIRE_FIELDS = ("schedule", "timezone", "scheduled_time")
MAX_DRAIN_ROUNDS = 10_000


class FireRequestError(ValueError):
    """The fire request body is invalid; ``details`` says which fields and why."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{item['field']}: {item['message']}" for item in details))
        self.details = details


class ScheduleNotFound(LookupError):
    """No schedule in moto has that kind and time zone in its target Input."""


class TargetNotFound(LookupError):
    """The schedule's target is not a function of this template."""


@dataclass(frozen=True)
class FireRequest:
    """A validated ``POST /_local/scheduler/fire`` body."""

    schedule: str
    timezone: str
    scheduled_time: datetime


@dataclass(frozen=True)
class QueueSource:
    """A queue and the worker its SQS event source mapping feeds."""

    function_id: str
    queue_url: str
    queue_arn: str
    batch_size: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class LocalTargets:
    """What firing needs to know about the template: groups, queues and function ARNs."""

    group_names: tuple[str, ...]
    queue_sources: tuple[QueueSource, ...]
    region: str
    function_for_arn: Callable[[str], str | None]

    @classmethod
    def from_template(cls, template: Template, resolver: Resolver) -> LocalTargets:
        """Targets of ``template`` with local physical values from ``resolver``."""
        groups = tuple(resolver.physical_name(g.logical_id) for g in template.schedule_groups)
        sources = tuple(
            QueueSource(
                function_id=source.function_id,
                queue_url=resolver.queue_url(source.queue_id),
                queue_arn=resolver.arn(source.queue_id),
                batch_size=source.batch_size,
                report_batch_item_failures=source.report_batch_item_failures,
            )
            for source in template.sqs_event_sources
        )
        return cls(
            group_names=groups or ("default",),
            queue_sources=sources,
            region=resolver.region,
            function_for_arn=resolver.function_id_for_arn,
        )


@dataclass
class DrainReport:
    """What draining the queues did: messages delivered, failed, and the workers' summaries."""

    messages: int = 0
    failed: int = 0
    summary: dict[str, int | float] = field(default_factory=dict)

    def add_summary(self, summary: Any) -> None:
        """Add the numeric fields of a worker's ``summary`` to the running totals."""
        if not isinstance(summary, Mapping):
            return
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.summary[key] = self.summary.get(key, 0) + value


# ---------------------------------------------------------------- the request


def parse_fire_request(body: bytes | str) -> FireRequest:
    """Validate a fire request body; raises `FireRequestError` with per-field details."""
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise FireRequestError([{"field": "body", "message": "not valid JSON"}]) from None
    if not isinstance(payload, dict):
        raise FireRequestError([{"field": "body", "message": "must be a JSON object"}])
    details = [{"field": name, "message": "unknown field"} for name in payload if name not in FIRE_FIELDS]
    schedule = payload.get("schedule")
    if not isinstance(schedule, str) or not schedule:
        details.append({"field": "schedule", "message": "required, a schedule kind"})
    zone = payload.get("timezone")
    if not isinstance(zone, str) or not _is_zone(zone):
        details.append({"field": "timezone", "message": "required, an IANA time zone"})
    instant = payload.get("scheduled_time")
    scheduled_time = _parse_instant(instant) if isinstance(instant, str) else None
    if scheduled_time is None:
        details.append({"field": "scheduled_time", "message": "required, ISO-8601 in UTC"})
    if details:
        raise FireRequestError(details)
    assert isinstance(schedule, str) and isinstance(zone, str) and scheduled_time is not None
    return FireRequest(schedule=schedule, timezone=zone, scheduled_time=scheduled_time)


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _parse_instant(text: str) -> datetime | None:
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A time without an offset is read as UTC, the only zone the field accepts.
    instant = instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
    return instant.replace(microsecond=0)


def format_scheduled_time(instant: datetime) -> str:
    """Format an instant as EventBridge Scheduler does: ``2026-11-28T06:15:00Z``."""
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- schedules in moto


def list_schedules(scheduler: Any, group_names: Iterable[str]) -> list[dict[str, Any]]:
    """Every schedule (full ``GetSchedule`` output) in the given groups."""
    schedules: list[dict[str, Any]] = []
    for group in group_names:
        token: str | None = None
        while True:
            page = scheduler.list_schedules(GroupName=group, **({"NextToken": token} if token else {}))
            for summary in page.get("Schedules", []):
                # moto filters groups by substring, so check the group really matches.
                if summary.get("GroupName", group) != group:
                    continue
                full = scheduler.get_schedule(GroupName=group, Name=summary["Name"])
                full.pop("ResponseMetadata", None)
                schedules.append(full)
            token = page.get("NextToken")
            if not token:
                break
    return schedules


def schedule_input(schedule: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule's target Input as a JSON object ({} when absent or not an object)."""
    try:
        value = json.loads(schedule.get("Target", {}).get("Input") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def find_schedule(scheduler: Any, group_names: Iterable[str], kind: str, zone: str) -> dict[str, Any] | None:
    """The schedule whose Input has ``"schedule": kind`` and ``"timezone": zone``, if any."""
    for schedule in list_schedules(scheduler, group_names):
        target_input = schedule_input(schedule)
        if target_input.get("schedule") == kind and target_input.get("timezone") == zone:
            return schedule
    return None


def schedule_event(schedule: Mapping[str, Any], scheduled_time: datetime) -> Any:
    """The event the target receives: the Input with its context attributes substituted."""
    text = str(schedule.get("Target", {}).get("Input") or "{}")
    replacements = {
        SCHEDULED_TIME: format_scheduled_time(scheduled_time),
        SCHEDULE_ARN: str(schedule.get("Arn", "")),
        EXECUTION_ID: uuid.uuid4().hex[:16],
        ATTEMPT_NUMBER: "1",
    }
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, value)
    try:
        return json.loads(text)
    except ValueError:
        return text  # Lambda hands a non-JSON Input over as a string


# ---------------------------------------------------------------- SQS event source mappings


def sqs_event(messages: list[dict[str, Any]], source: QueueSource, region: str) -> dict[str, Any]:
    """The Lambda SQS event for messages received (``ReceiveMessage`` shape) from ``source``."""
    now_ms = str(int(time.time() * 1000))
    records = []
    for message in messages:
        attributes = dict(message.get("Attributes") or {})
        attributes.setdefault("ApproximateReceiveCount", "1")
        attributes.setdefault("SentTimestamp", now_ms)
        attributes.setdefault("ApproximateFirstReceiveTimestamp", now_ms)
        attributes.setdefault("SenderId", "AIDALOCALSTACKSENDER")
        record: dict[str, Any] = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body", ""),
            "attributes": attributes,
            "messageAttributes": {
                name: _message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()
            },
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": source.queue_arn,
            "awsRegion": region,
        }
        if message.get("MD5OfMessageAttributes"):
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        records.append(record)
    return {"Records": records}


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    def encoded(raw: Any) -> str:
        return base64.b64encode(raw).decode() if isinstance(raw, bytes) else str(raw)

    attribute: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues") or []),
        "binaryListValues": [encoded(item) for item in value.get("BinaryListValues") or []],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = encoded(value["BinaryValue"])
    return attribute


def _receive(sqs: Any, source: QueueSource) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while len(messages) < source.batch_size:
        response = sqs.receive_message(
            QueueUrl=source.queue_url,
            MaxNumberOfMessages=min(10, source.batch_size - len(messages)),
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        received = response.get("Messages") or []
        if not received:
            break
        messages.extend(received)
    return messages


def _failed_ids(result: Any, event: dict[str, Any], source: QueueSource) -> set[str]:
    """Message ids Lambda would keep on the queue after the worker returned ``result``."""
    every_id = {record["messageId"] for record in event["Records"]}
    if not source.report_batch_item_failures:
        return set()
    if result is None:
        return set()
    if not isinstance(result, Mapping):
        return every_id  # an unparseable response fails the whole batch
    failures = result.get("batchItemFailures") or []
    failed: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not identifier or identifier not in every_id:
            return every_id  # Lambda treats an invalid identifier as a whole-batch failure
        failed.add(str(identifier))
    return failed


def deliver_batch(
    sqs: Any,
    source: QueueSource,
    messages: list[dict[str, Any]],
    invoke: Invoke,
    region: str,
    report: DrainReport,
) -> set[str]:
    """Invoke the worker with one batch and delete what succeeded; returns the failed ids."""
    event = sqs_event(messages, source, region)
    try:
        result = invoke(source.function_id, event)
    except Exception:  # a raising worker fails its whole batch, as in Lambda
        print(f"local scheduler: {source.function_id} raised:", file=sys.stderr)
        traceback.print_exc()
        failed = {record["messageId"] for record in event["Records"]}
    else:
        failed = _failed_ids(result, event, source)
        if isinstance(result, Mapping):
            report.add_summary(result.get("summary"))
    done = [message for message in messages if message["MessageId"] not in failed]
    for start in range(0, len(done), 10):
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(done[start : start + 10])
        ]
        sqs.delete_message_batch(QueueUrl=source.queue_url, Entries=entries)
    report.messages += len(messages)
    report.failed += len(failed)
    return failed


def drain_queues(sqs: Any, targets: LocalTargets, invoke: Invoke) -> DrainReport:
    """Feed every SQS event source's queue to its worker until all of them are empty.

    Failed messages stay on their queue, invisible for its visibility timeout, as in the cloud;
    one that becomes visible again during the same drain is left alone so the loop ends.
    """
    report = DrainReport()
    failed: set[str] = set()
    for _ in range(MAX_DRAIN_ROUNDS):
        delivered = False
        for source in targets.queue_sources:
            messages = [m for m in _receive(sqs, source) if m["MessageId"] not in failed]
            if messages:
                delivered = True
                failed |= deliver_batch(sqs, source, messages, invoke, targets.region, report)
        if not delivered:
            break
    return report


# ---------------------------------------------------------------- firing


def run_schedule(
    schedule: Mapping[str, Any],
    scheduled_time: datetime,
    targets: LocalTargets,
    invoke: Invoke,
    sqs: Any,
) -> dict[str, Any]:
    """Invoke a schedule's target as Scheduler would at ``scheduled_time``, then drain the queues.

    The entry's exceptions propagate (a bug, not a result); workers' exceptions fail their batch.
    """
    target_arn = str(schedule.get("Target", {}).get("Arn", ""))
    function_id = targets.function_for_arn(target_arn)
    if function_id is None:
        raise TargetNotFound(f"schedule target {target_arn} is not a function of the template")
    target_input = schedule_input(schedule)
    event = schedule_event(schedule, scheduled_time)
    if isinstance(event, dict):
        # Simulated time: the run happens at ``scheduled_time`` (in AWS the entry reads its own clock instead).
        event["invoked_at"] = format_scheduled_time(scheduled_time)
    # Fires are not serialised: several at once race as Scheduler retries and redeliveries do in the cloud
    # (each message goes to one drain). A fire's counts are what its own drain delivered.
    entry = invoke(function_id, event)
    report = drain_queues(sqs, targets, invoke)
    return {
        "schedule": target_input.get("schedule"),
        "timezone": target_input.get("timezone", schedule.get("ScheduleExpressionTimezone")),
        "scheduled_time": format_scheduled_time(scheduled_time),
        "schedule_name": schedule.get("Name"),
        "entry": entry,
        "messages": report.messages,
        "failed": report.failed,
        "summary": report.summary,
    }


def fire(request: FireRequest, targets: LocalTargets, invoke: Invoke, scheduler: Any, sqs: Any) -> dict[str, Any]:
    """Serve a fire request: find the schedule by kind and zone, run it, drain the queues."""
    schedule = find_schedule(scheduler, targets.group_names, request.schedule, request.timezone)
    if schedule is None:
        raise ScheduleNotFound(
            f"no {request.schedule} schedule for time zone {request.timezone}"
            f" in groups {', '.join(targets.group_names)}"
        )
    return run_schedule(schedule, request.scheduled_time, targets, invoke, sqs)


# ---------------------------------------------------------------- cron, once a minute

_CRON = re.compile(r"^cron\((.+)\)$")


def _cron_field(text: str, low: int, high: int) -> frozenset[int] | None:
    values: set[int] = set()
    try:
        for part in text.split(","):
            base, _, step_text = part.partition("/")
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                first, last = base.split("-", 1)
                start, end = int(first), int(last)
            else:
                start = int(base)
                end = high if step_text else start  # "5/15" means from 5 every 15
            if not low <= start <= end <= high or step < 1:
                return None
            values.update(range(start, end + 1, step))
    except ValueError:
        return None
    return frozenset(values)


def parse_daily_cron(expression: str) -> tuple[frozenset[int], frozenset[int]] | None:
    """Minutes and hours of a ``cron(M H * * ? *)`` expression; None for any other form."""
    match = _CRON.match(expression.strip())
    if not match:
        return None
    fields = match.group(1).split()
    if len(fields) != 6 or any(item not in ("*", "?") for item in fields[2:]):
        return None
    minutes, hours = _cron_field(fields[0], 0, 59), _cron_field(fields[1], 0, 23)
    if minutes is None or hours is None:
        return None
    return minutes, hours


def cron_matches(expression: str, local_time: datetime) -> bool | None:
    """Whether a daily cron expression fires at ``local_time``'s minute; None if unsupported."""
    parsed = parse_daily_cron(expression)
    if parsed is None:
        return None
    minutes, hours = parsed
    return local_time.minute in minutes and local_time.hour in hours


class LocalScheduler(threading.Thread):
    """Background thread: at each minute, fire the schedules whose cron matches local time."""

    def __init__(self, targets: LocalTargets, invoke: Invoke, scheduler: Any, sqs: Any) -> None:
        super().__init__(name="local-scheduler", daemon=True)
        self.targets = targets
        self.invoke = invoke
        self.scheduler = scheduler
        self.sqs = sqs
        self._stopping = threading.Event()
        self._reported: set[str] = set()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        """Wake at each minute boundary and fire every minute that passed since the last wake."""
        last = _minute(datetime.now(UTC))
        while True:
            pause = 60 - datetime.now(UTC).second + 0.05
            if self._stopping.wait(pause):
                return
            current = _minute(datetime.now(UTC))
            # After a long sleep (laptop suspend) catch up at most an hour, not the whole night.
            minute = max(last + timedelta(minutes=1), current - timedelta(minutes=60))
            while minute <= current and not self._stopping.is_set():
                self.tick(minute)
                minute += timedelta(minutes=1)
            last = current

    def tick(self, minute: datetime) -> list[str]:
        """Fire the enabled schedules due at ``minute`` (UTC); returns their names."""
        fired: list[str] = []
        try:
            schedules = list_schedules(self.scheduler, self.targets.group_names)
        except Exception as error:  # the thread must outlive a moto hiccup
            print(f"local scheduler: cannot list schedules: {error}", file=sys.stderr)
            return fired
        for schedule in schedules:
            if schedule.get("State", "ENABLED") != "ENABLED":
                continue
            name = str(schedule.get("Name"))
            expression = str(schedule.get("ScheduleExpression", ""))
            zone = str(schedule.get("ScheduleExpressionTimezone") or "UTC")
            try:
                due = cron_matches(expression, minute.astimezone(ZoneInfo(zone)))
            except (ZoneInfoNotFoundError, ValueError):
                due = None
            if due is None:
                if name not in self._reported:
                    self._reported.add(name)
                    print(
                        f"local scheduler: {name}: {expression} in {zone} is not supported"
                        " locally (only cron(M H * * ? *)); fire it with /_local/scheduler/fire",
                        file=sys.stderr,
                    )
                continue
            if not due:
                continue
            try:
                result = run_schedule(schedule, minute, self.targets, self.invoke, self.sqs)
            except Exception:  # one broken schedule must not stop the others
                print(f"local scheduler: {name} failed:", file=sys.stderr)
                traceback.print_exc()
                continue
            fired.append(name)
            print(
                f"local scheduler: fired {name} at {format_scheduled_time(minute)}:"
                f" {result['messages']} messages, {result['failed']} failed",
                file=sys.stderr,
            )
        return fired


def _minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)
