"""What functions let out of their process, recorded so the end-to-end tests can look for PHI in it.

When ``BILLING_LOCAL_CAPTURE`` names a folder in a function's environment (the end-to-end stack sets it),
each of the function's worker processes appends JSON lines to ``<folder>/<FunctionId>.<pid>.jsonl``:

* ``{"kind": "output", "stream", "text"}``: every line written to stdout or stderr, as the worker relays it
  to the host (Powertools' JSON log lines, EMF metric lines with their dimensions, warnings);
* ``{"kind": "aws", "service", "operation", "params"}``: the parameters of every AWS call but DynamoDB's,
  as the SDK is about to build the request (presigned URLs too): SQS message bodies, S3 keys and object
  metadata, Scheduler schedules and their Input. An S3 object's ``Body`` is left out, and so are DynamoDB
  calls: documents and the billing table are where client details belong (the end-to-end test reads the
  idempotency records from the tables themselves);
* ``{"kind": "trace", "call", "key", "value"}``: every trace annotation and metadata put, on Powertools'
  Tracer or on an X-Ray (sub)segment; recorded even though tracing is off outside Lambda, where Powertools
  drops them.

`read_captured` reads them all back. The worker installs this before it imports the handler
(`local.worker.Runtime.load`); nothing of it runs in a deployed function.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CAPTURE_VARIABLE = "BILLING_LOCAL_CAPTURE"

_TRACE_CALLS = ("put_annotation", "put_metadata")


@dataclass
class Recorder:
    """Appends one process's records to its own file (a forked worker starts a file of its own)."""

    function_id: str
    folder: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _file: IO[str] | None = field(default=None, repr=False)
    _pid: int | None = field(default=None, repr=False)

    def record(self, kind: str, **details: Any) -> None:
        """Write one record now (values JSON cannot hold are written as their ``repr``)."""
        line = json.dumps({"function": self.function_id, "kind": kind, **details}, default=repr) + "\n"
        with self._lock:
            if self._file is None or self._pid != os.getpid():
                self.folder.mkdir(parents=True, exist_ok=True)
                self._pid = os.getpid()
                self._file = (self.folder / f"{self.function_id}.{self._pid}.jsonl").open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()  # nothing buffered is copied into a fork, and a reader sees whole lines

    def output(self, stream: str, text: str) -> None:
        """A piece of the process's stdout or stderr."""
        self.record("output", stream=stream, text=text)


def worker_config(environment: dict[str, str]) -> dict[str, Any] | None:
    """The capture settings a worker needs, or None when its environment does not ask for them."""
    folder = environment.get(CAPTURE_VARIABLE)
    return {"folder": str(Path(folder).resolve())} if folder else None


def install(function_id: str, config: dict[str, Any]) -> Callable[[str, str], None]:
    """Record this process's AWS calls and trace data from now on; returns what records its output."""
    recorder = Recorder(function_id, Path(config["folder"]))
    _record_aws_calls(recorder)
    _record_trace_data(recorder)
    return recorder.output


def _record_aws_calls(recorder: Recorder) -> None:
    """Hook every client this process creates from now on, but DynamoDB's."""
    import botocore.session  # only capturing workers pay for the import here

    original = botocore.session.Session.create_client

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name != "dynamodb":
            client.meta.events.register("before-parameter-build", _aws_hook(recorder, service_name))
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def _aws_hook(recorder: Recorder, service_name: str) -> Callable[..., None]:
    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        sent = {name: value for name, value in params.items() if (service_name, name) != ("s3", "Body")}
        recorder.record("aws", service=service_name, operation=model.name, params=sent)

    return hook


def _record_trace_data(recorder: Recorder) -> None:
    """Wrap put_annotation / put_metadata of the Tracer and of every kind of X-Ray segment."""
    from aws_lambda_powertools.tracing.tracer import Tracer
    from aws_xray_sdk.core.models.dummy_entities import DummySegment, DummySubsegment
    from aws_xray_sdk.core.models.entity import Entity

    for owner in (Tracer, Entity, DummySegment, DummySubsegment):
        for call in _TRACE_CALLS:
            setattr(owner, call, _recording(recorder, call, getattr(owner, call)))


def _recording(recorder: Recorder, call: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def put(self: Any, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.record("trace", call=call, key=key, value=value)
        return original(self, key, value, *args, **kwargs)

    return put


def read_captured(folder: str | Path) -> list[dict[str, Any]]:
    """Every record in ``folder``, file by file in the order written (a line being written is left out)."""
    records: list[dict[str, Any]] = []
    root = Path(folder)
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the last piece has no newline yet
        records.extend(json.loads(line) for line in lines)
    return records
