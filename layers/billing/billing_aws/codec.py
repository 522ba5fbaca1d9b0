"""Pydantic models to DynamoDB attribute values and back (numbers come back as int, never float)."""

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON-like values to DynamoDB's typed form."""
    return {name: _serializer.serialize(value) for name, value in values.items()}


def to_value(value: Any) -> Any:
    return _serializer.serialize(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value)  # money and counters are integers by construction
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def from_attributes(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB's typed form back to plain values."""
    return {name: _plain(_deserializer.deserialize(value)) for name, value in item.items()}


def record_attributes(model: BaseModel, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every declared field of a stored object in its JSON form, whatever the API shows of it: what is stored
    never depends on which fields the API model hides (``skip`` names view-only fields)."""
    return {name: to_jsonable_python(getattr(model, name)) for name in type(model).model_fields if name not in skip}
