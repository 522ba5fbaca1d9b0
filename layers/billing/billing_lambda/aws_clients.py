"""boto3 clients, created once per container (they honour AWS_ENDPOINT_URL for the local stack)."""

import threading
from functools import cache
from typing import Any

import boto3.session
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

# A DynamoDB call takes milliseconds; these bounds only stop a stuck connection from eating the function's
# 15 s Timeout that the processor's budget shares (billing_stripe/gateway.py). A request cut short leaves a
# pending payment that its retry, the webhook or the sweeper completes. Three attempts in all: botocore reads
# ``max_attempts`` as retries after the first, ``total_max_attempts`` as every attempt.
_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=5)
# What AWS answers when it refuses a call for load (DynamoDB, S3, SQS, KMS): the SDK retries these itself.
_THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "SlowDown",
        "Throttling",
        "RequestThrottled",
    }
)
# Why DynamoDB cancels a transaction item for load (``CancellationReasons``).
_THROTTLED_ITEM_REASONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})


# One session for every client: it loads botocore's endpoint and partition data once, so a function's second
# client costs a few milliseconds instead of a full load (~90 ms of a cold start). A session is not thread-safe,
# so clients are made one at a time (each client is thread-safe once made).
_making_clients = threading.Lock()


@cache
def client(service: str) -> Any:
    with _making_clients:
        return _session().client(service, config=_CONFIG)  # type: ignore[call-overload]


@cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


def unavailable(error: Exception) -> bool:
    """Whether an AWS error says the service was busy or out of reach rather than that the call was wrong: a
    throttle or a 5xx that outlasted the SDK's retries (or its retry quota), or no connection at all. The
    request may then be retried as it was (same Idempotency-Key): every write is conditional or keyed, so a
    retry completes what did land and never repeats it."""
    if isinstance(error, ConnectionError | HTTPClientError):
        return True
    if not isinstance(error, ClientError):
        return False
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if status >= 500 or error.response.get("Error", {}).get("Code") in _THROTTLING_CODES:
        return True
    # A transaction DynamoDB cancelled because one of its items was throttled (the SDK does not retry these).
    reasons = error.response.get("CancellationReasons") or []
    return any(reason.get("Code") in _THROTTLED_ITEM_REASONS for reason in reasons)
