"""``make run``: the whole billing system on this machine.

A moto server with the template's resources, the Stripe emulator (unless ``STRIPE_SECRET_KEY``
names a real test key), the local API server on ``PORT`` (default 3000), which runs every function in
worker processes of its own like Lambda execution environments (`local.functions`), and the local
scheduler.
``python -m local.stack`` prints one ``... ready at <url>`` line once the API answers, stays in the
foreground, and stops cleanly on Ctrl-C or SIGTERM. Tests use `start_stack` in-process.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from local.aws import LOCAL_CREDENTIALS, LocalAws, provision, put_secret, restore_environment, start_moto
from local.capture import CAPTURE_VARIABLE
from local.iam_audit import AUDIT_VARIABLE
from local.scheduler import LocalScheduler
from local.server import LocalServer
from local.template import Resolver, Template, load_template

DEFAULT_PORT = 3000
EMULATOR_SECRET_KEY = "sk_test_local_emulator"
EMULATOR_WEBHOOK_SECRET = "whsec_local"
STRIPE_SECRET_ID = "StripeSecret"
_STRIPE_VARIABLES = ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")
_AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECURITY_TOKEN",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


def _log(message: str) -> None:
    print(f"local stack: {message}", file=sys.stderr, flush=True)


@dataclass
class LocalStack:
    """A running local stack; `stop` ends every part it started and restores the environment."""

    url: str
    aws: LocalAws
    server: LocalServer
    template: Template
    resolver: Resolver
    stripe: Any | None = None
    scheduler: LocalScheduler | None = None
    owns_aws: bool = True
    capture: Path | None = None
    saved_environment: dict[str, str | None] = field(default_factory=dict, repr=False)
    applied_environment: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def aws_endpoint(self) -> str:
        """The moto server's URL (also in ``AWS_ENDPOINT_URL``)."""
        return self.aws.endpoint

    def suspend_environment(self) -> None:
        """Put back the environment from before the stack (e.g. between end-to-end tests).

        Other code in the process, such as moto's in-process mocks, must not see the stack's
        ``AWS_ENDPOINT_URL``; the handlers already built their clients and keep working.
        """
        restore_environment(self.saved_environment)

    def resume_environment(self) -> None:
        """Apply the stack's environment again after `suspend_environment`."""
        os.environ.update(self.applied_environment)

    def stop(self) -> None:
        """Stop the scheduler, the API, the Stripe emulator and (when it owns it) moto."""
        if self.scheduler is not None:
            self.scheduler.stop()
        self.server.stop()
        if self.stripe is not None:
            self.stripe.stop()
        if self.owns_aws:
            self.aws.stop()
        restore_environment(self.saved_environment)


def uses_real_stripe() -> bool:
    """True when ``STRIPE_SECRET_KEY`` is a real Stripe test key (then no emulator runs)."""
    key = os.environ.get("STRIPE_SECRET_KEY", "")
    return key.startswith("sk_test_") and key != EMULATOR_SECRET_KEY


def _start_emulator(webhook_url: str) -> tuple[Any | None, str | None]:
    try:
        from local.stripe_emulator import StripeEmulator
    except ModuleNotFoundError as error:
        if error.name != "local.stripe_emulator":
            raise
        _log("warning: local/stripe_emulator.py is missing; card payments will not work")
        return None, None
    emulator = StripeEmulator(webhook_url=webhook_url, webhook_secret=EMULATOR_WEBHOOK_SECRET)
    return emulator, emulator.start("127.0.0.1", port=0)


def wait_until_healthy(url: str, timeout: float = 15.0) -> None:
    """Block until ``GET <url>/_local/health`` answers 200; raises TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    # Straight to 127.0.0.1: an HTTP(S)_PROXY in the environment must not intercept the probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(f"{url}/_local/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the local API at {url} did not become healthy")
        time.sleep(0.05)


def _configure_stripe(stack: LocalStack) -> dict[str, str]:
    """Start the emulator unless a real test key is set; returns the Stripe environment to apply."""
    overrides: dict[str, str] = {}
    if uses_real_stripe():
        _log("using the real Stripe test mode from STRIPE_SECRET_KEY (no emulator)")
        overrides["STRIPE_SECRET_KEY"] = os.environ["STRIPE_SECRET_KEY"]
    else:
        stack.stripe, stripe_url = _start_emulator(f"{stack.url}/webhooks/stripe")
        if stripe_url:
            overrides.update(
                STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
                STRIPE_API_BASE=stripe_url,
                STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
            )
    if STRIPE_SECRET_ID in stack.template.resources and "STRIPE_SECRET_KEY" in overrides:
        # Handlers reading the StripeSecret (STRIPE_SECRET_ID) get the same keys as the environment.
        webhook_secret = overrides.get("STRIPE_WEBHOOK_SECRET", os.environ.get("STRIPE_WEBHOOK_SECRET", ""))
        secret = {"secret_key": overrides["STRIPE_SECRET_KEY"], "webhook_secret": webhook_secret}
        put_secret(stack.aws, stack.resolver.physical_name(STRIPE_SECRET_ID), secret)
    return overrides


def start_stack(
    port: int = 0,
    *,
    template_path: str | Path | None = None,
    region: str | None = None,
    aws: LocalAws | None = None,
    stripe: bool = True,
    scheduler: bool = True,
    preload: bool = True,
    quiet: bool = False,
    iam_audit: str | Path | None = None,
    capture: str | Path | None = None,
) -> LocalStack:
    """Start the local stack in this process and return once its API answers.

    ``port=0`` picks a free port. Pass ``aws`` to share an already running moto server (its
    owner stops it); ``stripe=False`` leaves the Stripe settings alone; ``scheduler=False`` skips
    the once-a-minute cron thread (``/_local/scheduler/fire`` works either way); ``iam_audit``
    names a folder where the functions' workers record DynamoDB calls their IAM statements do not
    allow (`local.iam_audit`), ``capture`` one where they record what leaves their processes (output,
    AWS calls, trace data; `local.capture`). Functions run in worker processes (`local.functions`) whose
    environment is fixed here: the moto server's endpoint and credentials and the Stripe settings
    reach them whatever this process's os.environ says later.
    """
    template = load_template(template_path)
    saved: dict[str, str | None] = {}
    owns_aws = aws is None
    if aws is None:
        saved.update({name: os.environ.get(name) for name in _AWS_VARIABLES})
        # werkzeug logs every AWS call at INFO otherwise, drowning the stack's own output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        aws = start_moto(region)
    try:
        resolver = provision(aws, template)
        server = LocalServer(template, resolver, clients=aws.client, port=port, quiet=quiet)
    except BaseException:
        if owns_aws:
            aws.stop()
            restore_environment(saved)
        raise
    names = {*server.functions.environment(), *_STRIPE_VARIABLES}
    saved.update({name: os.environ.get(name) for name in names if name not in saved})
    stack = LocalStack(
        url=server.url,
        aws=aws,
        server=server,
        template=template,
        resolver=resolver,
        owns_aws=owns_aws,
        capture=Path(capture).resolve() if capture is not None else None,
        saved_environment=saved,
    )
    try:
        overrides = _configure_stripe(stack) if stripe else {}
        worker_environment = {
            **LOCAL_CREDENTIALS,
            "AWS_DEFAULT_REGION": aws.region,
            "AWS_REGION": aws.region,
            "AWS_ENDPOINT_URL": aws.endpoint,
        }
        if iam_audit is not None:
            worker_environment[AUDIT_VARIABLE] = str(Path(iam_audit).resolve())
        if stack.capture is not None:
            worker_environment[CAPTURE_VARIABLE] = str(stack.capture)
        server.start(overrides, worker_environment=worker_environment)
        if preload:
            for function_id, error in server.functions.preload().items():
                _log(f"warning: {function_id} cannot be loaded yet ({error})")
        wait_until_healthy(server.url)
        stack.applied_environment = {name: os.environ[name] for name in saved if name in os.environ}
        if scheduler:
            stack.scheduler = LocalScheduler(server.targets, server.invoke, aws.client("scheduler"), aws.client("sqs"))
            stack.scheduler.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def main() -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM."""
    port = int(os.environ.get("PORT") or DEFAULT_PORT)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stack = start_stack(port)
    except OSError as error:
        _log(f"cannot start on port {port}: {error}; try PORT=<other port> make run")
        return 1
    print(f"billing local stack ready at {stack.url}", flush=True)
    stripe = f"   Stripe emulator: {stack.stripe.url}" if stack.stripe is not None else ""
    _log(f"Swagger UI: {stack.url}/swagger   AWS (moto): {stack.aws_endpoint}{stripe}")
    _log("a token: make token PRACTICE=prac_demo   stop: Ctrl-C")
    try:
        # A timed wait so the main thread wakes up to run the signal handler promptly.
        while not stopping.wait(0.5):
            pass
    finally:
        _log("stopping")
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
