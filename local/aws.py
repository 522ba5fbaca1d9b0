"""The embedded AWS: a moto server on 127.0.0.1 and the resources ``template.yaml`` declares.

`start_moto` starts the server and points every boto3 client of this process at it through
``AWS_ENDPOINT_URL``; `provision` creates the tables, buckets, queues, secrets and schedule groups
(idempotently) and returns a `Resolver` that knows the queue URLs.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server

from local import moto_patches
from local.template import DEFAULT_REGION, Resolver, Template

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

# SQS queue properties that moto understands as attributes; KMS settings are deliberately left out.
_QUEUE_ATTRIBUTES = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
)


class SerialisedMotoServer(ThreadedMotoServer):
    """moto's server, answering one request at a time.

    moto checks a TransactWriteItems' conditions and then writes without a lock, so two concurrent
    transactions can both pass the same condition (two invoices with one number). DynamoDB never allows
    that; serving requests one at a time gives back the serialisability the exactly-once code relies on.
    `local.moto_patches`: a transaction's ClientRequestToken is honoured (an SDK retry of one that landed
    succeeds and writes nothing) and a transaction costs its own items, not a copy of the table.
    """

    def _server_entry(self) -> None:
        moto_patches.install()
        app = moto_patches.idempotent_transactions(DomainDispatcherApplication(create_backend_app))
        lock = threading.Lock()

        def serialised(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(self._ip_address, self._port, serialised, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


@dataclass
class LocalAws:
    """A running moto server and the process environment that points at it."""

    endpoint: str
    region: str
    _server: ThreadedMotoServer | None = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def client(self, service: str) -> Any:
        """A cached boto3 client for ``service`` bound to the moto server (thread-safe)."""
        with self._lock:
            if service not in self._clients:
                # A private session: boto3's default session is not safe to use from many threads.
                session = boto3.session.Session(region_name=self.region)
                make_client: Callable[..., Any] = session.client  # any service name, not a literal
                self._clients[service] = make_client(service, endpoint_url=self.endpoint)
            return self._clients[service]

    def stop(self) -> None:
        """Stop the moto server (the environment variables stay as they are)."""
        if self._server is not None:
            self._server.stop()
            self._server = None


def configure_environment(endpoint: str, region: str) -> dict[str, str | None]:
    """Point this process's AWS SDK at ``endpoint`` with dummy credentials.

    Returns the previous values so a caller can put them back with `restore_environment`.
    """
    values = {
        **LOCAL_CREDENTIALS,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT_URL": endpoint,
    }
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return previous


def restore_environment(previous: dict[str, str | None]) -> None:
    """Put back environment variables saved by `configure_environment` (None = unset)."""
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def start_moto(region: str | None = None) -> LocalAws:
    """Start moto on a free port of 127.0.0.1 and configure the environment for it."""
    region = region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    server = SerialisedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    configure_environment(endpoint, region)
    return LocalAws(endpoint=endpoint, region=region, _server=server)


@contextmanager
def _ignore_error(*codes: str) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in codes:
            raise


def provision(aws: LocalAws, template: Template) -> Resolver:
    """Create everything the template declares that handlers use; safe to call again.

    Returns a resolver that resolves ``Ref`` of a queue to the URL moto gave it.
    """
    resolver = Resolver(template, aws.region, sqs_endpoint=aws.endpoint)
    _create_tables(aws, template, resolver)
    _create_buckets(aws, template, resolver)
    queue_urls = _create_queues(aws, template, resolver)
    resolver = Resolver(template, aws.region, queue_urls=queue_urls, sqs_endpoint=aws.endpoint)
    _create_secrets(aws, template, resolver)
    _create_schedule_groups(aws, template, resolver)
    _create_schedules(aws, template, resolver)
    return resolver


def _create_tables(aws: LocalAws, template: Template, resolver: Resolver) -> None:
    dynamodb = aws.client("dynamodb")
    for table in template.tables:
        name = resolver.physical_name(table.logical_id)
        request: dict[str, Any] = {
            "TableName": name,
            "KeySchema": resolver.resolve(table.key_schema),
            "AttributeDefinitions": resolver.resolve(table.attribute_definitions),
            "BillingMode": "PAY_PER_REQUEST",
        }
        indexes = [
            {key: value for key, value in index.items() if key != "ProvisionedThroughput"}
            for index in resolver.resolve(table.global_secondary_indexes)
        ]
        if indexes:
            request["GlobalSecondaryIndexes"] = indexes
        if table.local_secondary_indexes:
            request["LocalSecondaryIndexes"] = resolver.resolve(table.local_secondary_indexes)
        if table.stream_specification:
            stream = resolver.resolve(table.stream_specification)
            request["StreamSpecification"] = {"StreamEnabled": True, **stream}
        with _ignore_error("ResourceInUseException"):
            dynamodb.create_table(**request)
        if table.ttl_attribute:
            specification = {"Enabled": True, "AttributeName": table.ttl_attribute}
            with _ignore_error("ValidationException"):
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=specification)


def _create_buckets(aws: LocalAws, template: Template, resolver: Resolver) -> None:
    s3 = aws.client("s3")
    for bucket in template.buckets:
        request: dict[str, Any] = {"Bucket": resolver.physical_name(bucket.logical_id)}
        if aws.region != "us-east-1":
            request["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        with _ignore_error("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            s3.create_bucket(**request)


def _create_queues(aws: LocalAws, template: Template, resolver: Resolver) -> dict[str, str]:
    sqs = aws.client("sqs")
    urls: dict[str, str] = {}
    for queue in template.queues:  # dead-letter queues come first
        properties = resolver.resolve(dict(queue.properties))
        attributes = {name: _attribute_text(properties[name]) for name in _QUEUE_ATTRIBUTES if name in properties}
        if queue.fifo:
            attributes["FifoQueue"] = "true"
        if queue.dlq_id:
            redrive = {
                "deadLetterTargetArn": resolver.arn(queue.dlq_id),
                "maxReceiveCount": int(resolver.resolve(queue.max_receive_count) or 10),
            }
            attributes["RedrivePolicy"] = json.dumps(redrive)
        name = resolver.physical_name(queue.logical_id)
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            if attributes:
                settable = {key: value for key, value in attributes.items() if key != "FifoQueue"}
                sqs.set_queue_attributes(QueueUrl=url, Attributes=settable)
        except ClientError:
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        urls[queue.logical_id] = url
    return urls


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _create_secrets(aws: LocalAws, template: Template, resolver: Resolver) -> None:
    manager = aws.client("secretsmanager")
    for secret in template.secrets:
        name = resolver.physical_name(secret.logical_id)
        properties = resolver.resolve(dict(secret.properties))
        value = properties.get("SecretString")
        if value is None:
            generate = properties.get("GenerateSecretString") or {}
            generated = secrets.token_urlsafe(24)
            key = generate.get("GenerateStringKey")
            base = generate.get("SecretStringTemplate")
            value = json.dumps({**json.loads(base), key: generated}) if key and base else generated
        with _ignore_error("ResourceExistsException"):
            manager.create_secret(Name=name, SecretString=str(value))


def put_secret(aws: LocalAws, name: str, value: dict[str, Any]) -> None:
    """Store ``value`` (as JSON) as the current version of the secret ``name``, creating it."""
    manager = aws.client("secretsmanager")
    try:
        manager.put_secret_value(SecretId=name, SecretString=json.dumps(value))
    except ClientError:
        manager.create_secret(Name=name, SecretString=json.dumps(value))


def _create_schedule_groups(aws: LocalAws, template: Template, resolver: Resolver) -> None:
    scheduler = aws.client("scheduler")
    for group in template.schedule_groups:
        name = resolver.physical_name(group.logical_id)
        try:
            scheduler.get_schedule_group(Name=name)
        except ClientError:
            # Only when missing: moto replaces an existing group, and its schedules, on create.
            scheduler.create_schedule_group(Name=name)


def _create_schedules(aws: LocalAws, template: Template, resolver: Resolver) -> None:
    scheduler = aws.client("scheduler")
    for schedule in template.schedules:
        properties = resolver.resolve(dict(schedule.properties))
        name = str(properties.pop("Name", schedule.logical_id))
        group = properties.get("GroupName")
        try:
            scheduler.get_schedule(Name=name, **({"GroupName": group} if group else {}))
            continue
        except ClientError:
            pass
        allowed = (
            "GroupName",
            "ScheduleExpression",
            "ScheduleExpressionTimezone",
            "FlexibleTimeWindow",
            "Target",
            "State",
            "Description",
        )
        request = {key: value for key, value in properties.items() if key in allowed}
        try:
            scheduler.create_schedule(Name=name, **request)
        except ClientError as error:
            print(f"local aws: schedule {name} not created: {error}", file=sys.stderr)
