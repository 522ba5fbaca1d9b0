"""Logger, Tracer and Metrics shared by all handlers. Log lines carry ids and codes, never PHI.

The tracer records what a request waits on: every AWS call (DynamoDB, S3, SQS, Secrets Manager, Scheduler) goes
through botocore, and every Stripe call through ``requests`` (the Stripe SDK's HTTP client, see
``billing_stripe.gateway``). Only those two libraries are patched, each when it is imported, so a function pays
for patching a library only if it loads it: Powertools' default would import and patch every library the X-Ray SDK
knows (``requests``, ``sqlite3``, ``httpx``...) in every cold start, and functions that never call Stripe never
load ``requests``. Outside Lambda the tracer is disabled and patches nothing.
"""

import wrapt  # comes with the X-Ray SDK (aws-lambda-powertools[tracer]), which patches with it
from aws_lambda_powertools import Logger, Metrics, Tracer

TRACED_LIBRARIES = ("botocore", "requests")

logger = Logger()
metrics = Metrics()
tracer = Tracer(auto_patch=False)


def _patch_when_imported(library: str) -> None:
    """Patch ``library`` for X-Ray as soon as it is imported (at once if it already is)."""
    wrapt.register_post_import_hook(lambda _module: tracer.patch([library]), library)


for _library in TRACED_LIBRARIES:
    _patch_when_imported(_library)
