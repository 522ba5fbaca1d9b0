"""DynamoDB round-trips of the billing operations, driven through the real handlers against moto and counted with a
botocore hook (bench/operations.py, shared with ``make bench``): no operation reads by Scan, every transaction fits
DynamoDB's 100 items, and the nightly worker's calls grow with the invoices it writes, not with the appointments.
Counts only: nothing here depends on how long anything takes."""

from collections.abc import Iterator

import pytest

from bench.functions import functions_against
from bench.operations import Operations, every_operation
from billing.unit_of_work import MAX_ITEMS
from local.aws import LocalAws
from local.template import Resolver


@pytest.fixture(scope="module")
def operations(local_aws: tuple[LocalAws, Resolver]) -> Iterator[Operations]:
    aws, resolver = local_aws
    with functions_against(aws, resolver) as functions:
        yield Operations(functions)


def test_no_operation_scans_and_every_transaction_fits_dynamodb(operations: Operations) -> None:
    for counted in every_operation(operations, payment_sizes=(1, 3), night=(2, 5)):
        assert counted.calls.scans == 0, counted.name
        assert all(items <= MAX_ITEMS for items in counted.calls.transaction_items), counted.name


@pytest.mark.parametrize("clients, appointments", [(3, 3), (3, 12)])
def test_daily_worker_reads_each_access_pattern_once_and_writes_one_bounded_transaction_per_invoice(
    operations: Operations, clients: int, appointments: int
) -> None:
    calls = operations.daily_invoices_worker(clients, appointments).calls
    invoices = clients  # one invoice per client: a client's day fits one invoice
    assert calls.count("Query") == 1  # the practice's uninvoiced appointments (GSI3), one page
    assert calls.count("GetItem") <= 1 + invoices  # the practice; each client's credit list
    assert calls.count("BatchGetItem") <= 2 * invoices  # each invoice's appointments re-read; its credit payments
    assert calls.transactions == invoices
    assert calls.writes == 0  # nothing is written outside the invoices' transactions
