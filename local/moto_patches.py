"""Where moto parts from AWS, in what it does or what it costs, put right for the embedded AWS (`local.aws`).

- **ClientRequestToken.** botocore gives every ``TransactWriteItems`` a token and sends it again on each of its
  retries. DynamoDB answers a repeat of a successful transaction (same token, same parameters, within 10
  minutes) with success and writes nothing; the same token with other parameters is an
  ``IdempotentParameterMismatchException``. moto ignores the token and runs the transaction again, so an SDK
  retry after a lost answer (a read timeout under load) fails its own conditions: the product then saw a
  ``StaleState`` for a write that had landed. `idempotent_transactions` keeps each successful answer by token.
- **Cost of a transaction.** moto backs a transaction up by deep-copying every table it names, once per item,
  to put them back if it is cancelled: a transaction's cost grows with the table (about 3 s for five items on
  a table of 20,000), so late in a long test session calls outlast the functions' 5 s read timeout.
  `kept_items` keeps and puts back only the items the transaction names: the same all or nothing at the cost
  of its own items.
- **Cost of an answer.** moto writes every answer through a serializer driven by botocore's model, which walks
  each attribute value of each item through every member an ``AttributeValue`` may have: a Query of ten items
  costs ~20 ms, most of a night's time on moto. moto's item operations already hold their answer in DynamoDB's
  JSON shape, so `plain_item_answers` writes it with ``json.dumps``; an answer JSON cannot hold as it is
  (binary values, timestamps) still goes through moto's serializer. tests/integration/test_moto_patches.py
  compares both for every item operation.
- **Cost of a request.** For every request moto lists its own package folder to recognise the service and walks
  the handler class's members to find the action (~2 ms together). Both answers never change while it runs, so
  `install` keeps them.
- **Cost of a message.** For every SQS message it takes in or hands out, moto computes all the queue's attributes,
  its message counts included (a walk over every message in the queue), to read one of them: sending or receiving
  a message costs O(messages in the queue), so a night's fan-out of P messages costs O(P²). `sent_without_counting`
  leaves the counts out while a message is sent, `retention_of_its_queue` reads the one attribute it needs.

`install` applies all but the first to moto in this process; `local.aws.SerialisedMotoServer` applies all.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any

import moto.backends as moto_backends
import moto.core.responses as moto_responses
import moto.dynamodb.models as dynamodb_models
from moto.core.responses import ActionResult
from moto.core.utils import unix_time
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler, DynamoResult
from moto.sqs.models import Message, Queue, SQSBackend

TRANSACT_TARGET = "DynamoDB_20120810.TransactWriteItems"
TOKEN_WINDOW_SECONDS = 600  # DynamoDB keeps a client token for 10 minutes

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# -- ClientRequestToken ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    at: float
    parameters: str
    status: str
    headers: list[tuple[str, str]]
    body: bytes


def idempotent_transactions(app: WsgiApp, clock: Callable[[], float] = time.monotonic) -> WsgiApp:
    """Wrap moto's WSGI ``app`` so that ``TransactWriteItems`` honours ``ClientRequestToken`` as DynamoDB does.
    The caller serves one request at a time (the kept answers are not locked)."""
    answers: dict[str, _Answer] = {}

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET") != TRANSACT_TARGET:
            return app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        token, parameters = _token_and_parameters(body)
        if token is None:
            return app(environ, start_response)
        now = clock()
        while answers and now - answers[oldest := next(iter(answers))].at > TOKEN_WINDOW_SECONDS:
            del answers[oldest]  # kept in the order they were answered: the oldest come first
        kept = answers.get(token)
        if kept is not None:
            if kept.parameters != parameters:
                return _mismatch(start_response)
            start_response(kept.status, kept.headers)
            return [kept.body]
        answered: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered.update(status=status, headers=headers)
            return start_response(status, headers, exc_info)

        chunks = list(app(environ, capture))
        if answered.get("status", "").startswith("200"):
            answers[token] = _Answer(now, parameters, answered["status"], list(answered["headers"]), b"".join(chunks))
        return chunks

    return serve


def _token_and_parameters(body: bytes) -> tuple[str | None, str]:
    try:
        request = json.loads(body)
    except ValueError:
        return None, ""
    if not isinstance(request, dict) or not isinstance(request.get("ClientRequestToken"), str):
        return None, ""
    token = request.pop("ClientRequestToken")
    return token, json.dumps(request, sort_keys=True)


def _mismatch(start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps(
        {
            "__type": "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
            "message": "The request uses the same client token as a previous, but non-identical request.",
        }
    ).encode()
    start_response(
        "400 Bad Request",
        [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(body)))],
    )
    return [body]


# -- cost of a transaction ---------------------------------------------------------------------------------------


class _ItemCopies:
    """The ``copy`` module as moto's DynamoDB backend sees it once `install` ran: items are copied as before, a
    whole table is not (its "backup" is the table itself; `kept_items` puts back what the transaction changed)."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


KeptItem = tuple[Table, DynamoType, DynamoType | None, Item | None]


def _kept(backend: DynamoDBBackend, action: dict[str, Any]) -> KeptItem | None:
    """The table, key and a copy of the current item (None: absent) an action names; None for an action moto
    will refuse anyway (no such table, no key), which then writes nothing."""
    try:
        operation: dict[str, Any] = next(iter(action.values()))
        table = backend.get_table(operation["TableName"])
        key = operation.get("Key") or operation["Item"]
        hash_key = DynamoType(key[table.hash_key_attr])
        range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        return table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))
    except Exception:  # moto itself answers the malformed action
        return None


def _put_back(kept: KeptItem) -> None:
    table, hash_key, range_key, item = kept
    if item is None:
        table.delete_item(hash_key, range_key)
    elif range_key is not None:
        table.items[hash_key][range_key] = item
    else:
        table.items[hash_key] = item  # type: ignore[assignment]  # moto's own annotation misses hash-only tables


def kept_items(transact: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``DynamoDBBackend.transact_write_items`` so that a cancelled transaction puts back its own items."""

    @wraps(transact)
    def transact_keeping_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> Any:
        kept = [k for k in (_kept(backend, action) for action in transact_items) if k is not None]
        try:
            return transact(backend, transact_items)
        except Exception:
            for item in reversed(kept):
                _put_back(item)
            raise

    transact_keeping_items.kept_items = True  # type: ignore[attr-defined]
    return transact_keeping_items


# -- cost of an answer -------------------------------------------------------------------------------------------

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
plain_answers = True  # tests switch it off to compare with moto's own serializer


def plain_item_answers(serialized: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``DynamoHandler.serialized`` so that an item operation's answer is written as the JSON it already is."""

    @wraps(serialized)
    def serialize(handler: DynamoHandler, action_result: ActionResult) -> Any:
        if plain_answers and type(action_result) is DynamoResult and isinstance(action_result.result, dict):
            try:
                body = json.dumps(action_result.result, separators=(",", ":"))
            except TypeError:  # bytes or datetimes: moto's serializer knows how DynamoDB writes them
                pass
            else:
                return 200, {**handler.response_headers, "Content-Type": JSON_CONTENT_TYPE}, body
        return serialized(handler, action_result)

    serialize.plain_item_answers = True  # type: ignore[attr-defined]
    return serialize


# -- cost of a message --------------------------------------------------------------------------------------------

_MESSAGE_COUNTS = frozenset(
    {"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed", "ApproximateNumberOfMessagesNotVisible"}
)
_sending = threading.local()


def counted_only_when_asked(attributes: property) -> property:
    """``Queue.attributes`` without the message counts while a message is being sent (nothing sending reads them)."""

    def without_counts_while_sending(queue: Queue) -> dict[str, Any]:
        if not getattr(_sending, "active", False):
            return dict(attributes.fget(queue))  # type: ignore[misc]
        queue.BASE_ATTRIBUTES = [name for name in Queue.BASE_ATTRIBUTES if name not in _MESSAGE_COUNTS]
        try:
            return dict(attributes.fget(queue))  # type: ignore[misc]
        finally:
            del queue.BASE_ATTRIBUTES

    without_counts_while_sending.counted_only_when_asked = True  # type: ignore[attr-defined]
    return property(without_counts_while_sending)


def sent_without_counting(send: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``SQSBackend.send_message`` so that the queue's attributes it reads leave the message counts out."""

    @wraps(send)
    def sending(*args: Any, **kwargs: Any) -> Any:
        _sending.active = True
        try:
            return send(*args, **kwargs)
        finally:
            _sending.active = False

    return sending


def retention_of_its_queue(backend: SQSBackend, queue_name: str, message: Message) -> bool:
    """``SQSBackend.is_message_valid_based_on_retention_period``, reading the queue's retention period alone."""
    retention_seconds = int(backend.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return retention_seconds + message.sent_timestamp / 1000 > unix_time()  # type: ignore[operator]


_installing = threading.Lock()


def install() -> None:
    """Make moto in this process cost what AWS's work costs: a transaction its own items, an answer its JSON, a
    request no lookups, a received message no count of the queue (idempotent)."""
    with _installing:
        if not getattr(DynamoDBBackend.transact_write_items, "kept_items", False):
            dynamodb_models.copy = _ItemCopies  # type: ignore[assignment]
            DynamoDBBackend.transact_write_items = kept_items(DynamoDBBackend.transact_write_items)  # type: ignore[method-assign]
        if not getattr(DynamoHandler.serialized, "plain_item_answers", False):
            DynamoHandler.serialized = plain_item_answers(DynamoHandler.serialized)  # type: ignore[method-assign]
        SQSBackend.is_message_valid_based_on_retention_period = retention_of_its_queue  # type: ignore[method-assign,assignment]
        attributes = Queue.__dict__["attributes"]
        if not getattr(attributes.fget, "counted_only_when_asked", False):
            Queue.attributes = counted_only_when_asked(attributes)  # type: ignore[method-assign,assignment]
            SQSBackend.send_message = sent_without_counting(SQSBackend.send_message)  # type: ignore[method-assign]
        if not hasattr(moto_responses.method_names_from_class, "cache_info"):
            modules = tuple(moto_backends.list_of_moto_modules())
            moto_backends.list_of_moto_modules = lambda: modules
            moto_responses.method_names_from_class = cache(moto_responses.method_names_from_class)
