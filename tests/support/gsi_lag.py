"""A test double that gives moto's DynamoDB the read lag of real AWS indexes.

On AWS a Query or Scan on a Global Secondary Index is eventually consistent: for a moment after a write
the index may not list the item yet, may list its previous version, or may still list an item the write
took out of the (sparse) index. Eventually consistent reads of the base table (Query/Scan/GetItem/
BatchGetItem without ``ConsistentRead``) may be stale in the same way. moto is always up to date, which
hides read-your-write bugs. `GsiLag` hooks a boto3 DynamoDB client through botocore's event system:

* every successful write (PutItem, UpdateItem, DeleteItem, TransactWriteItems, BatchWriteItem) is
  remembered per table and item key, with the time it landed and the item as it was just before (read
  with ``ConsistentRead`` through a separate client that is not hooked, so the armed client never sees
  extra calls); a write is lagged from the moment it is sent, and forgotten if it fails;
* every lagging read is rewritten after moto answered it: an item written within the last
  ``lag_seconds`` (or, with ``hide_all_recent``, at any time since the double was armed or last settled)
  is answered as the index would have shown it before that write: its previous version, if that version
  was in the index and still satisfies the key condition, filter and page of the request, else nothing.
  ``Count``/``ScannedCount`` follow.

Reads that are strongly consistent on AWS (GetItem/BatchGetItem/Query/Scan with ``ConsistentRead=True`` on
the table or a local secondary index) are left alone. ``lag_base_table=False`` lags GSI reads only.

Usage::

    lag = GsiLag(lag_seconds=1.0).arm(client)
    ...
    assert lag.lagged_reads > 0
    lag.disarm()

Limits (it is a test double): ``Limit`` is not re-applied after previous versions are added; the previous
version is read just before the write, so two unconditional writes racing on one key may both record the
same previous version; PartiQL statements are refused (they would bypass the bookkeeping).
"""

from __future__ import annotations

import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3.session
from botocore.exceptions import ClientError

from tests.support.ddb_expressions import compile_condition, parse_projection, project, sort_value

ItemKey = tuple[tuple[str, str, Any], ...]
Image = dict[str, Any]

_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
_READS = frozenset({"Query", "Scan", "GetItem", "BatchGetItem"})
_PARTIQL = frozenset({"ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"})
_SCHEMA_CHANGES = frozenset({"CreateTable", "UpdateTable", "DeleteTable"})


@dataclass(frozen=True)
class IndexSchema:
    """The table itself (``name`` None) or one of its secondary indexes."""

    name: str | None
    hash_key: str
    range_key: str | None
    is_global: bool = False
    projection: str = "ALL"
    non_key_attributes: tuple[str, ...] = ()

    def holds(self, image: Image) -> bool:
        """Whether an item appears in this index at all (secondary indexes are sparse)."""
        return self.hash_key in image and (self.range_key is None or self.range_key in image)


@dataclass(frozen=True)
class TableSchema:
    name: str
    base: IndexSchema
    indexes: dict[str, IndexSchema]

    def index(self, name: str | None) -> IndexSchema:
        if name is None:
            return self.base
        if name not in self.indexes:
            raise KeyError(f"table {self.name} has no index {name}")
        return self.indexes[name]

    def key_attributes(self, image: Image) -> Image:
        names = [self.base.hash_key] + ([self.base.range_key] if self.base.range_key else [])
        return {name: image[name] for name in names}

    def key_of(self, image: Image) -> ItemKey:
        """The canonical (hashable, number-normalised) primary key of an item or a ``Key`` parameter."""
        key = self.key_attributes(image)
        return tuple((name, *_typed(key[name])) for name in sorted(key))

    def index_view(self, index: IndexSchema, image: Image) -> Image:
        """The attributes of ``image`` the index projects."""
        if index.projection == "ALL":
            return dict(image)
        wanted = {self.base.hash_key, self.base.range_key, index.hash_key, index.range_key}
        wanted |= set(index.non_key_attributes)
        return {name: value for name, value in image.items() if name in wanted}


def _typed(value: dict[str, Any]) -> tuple[str, Any]:
    (tag,) = value.keys()
    return tag, sort_value(value)


@dataclass(frozen=True)
class LaggedRead:
    """One item a read answered differently from moto.

    ``served`` is ``"hidden"`` (the new version withheld, nothing in its place), ``"previous"`` (the new
    version replaced by the one before the write) or ``"stale"`` (an item the write took out of the result,
    e.g. out of a sparse index, still listed in its previous version).
    """

    operation: str
    table: str
    index: str | None
    key: dict[str, Any]
    served: str


@dataclass
class _Write:
    at: float
    before: Image | None


class ManualClock:
    """A monotonic clock the test moves by hand: ``GsiLag(clock=ManualClock())``."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Attachment:
    client: Any
    unique_id: str


class GsiLag:
    """Makes index reads through the armed clients lag behind their writes, as on AWS.

    ``lag_seconds``: how long a write stays invisible to lagging reads (default 1 s).
    ``hide_all_recent``: ignore ``lag_seconds``; every write since `arm` (or the last `settle`) stays
    invisible, so a test does not depend on timing at all.
    ``lag_base_table``: also lag eventually consistent reads of the table and its local indexes (default on).
    ``clock``: seconds, monotonic (`ManualClock` to control it). ``reader``: an unhooked DynamoDB client on
    the same endpoint for the double's own reads (by default one is built from the first armed client).
    """

    def __init__(
        self,
        lag_seconds: float = 1.0,
        *,
        hide_all_recent: bool = False,
        lag_base_table: bool = True,
        clock: Callable[[], float] = time.monotonic,
        reader: Any | None = None,
    ):
        if lag_seconds < 0:
            raise ValueError("lag_seconds must not be negative")
        self.lag_seconds = lag_seconds
        self.hide_all_recent = hide_all_recent
        self.lag_base_table = lag_base_table
        self._clock = clock
        self._reader = reader
        self._lock = threading.RLock()
        self._history: dict[tuple[str, ItemKey], list[_Write]] = {}
        self._typed_keys: dict[tuple[str, ItemKey], Image] = {}
        self._schemas: dict[str, TableSchema] = {}
        self._attachments: list[_Attachment] = []
        self._log: list[LaggedRead] = []
        self._writes_seen = 0
        self._context_key = f"gsi_lag_{id(self)}"
        self._local = threading.local()  # .depth > 0 while this thread runs the double's own calls

    # -- arming --------------------------------------------------------------------------------------
    def arm(self, client: Any) -> GsiLag:
        """Start watching ``client`` (several clients may share one double, and so one view of the writes)."""
        with self._lock:
            if any(a.client is client for a in self._attachments):
                return self
            if self._reader is None:
                self._reader = _unhooked_twin(client)
            unique_id = f"{self._context_key}_{len(self._attachments)}_{id(client)}"
            events = client.meta.events
            events.register("before-parameter-build.dynamodb", self._before, unique_id=unique_id + "_before")
            events.register("after-call.dynamodb", self._after, unique_id=unique_id + "_after")
            events.register("after-call-error.dynamodb", self._after_error, unique_id=unique_id + "_error")
            self._attachments.append(_Attachment(client, unique_id))
        return self

    def disarm(self, client: Any | None = None) -> None:
        """Stop watching ``client`` (all clients when None); its reads are moto's again at once."""
        with self._lock:
            keep: list[_Attachment] = []
            for attachment in self._attachments:
                if client is not None and attachment.client is not client:
                    keep.append(attachment)
                    continue
                events = attachment.client.meta.events
                events.unregister("before-parameter-build.dynamodb", unique_id=attachment.unique_id + "_before")
                events.unregister("after-call.dynamodb", unique_id=attachment.unique_id + "_after")
                events.unregister("after-call-error.dynamodb", unique_id=attachment.unique_id + "_error")
            self._attachments = keep

    @property
    def armed(self) -> bool:
        return bool(self._attachments)

    def __enter__(self) -> GsiLag:
        return self

    def __exit__(self, *_: object) -> None:
        self.disarm()

    def settle(self) -> None:
        """Let every index catch up with all writes so far (e.g. after a test's setup)."""
        with self._lock:
            self._history.clear()
            self._typed_keys.clear()

    # -- what it did ---------------------------------------------------------------------------------
    @property
    def lagged_reads(self) -> int:
        """How many items reads were answered differently from moto (hidden, replaced or still listed)."""
        with self._lock:
            return len(self._log)

    @property
    def log(self) -> list[LaggedRead]:
        with self._lock:
            return list(self._log)

    @property
    def writes_seen(self) -> int:
        with self._lock:
            return self._writes_seen

    def summary(self) -> str:
        """One line per (operation, table, index, what was served): how many items, and a few of their keys."""
        groups: dict[tuple[str, str, str | None, str], list[dict[str, Any]]] = {}
        for read in self.log:
            groups.setdefault((read.operation, read.table, read.index, read.served), []).append(read.key)
        lines = [f"GsiLag: {self.lagged_reads} lagged item reads, {self.writes_seen} writes followed"]
        for (operation, table, index, served), found in groups.items():
            sample = ", ".join("/".join(str(v) for v in key.values()) for key in found[:3])
            more = f", ... ({len(found)} in all)" if len(found) > 3 else ""
            lines.append(f"  {operation} {table}.{index or '<table>'}: {len(found)} {served}: {sample}{more}")
        return "\n".join(lines)

    def reset_counts(self) -> None:
        with self._lock:
            self._log.clear()

    # -- event handlers ------------------------------------------------------------------------------
    @contextmanager
    def _own_calls(self) -> Iterator[None]:
        """Mark the double's own reads, so they are never followed even if the reader were an armed client."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if getattr(self._local, "depth", 0):
            return
        operation = model.name
        if operation in _PARTIQL:
            raise NotImplementedError(f"GsiLag cannot follow PartiQL ({operation}); use the item API")
        if operation in _WRITES:
            try:
                targets = self._write_targets(operation, params)
                before = self._read_current(targets)
            except (ClientError, KeyError):
                return  # no such table or a malformed request: DynamoDB's own answer will say so
            # In flight: lagged from now on (a concurrent read must not see it early); timed once it lands.
            pending = []
            with self._lock:
                for table, key, typed in targets:
                    write = _Write(math.inf, before[(table, key)])
                    self._history.setdefault((table, key), []).append(write)
                    self._typed_keys[(table, key)] = typed
                    pending.append((table, key, write))
            context[self._context_key] = {"operation": operation, "params": params, "pending": pending}
        elif operation in _READS or operation in _SCHEMA_CHANGES:
            context[self._context_key] = {"operation": operation, "params": params}

    def _after(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        state = context.pop(self._context_key, None)
        if state is None:
            return
        failed = http_response is None or http_response.status_code >= 300
        operation, params = state["operation"], state["params"]
        if operation in _WRITES:
            self._land_writes(operation, parsed, state["pending"], failed)
        elif failed:
            return
        elif operation in _SCHEMA_CHANGES:
            with self._lock:
                self._schemas.pop(_table_name(params["TableName"]), None)
        elif operation in ("Query", "Scan"):
            self._lag_listing(operation, params, parsed)
        elif operation == "GetItem":
            self._lag_get_item(params, parsed)
        elif operation == "BatchGetItem":
            self._lag_batch_get(params, parsed)

    # -- writes --------------------------------------------------------------------------------------
    def _write_targets(self, operation: str, params: dict[str, Any]) -> list[tuple[str, ItemKey, Image]]:
        """(table, key, typed key) of every item the request writes."""
        raw: list[tuple[str, Image]] = []
        if operation == "PutItem":
            raw.append((params["TableName"], params["Item"]))
        elif operation in ("UpdateItem", "DeleteItem"):
            raw.append((params["TableName"], params["Key"]))
        elif operation == "TransactWriteItems":
            for action in params["TransactItems"]:
                for kind, body in action.items():
                    if kind == "Put":
                        raw.append((body["TableName"], body["Item"]))
                    elif kind in ("Update", "Delete"):
                        raw.append((body["TableName"], body["Key"]))
        else:  # BatchWriteItem
            for table, requests in params["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        raw.append((table, request["PutRequest"]["Item"]))
                    else:
                        raw.append((table, request["DeleteRequest"]["Key"]))
        targets = []
        for table, image in raw:
            name = _table_name(table)
            schema = self._schema(name)
            targets.append((name, schema.key_of(image), schema.key_attributes(image)))
        return targets

    def _read_current(self, targets: list[tuple[str, ItemKey, Image]]) -> dict[tuple[str, ItemKey], Image | None]:
        """The stored version of each target, read consistently through the unhooked reader."""
        found: dict[tuple[str, ItemKey], Image | None] = {(table, key): None for table, key, _ in targets}
        wanted: dict[str, dict[ItemKey, Image]] = {}
        for table, key, typed in targets:
            wanted.setdefault(table, {})[key] = typed
        with self._own_calls():
            pending = [(table, typed) for table, keys in wanted.items() for typed in keys.values()]
            if len(pending) == 1:
                ((table, typed),) = pending
                item = self._reader.get_item(TableName=table, Key=typed, ConsistentRead=True).get("Item")
                found[(table, self._schema(table).key_of(typed))] = item
                return found
            for start in range(0, len(pending), 100):
                request: dict[str, Any] = {}
                for table, typed in pending[start : start + 100]:
                    request.setdefault(table, {"Keys": [], "ConsistentRead": True})["Keys"].append(typed)
                while request:
                    response = self._reader.batch_get_item(RequestItems=request)
                    for table, items in response.get("Responses", {}).items():
                        schema = self._schema(table)
                        for item in items:
                            found[(table, schema.key_of(item))] = item
                    request = response.get("UnprocessedKeys") or {}
            return found

    def _after_error(self, context: dict[str, Any], **_: Any) -> None:
        """The request never got an answer (e.g. the connection failed): forget its in-flight writes."""
        state = context.pop(self._context_key, None)
        if state is not None and state["operation"] in _WRITES:
            self._land_writes(state["operation"], {}, state["pending"], failed=True)

    def _land_writes(
        self, operation: str, parsed: dict[str, Any], pending: list[tuple[str, ItemKey, _Write]], failed: bool
    ) -> None:
        """Time the writes that landed; drop the ones that did not (failed request, unprocessed batch items)."""
        unprocessed: set[tuple[str, ItemKey]] = set()
        if operation == "BatchWriteItem" and not failed:
            for table, requests in (parsed.get("UnprocessedItems") or {}).items():
                schema = self._schema(_table_name(table))
                for request in requests:
                    image = (
                        request["PutRequest"]["Item"] if "PutRequest" in request else request["DeleteRequest"]["Key"]
                    )
                    unprocessed.add((schema.name, schema.key_of(image)))
        with self._lock:
            now = self._clock()
            for table, key, write in pending:
                if not failed and (table, key) not in unprocessed:
                    write.at = now
                    self._writes_seen += 1
                    continue
                writes = [w for w in self._history.get((table, key), []) if w is not write]
                if writes:
                    self._history[(table, key)] = writes
                else:
                    self._history.pop((table, key), None)
                    self._typed_keys.pop((table, key), None)

    # -- the lagged view -----------------------------------------------------------------------------
    def _visible_versions(self, table: str) -> dict[ItemKey, Image | None]:
        """For each item of ``table`` written within the window: the version a lagging read still sees."""
        with self._lock:
            cutoff = -math.inf if self.hide_all_recent else self._clock() - self.lag_seconds
            visible: dict[ItemKey, Image | None] = {}
            expired = []
            for (name, key), writes in self._history.items():
                if not self.hide_all_recent:
                    writes[:] = [w for w in writes if w.at > cutoff]
                    if not writes:
                        expired.append((name, key))
                        continue
                if name == table:
                    visible[key] = writes[0].before  # the item as it was before the first write in the window
            for gone in expired:
                del self._history[gone]
                self._typed_keys.pop(gone, None)
            return visible

    def _lags(self, index: IndexSchema, consistent: bool) -> bool:
        return index.is_global or (self.lag_base_table and not consistent)

    def _note(self, operation: str, table: str, index: str | None, key: ItemKey, served: str) -> None:
        with self._lock:
            self._log.append(LaggedRead(operation, table, index, {name: value for name, _, value in key}, served))

    def _lag_listing(self, operation: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        table = _table_name(params["TableName"])
        schema = self._schema(table)
        index = schema.index(params.get("IndexName"))
        if not self._lags(index, bool(params.get("ConsistentRead"))):
            return
        visible = self._visible_versions(table)
        if not visible:
            return
        for legacy in ("KeyConditions", "QueryFilter", "ScanFilter", "AttributesToGet", "ConditionalOperator"):
            if legacy in params:
                raise NotImplementedError(f"GsiLag does not evaluate the legacy parameter {legacy}")
        names = params.get("ExpressionAttributeNames")
        values = params.get("ExpressionAttributeValues")
        key_condition = (
            compile_condition(params["KeyConditionExpression"], names, values) if operation == "Query" else None
        )
        item_filter = (
            compile_condition(params["FilterExpression"], names, values) if "FilterExpression" in params else None
        )
        projection = (
            parse_projection(params["ProjectionExpression"], names) if "ProjectionExpression" in params else None
        )

        counting = params.get("Select") == "COUNT"
        # Without items (COUNT) or maybe without their keys (projection), the answer is asked for again whole.
        whole = counting or projection is not None
        items = self._replay(operation, params) if whole else parsed.get("Items", [])

        ordered = operation == "Query" and index.range_key is not None
        forward = params.get("ScanIndexForward", True)
        last_page = "LastEvaluatedKey" not in parsed

        def position(image: Image) -> tuple[Any, ...]:
            assert index.range_key is not None
            return (sort_value(image[index.range_key]), *(value for _, _, value in schema.key_of(image)))

        def on_this_page(image: Image, key: ItemKey) -> bool:
            if not ordered:  # no order to place it by: the last page lists it
                segments = params.get("TotalSegments")
                if segments and zlib.crc32(repr(key).encode()) % segments != params.get("Segment", 0):
                    return False
                return last_page
            here = position(image)
            start, end = params.get("ExclusiveStartKey"), parsed.get("LastEvaluatedKey")
            if forward:
                return (start is None or here > position(start)) and (end is None or here <= position(end))
            return (start is None or here < position(start)) and (end is None or here >= position(end))

        kept: list[Image] = []
        hidden: list[ItemKey] = []
        for item in items:
            key = schema.key_of(item)
            if key in visible:
                hidden.append(key)
            else:
                kept.append(item)
        previous: list[tuple[ItemKey, Image]] = []
        examined = 0
        for key, image in visible.items():
            if image is None or not index.holds(image):
                continue
            if key_condition is not None and not key_condition(image):
                continue
            if not on_this_page(image, key):
                continue
            examined += 1
            if item_filter is not None and not item_filter(image):
                continue
            previous.append((key, image))

        replaced = {key for key, _ in previous}
        for key in hidden:
            self._note(operation, table, index.name, key, "previous" if key in replaced else "hidden")
        for key, _ in previous:
            if key not in hidden:
                self._note(operation, table, index.name, key, "stale")
        if not hidden and not previous:
            return

        shown = [schema.index_view(index, image) for _, image in previous]
        if ordered and index.range_key is not None and all(index.range_key in item for item in kept):
            ranked = [(sort_value(item[index.range_key]), item) for item in kept]
            ranked += [(sort_value(item[index.range_key]), item) for item in shown]
            ranked.sort(key=lambda pair: pair[0], reverse=not forward)
            result = [item for _, item in ranked]
        else:
            result = kept + shown
        if projection is not None:
            result = [project(item, projection) for item in result]
        if not counting:
            parsed["Items"] = result
        parsed["Count"] = len(result)
        if "ScannedCount" in parsed:
            # moto examined the current versions of the lagged items that fall in this request; the lagged
            # index holds their previous versions instead.
            with self._lock:
                typed = [self._typed_keys[(table, key)] for key in visible if (table, key) in self._typed_keys]
            examined_now = sum(
                1
                for item in self._fetch(table, typed)
                if index.holds(item)
                and (key_condition is None or key_condition(item))
                and on_this_page(item, schema.key_of(item))
            )
            parsed["ScannedCount"] = max(len(result), parsed["ScannedCount"] - examined_now + examined)

    def _replay(self, operation: str, params: dict[str, Any]) -> list[Image]:
        """The same page of a Query/Scan through the reader, with whole items (no Select, no projection)."""
        replay = {name: value for name, value in params.items() if name not in ("Select", "ProjectionExpression")}
        if "ExpressionAttributeNames" in replay:
            expressions = " ".join(str(replay.get(e, "")) for e in ("KeyConditionExpression", "FilterExpression"))
            tokens = set(re.findall(r"#[A-Za-z0-9_]+", expressions))
            used = {name: value for name, value in replay["ExpressionAttributeNames"].items() if name in tokens}
            replay.pop("ExpressionAttributeNames")
            if used:
                replay["ExpressionAttributeNames"] = used
        with self._own_calls():
            items: list[Image] = getattr(self._reader, _snake(operation))(**replay).get("Items", [])
            return items

    def _shaped(
        self, schema: TableSchema, index: IndexSchema, image: Image, projection: list[list[str | int]] | None
    ) -> Image:
        view = schema.index_view(index, image)
        return project(view, projection) if projection is not None else view

    def _lag_get_item(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        if not self.lag_base_table or params.get("ConsistentRead"):
            return
        table = _table_name(params["TableName"])
        schema = self._schema(table)
        key = schema.key_of(params["Key"])
        visible = self._visible_versions(table)
        if key not in visible:
            return
        image = visible[key]
        projection = self._projection_of(params)
        if image is None:
            parsed.pop("Item", None)
        else:
            parsed["Item"] = self._shaped(schema, schema.base, image, projection)
        self._note("GetItem", table, None, key, "hidden" if image is None else "previous")

    def _lag_batch_get(self, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        if not self.lag_base_table:
            return
        for table_ref, request in params["RequestItems"].items():
            if request.get("ConsistentRead"):
                continue
            table = _table_name(table_ref)
            schema = self._schema(table)
            visible = self._visible_versions(table)
            requested = {schema.key_of(key) for key in request["Keys"]}
            lagged = requested & visible.keys()
            if not lagged:
                continue
            unprocessed = parsed.get("UnprocessedKeys", {}).get(table_ref, {}).get("Keys", [])
            unprocessed_keys = {schema.key_of(key) for key in unprocessed}
            lagged -= unprocessed_keys
            projection = self._projection_of(request)
            responses = parsed.setdefault("Responses", {}).setdefault(table_ref, [])
            if projection is not None:  # the answer may lack the keys: rebuild it from whole items
                processed = [key for key in request["Keys"] if schema.key_of(key) not in unprocessed_keys]
                responses[:] = [
                    self._shaped(schema, schema.base, item, projection)
                    for item in self._fetch(table, processed)
                    if schema.key_of(item) not in lagged
                ]
            else:
                responses[:] = [item for item in responses if schema.key_of(item) not in lagged]
            for key in lagged:
                image = visible[key]
                if image is not None:
                    responses.append(self._shaped(schema, schema.base, image, projection))
                self._note("BatchGetItem", table, None, key, "hidden" if image is None else "previous")

    def _fetch(self, table: str, typed_keys: list[Image]) -> list[Image]:
        """The current items under ``typed_keys`` (consistent, through the reader)."""
        found: list[Image] = []
        with self._own_calls():
            for start in range(0, len(typed_keys), 100):
                request: dict[str, Any] = {table: {"Keys": typed_keys[start : start + 100], "ConsistentRead": True}}
                while request:
                    response = self._reader.batch_get_item(RequestItems=request)
                    found += response.get("Responses", {}).get(table, [])
                    request = response.get("UnprocessedKeys") or {}
            return found

    @staticmethod
    def _projection_of(request: dict[str, Any]) -> list[list[str | int]] | None:
        if "AttributesToGet" in request:
            raise NotImplementedError("GsiLag does not evaluate the legacy parameter AttributesToGet")
        if "ProjectionExpression" not in request:
            return None
        return parse_projection(request["ProjectionExpression"], request.get("ExpressionAttributeNames"))

    # -- schema --------------------------------------------------------------------------------------
    def _schema(self, table: str) -> TableSchema:
        with self._lock:
            if table in self._schemas:
                return self._schemas[table]
        with self._own_calls():
            description = self._reader.describe_table(TableName=table)["Table"]
        schema = TableSchema(
            table,
            _index_schema(None, description["KeySchema"], None, is_global=False),
            {
                **{
                    i["IndexName"]: _index_schema(i["IndexName"], i["KeySchema"], i.get("Projection"), is_global=True)
                    for i in description.get("GlobalSecondaryIndexes", [])
                },
                **{
                    i["IndexName"]: _index_schema(i["IndexName"], i["KeySchema"], i.get("Projection"), is_global=False)
                    for i in description.get("LocalSecondaryIndexes", [])
                },
            },
        )
        with self._lock:
            self._schemas[table] = schema
        return schema


def _index_schema(
    name: str | None, key_schema: Iterable[dict[str, str]], projection: dict[str, Any] | None, *, is_global: bool
) -> IndexSchema:
    keys = {element["KeyType"]: element["AttributeName"] for element in key_schema}
    projection = projection or {"ProjectionType": "ALL"}
    return IndexSchema(
        name,
        keys["HASH"],
        keys.get("RANGE"),
        is_global=is_global,
        projection=projection.get("ProjectionType", "ALL"),
        non_key_attributes=tuple(projection.get("NonKeyAttributes", ())),
    )


def _table_name(reference: str) -> str:
    """A table name from a name or an ARN (``arn:...:table/<name>``)."""
    return reference.split(":table/", 1)[1].split("/", 1)[0] if ":table/" in reference else reference


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def _unhooked_twin(client: Any) -> Any:
    """A new DynamoDB client on the same endpoint, region, config and credentials, with no handlers of ours."""
    session = boto3.session.Session(region_name=client.meta.region_name)
    credentials: dict[str, Any] = {}
    signer_credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if signer_credentials is not None:
        frozen = signer_credentials.get_frozen_credentials()
        credentials = {
            "aws_access_key_id": frozen.access_key,
            "aws_secret_access_key": frozen.secret_key,
            "aws_session_token": frozen.token,
        }
    make_client: Callable[..., Any] = session.client
    return make_client("dynamodb", endpoint_url=client.meta.endpoint_url, config=client.meta.config, **credentials)


__all__ = ["GsiLag", "IndexSchema", "LaggedRead", "ManualClock", "TableSchema"]


# The doubles the ``gsi_lag`` fixture has armed (in a plain module: a conftest imported by name would be a
# second copy of itself, with a list of its own).
ARMED: list[GsiLag] = []


def indexes_caught_up() -> None:
    """Let the indexes catch up with every write so far, when the double is armed: for a test's own setup
    (done long before the night it prepares) and its checks (a person looking later), never for the code
    under test."""
    for double in ARMED:
        double.settle()
