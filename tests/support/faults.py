"""AWS faults injected where the SDK meets the service, so that the product's own retries meet them.

`inject(client, fault)` hooks one boto3 client: the chosen call of one operation is answered, for its first
``attempts`` HTTP attempts, with the service's own error — its status, its error code, its body (a
``TransactionCanceledException`` with one cancellation reason per item, as DynamoDB sends it) — before
anything reaches moto. The SDK then parses, retries or raises exactly as it would against AWS: a throttle
with ``attempts=1`` is retried away by the SDK; one that lasts `outlasting_retries` attempts is raised to the
product (`billing_aws.store`, `billing.retry.optimistic`, the HTTP edge, SQS redelivery).

A fault picks its call by what it writes (``puts``: attribute values of an item the call puts, e.g.
``{"kind": "payment", "status": "succeeded"}`` is the transaction that settles a payment) and by number
among the calls that match (``call``). In the local stack's worker processes, `arm` is the factory for
``FunctionHost.patched("billing_lambda.aws_clients:client", "tests.support.faults:arm", ...)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session

from billing_lambda import aws_clients

REQUEST_ID = "FAULTINJECTED0001"


@dataclass(frozen=True)
class AwsError:
    """An error as the service answers it. ``reason``: a cancelled transaction's reason for its first item."""

    status: int
    code: str
    message: str
    reason: str | None = None

    def body(self, protocol: str, params: Mapping[str, Any]) -> bytes:
        """The error body of ``protocol`` (S3's XML, DynamoDB's JSON) for a call with ``params``."""
        if protocol == "rest-xml":
            return (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{self.code}</Code><Message>{self.message}</Message>"
                f"<RequestId>{REQUEST_ID}</RequestId></Error>"
            ).encode()
        kind = f"com.amazonaws.dynamodb.v20120810#{self.code}"
        if self.reason is None:
            return json.dumps({"__type": kind, "message": self.message}).encode()
        others = max(len(params.get("TransactItems", [])) - 1, 0)
        reasons = [{"Code": self.reason, "Message": _REASON_MESSAGES[self.reason]}] + [{"Code": "None"}] * others
        message = f"{self.message} [{', '.join(r['Code'] for r in reasons)}]"
        return json.dumps({"__type": kind, "Message": message, "CancellationReasons": reasons}).encode()


_CONTENT_TYPES = {"json": "application/x-amz-json-1.0"}
_REASON_MESSAGES = {
    "ConditionalCheckFailed": "The conditional request failed",
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity for one or more global secondary indexes.",
    "ValidationError": "Item size has exceeded the maximum allowed size",
}

THROTTLED = AwsError(
    400,
    "ProvisionedThroughputExceededException",
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API.",
)
THROTTLING = AwsError(400, "ThrottlingException", "Rate of requests exceeds the allowed throughput.")
S3_UNAVAILABLE = AwsError(503, "ServiceUnavailable", "Service is unable to handle request.")
# Not an answer of the service's: the attempt reaches the service, which acts on it, and its answer is lost on
# the way back. The SDK sees a read timeout and sends the call again as it was (the same ClientRequestToken).
LOST_ANSWER = AwsError(0, "ReadTimeout", "Read timeout on endpoint URL")


def cancelled(reason: str) -> AwsError:
    """DynamoDB's ``TransactionCanceledException`` with ``reason`` (``ConditionalCheckFailed``,
    ``TransactionConflict``, ``ThrottlingError``, ``ValidationError``) on the transaction's first item and
    ``None`` on the others."""
    message = "Transaction cancelled, please refer cancellation reasons for specific reasons"
    return AwsError(400, "TransactionCanceledException", message, reason)


ERRORS = {
    "throttled": THROTTLED,
    "throttling": THROTTLING,
    "s3_unavailable": S3_UNAVAILABLE,
    "condition_failed": cancelled("ConditionalCheckFailed"),
    "transaction_conflict": cancelled("TransactionConflict"),
    "lost_answer": LOST_ANSWER,
}


def outlasting_retries(client: Any) -> int:
    """How many attempts the client's retry configuration makes in all: a fault failing that many is raised."""
    return int(client.meta.config.retries["total_max_attempts"])


@dataclass
class Fault:
    """Fail the first ``attempts`` HTTP attempts of the ``call``-th call of ``operation`` that ``puts`` matches.

    Afterwards ``failed`` is how many attempts were answered with the error and ``sent`` how many attempts the
    chosen call made in all (the SDK's retries included)."""

    operation: str
    error: AwsError
    puts: Mapping[str, str] | None = None
    call: int = 1
    attempts: int = 1
    matched: int = 0
    sent: int = 0
    failed: int = 0
    _chosen: threading.local = field(default_factory=threading.local, repr=False)

    def _choose(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        """Once per call (before it is serialised): is it the call to fail?"""
        self._chosen.left = None
        if self.puts is None or any(_has(item, self.puts) for item in _put_items(params)):
            self.matched += 1
            if self.matched == self.call:
                self._chosen.left = self.attempts
                self._chosen.protocol = model.service_model.protocol
                self._chosen.params = params

    def _answer(self, request: Any, **_: Any) -> AWSResponse | None:
        """Once per HTTP attempt: the error instead of the service's answer while the chosen call has some left."""
        left = getattr(self._chosen, "left", None)
        if left is None:
            return None
        self.sent += 1
        if left == 0:
            return None
        self._chosen.left = left - 1
        self.failed += 1
        if self.error is LOST_ANSWER:
            URLLib3Session().send(request)
            raise ReadTimeoutError(endpoint_url=request.url)
        protocol = self._chosen.protocol
        headers = HTTPHeaders.from_dict(
            {"x-amzn-RequestId": REQUEST_ID, "Content-Type": _CONTENT_TYPES.get(protocol, "application/xml")}
        )
        return AWSResponse(
            request.url, self.error.status, headers, _Raw(self.error.body(protocol, self._chosen.params))
        )


class _Raw:
    """The raw HTTP body botocore reads an injected answer from."""

    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _put_items(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = [action["Put"]["Item"] for action in params.get("TransactItems", []) if "Put" in action]
    return items + ([params["Item"]] if "Item" in params else [])


def _has(item: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    return all(item.get(name, {}).get("S") == value for name, value in values.items())


def _events(client: Any, operation: str) -> tuple[str, str]:
    service = client.meta.service_model.service_id.hyphenize()
    return f"before-parameter-build.{service}.{operation}", f"before-send.{service}.{operation}"


def arm_fault(client: Any, fault: Fault) -> Fault:
    """Hook ``fault`` onto ``client`` until `disarm_fault`."""
    choose, send = _events(client, fault.operation)
    client.meta.events.register(choose, fault._choose)
    client.meta.events.register_first(send, fault._answer)
    return fault


def disarm_fault(client: Any, fault: Fault) -> None:
    choose, send = _events(client, fault.operation)
    client.meta.events.unregister(choose, fault._choose)
    client.meta.events.unregister(send, fault._answer)


@contextmanager
def inject(client: Any, fault: Fault) -> Iterator[Fault]:
    """``fault`` on ``client`` within the block."""
    arm_fault(client, fault)
    try:
        yield fault
    finally:
        disarm_fault(client, fault)


def function_client(service: str) -> Any:
    """A new client built exactly as the functions build theirs (`billing_lambda.aws_clients`: the same
    retry mode, attempts and timeouts), not the cached one, so a test's faults and retry quota are its own."""
    return aws_clients.client.__wrapped__(service)


def arm(original: Any, service: str, operation: str, error: str, puts: dict[str, str] | None, attempts: int) -> Any:
    """`FunctionHost.patched` factory for ``billing_lambda.aws_clients:client``: arm the fault on the worker's
    (cached) client for ``service`` — the one every module of the function uses — and keep ``client`` as it is.
    ``error`` names one of `ERRORS`; ``attempts`` 0 means as many as the client's retries make."""
    client = original(service)
    attempts = attempts or outlasting_retries(client)
    arm_fault(client, Fault(operation, ERRORS[error], puts=puts, attempts=attempts))
    return original
