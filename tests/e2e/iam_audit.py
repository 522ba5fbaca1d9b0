"""Checks, while the end-to-end tests run, that every DynamoDB call a function makes on the billing table is
allowed by that function's own IAM statements in template.yaml (an AccessDenied in AWS is a bug found late)."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from local.server import running_function
from local.template import Template

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


@dataclass
class IamAudit:
    """Allowed actions per function on the table and on its indexes, and the calls that broke them."""

    table_name: str
    table_logical_id: str
    on_table: dict[str, set[str]] = field(default_factory=dict)
    on_indexes: dict[str, set[str]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @classmethod
    def from_template(cls, template: Template, table_logical_id: str, table_name: str) -> "IamAudit":
        audit = cls(table_name, table_logical_id)
        for function_id in template.functions:
            properties = template.resources[function_id].get("Properties", {})
            table, indexes = set(), set()
            for policy in properties.get("Policies", []):
                for statement in policy.get("Statement", []) if isinstance(policy, dict) else []:
                    if statement.get("Effect") != "Allow":
                        continue
                    for resource in _resources(statement):
                        if table_logical_id not in resource:
                            continue
                        (indexes if "/index/" in resource else table).update(_actions(statement))
            audit.on_table[function_id], audit.on_indexes[function_id] = table, indexes
        return audit

    def check_call(self, operation: str, params: dict[str, Any]) -> None:
        function_id = getattr(running_function, "id", None)
        if function_id is None:
            return  # the tests' own calls, not a function's
        for action, table, on_index in self._needed(operation, params):
            if table != self.table_name:
                continue
            allowed = (self.on_indexes if on_index else self.on_table).get(function_id, set())
            if action not in allowed:
                target = f"an index of {table}" if on_index else table
                self.violations.append(f"{function_id} calls dynamodb:{action} on {target} without permission")

    @staticmethod
    def _needed(operation: str, params: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
        if operation == "TransactWriteItems":
            for item in params.get("TransactItems", []):
                for kind, body in item.items():
                    yield _TRANSACT_ACTIONS[kind], body.get("TableName", ""), False
        elif operation in ("BatchGetItem", "BatchWriteItem"):
            for table in params.get("RequestItems", {}):
                yield operation, table, False
        else:
            yield operation, params.get("TableName", ""), "IndexName" in params
