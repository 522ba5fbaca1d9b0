"""boto3 clients, created once per container (they honour AWS_ENDPOINT_URL for the local stack)."""

from functools import cache
from typing import Any

import boto3.session
from botocore.config import Config

# A DynamoDB call takes milliseconds; these bounds only stop a stuck connection from eating the function's
# 15 s Timeout that the processor's budget shares (billing_stripe/gateway.py). A request cut short leaves a
# pending payment that its retry, the webhook or the sweeper completes.
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)


@cache
def client(service: str) -> Any:
    session = boto3.session.Session()
    return session.client(service, config=_CONFIG)  # type: ignore[call-overload]
