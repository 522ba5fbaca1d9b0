"""IAM audit of the AWS calls functions make locally (an AccessDenied in AWS is a bug found late).

When ``BILLING_LOCAL_IAM_AUDIT`` names a folder in a function's environment, the local host gives its worker
the statements of the function's execution role resolved to local ARNs (`Template.execution_role_statements`)
and the stack's resources by the names calls use for them (`worker_config`); the worker checks every AWS call
before it is sent (a botocore ``before-parameter-build`` hook on every client the process creates). A call the
statements do not allow is printed on stderr and appended as one JSON line to
``<folder>/<FunctionId>.<pid>.jsonl``; `read_violations` reads them all back. The call itself still goes
through: the audit reports, it does not enforce.

What a call needs (`needed`): the IAM action of its operation on the resource it names (a table or one of its
indexes, a queue, an object or a bucket, a schedule, a secret, a parameter, a key, a function), iam:PassRole on
a role it hands to a service (a schedule's target), and what encryption at rest asks of the caller, read from
the template's settings: kms:Decrypt to read a table, message, object or secret under a key of the template,
kms:GenerateDataKey to write one (and kms:Decrypt too for SQS). An operation of any other service needs its
action on ``*``.

How statements decide, as IAM decides for identity-based policies (`allowed`): a need is allowed when an
``Allow`` statement matches its action (case-insensitive, ``*`` and ``?`` wildcards), its resource (wildcards)
and its conditions, and no ``Deny`` statement matches. Conditions: ``StringEquals``, ``StringLike``,
``ArnEquals`` and ``ArnLike`` on the keys a need carries (``iam:PassedToService``); a condition on anything
else makes its statement not apply. Resource-based policies (bucket, queue and key policies) are not
evaluated: the template's key policy leaves the decision to IAM.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from local.template import KMS_ALIAS_TYPE, KMS_KEY_TYPE, ROLE_TYPE, Resolver, Template, referenced_resource

AUDIT_VARIABLE = "BILLING_LOCAL_IAM_AUDIT"
EVERYTHING = "*"


# ---------------------------------------------------------------- statements and how they decide


@dataclass(frozen=True)
class Need:
    """One permission a call needs: an action on a resource, and the condition keys the request carries."""

    action: str
    resource: str
    target: str
    """What a report names: the resource's logical id (and path inside it), else its ARN."""
    context: tuple[tuple[str, str], ...] = ()


@cache
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM's ``*`` (any run of characters, ``/`` and ``:`` included) and ``?`` (one character)."""
    regex = ".*".join(".".join(re.escape(part) for part in piece.split("?")) for piece in pattern.split("*"))
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def _like(value: str, pattern: str, ignore_case: bool = False) -> bool:
    return _wildcard(pattern, ignore_case).fullmatch(value) is not None


_CONDITION_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": str.__eq__,
    "StringLike": _like,
    "ArnEquals": str.__eq__,
    "ArnLike": _like,
}


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in (value if isinstance(value, list) else [] if value is None else [value]))


@dataclass(frozen=True)
class Statement:
    """One resolved IAM statement."""

    effect: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, statement: Mapping[str, Any]) -> Statement:
        """From a statement as a policy document writes it (intrinsics already resolved)."""
        return cls(
            effect=str(statement.get("Effect")),
            actions=_strings(statement.get("Action")),
            not_actions=_strings(statement.get("NotAction")),
            resources=_strings(statement.get("Resource")),
            not_resources=_strings(statement.get("NotResource")),
            conditions=dict(statement.get("Condition") or {}),
        )

    def matches(self, need: Need) -> bool:
        """Whether this statement speaks about ``need``: its action, its resource and its conditions."""
        return (
            _covers(self.actions, self.not_actions, need.action, ignore_case=True)
            and _covers(self.resources, self.not_resources, need.resource, ignore_case=False)
            and self._conditions_hold(dict(need.context))
        )

    def _conditions_hold(self, context: Mapping[str, str]) -> bool:
        for operator, tests in self.conditions.items():
            compare = _CONDITION_OPERATORS.get(operator)
            for key, expected in tests.items():
                value = context.get(key)
                if compare is None or value is None or not any(compare(value, item) for item in _strings(expected)):
                    return False
        return True


def _covers(patterns: tuple[str, ...], excluded: tuple[str, ...], value: str, ignore_case: bool) -> bool:
    """``Action``/``Resource`` list ``value``, or ``NotAction``/``NotResource`` do not."""
    if excluded:
        return not any(_like(value, pattern, ignore_case) for pattern in excluded)
    return any(_like(value, pattern, ignore_case) for pattern in patterns)


def allowed(statements: Iterable[Statement], need: Need) -> bool:
    """IAM's decision for identity-based statements: an explicit Deny wins, else an Allow is needed."""
    matching = [statement.effect for statement in statements if statement.matches(need)]
    return "Allow" in matching and "Deny" not in matching


# ---------------------------------------------------------------- what a call needs


@dataclass(frozen=True)
class StackResource:
    """A resource of the template as IAM sees it: its ARN and the ARN of the template key that encrypts it."""

    logical_id: str
    arn: str
    key: str | None = None


@dataclass(frozen=True)
class Target:
    """What a call acts on: its ARN, the name reports give it, the key that encrypts it at rest (if any)."""

    arn: str
    name: str
    key: StackResource | None = None

    def at(self, path: str) -> Target:
        """Something inside it (an index of a table, an object of a bucket)."""
        return Target(f"{self.arn}/{path}", f"{self.name}/{path}", self.key)

    def need(self, action: str, *context: tuple[str, str]) -> Need:
        """``action`` on this target."""
        return Need(action, self.arn, self.name, context)

    def key_needs(self, actions: Iterable[str]) -> Iterator[Need]:
        """What encryption at rest needs for ``actions`` on this target's key (nothing under AWS's own keys)."""
        if self.key is not None:
            for action in actions:
                yield Need(action, self.key.arn, self.key.logical_id)

    def under(self, key: StackResource | None) -> Target:
        """The same target, encrypted under ``key`` instead."""
        return replace(self, key=key)


@dataclass(frozen=True)
class Stack:
    """The stack's resources by service and by the names calls use for them (`stack_resources`)."""

    resources: Mapping[str, Mapping[str, StackResource]]
    region: str
    account: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Stack:
        """From the ``iam_audit`` part of a worker's configuration."""
        resources = {
            service: {name: StackResource(**resource) for name, resource in named.items()}
            for service, named in config["resources"].items()
        }
        return cls(resources, str(config["region"]), str(config["account"]))

    def target(self, service: str, name: str, arn: str) -> Target:
        """The resource ``name`` of ``service``: the template's (logical id, key), else ``arn`` as it is."""
        resource = self.resources.get(service, {}).get(name)
        if resource is None:
            return Target(arn, arn)
        return Target(resource.arn, resource.logical_id, self.key(resource.key) if resource.key else None)

    def key(self, key_id: str) -> StackResource:
        """A KMS key by ARN, id or alias, as calls and encryption settings name it."""
        known = self.resources.get("kms", {}).get(key_id)
        arn = key_id if key_id.startswith("arn:") else self.arn("kms", f"key/{key_id}")
        return known or StackResource(key_id, arn)

    def arn(self, service: str, resource: str) -> str:
        """An ARN in this stack's region and account."""
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"


Needs = Callable[[Stack, str, dict[str, Any]], Iterator[Need]]

_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def _dynamodb_items(operation: str, params: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(action, table, index) for each item of a DynamoDB call."""
    if operation in ("TransactWriteItems", "TransactGetItems"):
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                action = "GetItem" if operation == "TransactGetItems" else _TRANSACT_ACTIONS.get(kind, kind)
                yield action, body.get("TableName", ""), None
    elif operation in ("BatchGetItem", "BatchWriteItem"):
        for table in params.get("RequestItems", {}):
            yield operation, table, None
    else:
        yield operation, params.get("TableName", ""), params.get("IndexName")


def _dynamodb(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """Each item's action on its table or index; kms:Decrypt on the key of a table under a template key
    (DynamoDB unwraps the table key with the caller's permission)."""
    for action, table_name, index in _dynamodb_items(operation, params):
        name = table_name.rpartition(":table/")[2] or table_name
        table = stack.target("dynamodb", name, stack.arn("dynamodb", f"table/{name}"))
        yield (table.at(f"index/{index}") if index else table).need(f"dynamodb:{action}")
        yield from table.key_needs(["kms:Decrypt"])


_SQS_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
_SQS_KEY_ACTIONS = {"SendMessage": ("kms:GenerateDataKey", "kms:Decrypt"), "ReceiveMessage": ("kms:Decrypt",)}


def _sqs(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on the queue named by ``QueueUrl`` (or ``QueueName``); SSE-KMS for sending and receiving."""
    name = params.get("QueueName") or str(params.get("QueueUrl", "")).rstrip("/").rpartition("/")[2]
    action = _SQS_ACTIONS.get(operation, operation)
    if not name:
        yield Need(f"sqs:{action}", EVERYTHING, EVERYTHING)
        return
    queue = stack.target("sqs", name, stack.arn("sqs", name))
    yield queue.need(f"sqs:{action}")
    yield from queue.key_needs(_SQS_KEY_ACTIONS.get(action, ()))


_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "HeadBucket": "ListBucket",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "CopyObject": "PutObject",
}
# HeadObject reads metadata only; a multipart upload decrypts its parts to complete.
_S3_KEY_ACTIONS = {
    "GetObject": ("kms:Decrypt",),
    "PutObject": ("kms:GenerateDataKey",),
    "CopyObject": ("kms:GenerateDataKey",),
    "CreateMultipartUpload": ("kms:GenerateDataKey", "kms:Decrypt"),
}


def _s3(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on the object (``Key``) or the bucket; SSE-KMS with the request's key, else the bucket's.
    A presigned URL is checked as the call it signs (the link works only if the function may make it)."""
    bucket = _bucket(stack, str(params.get("Bucket", "")))
    target = bucket.at(params["Key"]) if "Key" in params else bucket
    if params.get("ServerSideEncryption") == "AES256":
        target = target.under(None)
    elif params.get("SSEKMSKeyId"):
        target = target.under(stack.key(str(params["SSEKMSKeyId"])))
    yield target.need(f"s3:{_S3_ACTIONS.get(operation, operation)}")
    yield from target.key_needs(_S3_KEY_ACTIONS.get(operation, ()))
    if operation == "CopyObject":
        source_bucket, source_key = _copy_source(params.get("CopySource"))
        source = _bucket(stack, source_bucket).at(source_key)
        yield source.need("s3:GetObject")
        yield from source.key_needs(["kms:Decrypt"])


def _bucket(stack: Stack, name: str) -> Target:
    return stack.target("s3", name, f"arn:aws:s3:::{name}")


def _copy_source(source: Any) -> tuple[str, str]:
    """(bucket, key) of a CopySource: ``{"Bucket", "Key"}`` or ``"bucket/key?versionId=..."``."""
    if isinstance(source, dict):
        return str(source.get("Bucket")), str(source.get("Key"))
    bucket, _, key = str(source).lstrip("/").partition("/")
    return bucket, key.partition("?")[0]


_SCHEDULE_OPERATIONS = ("CreateSchedule", "UpdateSchedule", "GetSchedule", "DeleteSchedule")
_SCHEDULE_GROUP_OPERATIONS = ("CreateScheduleGroup", "GetScheduleGroup", "DeleteScheduleGroup")


def _scheduler(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on the schedule (in its group) or the group; iam:PassRole on the target's role."""
    if operation in _SCHEDULE_OPERATIONS:
        group_name, name = str(params.get("GroupName") or "default"), str(params.get("Name", ""))
        group = stack.resources.get("scheduler", {}).get(group_name)
        label = f"{group.logical_id if group else group_name}/{name}"
        yield Need(f"scheduler:{operation}", stack.arn("scheduler", f"schedule/{group_name}/{name}"), label)
        role_arn = str((params.get("Target") or {}).get("RoleArn") or "")
        if role_arn:
            role = stack.target("iam", role_arn.rpartition("/")[2], role_arn)
            yield role.need("iam:PassRole", ("iam:PassedToService", "scheduler.amazonaws.com"))
    elif operation in _SCHEDULE_GROUP_OPERATIONS:
        name = str(params.get("Name", ""))
        yield stack.target("scheduler", name, stack.arn("scheduler", f"schedule-group/{name}")).need(
            f"scheduler:{operation}"
        )
    else:
        yield Need(f"scheduler:{operation}", EVERYTHING, EVERYTHING)


_SECRET_KEY_ACTIONS = {"GetSecretValue": ("kms:Decrypt",), "PutSecretValue": ("kms:GenerateDataKey",)}


def _secretsmanager(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on the secret named by ``SecretId`` (a name, or an ARN with AWS's six-character suffix)."""
    secret_id = str(params.get("SecretId", ""))
    name = secret_id.partition(":secret:")[2] or secret_id
    known = stack.resources.get("secretsmanager", {})
    if name not in known and name[:-7] in known:
        name = name[:-7]  # "-" and six random characters follow the name in a secret's ARN
    arn = secret_id if secret_id.startswith("arn:") else stack.arn("secretsmanager", f"secret:{name}")
    secret = stack.target("secretsmanager", name, arn)
    yield secret.need(f"secretsmanager:{operation}")
    yield from secret.key_needs(_SECRET_KEY_ACTIONS.get(operation, ()))


def _ssm(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on each parameter (or path) the call names."""
    names = params.get("Names") or [params.get("Name") or params.get("Path") or ""]
    for name in names:
        resource = stack.arn("ssm", f"parameter/{str(name).lstrip('/')}") if name else EVERYTHING
        yield Need(f"ssm:{operation}", resource, str(name) or EVERYTHING)


def _kms(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """The action on the key the call names; a Decrypt that names none may use any key."""
    key_id = str(params.get("KeyId") or "")
    key = stack.key(key_id) if key_id else StackResource(EVERYTHING, EVERYTHING)
    yield Need(f"kms:{operation}", key.arn, key.logical_id)


_INVOKE_OPERATIONS = ("Invoke", "InvokeAsync", "InvokeWithResponseStream")


def _lambda(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """lambda:InvokeFunction (or the operation's action) on the function, with its qualifier if any."""
    function = str(params.get("FunctionName", ""))
    parts = function.split(":")
    name, qualifier = (parts[6], parts[7:]) if function.startswith("arn:") else (parts[0], parts[1:])
    qualifier = [str(params["Qualifier"])] if params.get("Qualifier") else qualifier
    target = stack.target("lambda", name, stack.arn("lambda", f"function:{name}"))
    if qualifier:
        target = replace(target, arn=f"{target.arn}:{qualifier[0]}", name=f"{target.name}:{qualifier[0]}")
    yield target.need("lambda:InvokeFunction" if operation in _INVOKE_OPERATIONS else f"lambda:{operation}")


def _sts(stack: Stack, operation: str, params: dict[str, Any]) -> Iterator[Need]:
    """Anyone may ask who they are; other STS operations need their action."""
    if operation != "GetCallerIdentity":
        yield Need(f"sts:{operation}", EVERYTHING, EVERYTHING)


_NEEDS: dict[str, Needs] = {
    "dynamodb": _dynamodb,
    "sqs": _sqs,
    "s3": _s3,
    "scheduler": _scheduler,
    "secretsmanager": _secretsmanager,
    "ssm": _ssm,
    "kms": _kms,
    "lambda": _lambda,
    "sts": _sts,
}


def needed(stack: Stack, service: str, operation: str, params: dict[str, Any]) -> list[Need]:
    """Every permission a call of ``service`` needs, each once, in order."""
    needs = _NEEDS.get(service)
    if needs is None:
        return [Need(f"{service}:{operation}", EVERYTHING, EVERYTHING)]
    return list(dict.fromkeys(needs(stack, operation, params)))


# ---------------------------------------------------------------- the host's side: what a worker is told


def stack_resources(template: Template, resolver: Resolver) -> dict[str, dict[str, dict[str, Any]]]:
    """The template's resources that calls name, by service and by local name (``Stack``, as JSON).

    KMS keys are listed by ARN, by id and by alias, as calls and encryption settings name them.
    """

    def entry(logical_id: str) -> dict[str, Any]:
        key = template.encryption_key(logical_id)
        return asdict(StackResource(logical_id, resolver.arn(logical_id), resolver.arn(key) if key else None))

    named = {
        "dynamodb": [table.logical_id for table in template.tables],
        "sqs": [queue.logical_id for queue in template.queues],
        "s3": [bucket.logical_id for bucket in template.buckets],
        "secretsmanager": [secret.logical_id for secret in template.secrets],
        "scheduler": [group.logical_id for group in template.schedule_groups],
        "lambda": list(template.functions),
        "iam": list(template.of_type(ROLE_TYPE)),
    }
    resources = {
        service: {resolver.physical_name(logical_id): entry(logical_id) for logical_id in logical_ids}
        for service, logical_ids in named.items()
    }
    keys = resources["kms"] = {}
    for key_id in template.of_type(KMS_KEY_TYPE):
        keys[resolver.arn(key_id)] = keys[key_id] = entry(key_id)
    for properties in template.of_type(KMS_ALIAS_TYPE).values():
        aliased = referenced_resource(properties.get("TargetKeyId"))
        if aliased in keys:
            alias = str(resolver.resolve(properties.get("AliasName")))
            keys[alias] = keys[aliased]
            keys[f"arn:aws:kms:{resolver.region}:{resolver.account_id}:{alias}"] = keys[alias]
    return resources


def worker_config(
    template: Template, resolver: Resolver, function_id: str, environment: dict[str, str]
) -> dict[str, Any] | None:
    """The audit settings a worker of ``function_id`` needs, or None when its environment does not ask."""
    folder = environment.get(AUDIT_VARIABLE)
    if not folder:
        return None
    policies = resolver.for_policies()
    return {
        "folder": str(Path(folder).resolve()),
        "statements": [policies.resolve(statement) for statement in template.execution_role_statements(function_id)],
        "resources": stack_resources(template, resolver),
        "region": resolver.region,
        "account": resolver.account_id,
    }


# ---------------------------------------------------------------- the worker's side: checking calls


@dataclass(frozen=True)
class FunctionAudit:
    """One function's statements, the stack they speak about, and the folder its violations go to."""

    function_id: str
    folder: Path
    statements: tuple[Statement, ...]
    stack: Stack

    @classmethod
    def from_config(cls, function_id: str, config: dict[str, Any]) -> FunctionAudit:
        """From the ``iam_audit`` part of a worker's configuration (see `worker_config`)."""
        statements = tuple(Statement.from_policy(statement) for statement in config["statements"])
        return cls(function_id, Path(config["folder"]), statements, Stack.from_config(config))

    def violations(self, service: str, operation: str, params: dict[str, Any]) -> list[str]:
        """What the call needs and the function may not do, as messages."""
        return [
            f"{self.function_id} calls {need.action} on {need.target} without permission"
            for need in needed(self.stack, service, operation, params)
            if not allowed(self.statements, need)
        ]

    def check_call(self, service: str, operation: str, params: dict[str, Any]) -> None:
        """Record every violation of one call (printed, and appended to this process's file)."""
        found = self.violations(service, operation, params)
        if not found:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.function_id}.{os.getpid()}.jsonl"
        with path.open("a", encoding="utf-8") as log:
            for message in found:
                print(f"local iam audit: {message}", file=sys.stderr, flush=True)
                record = {"function": self.function_id, "service": service, "operation": operation, "message": message}
                log.write(json.dumps(record))
                log.write("\n")


def install(audit: FunctionAudit) -> None:
    """Check the calls of every AWS client this process creates from now on."""
    import botocore.session  # only workers that audit pay for the import here

    original = botocore.session.Session.create_client

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        audit.check_call(model.service_model.service_name, model.name, params)

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        client.meta.events.register("before-parameter-build", hook)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


def read_violations(folder: str | Path) -> dict[str, list[str]]:
    """Every violation recorded in ``folder``: messages by file name, in the order they were written."""
    found: dict[str, list[str]] = {}
    root = Path(folder)
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        # A line being written while we read is picked up next time.
        found[path.name] = [json.loads(line)["message"] for line in lines if line.endswith("}")]
    return found
