"""Pydantic models to DynamoDB attribute values and back (numbers come back as int, never float)."""

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from pydantic import BaseModel

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


def model_attributes(model: BaseModel) -> dict[str, Any]:
    """A model's JSON form (dates as ISO strings, enums as values)."""
    return model.model_dump(mode="json")
