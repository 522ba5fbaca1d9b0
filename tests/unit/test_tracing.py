"""The tracer keeps tracing the calls a request waits on (DynamoDB and every AWS call through botocore, Stripe
through ``requests``) while patching only those libraries, each once it is imported.

Each case runs in a fresh interpreter: patches are process-wide and Powertools keeps the Tracer's configuration
on its class. ``LAMBDA_TASK_ROOT`` makes Powertools and the X-Ray SDK behave as on Lambda (tracing on), and
``_X_AMZN_TRACE_ID`` is the sampled trace Lambda gives an invocation; what the recorder would send to the X-Ray
daemon is captured instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "billing"
SAMPLED_TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

# Runs in the child: records the names of the (sub)segments the recorder sends, makes one DynamoDB call (stubbed)
# and, when asked, one Stripe call (to a local server standing in for the Stripe API) inside a traced handler.
_PROBE = """
import http.server, json, sys, threading
import wrapt
from billing_lambda.observability import tracer

def wrapped(owner, name):
    return isinstance(vars(owner)[name], wrapt.FunctionWrapper)

import botocore.client
seen = {
    "tracing": not tracer.disabled,
    "botocore_patched": wrapped(botocore.client.BaseClient, "_make_api_call"),
    "loaded_at_init": sorted(name for name in ("requests", "stripe", "sqlite3", "httpx") if name in sys.modules),
}
if not tracer.disabled:
    from aws_xray_sdk.core import xray_recorder

    class Capture:
        def send_entity(self, entity):
            seen.setdefault("sent", []).append(entity.name)

    xray_recorder.emitter = Capture()

import boto3
from botocore.stub import Stubber
dynamodb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
stub = Stubber(dynamodb)
stub.add_response("get_item", {})
stub.activate()


class StripeApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"id": "pi_1", "object": "payment_intent", "status": "processing", "amount": 100,
                           "currency": "usd", "metadata": {}, "latest_charge": None,
                           "last_payment_error": None}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@tracer.capture_lambda_handler
def handler(event, context):
    dynamodb.get_item(TableName="BillingTable", Key={"PK": {"S": "PRACTICE#p"}})
    if event.get("stripe"):
        from billing_lambda import wiring
        wiring.gateway().retrieve_payment_intent("pi_1")
        import requests
        seen["requests_patched"] = wrapped(requests.Session, "request")
    return {}


server = http.server.HTTPServer(("127.0.0.1", 0), StripeApi)
threading.Thread(target=server.serve_forever, daemon=True).start()
import os
os.environ["STRIPE_API_BASE"] = f"http://127.0.0.1:{server.server_port}"
handler({"stripe": len(sys.argv) > 1}, None)
print(json.dumps(seen))
"""


def _probe(*, on_lambda: bool, call_stripe: bool = False) -> dict[str, Any]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "POWERTOOLS_"))}
    environment.update(PYTHONPATH=str(LAYER), AWS_DEFAULT_REGION="us-east-1", STRIPE_SECRET_KEY="sk_test_probe")
    if on_lambda:
        environment.update(LAMBDA_TASK_ROOT=str(LAYER), _X_AMZN_TRACE_ID=SAMPLED_TRACE)
    else:
        environment.pop("LAMBDA_TASK_ROOT", None)
    arguments = ["stripe"] if call_stripe else []
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *arguments], env=environment, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_on_lambda_every_aws_call_is_traced_and_nothing_else_is_loaded_for_tracing() -> None:
    seen = _probe(on_lambda=True)

    assert seen["tracing"] and seen["botocore_patched"]
    assert seen["sent"] == ["dynamodb", "## handler"]  # the call is a subsegment of the handler's
    assert seen["loaded_at_init"] == []  # Powertools' default (patch every library) would load requests, sqlite3...


def test_on_lambda_stripe_calls_are_traced_once_the_stripe_sdk_is_loaded() -> None:
    seen = _probe(on_lambda=True, call_stripe=True)

    assert seen["requests_patched"]
    assert seen["sent"] == ["dynamodb", "127.0.0.1", "## handler"]  # the Stripe request, named by its host


def test_outside_lambda_the_tracer_is_off_and_patches_nothing() -> None:
    seen = _probe(on_lambda=False)

    assert not seen["tracing"]
    assert not seen["botocore_patched"]
