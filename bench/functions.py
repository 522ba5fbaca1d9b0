"""The template's functions in this process, as Lambda would run them, against a moto server and the local Stripe
emulator: each handler module loaded from its ``CodeUri`` folder, the functions' resolved environment in
``os.environ``, and events shaped as API Gateway (HTTP API payload v2.0, JWT claims where the authorizer puts
them) and SQS deliver them.

Handlers run in this process so that a botocore hook sees every DynamoDB call they make (bench/operations.py)
and so that their latency is measured without a process hop (bench/api_latency.py). Their boto3 clients are
created once per process, as in a Lambda container, so use one moto server per process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from billing_lambda import observability
from billing_lambda.aws_clients import client
from local.aws import LocalAws, configure_environment, restore_environment
from local.functions import FunctionHost
from local.scheduler import LocalTargets, QueueSource, sqs_event
from local.server import IncomingRequest, RouteTable, http_event
from local.stack import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET
from local.stripe_emulator import StripeEmulator
from local.template import Resolver
from local.worker import LambdaContext

Handler = Callable[[dict[str, Any], Any], Any]
STAFF_USER = "user-bench-staff"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as the caller sees it: status and JSON body."""

    status: int
    body: Any


@dataclass
class InProcessFunctions:
    """Invoke the template's functions by route or by queue, in this process."""

    resolver: Resolver
    _modules: dict[Path, ModuleType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._routes = RouteTable(self.resolver.template.routes)
        self._queues = LocalTargets.from_template(self.resolver.template, self.resolver).queue_sources

    def handler(self, function_id: str) -> Handler:
        """The function's handler, its module imported on first use (the cold start) from its ``CodeUri``."""
        spec = self.resolver.template.functions[function_id]
        path = spec.handler_file.resolve()
        if path not in self._modules:
            # Lambda puts /var/task first: the function's own modules (rendering, archive, ...) import by name.
            sys.path.insert(0, str(spec.code_dir.resolve()))
            module_spec = importlib.util.spec_from_file_location(f"bench_handler_{function_id}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            self._modules[path] = module
        handler: Handler = getattr(self._modules[path], spec.handler_function)
        return handler

    def invoke(self, function_id: str, event: dict[str, Any]) -> Any:
        spec = self.resolver.template.functions[function_id]
        context = LambdaContext(
            function_name=function_id,
            memory_limit_in_mb=spec.memory_size,
            invoked_function_arn=self.resolver.function_arn(function_id),
            aws_request_id=str(uuid.uuid4()),
            deadline=float("inf"),
        )
        return self.handler(function_id)(event, context)

    def request(
        self,
        method: str,
        path: str,
        practice_id: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        role: str = "clinician",
        client_id: str | None = None,
    ) -> Answer:
        """Call the route that serves ``method path`` as the verified token of ``practice_id`` would."""
        function_id, event = self.http_event(method, path, practice_id, body, headers, role, client_id)
        return answer(self.invoke(function_id, event))

    def http_event(
        self,
        method: str,
        path: str,
        practice_id: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        role: str = "clinician",
        client_id: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The function serving ``method path``, and the HTTP API event API Gateway would send it."""
        raw_path, _, raw_query = path.partition("?")
        matched = self._routes.match(method, raw_path)
        if isinstance(matched, list):
            raise LookupError(f"no route serves {method} {path}")
        route, parameters = matched
        claims = {"sub": STAFF_USER, "custom:practice_id": practice_id, "custom:role": role}
        if client_id is not None:
            claims["custom:client_id"] = client_id
        incoming = IncomingRequest(
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            headers=[("content-type", "application/json"), *(headers or {}).items()],
            body=b"" if body is None else json.dumps(body).encode(),
            source_ip="127.0.0.1",
        )
        return route.function_id, http_event(incoming, route, parameters, claims)

    def deliver(self, function_id: str, bodies: list[dict[str, Any]]) -> Any:
        """Deliver ``bodies`` to an SQS worker as one batch, as its event source mapping would."""
        source = self.queue_source(function_id)
        messages = [
            {"MessageId": str(uuid.uuid4()), "ReceiptHandle": uuid.uuid4().hex, "Body": json.dumps(body)}
            for body in bodies
        ]
        return self.invoke(function_id, sqs_event(messages, source, self.resolver.region))

    def queue_source(self, function_id: str) -> QueueSource:
        return next(source for source in self._queues if source.function_id == function_id)

    @property
    def dynamodb(self) -> Any:
        """The DynamoDB client every handler of this process talks through."""
        return client("dynamodb")


def answer(result: dict[str, Any]) -> Answer:
    """What a caller sees of a handler's HTTP API result."""
    return Answer(int(result["statusCode"]), json.loads(result["body"]) if result.get("body") else None)


@contextmanager
def functions_against(aws: LocalAws, resolver: Resolver) -> Iterator[InProcessFunctions]:
    """The template's functions in this process, talking to ``aws`` and to a Stripe emulator started here; the
    process environment is put back afterwards."""
    emulator = StripeEmulator(webhook_url=None, webhook_secret=EMULATOR_WEBHOOK_SECRET)
    stripe = {
        "STRIPE_SECRET_KEY": EMULATOR_SECRET_KEY,
        "STRIPE_API_BASE": emulator.start(),
        "STRIPE_WEBHOOK_SECRET": EMULATOR_WEBHOOK_SECRET,
    }
    # Functions that never meet the emulator still see the Stripe variables: they only read what they use.
    variables = FunctionHost(resolver.template, resolver).environment() | stripe
    previous = configure_environment(aws.endpoint, aws.region) | _set_environment(variables)
    # The shared Metrics object read its namespace when this process first imported it (a test run imports
    # it long before), and refuses to flush without one.
    namespace = observability.metrics.namespace
    observability.metrics.namespace = variables["POWERTOOLS_METRICS_NAMESPACE"]
    try:
        functions = InProcessFunctions(resolver)
        if functions.dynamodb.meta.endpoint_url != aws.endpoint:
            raise RuntimeError("this process's handlers already talk to another AWS endpoint; use a new process")
        yield functions
    finally:
        observability.metrics.namespace = namespace
        restore_environment(previous)
        emulator.stop()


def _set_environment(variables: Mapping[str, str]) -> dict[str, str | None]:
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    return previous
