"""IAM audit of the DynamoDB calls functions make locally (an AccessDenied in AWS is a bug found late).

When ``BILLING_LOCAL_IAM_AUDIT`` names a folder in a function's environment, the local host gives its
worker the actions the function's own IAM statements in the template allow on each DynamoDB table
of the template (`table_permissions`), and the worker checks every DynamoDB call before it is sent
(a botocore ``before-parameter-build.dynamodb`` hook on every DynamoDB client the process creates).
A call the statements do not allow is printed on stderr and appended as one JSON line to
``<folder>/<FunctionId>.<pid>.jsonl``; `read_violations` reads them all back. The call itself still goes
through: the audit reports, it does not enforce.

The rules: a statement counts when its ``Effect`` is ``Allow`` and one of its ``Resource`` entries
names the table's logical id (intrinsics are not resolved); a resource with ``/index/`` grants on
the table's indexes, any other on the table. ``TransactWriteItems`` needs ``PutItem``, ``UpdateItem``,
``DeleteItem`` or ``ConditionCheckItem`` per item, batch calls their own action, a call with
``IndexName`` needs the action on the indexes. Calls on tables the template does not declare are
not checked.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.template import Resolver, Template

AUDIT_VARIABLE = "BILLING_LOCAL_IAM_AUDIT"

_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}


def _actions(statement: dict[str, Any]) -> set[str]:
    actions = statement.get("Action", [])
    return {a.removeprefix("dynamodb:") for a in ([actions] if isinstance(actions, str) else actions)}


def _resources(statement: dict[str, Any]) -> Iterator[str]:
    resources = statement.get("Resource", [])
    for resource in resources if isinstance(resources, list) else [resources]:
        yield repr(resource)  # intrinsics stay as they are: only which table and whether an index matter


def _statements(template: Template, function_id: str) -> Iterator[dict[str, Any]]:
    properties = template.resources[function_id].get("Properties") or {}
    for policy in properties.get("Policies") or []:
        if not isinstance(policy, dict):
            continue  # a managed policy name or a SAM policy template: not modelled
        document = policy.get("PolicyDocument", policy)
        for statement in document.get("Statement", []) if isinstance(document, dict) else []:
            if isinstance(statement, dict) and statement.get("Effect") == "Allow":
                yield statement


def table_permissions(template: Template, resolver: Resolver, function_id: str) -> dict[str, dict[str, list[str]]]:
    """What ``function_id`` may do on each table of the template, by the table's local name.

    ``{"BillingTable": {"table": ["GetItem", ...], "indexes": ["Query"]}}``.
    """
    permissions: dict[str, dict[str, list[str]]] = {}
    for table in template.tables:
        named = re.compile(rf"\b{re.escape(table.logical_id)}\b")
        on_table: set[str] = set()
        on_indexes: set[str] = set()
        for statement in _statements(template, function_id):
            for resource in _resources(statement):
                if named.search(resource):
                    (on_indexes if "/index/" in resource else on_table).update(_actions(statement))
        permissions[resolver.physical_name(table.logical_id)] = {
            "table": sorted(on_table),
            "indexes": sorted(on_indexes),
        }
    return permissions


def needed_actions(operation: str, params: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(action, table name, on an index) for each permission a DynamoDB call needs."""
    if operation == "TransactWriteItems":
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                yield _TRANSACT_ACTIONS.get(kind, kind), body.get("TableName", ""), False
    elif operation == "TransactGetItems":
        for item in params.get("TransactItems", []):
            for body in item.values():
                yield "GetItem", body.get("TableName", ""), False
    elif operation in ("BatchGetItem", "BatchWriteItem"):
        for table in params.get("RequestItems", {}):
            yield operation, table, False
    else:
        yield operation, params.get("TableName", ""), "IndexName" in params


@dataclass(frozen=True)
class FunctionAudit:
    """One function's permissions and the folder its violations go to."""

    function_id: str
    folder: Path
    permissions: dict[str, dict[str, list[str]]]

    @classmethod
    def from_config(cls, function_id: str, config: dict[str, Any]) -> FunctionAudit:
        """From the ``iam_audit`` part of a worker's configuration (see `worker_config`)."""
        return cls(function_id, Path(config["folder"]), dict(config["permissions"]))

    def violations(self, operation: str, params: dict[str, Any]) -> list[str]:
        """What the call needs and the function may not do, as messages."""
        found: list[str] = []
        for action, table, on_index in needed_actions(operation, params):
            allowed = self.permissions.get(table)
            if allowed is None:
                continue  # not a table of the template
            if action not in allowed["indexes" if on_index else "table"]:
                target = f"an index of {table}" if on_index else table
                found.append(f"{self.function_id} calls dynamodb:{action} on {target} without permission")
        return found

    def check_call(self, operation: str, params: dict[str, Any]) -> None:
        """Record every violation of one call (printed, and appended to this process's file)."""
        found = self.violations(operation, params)
        if not found:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.function_id}.{os.getpid()}.jsonl"
        with path.open("a", encoding="utf-8") as log:
            for message in found:
                print(f"local iam audit: {message}", file=sys.stderr, flush=True)
                log.write(json.dumps({"function": self.function_id, "operation": operation, "message": message}))
                log.write("\n")


def worker_config(
    template: Template, resolver: Resolver, function_id: str, environment: dict[str, str]
) -> dict[str, Any] | None:
    """The audit settings a worker of ``function_id`` needs, or None when its environment does not ask."""
    folder = environment.get(AUDIT_VARIABLE)
    if not folder:
        return None
    return {
        "folder": str(Path(folder).resolve()),
        "permissions": table_permissions(template, resolver, function_id),
    }


def install(audit: FunctionAudit) -> None:
    """Check the calls of every DynamoDB client this process creates from now on."""
    import botocore.session  # only workers that audit pay for the import here

    original = botocore.session.Session.create_client

    def hook(model: Any, params: dict[str, Any], **_: Any) -> None:
        audit.check_call(model.name, params)

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            client.meta.events.register("before-parameter-build.dynamodb", hook)
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
