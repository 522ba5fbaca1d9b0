"""The night at scale: P practices in several time zones, each with C clients (a card on file, enrolled in AutoPay)
and A appointments the day before; then each zone's daily invoicing and AutoPay fired as EventBridge Scheduler
would, through the local stack (local/stack.py): entry function -> SQS -> worker functions, every function in
worker processes of its own, against a moto server (bench/moto_server.py) and the Stripe emulator.

Every practice is a copy of a template practice per zone that was made through the API (so its items are the
ones the product writes), written with BatchWriteItem under a new practice id. Each size starts from an empty
table. Reports invoices/s, payments/s and how the time grows with P (least-squares slope, and time(P)/P).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import requests

from bench.measure import progress
from bench.report import Row, Section, table
from billing.localtime import local_date
from billing.nightly import NightlyJob, nightly_run_time
from billing_aws import keys
from local.aws import LocalAws, configure_environment, provision, restore_environment
from local.stack import LocalStack, start_stack
from local.template import Resolver
from local.tokens import make_token

ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
# moto answers a request in about 4 ms of one core (local/moto_patches.py) and a practice's night is about 22
# requests, so these sizes keep `make bench` within ten minutes; `--night-sizes 250,500,1000,2000` adds the largest
# (the night alone then takes about eight minutes).
SIZES = (250, 500, 1000)
QUICK_SIZES = (8, 16)
CLIENTS = 1  # per practice, with a card on file and enrolled in AutoPay
APPOINTMENTS = 2  # per practice, yesterday, spread over its clients
TEMPLATE_ID = "prac_nighttemplate{zone}"
WRITE_BATCH = 25  # DynamoDB: at most 25 items in one BatchWriteItem


@dataclass(frozen=True)
class Part:
    """One part of a night, invoicing or AutoPay: its seconds, the moto server's CPU seconds, and what it made."""

    seconds: float
    moto_cpu: float
    made: int


@dataclass(frozen=True)
class Night:
    practices: int
    invoicing: Part
    autopay: Part


@dataclass(frozen=True)
class MotoProcess:
    """bench/moto_server.py running in a process of its own."""

    aws: LocalAws
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server has used (Linux ``/proc``): the AWS side's work, whatever else loads the machine."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def moto_process() -> Iterator[MotoProcess]:
    """bench/moto_server.py in a process of its own; this process's AWS environment points at it meanwhile."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.moto_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        aws = LocalAws(endpoint=server.stdout.readline().strip(), region="us-east-1")
        previous = configure_environment(aws.endpoint, aws.region)
        try:
            yield MotoProcess(aws, server.pid)
        finally:
            restore_environment(previous)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Api:
    """HTTP calls to the local stack as one practice's staff."""

    def __init__(self, url: str, practice_id: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Bearer {make_token(practice_id)}"

    def call(self, method: str, path: str, body: Any) -> Any:
        response = self.session.request(method, self.url + path, json=body, timeout=60)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()


def make_template(stack: LocalStack, zone: str, practice_id: str, clients: int, appointments: int) -> None:
    """One practice made through the API: daily invoicing and AutoPay on, ``clients`` clients with a card and
    AutoPay, ``appointments`` attended appointments yesterday (local)."""
    api = Api(stack.url, practice_id)
    api.call(
        "PUT", "/practice", {"name": "Night", "timezone": zone, "invoice_creation": "daily", "autopay_enabled": True}
    )
    client_ids = [
        api.call("POST", "/clients", {"first_name": "Ada", "last_name": "Byron"})["client_id"] for _ in range(clients)
    ]
    for client_id in client_ids:
        api.call("POST", f"/clients/{client_id}/cards", {"payment_method_id": "pm_card_visa"})
        api.call("PUT", f"/clients/{client_id}/autopay", {"enabled": True})
    yesterday = business_day(zone) - timedelta(days=1)
    for number in range(appointments):
        starts = datetime.combine(yesterday, datetime.min.time(), ZoneInfo(zone)) + timedelta(hours=9, minutes=number)
        appointment = {
            "client_id": client_ids[number % clients],
            "starts_at": starts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_minutes": 50,
            "service_code": "90837",
            "fee_cents": 15000,
            "status": "show",
        }
        api.call("POST", "/appointments", appointment)


def business_day(zone: str) -> date:
    """The business date of the zone's coming night: its local today (the appointments are the day before)."""
    return local_date(datetime.now(UTC), zone)


def partition_items(aws: LocalAws, table_name: str, practice_id: str) -> list[dict[str, Any]]:
    """Every item of the practice's partition, as stored (read consistently)."""
    pages = (
        aws.client("dynamodb")
        .get_paginator("query")
        .paginate(
            TableName=table_name,
            KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": keys.practice_pk(practice_id)}},
            ConsistentRead=True,
        )
    )
    return [item for page in pages for item in page["Items"]]


def copy_id(number: int) -> str:
    return f"prac_night{number:06d}"


def seed(aws: LocalAws, table_name: str, templates: dict[str, list[dict[str, Any]]], practices: int) -> None:
    """``practices`` copies of the templates (template id -> its items), round-robin over them."""
    texts = {template_id: json.dumps(items) for template_id, items in templates.items()}
    ids = list(texts)
    items: list[dict[str, Any]] = []
    for number in range(practices):
        template_id = ids[number % len(ids)]
        items += json.loads(texts[template_id].replace(template_id, copy_id(number)))
    dynamodb = aws.client("dynamodb")
    for start in range(0, len(items), WRITE_BATCH):
        batch = items[start : start + WRITE_BATCH]
        pending: dict[str, Any] = {table_name: [{"PutRequest": {"Item": item}} for item in batch]}
        while pending:
            pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def empty_table(aws: LocalAws, resolver: Resolver, table_name: str) -> None:
    aws.client("dynamodb").delete_table(TableName=table_name)
    provision(aws, resolver.template)


def fire_every_zone(url: str, job: NightlyJob) -> tuple[float, dict[str, int]]:
    """Fire ``job`` in every zone at once, as the zones' schedules would at their local times on the business day;
    the seconds until every fire's drain was done, and the workers' summaries added up."""

    def fire(zone: str) -> dict[str, Any]:
        local_time = nightly_run_time(zone, job, datetime.now(UTC))
        instant = datetime.combine(business_day(zone), local_time, ZoneInfo(zone)).astimezone(UTC)
        body = {"schedule": job.value, "timezone": zone, "scheduled_time": instant.strftime("%Y-%m-%dT%H:%M:%SZ")}
        response = requests.post(f"{url}/_local/scheduler/fire", json=body, timeout=3600)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        if result["failed"]:
            raise RuntimeError(f"{job.value} in {zone}: {result['failed']} messages failed")
        return result

    start = time.perf_counter()
    with ThreadPoolExecutor(len(ZONES)) as pool:
        results = list(pool.map(fire, ZONES))
    seconds = time.perf_counter() - start
    totals: dict[str, int] = {}
    for result in results:
        for name, value in result["summary"].items():
            totals[name] = totals.get(name, 0) + int(value)
    return seconds, totals


def night_part(moto: MotoProcess, url: str, job: NightlyJob, made: str) -> Part:
    """Fire ``job`` in every zone; ``made`` names the workers' summary count of what it made."""
    cpu = moto.cpu_seconds()
    seconds, totals = fire_every_zone(url, job)
    return Part(seconds, moto.cpu_seconds() - cpu, totals.get(made, 0))


def one_night(
    moto: MotoProcess, stack: LocalStack, templates: dict[str, list[dict[str, Any]]], practices: int, clients: int
) -> Night:
    table_name = stack.resolver.physical_name("BillingTable")
    empty_table(stack.aws, stack.resolver, table_name)
    seed(stack.aws, table_name, templates, practices)
    invoicing = night_part(moto, stack.url, NightlyJob.DAILY_INVOICES, "invoices_created")
    night = Night(practices, invoicing, night_part(moto, stack.url, NightlyJob.AUTOPAY, "charged"))
    if {night.invoicing.made, night.autopay.made} != {practices * clients}:
        raise RuntimeError(f"expected {practices * clients} invoices and payments: {night}")
    progress(
        f"night of {practices} practices: invoicing {invoicing.seconds:.1f} s, AutoPay {night.autopay.seconds:.1f} s"
    )
    return night


def attribute_size(value: dict[str, Any]) -> int:
    """Bytes DynamoDB counts for an attribute value (its size rules: UTF-8 strings, numbers about one byte per two
    digits plus one, 1 for booleans and nulls, 3 plus one per element and the contents for maps and lists)."""
    ((kind, content),) = value.items()
    if kind == "S":
        return len(content.encode())
    if kind == "N":
        return len(content.lstrip("-").replace(".", "").strip("0")) // 2 + 1
    if kind == "M":
        return 3 + sum(len(name.encode()) + attribute_size(item) + 1 for name, item in content.items())
    if kind == "L":
        return 3 + sum(attribute_size(item) + 1 for item in content)
    if kind in ("SS", "NS"):
        return sum(len(str(item).encode()) for item in content)
    return 1  # BOOL, NULL


def item_sizes(items: list[dict[str, Any]]) -> dict[str, int]:
    """The largest stored size, in bytes, of each kind of item (named by its sort key's prefix)."""
    sizes: dict[str, int] = {}
    for item in items:
        kind = item["SK"]["S"].split("#", 1)[0]
        size = sum(len(name.encode()) + attribute_size(value) for name, value in item.items())
        sizes[kind] = max(sizes.get(kind, 0), size)
    return sizes


def slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line through (P, seconds): seconds per practice, and the intercept."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    per = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return per, mean_y - per * mean_x


def _rows(nights: list[Night], label: str, part_of: Callable[[Night], Part], unit: str) -> list[Row]:
    """time(P)/P of each size against the smallest's, with the rate and moto's CPU per practice; then the slope."""

    def per_practice(night: Night) -> str:
        part = part_of(night)
        return f"{part.seconds / night.practices * 1000:.1f} ms (moto CPU {part.moto_cpu / night.practices * 1000:.1f})"

    first = nights[0]
    rows = []
    for night in nights:
        part = part_of(night)
        rows.append(
            Row(
                f"{label}, P = {night.practices:,}: time(P)/P",
                f"{per_practice(night)}; {part.seconds:.1f} s, {part.made / part.seconds:.1f} {unit}/s",
                f"P = {first.practices:,}: {per_practice(first)}",
                (part.seconds / night.practices) / (part_of(first).seconds / first.practices),
            )
        )
    per, intercept = slope([(night.practices, part_of(night).seconds) for night in nights])
    rows.append(Row(f"{label}: least-squares slope", f"{per * 1000:.1f} ms per practice (+ {intercept:.1f} s)", ""))
    return rows


def worst_ratio(nights: list[Night], part_of: Callable[[Night], Part], measure: Callable[[Part], float]) -> float:
    """The largest (measure per practice) over the smallest size's."""
    base = measure(part_of(nights[0])) / nights[0].practices
    return max(measure(part_of(night)) / night.practices / base for night in nights)


def run(
    quick: bool = False, sizes: tuple[int, ...] | None = None, clients: int = CLIENTS, appointments: int = APPOINTMENTS
) -> Section:
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    started = time.perf_counter()
    with moto_process() as moto:
        aws = moto.aws
        stack = start_stack(aws=aws, scheduler=False, preload=False, quiet=True)
        if stack.stripe is not None:  # the charges' webhooks are not the night's work: their function scales apart
            stack.stripe.deliver_webhooks = False
        try:
            table_name = stack.resolver.physical_name("BillingTable")
            templates = {}
            for number, zone in enumerate(ZONES):
                template_id = TEMPLATE_ID.format(zone=number)
                make_template(stack, zone, template_id, clients, appointments)
                templates[template_id] = partition_items(aws, table_name, template_id)
            one_night(moto, stack, templates, len(ZONES), clients)  # warm-up: every worker's cold start is here
            nights = [one_night(moto, stack, templates, size, clients) for size in sizes]
            stored = item_sizes(partition_items(aws, table_name, copy_id(0)))  # a practice after its night
        finally:
            stack.stop()
    parts: dict[str, Callable[[Night], Part]] = {
        "invoicing": lambda night: night.invoicing,
        "AutoPay": lambda night: night.autopay,
    }
    rows = _rows(nights, "daily invoicing", parts["invoicing"], "invoices")
    rows += _rows(nights, "AutoPay", parts["AutoPay"], "payments")
    spread = ", ".join(
        f"{label} {worst_ratio(nights, part_of, lambda part: part.seconds):.2f} in time and "
        f"{worst_ratio(nights, part_of, lambda part: part.moto_cpu):.2f} in moto's CPU"
        for label, part_of in parts.items()
    )
    notes = NOTES.format(
        zones=", ".join(ZONES),
        zone_count=len(ZONES),
        clients=clients,
        appointments=appointments,
        sizes=", ".join(f"{size:,}" for size in sizes),
        spread=spread,
        minutes=(time.perf_counter() - started) / 60,
        sizes_table=table(["item", *stored], [["bytes", *map(str, stored.values())]]),
    )
    return Section("The night at scale", rows, notes)


NOTES = """\
P = {sizes} practices, round-robin over {zones}; each with C = {clients} client(s) (a card on file, enrolled in
AutoPay) and A = {appointments} attended appointments the day before. Each size starts from an empty table; one
small night first warms every worker up (cold starts are not in these figures). Then every zone's `daily_invoices`
schedule is fired at once (`POST /_local/scheduler/fire`, at its local time on the business day) and, when all are
done, every zone's `autopay` (03:30 local): entry function -> SQS -> worker functions, each function in worker
processes of its own (local/functions.py), each fire's drain delivering the batches the template's event source
mappings would (10 practices, 5 clients), so up to {zone_count} batches run at once. Every invoice and every charge
is checked to have happened (P x C of each).

- **Stripe stand-in**: the local Stripe emulator (local/stripe_emulator.py), reached by the workers through the
  real Stripe SDK (billing_stripe): one request per charge, answered in milliseconds where Stripe takes hundreds
  (docs/scale.md accounts for that). The webhooks the charges cause are not delivered: in AWS their function
  scales on its own, apart from the night's.
- **AWS stand-in**: moto's server in its own process, serving one request at a time, with its Query read per
  partition and its transactions backed up per item (bench/moto_server.py: as moto ships, both cost O(table), which
  makes any night quadratic on moto alone; local/moto_patches.py removes the other per-request costs that grew
  with the table or the queue). The absolute rates are moto's on this machine (about 4 ms of one core per request,
  some 22 requests per practice and client; `--night-sizes 250,500,1000,2000` adds 2,000 practices, about four
  minutes more); the shape is the figure. The largest cost per
  practice over the smallest size's is, for {spread} (1.00 is exactly linear). Wall time also carries whatever
  else loads this shared machine; the moto server's CPU time per practice (read from /proc) is the AWS side's
  work alone.
- This part of the bench took {minutes:.1f} minutes, seeding included.

Item sizes after a practice's night (DynamoDB's size rules; docs/scale.md prices request units with them):

{sizes_table}
"""
