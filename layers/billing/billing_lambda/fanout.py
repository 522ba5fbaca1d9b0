"""Fanning a nightly run out over SQS: one message per unit of work, ten to a batch."""

import json
from collections.abc import Sequence
from typing import Any

from billing_lambda.aws_clients import client

SQS_BATCH = 10


def send_all(queue_url: str, bodies: Sequence[dict[str, Any]]) -> int:
    """Queue every body as one message; raises when any was refused, so the Scheduler retries the whole run
    (each worker is idempotent, so messages queued twice do their work once). Returns how many were sent."""
    sqs = client("sqs")
    for start in range(0, len(bodies), SQS_BATCH):
        batch = bodies[start : start + SQS_BATCH]
        entries = [{"Id": str(i), "MessageBody": json.dumps(body, default=str)} for i, body in enumerate(batch)]
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"{len(response['Failed'])} of {len(batch)} messages were not queued")
    return len(bodies)
