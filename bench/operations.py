"""The billing operations whose DynamoDB round-trips are counted: by ``make bench`` (bench/round_trips.py, next to
their lower bounds) and by tests/integration/test_round_trips.py (no Scan, and the nightly worker's calls bounded).

Each operation is driven through the real handlers (bench/functions.py) on a practice of its own, set up through
the API first and not counted; then only the operation's own calls are recorded, by a botocore ``before-call``
hook on the handlers' DynamoDB client. Each comes with its lower bound: the fewest reads and transactions it can
be done in under `BOUND_RULES` (`Bound.why` says how).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter
from typing import Any
from zoneinfo import ZoneInfo

from bench.functions import Answer, InProcessFunctions
from billing.localtime import local_date
from billing.unit_of_work import MAX_ITEMS

READS = ("GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems")
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")
TRANSACTIONS = ("TransactWriteItems",)
BATCH_GET_KEYS = 100  # DynamoDB: at most 100 keys in one BatchGetItem
ZONE = "America/Chicago"
FEE_CENTS = 15000
BOUND_RULES = """
- Reads whose keys the request already names (the practice, the client, the key record, the object) are one
  consistent BatchGetItem round; keys found in what was read (a client's invoices and cards, a payment's invoices)
  need another round. A BatchGetItem takes 100 keys; an index Query is a call of its own.
- What must change together is one TransactWriteItems of at most 100 items; work that can grow is split into
  steps, each carrying the item that records the progress (the payment).
- A card charge or refund is exactly-once only with a write before the processor call (reserve) and one after
  (settle), so it needs two transactions at least.
"""


@dataclass
class Call:
    """One DynamoDB request: its operation, the index a Query read, how many items it names, and the seconds from
    sending it to having its answer parsed."""

    operation: str
    index: str | None = None
    items: int = 1
    seconds: float = 0.0


@dataclass
class Calls:
    """The DynamoDB requests one operation made, in order."""

    calls: list[Call] = field(default_factory=list)
    elapsed: float = 0.0  # seconds the whole operation took

    @property
    def own_seconds(self) -> float:
        """The operation's time outside DynamoDB calls: the handler's own work (validation, rules, serialising
        requests), what Lambda bills beside the waits."""
        return self.elapsed - sum(call.seconds for call in self.calls)

    def count(self, *operations: str) -> int:
        return sum(1 for call in self.calls if call.operation in operations)

    @property
    def reads(self) -> int:
        return self.count(*READS)

    @property
    def writes(self) -> int:
        return self.count(*WRITES)

    @property
    def transactions(self) -> int:
        return self.count(*TRANSACTIONS)

    @property
    def scans(self) -> int:
        return self.count("Scan")

    @property
    def transaction_items(self) -> list[int]:
        return [call.items for call in self.calls if call.operation in TRANSACTIONS]

    def summary(self) -> str:
        """``3 GetItem, 1 Query GSI3, 2 TransactWriteItems, items per transaction 5, 7``: what was called."""
        kinds: dict[str, int] = {}
        for call in self.calls:
            name = f"{call.operation} {call.index}" if call.index else call.operation
            kinds[name] = kinds.get(name, 0) + 1
        parts = [f"{number} {name}" for name, number in kinds.items()]
        if self.transaction_items:
            parts.append(f"items per transaction {', '.join(map(str, self.transaction_items))}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Bound:
    """The fewest reads (calls) and transactions an operation can be done in, and why."""

    reads: int
    transactions: int
    why: str

    @property
    def calls(self) -> int:
        return self.reads + self.transactions


@dataclass(frozen=True)
class Counted:
    """An operation's DynamoDB calls next to its lower bound."""

    name: str
    calls: Calls
    bound: Bound


def batch_gets(keys: int) -> int:
    return math.ceil(keys / BATCH_GET_KEYS)


def payment_steps(invoices: int) -> int:
    """Transactions to hold (or settle) ``invoices`` invoices: the first also holds two other items (key record and
    payment, or payment and account), each further one the payment with its progress."""
    first = MAX_ITEMS - 2
    return 1 if invoices <= first else 1 + math.ceil((invoices - first) / (MAX_ITEMS - 1))


def _items_named(operation: str, params: dict[str, Any]) -> int:
    if operation == "BatchGetItem":
        return sum(len(request.get("Keys", [])) for request in params.get("RequestItems", {}).values())
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in params.get("RequestItems", {}).values())
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return len(params.get("TransactItems", []))
    return 1


class CallLog:
    """Counts the DynamoDB requests made through ``client`` while `recording` (one per API call, retries aside)."""

    def __init__(self, client: Any) -> None:
        self._recording: Calls | None = None
        self._sent = 0.0
        client.meta.events.register("before-call.dynamodb", self._record)
        client.meta.events.register("after-call.dynamodb", self._answered)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        """``params`` is the request about to be sent; its JSON body holds the API parameters."""
        if self._recording is not None:
            sent = json.loads(params.get("body") or b"{}")
            self._recording.calls.append(Call(model.name, sent.get("IndexName"), _items_named(model.name, sent)))
            self._sent = perf_counter()

    def _answered(self, **_: Any) -> None:
        if self._recording is not None and self._recording.calls:
            self._recording.calls[-1].seconds = perf_counter() - self._sent

    @contextmanager
    def recording(self) -> Iterator[Calls]:
        calls = Calls()
        self._recording = calls
        started = perf_counter()
        try:
            yield calls
        finally:
            calls.elapsed = perf_counter() - started
            self._recording = None


def _expect(answer: Answer, *statuses: int) -> Any:
    if answer.status not in statuses:
        raise AssertionError(f"expected {statuses}, got {answer.status}: {answer.body}")
    return answer.body


def _key() -> dict[str, str]:
    return {"idempotency-key": f"bench-{uuid.uuid4().hex}"}


class Practice:
    """A practice of its own, set up through the API (none of this is counted)."""

    def __init__(self, functions: InProcessFunctions, **settings: Any) -> None:
        self.functions = functions
        self.practice_id = f"prac_{uuid.uuid4().hex[:16]}"
        self.call("PUT", "/practice", {"name": "Calm Minds", "timezone": ZONE, "invoice_creation": "manual"} | settings)
        self.today = local_date(datetime.now(UTC), ZONE)

    def call(self, method: str, path: str, body: Any = None, *, keyed: bool = False) -> Any:
        """The answer's body; raises unless the route answered 200 or 201."""
        answer = self.functions.request(method, path, self.practice_id, body, headers=_key() if keyed else None)
        return _expect(answer, 200, 201)

    def client(self, *, card: bool = False, **details: Any) -> str:
        client_id: str = self.call("POST", "/clients", {"first_name": "Ada", "last_name": "Byron"} | details)[
            "client_id"
        ]
        if card:
            self.call("POST", f"/clients/{client_id}/cards", {"payment_method_id": "pm_card_visa"})
        return client_id

    def appointment(self, client_id: str, day: date, minute: int = 0) -> str:
        """A billable appointment at 15:00 (plus ``minute``) local on ``day``."""
        starts = datetime.combine(day, time(15, minute), ZoneInfo(ZONE)).astimezone(UTC)
        body = {
            "client_id": client_id,
            "starts_at": starts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_minutes": 50,
            "service_code": "90837",
            "fee_cents": FEE_CENTS,
            "status": "show",
        }
        appointment_id: str = self.call("POST", "/appointments", body)["appointment_id"]
        return appointment_id

    def invoice(self, client_id: str, appointment_ids: list[str]) -> str:
        body = {"client_id": client_id, "appointment_ids": appointment_ids}
        invoice_id: str = self.call("POST", "/invoices", body)["invoice_id"]
        return invoice_id

    def invoiced_client(self, invoices: int = 1, *, card: bool = False, **details: Any) -> tuple[str, list[str]]:
        """A client with ``invoices`` open invoices of one appointment each (yesterday's sessions)."""
        client_id = self.client(card=card, **details)
        yesterday = self.today - timedelta(days=1)
        made = [self.invoice(client_id, [self.appointment(client_id, yesterday, n % 60)]) for n in range(invoices)]
        return client_id, made

    def pay(self, client_id: str, amount_cents: int, method: str = "card_on_file") -> str:
        body = {"client_id": client_id, "amount_cents": amount_cents, "method": method}
        payment_id: str = self.call("POST", "/payments", body, keyed=True)["payment_id"]
        return payment_id


class Operations:
    """Each method sets a practice up, then performs one operation and counts the DynamoDB calls it makes."""

    def __init__(self, functions: InProcessFunctions) -> None:
        self.functions = functions
        self.log = CallLog(functions.dynamodb)

    def create_invoice(self) -> Counted:
        practice = Practice(self.functions)
        client_id = practice.client()
        appointment_id = practice.appointment(client_id, practice.today)
        with self.log.recording() as calls:
            practice.invoice(client_id, [appointment_id])
        bound = Bound(1, 1, "practice (counter), client (credit) and the appointments in one round; one transaction")
        return Counted("create invoice (POST /invoices, 1 appointment, no credit)", calls, bound)

    def invoice_and_payment(self) -> Counted:
        practice = Practice(self.functions)
        client_id = practice.client(card=True)
        appointment_id = practice.appointment(client_id, practice.today)
        path = f"/appointments/{appointment_id}/invoice-and-payment"
        with self.log.recording() as calls:
            practice.call("POST", path, {"method": "card_on_file"}, keyed=True)
        bound = Bound(
            3,
            2,
            "key record, practice and appointment; then its client; then the card: three rounds. The invoice and "
            "the reservation are one transaction before the charge, the settlement one after",
        )
        return Counted("invoice and payment (card, appointment not yet invoiced)", calls, bound)

    def payment_over(self, invoices: int) -> Counted:
        practice = Practice(self.functions)
        client_id, _ = practice.invoiced_client(invoices, card=True)
        with self.log.recording() as calls:
            practice.pay(client_id, invoices * FEE_CENTS)
        bound = Bound(
            1 + batch_gets(invoices + 1),
            2 * payment_steps(invoices),
            "key record, practice and client; then the open invoices and the card (100 keys a call). Holds, then "
            "settlement, each in steps of at most 100 items",
        )
        plural = "s" if invoices > 1 else ""
        return Counted(f"payment over {invoices} invoice{plural} (POST /payments, card)", calls, bound)

    def refund(self) -> Counted:
        practice = Practice(self.functions)
        client_id, _ = practice.invoiced_client(card=True)
        payment_id = practice.pay(client_id, FEE_CENTS)
        with self.log.recording() as calls:
            practice.call("POST", f"/payments/{payment_id}/refunds", {}, keyed=True)
        bound = Bound(
            2,
            2,
            "key record and payment; then the invoices it paid. The hold before the processor's refund, the "
            "settlement (with the processor-refund link) after",
        )
        return Counted("refund (card payment of 1 invoice, in full)", calls, bound)

    def void(self) -> Counted:
        practice = Practice(self.functions)
        client_id, (invoice_id,) = practice.invoiced_client()
        practice.pay(client_id, FEE_CENTS, method="cash")
        with self.log.recording() as calls:
            practice.call("POST", f"/invoices/{invoice_id}/void")
        bound = Bound(
            2, 1, "invoice and practice; then its appointments and the payments it hands back; one transaction"
        )
        return Counted("void (invoice paid by 1 cash payment)", calls, bound)

    def daily_invoices_worker(self, clients: int, appointments: int) -> Counted:
        """One SQS message: a practice whose ``clients`` clients had ``appointments`` appointments yesterday."""
        practice = Practice(self.functions, invoice_creation="daily")
        client_ids = [practice.client() for _ in range(clients)]
        yesterday = practice.today - timedelta(days=1)
        for number in range(appointments):
            practice.appointment(client_ids[number % clients], yesterday, number % 60)
        night = {"practice_id": practice.practice_id, "business_date": practice.today.isoformat()}
        with self.log.recording() as calls:
            result = self.functions.deliver("DailyInvoicesWorkerFunction", [night])
        if result.get("batchItemFailures") or result["summary"].get("invoices_created") != clients:
            raise AssertionError(f"the daily-invoices worker did not invoice every client: {result}")
        bound = Bound(
            2 + batch_gets(appointments + clients),
            clients,
            "the practice and the uninvoiced list (a Query); then the listed appointments again, consistently, with "
            "the clients' credit lists; one bounded transaction per invoice",
        )
        return Counted(f"daily-invoices worker ({clients} clients, {appointments} appointments)", calls, bound)

    def autopay_worker(self, owing: bool = True) -> Counted:
        """One SQS message: an enrolled client's night, charging one open invoice (or, not ``owing``, nothing)."""
        practice = Practice(self.functions, autopay_enabled=True)
        client_id, _ = practice.invoiced_client(1 if owing else 0, card=True)
        practice.call("PUT", f"/clients/{client_id}/autopay", {"enabled": True})
        at = datetime.combine(practice.today, time(3, 30), ZoneInfo(ZONE)).astimezone(UTC)
        night = {
            "practice_id": practice.practice_id,
            "client_id": client_id,
            "business_date": practice.today.isoformat(),
            "at": at.isoformat(),
        }
        with self.log.recording() as calls:
            result = self.functions.deliver("AutoPayWorkerFunction", [night])
        if result["summary"] != ({"charged": 1} if owing else {"skipped": 1}):
            raise AssertionError(f"the AutoPay worker's night was not the expected one: {result}")
        if not owing:
            bound = Bound(1, 1, "practice, client and the night's key record; the night's outcome and state together")
            return Counted("AutoPay worker, per client owing nothing (skipped)", calls, bound)
        bound = Bound(
            2,
            2,
            "practice, client (AutoPay state, balance, open invoices, cards) and the night's key record; then the "
            "invoices and the card. Reservation before the charge; settlement with the night's outcome after",
        )
        return Counted("AutoPay worker, per client (1 open invoice)", calls, bound)

    def renders(self) -> list[Counted]:
        """Each document route, first render, for a client with two invoices paid by one card payment."""
        practice = Practice(self.functions, npi="1234567893", tax_id="12-3456789")
        client_id, (invoice_id, _) = practice.invoiced_client(2, card=True, diagnosis_codes=["F41.1"])
        payment_id = practice.pay(client_id, 2 * FEE_CENTS)
        period = {"from": (practice.today - timedelta(days=30)).isoformat(), "to": practice.today.isoformat()}
        history = "practice and client; the client's timeline (one Query); what it lists, again by key (consistent)"
        routes = [
            ("invoice PDF", "GET", f"/invoices/{invoice_id}/pdf", None, Bound(2, 0, "practice and invoice; client")),
            (
                "receipt",
                "GET",
                f"/payments/{payment_id}/receipt",
                None,
                Bound(3, 0, "practice and payment; its invoices, client and card, and its refunds (a Query)"),
            ),
            ("statement", "POST", f"/clients/{client_id}/statements", period, Bound(3, 0, history)),
            (
                "superbill",
                "POST",
                f"/clients/{client_id}/superbills",
                period,
                Bound(4, 0, f"{history}; the invoices' appointments"),
            ),
            (
                "series export (all four types)",
                "POST",
                f"/clients/{client_id}/billing-documents/export",
                period | {"types": ["invoice", "receipt", "statement", "superbill"]},
                Bound(4, 0, f"{history}; the appointments and the card"),
            ),
        ]
        counted = []
        for name, method, path, body, bound in routes:
            with self.log.recording() as calls:
                practice.call(method, path, body)
            counted.append(Counted(f"render: {name}", calls, bound))
        return counted


def every_operation(
    operations: Operations, payment_sizes: tuple[int, ...], night: tuple[int, int]
) -> Iterator[Counted]:
    """Every counted operation: payments over each of ``payment_sizes`` invoices, and the daily worker for
    ``night`` = (clients, appointments)."""
    yield operations.create_invoice()
    yield operations.invoice_and_payment()
    for size in payment_sizes:
        yield operations.payment_over(size)
    yield operations.refund()
    yield operations.void()
    yield operations.daily_invoices_worker(*night)
    yield operations.autopay_worker()
    yield operations.autopay_worker(owing=False)
    yield from operations.renders()
