"""API latency in process: warm requests through the real handlers (``lambda_handler`` with an HTTP API v2 event,
JWT claims where API Gateway's authorizer puts them) against moto, next to a baseline handler that answers the
same event with one GetItem. Each of our requests is followed by one baseline request, so load weighs on both."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from bench.functions import InProcessFunctions, answer
from bench.measure import median, percentile, progress
from bench.operations import FEE_CENTS, Practice
from bench.report import Row, Section, milliseconds
from billing_aws import keys
from billing_aws.codec import to_attributes
from billing_lambda.config import FunctionSettings, load_settings

SAMPLES = 40
WARM_UP = 3


def baseline_handler(functions: InProcessFunctions) -> Callable[[dict[str, Any], Any], Any]:
    """The least an HTTP handler on this stack does: Powertools' resolver routes the event, one consistent
    GetItem through the handlers' own client, the item's id back as JSON."""
    app = APIGatewayHttpResolver()
    table = load_settings(FunctionSettings).table_name

    @app.get("/invoices/<invoice_id>")
    def get_invoice(invoice_id: str) -> dict[str, Any]:
        claims = app.current_event.request_context.authorizer.jwt_claim
        key = keys.key(str(claims["custom:practice_id"]), keys.invoice_sk(invoice_id))
        item = functions.dynamodb.get_item(TableName=table, Key=to_attributes(key), ConsistentRead=True)["Item"]
        return {"invoice_id": item["invoice_id"]["S"]}

    return app.resolve


class Timings:
    """Samples of one route, each next to a baseline sample taken right after it."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.ours: list[float] = []
        self.baseline: list[float] = []

    def rows(self) -> list[Row]:
        return [
            Row(
                f"{self.route} {label}",
                milliseconds(of(self.ours)),
                f"one GetItem {milliseconds(of(self.baseline))}",
                of(self.ours) / of(self.baseline),
            )
            for label, of in (("p50", median), ("p95", lambda s: percentile(s, 0.95)))
        ]


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def run(functions: InProcessFunctions, quick: bool = False) -> Section:
    practice = Practice(functions)
    client_id, (invoice_id,) = practice.invoiced_client(card=True)
    cash_client = practice.client()
    _, baseline_event = functions.http_event("GET", f"/invoices/{invoice_id}", practice.practice_id)
    baseline = baseline_handler(functions)
    samples = 5 if quick else SAMPLES

    def each(route: str, prepare: Callable[[], tuple[str, str, Any]], status: int) -> Timings:
        """Time ``samples`` requests, each prepared (untimed) by ``prepare``: its method, path and body."""
        timings = Timings(route)
        for number in range(WARM_UP + samples):
            method, path, body = prepare()
            headers = {"idempotency-key": f"bench-latency-{uuid.uuid4().hex}"}
            function_id, event = functions.http_event(method, path, practice.practice_id, body, headers)
            spent, result = _timed(lambda event=event, function_id=function_id: functions.invoke(function_id, event))  # type: ignore[misc]
            if answer(result).status != status:
                raise AssertionError(f"{route}: {answer(result)}")
            baseline_spent, _ = _timed(lambda: baseline(baseline_event, None))
            if number >= WARM_UP:
                timings.ours.append(spent)
                timings.baseline.append(baseline_spent)
        progress(f"api latency: {route} p50 {milliseconds(median(timings.ours))}")
        return timings

    def payment_of_a_new_invoice(client: str, method: str) -> Callable[[], tuple[str, str, Any]]:
        def prepare() -> tuple[str, str, Any]:
            practice.invoice(client, [practice.appointment(client, practice.today)])
            return "POST", "/payments", {"client_id": client, "amount_cents": FEE_CENTS, "method": method}

        return prepare

    def new_appointment() -> tuple[str, str, Any]:
        appointment_id = practice.appointment(client_id, practice.today)
        return "POST", f"/appointments/{appointment_id}/invoice-and-payment", {"method": "card_on_file"}

    measured = [
        each("GET /invoices/{id}", lambda: ("GET", f"/invoices/{invoice_id}", None), 200),
        each("POST /payments (cash)", payment_of_a_new_invoice(cash_client, "cash"), 201),
        each("POST /payments (card)", payment_of_a_new_invoice(client_id, "card_on_file"), 201),
        each("POST /appointments/{id}/invoice-and-payment (card)", new_appointment, 201),
    ]
    notes = (
        f"{samples} warm requests per route (after {WARM_UP} warm-up requests), each handler already imported, "
        "each request through `lambda_handler` with an HTTP API v2.0 event (the local server's own event builder) "
        "and a clinician's JWT claims in `requestContext.authorizer.jwt.claims`, against a moto server in this "
        "process; card charges go to the local Stripe emulator (local/stripe_emulator.py) through the real Stripe "
        "SDK. Each payment pays one invoice created just before it (not timed). The baseline is a Powertools "
        "resolver answering the same `GET /invoices/{id}` event with one consistent GetItem through the same "
        "client; its sample is taken right after each of ours. Absolute numbers are moto's and this machine's, "
        "not DynamoDB's: the ratio is the figure to watch."
    )
    return Section("API latency in process", [row for timings in measured for row in timings.rows()], notes)
