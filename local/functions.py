"""Local Lambda: each template function runs in worker processes of its own, one event at a time.

`FunctionHost` keeps a pool per function. An invocation takes an idle warm worker, or starts a new
one when all are busy (up to ``max_workers`` per function; beyond that it waits for one to free up),
sends it the event over a socket and waits at most the function's ``Timeout``:

* a worker runs one event at a time, like a Lambda execution environment, so nothing (a Powertools
  resolver's current event, a module global) is ever shared by two invocations in flight;
* a worker that runs past the Timeout is killed and `FunctionTimeout` raised; one that dies
  mid-invocation raises `WorkerCrashed`; either way the next invocation gets a fresh worker;
* an exception in the handler comes back as `FunctionError` (with the worker's traceback) and the
  worker stays warm, as in Lambda.

Workers run with the function's own environment: the process environment when the host was started
(`apply_environment`; variables of other functions taken out), then the function's resolved
``Environment`` (`local.template.Resolver.function_environment`), then the host's overrides (the
local AWS endpoint and credentials, the Stripe emulator's settings...). It is fixed when the host
starts, so changes to this process's ``os.environ`` afterwards (the end-to-end tests suspend and
resume the stack's environment around each test) never leak into a worker. A host that was never
started gives workers the current ``os.environ`` instead. Their ``sys.path`` starts with the
``CodeUri`` folder, then the layers' folders, then this process's path.

How workers start (``BILLING_LOCAL_WORKER_START``): ``fork``, the default on Linux, has one shared
*base* process import the libraries every handler uses (`PRELOAD_MODULES`) once, fork from it one
*zygote* per function that takes on the function's environment and imports its handler (the cold
start), and fork every worker of the function from its zygote: a new worker costs a fork, not
another cold start. ``spawn``, the default elsewhere, starts every worker as a new interpreter that
imports the handler itself. Either way workers and zygotes run `local.worker`; the host kills a
forked worker through a pidfd, so a recycled pid is never hit.

Patches (`FunctionHost.patched`) stand in for ``monkeypatch`` now that handlers no longer run in the
caller's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from pathlib import Path
from typing import Any

from local import capture, iam_audit
from local.template import FunctionSpec, Resolver, Template

START_METHOD_VARIABLE = "BILLING_LOCAL_WORKER_START"
DEFAULT_MAX_WORKERS = 24
INIT_TIMEOUT_SECONDS = 60.0  # generous: CI machines import slowly when every core is busy
DESCRIBE_TIMEOUT_SECONDS = 30.0
_BOOTSTRAP = "from local.worker import main; main()"
_REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- what callers see


class InvocationError(Exception):
    """An invocation did not produce the handler's result."""

    def __init__(self, function_id: str, message: str) -> None:
        super().__init__(message)
        self.function_id = function_id


class FunctionError(InvocationError):
    """The handler raised (or returned what cannot be sent back); the worker's traceback is the cause."""

    def __init__(self, function_id: str, error_type: str, error_message: str, stack_trace: str) -> None:
        super().__init__(function_id, f"{function_id} failed: {error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message
        self.stack_trace = stack_trace
        self.__cause__ = RemoteTraceback(stack_trace)


class RemoteTraceback(Exception):
    """The traceback as the worker process printed it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\n{self.text.rstrip()}\n(in the function's worker process)"


class FunctionInitError(FunctionError):
    """The handler could not be loaded (Lambda's init phase failed)."""


class FunctionTimeout(InvocationError):
    """The handler ran past the function's Timeout; its worker was killed."""

    def __init__(self, function_id: str, timeout: float) -> None:
        super().__init__(function_id, f"{function_id} did not finish within its {timeout:g} s Timeout")
        self.timeout = timeout


class WorkerCrashed(InvocationError):
    """The worker process died before it answered."""


# ---------------------------------------------------------------- one worker process


def _relay(message: dict[str, Any]) -> None:
    """Write a worker's log line where this process's own output goes."""
    stream = sys.stderr if message.get("log") == "stderr" else sys.stdout
    try:
        stream.write(str(message.get("text", "")))
        stream.flush()
    except (OSError, ValueError):
        pass  # nowhere to write (closed at interpreter exit); the line is lost, the answer is not


def _answer(connection: Connection, timeout: float) -> Any:
    """The next answer on ``connection`` within ``timeout``, relaying the log lines that come first.

    TimeoutError when none came in time; EOFError/OSError when the process is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not connection.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        message = json.loads(connection.recv_bytes())
        if isinstance(message, dict) and "log" in message:
            _relay(message)
            continue
        return message


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Worker:
    """A worker process as the host sees it: a connection, and a way to wait for or kill it."""

    def __init__(
        self, connection: Connection, pid: int, generation: int, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.connection = connection
        self.pid = pid
        self.generation = generation
        self.process = process
        # A pidfd names this very process even after it exits: no signal can hit a recycled pid.
        self.pidfd = _pidfd(pid) if process is None else None
        self.dead = False
        self.lock = threading.Lock()  # zygotes: one fork request at a time

    def alive(self) -> bool:
        """The process has not exited (as far as can be told)."""
        if self.process is not None:
            return self.process.poll() is None
        if self.pidfd is not None:
            readable, _, _ = select.select([self.pidfd], [], [], 0)
            return not readable
        return not self.dead

    def stop(self, timeout: float) -> None:
        """Close the connection, give the process ``timeout`` to finish, then kill it."""
        self.retire()
        if not self.wait(timeout):
            self.dead = False
            self.kill()
            self.wait(1.0)
        self.release_resources()

    def usable(self) -> bool:
        """An idle worker that has not died (an idle worker never writes, so anything readable is EOF)."""
        if self.dead:
            return False
        try:
            if self.connection.poll(0):
                self.kill()
                return False
        except OSError:
            self.kill()
            return False
        return True

    def call(self, message: bytes, timeout: float) -> Any:
        """Send one request and wait for its answer; kills the worker when it is late or gone."""
        try:
            self.connection.send_bytes(message)
            return _answer(self.connection, timeout)
        except TimeoutError:
            self.kill()
            raise
        except (EOFError, OSError, ValueError) as error:
            self.kill()
            raise ConnectionError(f"worker {self.pid} is gone") from error

    def kill(self) -> None:
        """SIGKILL (Lambda gives a timed-out environment no grace either) and forget the connection."""
        if self.dead:
            return
        self.dead = True
        with contextlib.suppress(OSError):
            if self.process is not None:
                self.process.kill()
                _exiting.add(self.process)
            elif self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        self._close()

    def retire(self) -> None:
        """Close the connection: the worker finishes at end of file."""
        self.dead = True
        self._close()
        if self.process is not None:
            _exiting.add(self.process)

    def discard(self) -> None:
        """`retire` (when not already dead) and forget the process: no need to wait for it."""
        self.retire()
        self.release_resources()

    def wait(self, timeout: float) -> bool:
        """Wait until the process has exited; False when it is still running after ``timeout``."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        if self.pidfd is None:
            return True  # cannot tell; it ends at end of file
        readable, _, _ = select.select([self.pidfd], [], [], max(0.0, timeout))
        return bool(readable)

    def release_resources(self) -> None:
        """Close the pidfd (after `wait`)."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.close()


class _Exiting:
    """Child processes told to end (spawn mode), reaped once they have: no zombie outlives its worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()

    def add(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.add(process)

    def reap(self, timeout: float = 0.0) -> None:
        """Collect those that have exited; with a ``timeout``, wait for the rest (then kill them)."""
        with self._lock:
            processes = list(self._processes)
        deadline = time.monotonic() + timeout
        for process in processes:
            if timeout > 0:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.poll() is not None:
                with self._lock:
                    self._processes.discard(process)


_exiting = _Exiting()


def _socketpair() -> tuple[Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    return Connection(ours.detach()), theirs


def _launch(environment: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start ``python -c <bootstrap> <fd>`` with ``environment``; the connection to it."""
    _exiting.reap()
    connection, theirs = _socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(theirs.fileno())],
            env=dict(environment),
            cwd=_REPO_ROOT,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            # A group of its own: Ctrl-C at the terminal reaches the host only, which stops workers in order.
            process_group=0,
        )
    except BaseException:
        connection.close()
        raise
    finally:
        theirs.close()
    return process, connection


def _boot(environment: Mapping[str, str], config: dict[str, Any]) -> tuple[_Worker, dict[str, Any]]:
    """Launch a process, hand it ``config`` and wait for its cold start: the process and its ``ready``.

    Raises `FunctionInitError` (with the process's own traceback when it reported one).
    """
    process, connection = _launch(environment)
    worker = _Worker(connection, process.pid, 0, process=process)
    return worker, _await_ready(worker, str(config.get("function_id", "the shared base process")), config)


def _await_ready(worker: _Worker, function_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send ``config`` (when given), then wait for the process's ``ready``; kill it on failure."""
    try:
        if config is not None:
            worker.connection.send_bytes(json.dumps(config).encode("utf-8"))
        ready = _answer(worker.connection, INIT_TIMEOUT_SECONDS)
    except TimeoutError:
        worker.kill()
        message = f"{function_id} did not load within {INIT_TIMEOUT_SECONDS:g} s"
        raise FunctionInitError(function_id, "Runtime.InitTimeout", message, "") from None
    except (EOFError, OSError, ValueError) as error:
        worker.kill()
        message = f"the process exited while loading ({error or type(error).__name__})"
        raise FunctionInitError(function_id, "Runtime.ExitError", message, "") from error
    if not ready.get("ok"):
        worker.stop(5.0)
        raise FunctionInitError(function_id, ready["errorType"], ready["errorMessage"], ready.get("stackTrace", ""))
    return dict(ready)


def _fork_from(parent: _Worker, request: dict[str, Any], function_id: str) -> _Worker:
    """Ask a base or zygote process to fork; the child is connected through a new socket."""
    connection, theirs = _socketpair()
    try:
        with parent.lock:
            parent.connection.send_bytes(json.dumps(request).encode("utf-8"))
            send_handle(parent.connection, theirs.fileno(), parent.pid)
            answer = _answer(parent.connection, INIT_TIMEOUT_SECONDS)
    except (EOFError, OSError, TimeoutError, ValueError) as error:
        connection.close()
        parent.kill()
        raise WorkerCrashed(function_id, f"{function_id}: cannot start a process ({error})") from error
    finally:
        theirs.close()
    if not answer.get("ok"):
        connection.close()
        raise WorkerCrashed(function_id, f"{function_id}: cannot fork: {answer.get('errorMessage')}")
    return _Worker(connection, int(answer["pid"]), 0)


# ---------------------------------------------------------------- the shared base (fork mode)

# Imported once by the base process that forks every function's zygote (fork mode): the libraries the
# handlers share. A module here must not read the environment when imported (the function's own
# environment is set after the fork). One that is not installed is skipped.
PRELOAD_MODULES = (
    "boto3",
    "botocore.session",
    "pydantic",
    "aws_lambda_powertools",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.idempotency",
    "aws_lambda_powertools.utilities.parser",
    "aws_lambda_powertools.utilities.typing",
    "aws_xray_sdk.core",
    "stripe",
    "yaml",
)

_base_lock = threading.Lock()
_base_process: _Worker | None = None
_base_users: set[int] = set()


def _shared_base(host: FunctionHost) -> _Worker | None:
    """The running base process, started on first use; None when it cannot be used."""
    global _base_process
    with _base_lock:
        _base_users.add(id(host))
        if _base_process is not None:
            if _base_process.alive():
                return _base_process
            _base_process.discard()
            _base_process = None
        config = {"mode": "base", "sys_path": _worker_sys_path([]), "preload": list(PRELOAD_MODULES)}
        try:
            base, ready = _boot(host.base_environment(), config)
        except FunctionInitError as error:
            print(f"local functions: no shared base process ({error}); each function loads on its own", file=sys.stderr)
            return None
        if int(ready.get("threads", 1)) > 1:
            base.stop(5.0)  # forking a process with threads can deadlock the copy
            return None
        _base_process = base
        return base


def _worker_sys_path(front: list[str]) -> list[str]:
    rest = [str(Path(entry).resolve()) for entry in sys.path if entry]
    return list(dict.fromkeys([*front, *rest]))


# ---------------------------------------------------------------- a pool per function


@dataclass(frozen=True)
class Patch:
    """``target`` replaced by ``factory(original, *arguments)`` in workers (see `FunctionHost.patched`)."""

    target: str
    factory: str
    arguments: tuple[Any, ...] = ()

    def as_message(self) -> dict[str, Any]:
        return {"target": self.target, "factory": self.factory, "arguments": list(self.arguments)}


class _Pool:
    """The workers of one function: idle ones, busy ones, and (fork mode) the zygote they come from."""

    def __init__(self, host: FunctionHost, function_id: str) -> None:
        self.host = host
        self.function_id = function_id
        self.spec: FunctionSpec = host.template.functions[function_id]
        self.condition = threading.Condition()
        self.idle: list[_Worker] = []
        self.busy: set[_Worker] = set()
        self.starting = 0
        self.generation = 0
        self.closed = False
        self.fork = host.start_method == "fork"
        self._zygote: _Worker | None = None
        self._zygote_lock = threading.Lock()

    # -- taking and giving back

    def acquire(self) -> _Worker:
        """An idle warm worker, a new one when all are busy, or the first to free up at the cap."""
        with self.condition:
            while True:
                self._check_open()
                while self.idle:
                    worker = self.idle.pop()
                    if worker.generation == self.generation and worker.usable():
                        self.busy.add(worker)
                        return worker
                    worker.discard()
                if len(self.busy) + self.starting < self.host.max_workers:
                    self.starting += 1
                    break
                self.condition.wait()
        try:
            worker = self._start_worker()
        except BaseException:
            with self.condition:
                self.starting -= 1
                self.condition.notify()
            raise
        with self.condition:
            self.starting -= 1
            if self.closed:
                worker.kill()
                worker.release_resources()
                self.condition.notify()
                self._check_open()
            self.busy.add(worker)
        return worker

    def release(self, worker: _Worker) -> None:
        """Give a worker back: idle when still healthy and current, else gone."""
        with self.condition:
            self.busy.discard(worker)
            if worker.dead or self.closed or worker.generation != self.generation:
                worker.discard()
            else:
                self.idle.append(worker)
            self.condition.notify()

    def size(self) -> int:
        """Workers alive or starting."""
        with self.condition:
            return len(self.idle) + len(self.busy) + self.starting

    def _check_open(self) -> None:
        if self.closed:
            raise InvocationError(self.function_id, f"{self.function_id}: the local host is stopped")

    # -- starting workers

    def config(self, mode: str) -> dict[str, Any]:
        """What a worker (``single``) or a zygote needs to load the handler."""
        spec = self.spec
        environment = self.host.function_environment(self.function_id)
        audit = iam_audit.worker_config(self.host.template, self.host.resolver, self.function_id, environment)
        return {
            "mode": mode,
            "function_id": self.function_id,
            "handler_module": spec.handler_module,
            "handler_function": spec.handler_function,
            "code_dir": str(spec.code_dir),
            "sys_path": _worker_sys_path([str(spec.code_dir), *(str(path) for path in self.host.layer_dirs())]),
            "timeout": spec.timeout,
            "memory_size": spec.memory_size,
            "function_arn": self.host.resolver.function_arn(self.function_id),
            "iam_audit": audit,
            "capture": capture.worker_config(environment),
            "patches": [patch.as_message() for patch in self.host.patches],
        }

    def _start_worker(self) -> _Worker:
        if not self.spec.handler_file.is_file():
            message = f"handler file {self.spec.handler_file} does not exist"
            raise FunctionInitError(self.function_id, "Runtime.ImportModuleError", message, "")
        generation = self.generation
        zygote = self.zygote() if self.fork else None
        if zygote is not None:
            request = {"op": "fork", "patches": [p.as_message() for p in self.host.patches]}
            worker = _fork_from(zygote, request, self.function_id)
        else:
            worker, _ = _boot(self.host.function_environment(self.function_id), self.config("single"))
        worker.generation = generation
        self.host.note_started(self.function_id, worker.pid)
        return worker

    def zygote(self) -> _Worker | None:
        """The function's zygote, started (its cold start) on first use; None when forking is off."""
        with self._zygote_lock:
            if self._zygote is not None:
                if self._zygote.alive():
                    return self._zygote
                self._zygote.discard()  # it died (or failed a fork): a new one replaces it
                self._zygote = None
            self._check_open()
            base = _shared_base(self.host)
            if base is not None:
                request = {
                    "op": "zygote",
                    "config": self.config("zygote"),
                    "environment": self.host.function_environment(self.function_id),
                }
                zygote = _fork_from(base, request, self.function_id)
                ready = _await_ready(zygote, self.function_id)
            else:
                zygote, ready = _boot(self.host.function_environment(self.function_id), self.config("zygote"))
            if int(ready.get("threads", 1)) > 1:
                # Forking a process with threads can deadlock the copy: cold-start every worker instead.
                print(
                    f"local functions: {self.function_id} starts threads when it loads; not forking its workers",
                    file=sys.stderr,
                )
                zygote.stop(5.0)
                self.fork = False
                return None
            self._zygote = zygote
            return zygote

    # -- recycling and stopping

    def recycle(self, zygote_too: bool = True) -> None:
        """Retire idle workers now and busy ones when they finish (and the zygote): the next event starts cold."""
        with self.condition:
            self.generation += 1
            idle, self.idle = self.idle, []
        for worker in idle:
            worker.discard()
        if zygote_too:
            with self._zygote_lock:
                zygote, self._zygote = self._zygote, None
            if zygote is not None:
                zygote.retire()  # it exits once its last worker has (busy ones finish their event first)
                zygote.release_resources()

    def stop(self) -> tuple[list[_Worker], _Worker | None]:
        """Stop taking invocations; close idle workers, kill busy ones.

        Returns the workers to wait for, and the zygote to stop once they are gone (it reaps them).
        """
        with self.condition:
            self.closed = True
            idle, self.idle = self.idle, []
            busy = list(self.busy)
            self.condition.notify_all()
        for worker in idle:
            worker.retire()
        for worker in busy:
            worker.kill()
        with self._zygote_lock:
            zygote, self._zygote = self._zygote, None
        return [*idle, *busy], zygote


# ---------------------------------------------------------------- the host


def default_start_method() -> str:
    """``fork`` on Linux (pidfds make killing a forked worker safe), ``spawn`` elsewhere."""
    chosen = os.environ.get(START_METHOD_VARIABLE, "").strip().lower()
    if chosen in ("fork", "spawn"):
        return chosen
    return "fork" if sys.platform.startswith("linux") and hasattr(os, "pidfd_open") else "spawn"


class FunctionHost:
    """Runs the template's functions in pools of worker processes (see the module docstring)."""

    # Variables hosts of this process put into os.environ: never part of another host's base.
    _managed: set[str] = set()

    def __init__(
        self,
        template: Template,
        resolver: Resolver,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        start_method: str | None = None,
    ) -> None:
        self.template = template
        self.resolver = resolver
        self.max_workers = max_workers
        self.start_method = start_method or default_start_method()
        self.patches: tuple[Patch, ...] = ()
        self._base: dict[str, str] | None = None
        self._overrides: dict[str, str] = {}
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._started: dict[str, list[int]] = {}
        self._finalizer = weakref.finalize(self, _stop_host, id(self), self._pools, 5.0)

    # -- environment

    def environment(self, warn: bool = False) -> dict[str, str]:
        """The union of every function's resolved environment (what `apply_environment` puts in os.environ)."""
        merged: dict[str, str] = {}
        for function_id in self.template.functions:
            for name, value in self.resolver.function_environment(function_id).items():
                conflict = name in merged and merged[name] != value and name != "POWERTOOLS_SERVICE_NAME"
                if warn and conflict:
                    print(
                        f"local api: {name} differs between functions; os.environ gets {function_id}'s"
                        " (each function's workers get their own)",
                        file=sys.stderr,
                    )
                merged[name] = value
        return merged

    def apply_environment(
        self, overrides: Mapping[str, str] | None = None, *, worker_only: Mapping[str, str] | None = None
    ) -> None:
        """Fix the workers' environment, and put the functions' environment and ``overrides`` in os.environ.

        Workers get (os.environ now, less the variables any host manages) + their function's own
        environment + ``overrides`` + ``worker_only``. os.environ gets the union of the functions'
        environments and ``overrides``, for code of this process that talks to the same local resources.
        """
        merged = self.environment(warn=True)
        FunctionHost._managed.update(merged, overrides or {}, worker_only or {})
        self._base = {name: value for name, value in os.environ.items() if name not in FunctionHost._managed}
        self._overrides = {**(overrides or {}), **(worker_only or {})}
        os.environ.update(merged)
        os.environ.update(overrides or {})
        for layer_dir in self.layer_dirs():
            if str(layer_dir) not in sys.path:
                sys.path.append(str(layer_dir))

    def base_environment(self) -> dict[str, str]:
        """What every function's workers start from: os.environ when the host started (or now, if not)."""
        return dict(os.environ) if self._base is None else dict(self._base)

    def function_environment(self, function_id: str) -> dict[str, str]:
        """The environment ``function_id``'s workers run with."""
        return {**self.base_environment(), **self.resolver.function_environment(function_id), **self._overrides}

    def layer_dirs(self) -> list[Path]:
        """Local folders of the template's layers (SAM's python3.12 build imports from there)."""
        layers = self.template.of_type("AWS::Serverless::LayerVersion")
        dirs = [self.template.root / str(props.get("ContentUri")) for props in layers.values()]
        return [path.resolve() for path in dirs if path.is_dir()]

    # -- invoking

    def _pool(self, function_id: str) -> _Pool:
        if function_id not in self.template.functions:
            raise KeyError(f"{function_id} is not a function of {self.template.path}")
        with self._lock:
            pool = self._pools.get(function_id)
            if pool is None:
                pool = self._pools[function_id] = _Pool(self, function_id)
            return pool

    def invoke(self, function_id: str, event: Any) -> Any:
        """Run ``function_id`` on ``event`` in one of its workers; the handler's (JSON) result.

        Raises `FunctionError` when the handler raised, `FunctionTimeout` past its Timeout,
        `WorkerCrashed` when the worker died, `FunctionInitError` when the handler cannot load.
        """
        message = json.dumps({"op": "invoke", "event": event, "request_id": str(uuid.uuid4())}).encode("utf-8")
        return self._call(function_id, message, float(self.template.functions[function_id].timeout))

    def openapi(self, function_id: str) -> dict[str, Any] | None:
        """The OpenAPI document of the function's resolver (``app``), or None when it has none."""
        document = self._call(function_id, json.dumps({"op": "openapi"}).encode(), DESCRIBE_TIMEOUT_SECONDS)
        return document if isinstance(document, dict) else None

    def _call(self, function_id: str, message: bytes, timeout: float) -> Any:
        pool = self._pool(function_id)
        worker = pool.acquire()
        try:
            answer = worker.call(message, timeout)
        except TimeoutError:
            raise FunctionTimeout(function_id, timeout) from None
        except ConnectionError as error:
            raise WorkerCrashed(function_id, f"{function_id}'s worker process exited before it answered") from error
        finally:
            pool.release(worker)
        if not answer.get("ok"):
            raise FunctionError(function_id, answer["errorType"], answer["errorMessage"], answer["stackTrace"])
        return answer.get("result")

    # -- managing the pools

    def preload(self, function_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Cold-start each function now, all at once, leaving one warm worker each; load errors by function."""
        ids = list(function_ids or self.template.functions)
        errors: dict[str, str] = {}

        def warm(function_id: str) -> None:
            pool = self._pool(function_id)
            try:
                pool.release(pool.acquire())
            except Exception as error:  # reported, the others still load
                errors[function_id] = f"{type(error).__name__}: {error}"

        if ids:
            with ThreadPoolExecutor(max_workers=len(ids), thread_name_prefix="preload") as executor:
                list(executor.map(warm, ids))
        return errors

    def recycle(self, function_id: str | None = None) -> None:
        """Forget warm workers (and zygotes): the next invocations start cold, with the current settings."""
        with self._lock:
            if function_id is None:
                pools = list(self._pools.values())
            else:
                pools = [self._pools[function_id]] if function_id in self._pools else []
        for pool in pools:
            pool.recycle()

    @contextlib.contextmanager
    def patched(self, target: str, factory: str, *arguments: Any) -> Iterator[None]:
        """Within the block, every worker of every function runs with ``target`` replaced.

        ``target`` is ``module:Owner.attribute`` (e.g. ``billing_aws.store:BillingStore.commit_settlement``)
        and ``factory`` ``module:callable``, importable in the workers; the replacement is
        ``factory(original, *arguments)`` (JSON arguments). Workers warm before the block, or busy
        when it ends, are retired so no event runs with a stale patch set. The local stand-in for
        ``monkeypatch`` now that handlers no longer run in the test process.
        """
        patch = Patch(target, factory, tuple(arguments))
        self._set_patches((*self.patches, patch))
        try:
            yield
        finally:
            self._set_patches(tuple(p for p in self.patches if p is not patch))

    def _set_patches(self, patches: tuple[Patch, ...]) -> None:
        self.patches = patches
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.recycle(zygote_too=False)  # the zygote stays: fork requests carry the patches

    def note_started(self, function_id: str, pid: int) -> None:
        """Remember a worker's pid (`started_pids`)."""
        with self._lock:
            self._started.setdefault(function_id, []).append(pid)

    def started_pids(self, function_id: str) -> list[int]:
        """Pids of every worker started for ``function_id``, oldest first."""
        with self._lock:
            return list(self._started.get(function_id, []))

    def pool_size(self, function_id: str) -> int:
        """Workers of ``function_id`` alive now (idle, busy or starting)."""
        return self._pool(function_id).size()

    def stop(self) -> None:
        """Stop every worker and zygote (and the shared base when no other host uses it)."""
        self._finalizer()


def _stop_host(host_id: int, pools: dict[str, _Pool], timeout: float) -> None:
    """Stop workers, then the zygotes that reap them, then (when no host is left) the shared base."""
    stopped = [pool.stop() for pool in list(pools.values())]
    deadline = time.monotonic() + timeout
    workers = [worker for pool_workers, _ in stopped for worker in pool_workers]
    zygotes = [zygote for _, zygote in stopped if zygote is not None]
    for group in (workers, zygotes):
        for process in group:
            process.retire()
        for process in group:
            if not process.wait(deadline - time.monotonic()):
                process.dead = False
                process.kill()
                process.wait(1.0)
            process.release_resources()
    _exiting.reap(max(0.1, deadline - time.monotonic()))
    global _base_process
    with _base_lock:
        _base_users.discard(host_id)
        if _base_users or _base_process is None:
            return
        base, _base_process = _base_process, None
    base.stop(timeout)
