"""The night's AWS: local/aws.py's moto server in a process of its own (so moto and the functions use both cores),
with two changes that make its cost per request independent of the table's size, as DynamoDB's is. Without them
a night of P practices costs O(P²) on moto, whatever the code under test does.

- moto's ``Table.query`` reads (and sorts) every item of the table, then keeps the queried partition's. Here a
  Query on the table, or on an index partition named ``PRACTICE#<id>#...`` (GSI1 calendar, GSI2 client timeline,
  GSI3 work lists), only looks at the items of the table partition ``PRACTICE#<id>``: the key design
  (billing_aws/keys.py) puts every item of those index partitions there, so the answer is the same. Queries by
  zone (GSI1 ``ZONE#...``, once per zone and night) still read the whole table.
- moto's ``transact_write_items`` backs up by deep-copying every table the transaction names (once per item).
  `local.moto_patches` (which every local moto server applies) keeps only the items it names.

``python -m bench.moto_server`` prints the endpoint on one line and serves until its stdin closes; the in-process
benchmarks apply the same changes with `cost_per_request_like_dynamodb`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

from local import moto_patches
from local.aws import SerialisedMotoServer

PRACTICE_PREFIX = "PRACTICE#"


def practice_partition(hash_value: Any) -> str | None:
    """``PRACTICE#<id>`` for a partition key ``PRACTICE#<id>`` or ``PRACTICE#<id>#...``; None for any other."""
    text = getattr(hash_value, "value", None)
    if not isinstance(text, str) or not text.startswith(PRACTICE_PREFIX):
        return None
    return "#".join(text.split("#", 2)[:2])


def partition_queries(query: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``Table.query`` so that it only reads the table partition the queried partition lies in."""

    @wraps(query)
    def narrowed(table: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        partition = practice_partition(hash_key)
        if partition is None:
            return query(table, hash_key, *args, **kwargs)
        items = table.items.get(DynamoType({"S": partition}), {})
        # The server answers one request at a time (SerialisedMotoServer), so shadowing is safe.
        table.all_items = lambda: sorted(items.values(), key=lambda item: item.range_key)  # type: ignore[method-assign]
        try:
            return query(table, hash_key, *args, **kwargs)
        finally:
            del table.all_items

    return narrowed


def cost_per_request_like_dynamodb() -> None:
    """Apply both changes to moto in this process (for a server that answers one request at a time)."""
    Table.query = partition_queries(Table.query)  # type: ignore[method-assign]
    moto_patches.install()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    cost_per_request_like_dynamodb()
    server = SerialisedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    sys.stdout.write(f"http://{host}:{port}\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the bench closes it (or exits)
    server.stop()


if __name__ == "__main__":
    main()
