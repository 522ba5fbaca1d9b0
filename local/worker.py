"""Inside a local Lambda execution environment: one function's handler in a process of its own.

The local host (`local.functions.FunctionHost`) starts this module with
``python -c "from local.worker import main; main()" <fd>`` and talks to the process over the socket
``<fd>`` in length-prefixed JSON messages (`multiprocessing.connection.Connection` framing). The first
message is the configuration; its ``mode`` says what the process becomes:

* ``single``: put the function's ``CodeUri`` folder and the layers first on ``sys.path``, change into
  the ``CodeUri`` folder (Lambda's ``/var/task``), install the IAM audit when ``BILLING_LOCAL_IAM_AUDIT``
  is set (`local.iam_audit`) and the capture when ``BILLING_LOCAL_CAPTURE`` is (`local.capture`), and
  import the handler: the cold start. Answer ``ready`` (or the init error), then serve one event at a
  time (``invoke``: the handler's JSON result, or the exception it raised as Lambda's runtime reports
  it) until the socket closes.
* ``zygote`` (Linux): the same cold start, but never run an event: fork an initialised copy of itself
  for every worker the host asks for (the worker's socket arrives with the request, SCM_RIGHTS), so
  scaling up costs a fork instead of another cold start.
* ``base`` (Linux): import the libraries every function shares, once, then fork a function's zygote
  per request; the zygote takes on the function's environment before it loads the handler.

Forking processes reap their children as they exit, and wait for the last one before they exit
themselves. Nothing is shared between two events in flight: each runs in its own process.

What a process writes to ``sys.stdout`` / ``sys.stderr`` (Powertools' log lines, warnings, prints) goes
to the host line by line as ``{"log": "stdout"|"stderr", "text"}`` messages while an event runs (or
while it loads), so the host writes it out (to the terminal of ``make run``, or to what pytest
captures) before it answers; what is written between events waits for the next one.
"""

from __future__ import annotations

import contextlib
import decimal
import gc
import importlib
import io
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from types import ModuleType
from typing import Any

# Past its Timeout the host kills a worker; this alarm only ends one whose host is gone.
ORPHAN_GRACE_SECONDS = 5.0


def receive(connection: Connection) -> Any:
    """Read one JSON message (EOFError when the other side is gone)."""
    return json.loads(connection.recv_bytes())


def error_message(error: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """An error as Lambda's runtime reports it: type, message and stack trace."""
    return {
        "ok": False,
        "errorType": error_type or type(error).__name__,
        "errorMessage": str(error),
        "stackTrace": "".join(traceback.format_exception(error)),
    }


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None

    @property
    def log_group_name(self) -> str:
        """``/aws/lambda/<function>``, as Lambda names it."""
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        """A per-invocation stream name (there is no real stream locally)."""
        return f"local/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's configured Timeout."""
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def _json_default(value: Any) -> Any:
    """What Lambda's Python runtime does with values JSON has no type for: Decimal only."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def resolve_name(name: str) -> Any:
    """``package.module:attribute.path`` -> the object."""
    module_name, _, path = name.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in filter(None, path.split(".")):
        target = getattr(target, part)
    return target


def apply_patch(target: str, factory: str, arguments: list[Any]) -> None:
    """Replace ``target`` (``module:Owner.attribute``) with ``factory(original, *arguments)``.

    See `local.functions.FunctionHost.patched`: the local stack's way to inject faults into functions.
    """
    module_name, _, path = target.partition(":")
    owner_path, _, attribute = path.rpartition(".")
    owner = resolve_name(f"{module_name}:{owner_path}")
    original = getattr(owner, attribute)
    setattr(owner, attribute, resolve_name(factory)(original, *arguments))


class Channel:
    """The connection to the host, shared by the answer and the log lines (one frame at a time)."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.lock = threading.Lock()
        self.backlog: list[bytes] = []
        self.tap: Callable[[str, str], None] | None = None  # sees every piece of output first (`local.capture`)

    def open(self, connection: Connection) -> None:
        """Send log lines to ``connection`` from now on, starting with those that waited."""
        with self.lock:
            self.connection = connection
            backlog, self.backlog = self.backlog, []
            for frame in backlog:
                connection.send_bytes(frame)

    def close(self) -> None:
        """Keep log lines until the next `open`."""
        with self.lock:
            self.connection = None

    def forget(self) -> None:
        """Drop the lines that wait (a forked worker must not repeat its zygote's)."""
        with self.lock:
            self.connection = None
            self.backlog = []

    def send(self, frame: bytes) -> None:
        """Send one frame now (the channel must be open)."""
        with self.lock:
            assert self.connection is not None
            self.connection.send_bytes(frame)

    def log(self, stream: str, text: str) -> None:
        """A piece of output: sent while an event runs, kept otherwise."""
        if self.tap is not None:
            self.tap(stream, text)
        frame = json.dumps({"log": stream, "text": text}).encode("utf-8")
        with self.lock:
            if self.connection is None:
                self.backlog.append(frame)
                return
            try:
                self.connection.send_bytes(frame)
            except OSError:
                self.connection = None  # the host is gone; the process ends at end of file


class Output(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a worker: complete lines go to the host through the channel."""

    def __init__(self, name: str, original: Any, channel: Channel) -> None:
        super().__init__()
        self.name = name
        self.original = original
        self.channel = channel
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """Text is sent as UTF-8 JSON."""
        return "utf-8"

    def writable(self) -> bool:
        """Always."""
        return True

    def write(self, text: str) -> int:
        """Buffer ``text``; send every complete line."""
        with self._lock:
            self._pending += text
            if "\n" not in self._pending:
                return len(text)
            complete, _, self._pending = self._pending.rpartition("\n")
        self.channel.log(self.name, complete + "\n")
        return len(text)

    def flush(self) -> None:
        """Send a partial line too."""
        with self._lock:
            pending, self._pending = self._pending, ""
        if pending:
            self.channel.log(self.name, pending)

    def fileno(self) -> int:
        """The process's real descriptor (for code that writes below Python, e.g. faulthandler)."""
        return int(self.original.fileno())

    def isatty(self) -> bool:
        """Never a terminal."""
        return False


CHANNEL = Channel()


class Runtime:
    """One function's handler, loaded once, serving events."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.function_id: str = config["function_id"]
        self.timeout = float(config["timeout"])
        self.module: ModuleType | None = None
        self.handler: Callable[[Any, Any], Any] | None = None

    def load(self) -> None:
        """The cold start: sys.path and working folder as in Lambda, the IAM audit and capture, the handler import."""
        sys.path[:] = list(self.config["sys_path"])
        os.chdir(self.config["code_dir"])
        capture = self.config.get("capture")
        if capture:
            from local.capture import install as install_capture

            CHANNEL.tap = install_capture(self.function_id, capture)
        audit = self.config.get("iam_audit")
        if audit:
            from local.iam_audit import FunctionAudit, install

            install(FunctionAudit.from_config(self.function_id, audit))
        self.module = importlib.import_module(self.config["handler_module"])
        self.handler = getattr(self.module, self.config["handler_function"])

    def serve(self, connection: Connection) -> None:
        """Answer requests one at a time until the host closes the connection."""
        while True:
            try:
                message = receive(connection)
            except EOFError:
                return
            CHANNEL.open(connection)
            operation = message.get("op")
            if operation == "invoke":
                answer = self.invoke(message["event"], message["request_id"])
            elif operation == "openapi":
                answer = self.openapi()
            else:
                answer = json.dumps({"ok": False, "errorType": "Local.UnknownOperation", "errorMessage": operation})
            _flush()
            CHANNEL.send(answer.encode("utf-8"))
            CHANNEL.close()

    def invoke(self, event: Any, request_id: str) -> str:
        """Run the handler on one event; the JSON answer (result or error) to send back."""
        assert self.handler is not None
        context = LambdaContext(
            function_name=self.function_id,
            memory_limit_in_mb=int(self.config["memory_size"]),
            invoked_function_arn=self.config["function_arn"],
            aws_request_id=request_id,
            deadline=time.monotonic() + self.timeout,
        )
        # SIGALRM's default action ends the process: a backstop should the host die mid-invocation.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, self.timeout + ORPHAN_GRACE_SECONDS)
        try:
            result = self.handler(event, context)
        except Exception as error:  # reported to the caller, as Lambda's runtime does
            return json.dumps(error_message(error))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            return json.dumps({"ok": True, "result": result}, default=_json_default)
        except (TypeError, ValueError) as error:
            return json.dumps(error_message(error, "Runtime.MarshalError"))

    def openapi(self) -> str:
        """The handler module's OpenAPI document (its Powertools resolver ``app``), or None."""
        try:
            return json.dumps({"ok": True, "result": module_openapi(self.module)})
        except Exception as error:  # one handler's broken schema must not hide the others'
            return json.dumps(error_message(error))


def module_openapi(module: ModuleType | None) -> dict[str, Any] | None:
    """The OpenAPI document of a handler module's ``app`` resolver, if it has one."""
    app = getattr(module, "app", None)
    if app is None:
        return None
    if hasattr(app, "get_openapi_json_schema"):
        document = json.loads(app.get_openapi_json_schema())
        return document if isinstance(document, dict) else None
    if hasattr(app, "get_openapi_schema"):
        schema = app.get_openapi_schema()
        if hasattr(schema, "model_dump"):
            dumped = schema.model_dump(mode="json", by_alias=True, exclude_none=True)
            return dumped if isinstance(dumped, dict) else None
        return schema if isinstance(schema, dict) else None
    return None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _apply_patches(patches: list[dict[str, Any]]) -> None:
    for patch in patches:
        apply_patch(patch["target"], patch["factory"], list(patch.get("arguments", [])))


def _fork_loop(control: Connection, run_child: Callable[[dict[str, Any], Connection], None]) -> None:
    """Fork for every request on ``control``; the child's socket arrives with its request.

    Children are reaped as they exit, and at end of file this process waits for the last of them
    before it exits itself (an orphan would be left to an init that may never reap it).
    """
    signal.signal(signal.SIGCHLD, _reap)
    gc.freeze()  # keep what is loaded out of the collector: fewer pages copied per fork
    while True:
        try:
            request = receive(control)
            handle = recv_handle(control)
        except EOFError:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            with contextlib.suppress(ChildProcessError):
                while True:
                    os.waitpid(-1, 0)
            return
        _flush()
        try:
            pid = os.fork()
        except OSError as error:
            os.close(handle)
            answer = error_message(error)
        else:
            if pid == 0:
                status = 0
                try:
                    CHANNEL.forget()
                    control.close()
                    run_child(request, Connection(handle))
                except BaseException:
                    traceback.print_exc()
                    status = 1
                finally:
                    _flush()
                    os._exit(status)
            os.close(handle)
            answer = {"ok": True, "pid": pid}
        CHANNEL.open(control)
        CHANNEL.send(json.dumps(answer).encode("utf-8"))
        CHANNEL.close()


def _reap(signum: int, frame: Any) -> None:
    """SIGCHLD: collect every child that has exited."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _preload(modules: list[str]) -> list[str]:
    """Import the libraries every function shares; the names that failed."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional library only costs its functions the import
            failed.append(name)
    return failed


def _run(connection: Connection, config: dict[str, Any]) -> None:
    """Load as ``config["mode"]`` says, answer ``ready`` (or the init error), then work until end of file.

    ``base``: import the shared libraries, then fork a function's zygote per request. ``zygote``: load
    the handler, then fork a worker per request. ``single``: load the handler and serve events.
    """
    mode = config.get("mode")
    CHANNEL.open(connection)  # the cold start's output goes out while the host waits for it
    runtime = Runtime(config) if mode != "base" else None
    failed: list[str] = []
    try:
        if runtime is None:
            sys.path[:] = list(config["sys_path"])
            failed = _preload(list(config.get("preload", [])))
        else:
            runtime.load()
        if mode == "single":
            _apply_patches(config.get("patches", []))
    except BaseException as error:  # an init error: reported, then this environment is gone
        _flush()
        CHANNEL.send(json.dumps(error_message(error, f"Runtime.InitError ({type(error).__name__})")).encode())
        return
    _flush()
    ready = {"ok": True, "pid": os.getpid(), "threads": threading.active_count(), "not_preloaded": failed}
    CHANNEL.send(json.dumps(ready).encode("utf-8"))
    CHANNEL.close()
    if runtime is None:
        _fork_loop(connection, _become_zygote)
    elif mode == "zygote":

        def become_worker(request: dict[str, Any], worker_connection: Connection) -> None:
            assert runtime is not None
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _apply_patches(request.get("patches", []))
            runtime.serve(worker_connection)

        _fork_loop(connection, become_worker)
    else:
        runtime.serve(connection)


def _become_zygote(request: dict[str, Any], connection: Connection) -> None:
    """In a child of the base: take on the function's environment, then load it as its zygote."""
    os.environ.clear()
    os.environ.update(request["environment"])
    _run(connection, request["config"])


def main() -> None:
    """Entry point of a worker, zygote or base process (see the module docstring)."""
    # Ctrl-C in `make run` reaches the whole process group; the host decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(int(sys.argv[1]))
    try:
        config = receive(connection)
    except EOFError:
        return
    sys.stdout = Output("stdout", sys.__stdout__, CHANNEL)
    sys.stderr = Output("stderr", sys.__stderr__, CHANNEL)
    _run(connection, config)
    _flush()
