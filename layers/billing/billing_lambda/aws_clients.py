"""boto3 clients, created once per container (they honour AWS_ENDPOINT_URL for the local stack)."""

from functools import cache
from typing import Any

import boto3.session
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=3, read_timeout=10)


@cache
def client(service: str) -> Any:
    session = boto3.session.Session()
    return session.client(service, config=_CONFIG)  # type: ignore[call-overload]
