"""DynamoDB round-trips per operation through the real handlers (bench/operations.py), next to each operation's
lower bound: the fewest reads and transactions it can be done in."""

from __future__ import annotations

from bench.functions import InProcessFunctions
from bench.operations import BOUND_RULES, Counted, Operations, every_operation
from bench.report import Row, Section, milliseconds, table

PAYMENT_SIZES = (1, 10, 100)
NIGHT = (10, 30)  # clients, appointments of the practice the daily worker invoices


def _reads(count: int) -> str:
    return f"{count} read{'' if count == 1 else 's'}"


def _row(counted: Counted) -> Row:
    calls, bound = counted.calls, counted.bound
    ours = f"{_reads(calls.reads)} + {calls.transactions} tx" + (f" + {calls.writes} writes" if calls.writes else "")
    total = calls.reads + calls.transactions + calls.writes
    return Row(counted.name, ours, f"{_reads(bound.reads)} + {bound.transactions} tx", total / bound.calls)


def run(functions: InProcessFunctions, quick: bool = False) -> Section:
    payment_sizes, night = ((1, 3), (3, 7)) if quick else (PAYMENT_SIZES, NIGHT)
    counted = list(every_operation(Operations(functions), payment_sizes, night))
    details = table(
        ["operation", "calls made (in order of first use)", "own time", "lower bound: why"],
        [[c.name, c.calls.summary(), milliseconds(c.calls.own_seconds), c.bound.why] for c in counted],
    )
    notes = (
        "Counted with a botocore `before-call` hook on the handlers' DynamoDB client (one per API call), each "
        "operation through its real handler (HTTP API v2 or SQS event) on a practice of its own, against moto. "
        "*reads* are GetItem, BatchGetItem and Query calls, *tx* TransactWriteItems, *writes* single-item writes; "
        "the ratio is all calls over the bound's. No operation makes a Scan "
        "(tests/integration/test_round_trips.py asserts it, and bounds the daily worker). *Own time* is the "
        "operation's time outside its DynamoDB calls (one run, on this machine): the handler's own work, which "
        "docs/scale.md adds to the calls' latency on AWS.\n\n"
        f"The lower bound follows these rules:\n{BOUND_RULES}\n{details}"
    )
    return Section("DynamoDB round-trips per operation", [_row(c) for c in counted], notes)
