"""A small evaluator of DynamoDB condition / key-condition / projection expressions over wire-format items.

Items and values are in the low-level client's form (``{"S": "x"}``, ``{"N": "12"}``, ``{"M": {...}}``, ...).
It covers the documented expression grammar: comparisons (= <> < <= > >=), BETWEEN, IN, AND / OR / NOT,
parentheses, attribute_exists, attribute_not_exists, attribute_type, begins_with, contains and size, on
document paths (``a.b[0].#c``). It exists so the GSI-lag double can decide whether an item's *previous*
version still answers a query; anything it cannot parse raises `ExpressionError` rather than guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

Item = Mapping[str, Any]
Value = dict[str, Any]
Operand = Callable[[Item], Value | None]
Condition = Callable[[Item], bool]
PathElement = str | int

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<op><>|<=|>=|=|<|>)"
    r"|(?P<punct>[(),.\[\]])"
    r"|(?P<name>#[A-Za-z0-9_]+)"
    r"|(?P<value>:[A-Za-z0-9_]+)"
    r"|(?P<number>\d+)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r")"
)
_CONDITION_FUNCTIONS = {"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with", "contains"}
_KEYWORDS = {"and", "or", "not", "between", "in"}
_ORDERED_TYPES = {"S", "N", "B"}


class ExpressionError(ValueError):
    """The expression is malformed or uses something this evaluator does not implement."""


# -- values --------------------------------------------------------------------------------------------


def _tag(value: Value) -> str:
    (tag,) = value.keys()
    return tag


def _scalar(value: Value) -> Any:
    tag = _tag(value)
    raw = value[tag]
    if tag == "N":
        return Decimal(raw)
    if tag == "B" and isinstance(raw, str):
        return raw.encode()
    return raw


def values_equal(left: Value, right: Value) -> bool:
    """DynamoDB equality: same type and same value (numbers by value, sets unordered)."""
    tag = _tag(left)
    if tag != _tag(right):
        return False
    if tag in _ORDERED_TYPES:
        return bool(_scalar(left) == _scalar(right))
    if tag == "NS":
        return {Decimal(n) for n in left[tag]} == {Decimal(n) for n in right[tag]}
    if tag in ("SS", "BS"):
        return set(left[tag]) == set(right[tag])
    if tag == "L":
        return len(left[tag]) == len(right[tag]) and all(
            values_equal(a, b) for a, b in zip(left[tag], right[tag], strict=True)
        )
    if tag == "M":
        return left[tag].keys() == right[tag].keys() and all(
            values_equal(left[tag][k], right[tag][k]) for k in left[tag]
        )
    return bool(left[tag] == right[tag])  # BOOL, NULL


def sort_value(value: Value) -> Any:
    """A Python value ordering like DynamoDB orders key values (S by code point = UTF-8 bytes, N, B)."""
    tag = _tag(value)
    if tag not in _ORDERED_TYPES:
        raise ExpressionError(f"values of type {tag} have no order")
    return _scalar(value)


def _compare(operator: str, left: Value | None, right: Value | None) -> bool:
    if left is None or right is None:
        return operator == "<>" and not (left is None and right is None)
    if operator == "=":
        return values_equal(left, right)
    if operator == "<>":
        return not values_equal(left, right)
    if _tag(left) != _tag(right) or _tag(left) not in _ORDERED_TYPES:
        return False
    a, b = _scalar(left), _scalar(right)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[operator]


# -- paths ---------------------------------------------------------------------------------------------


def resolve(item: Item, path: list[PathElement]) -> Value | None:
    """The value at a document path, or None when any step is missing."""
    head = path[0]
    assert isinstance(head, str)
    current: Value | None = item.get(head)
    for step in path[1:]:
        if current is None:
            return None
        if isinstance(step, int):
            elements = current.get("L")
            current = elements[step] if elements is not None and step < len(elements) else None
        else:
            members = current.get("M")
            current = members.get(step) if members is not None else None
    return current


# -- parsing -------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, names: Mapping[str, str] | None, values: Mapping[str, Value] | None):
        self.text = text
        self.names = names or {}
        self.values = values or {}
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise ExpressionError(f"cannot read {text[position:]!r} in {self.text!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.position = 0

    # token helpers
    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def next(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExpressionError(f"unexpected end of {self.text!r}")
        self.position += 1
        return token

    def at_word(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].lower() == word

    def at_punct(self, punct: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token is not None and token == ("punct", punct)

    def expect_punct(self, punct: str) -> None:
        token = self.next()
        if token != ("punct", punct):
            raise ExpressionError(f"expected {punct!r}, found {token[1]!r} in {self.text!r}")

    def expect_word(self, word: str) -> None:
        if not self.at_word(word):
            raise ExpressionError(f"expected {word.upper()} in {self.text!r}")
        self.position += 1

    def finish(self) -> None:
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]

    # grammar
    def condition(self) -> Condition:
        left = self.conjunction()
        while self.at_word("or"):
            self.position += 1
            right = self.conjunction()
            left = (lambda a, b: lambda item: a(item) or b(item))(left, right)
        return left

    def conjunction(self) -> Condition:
        left = self.negation()
        while self.at_word("and"):
            self.position += 1
            right = self.negation()
            left = (lambda a, b: lambda item: a(item) and b(item))(left, right)
        return left

    def negation(self) -> Condition:
        if self.at_word("not"):
            self.position += 1
            inner = self.negation()
            return lambda item: not inner(item)
        return self.primary()

    def primary(self) -> Condition:
        if self.at_punct("("):
            self.position += 1
            inner = self.condition()
            self.expect_punct(")")
            return inner
        token = self.peek()
        if token is not None and token[0] == "word" and token[1] in _CONDITION_FUNCTIONS and self.at_punct("(", 1):
            return self.function(token[1])
        left = self.operand()
        token = self.next()
        if token[0] == "op":
            right = self.operand()
            operator = token[1]
            return lambda item: _compare(operator, left(item), right(item))
        if token[0] == "word" and token[1].lower() == "between":
            low = self.operand()
            self.expect_word("and")
            high = self.operand()
            return lambda item: _compare(">=", left(item), low(item)) and _compare("<=", left(item), high(item))
        if token[0] == "word" and token[1].lower() == "in":
            self.expect_punct("(")
            candidates = [self.operand()]
            while self.at_punct(","):
                self.position += 1
                candidates.append(self.operand())
            self.expect_punct(")")
            return lambda item: any(_compare("=", left(item), c(item)) for c in candidates)
        raise ExpressionError(f"expected a comparison, found {token[1]!r} in {self.text!r}")

    def function(self, name: str) -> Condition:
        self.position += 2  # the name and "("
        path = self.path()
        argument: Operand | None = None
        if self.at_punct(","):
            self.position += 1
            argument = self.operand()
        self.expect_punct(")")
        if name == "attribute_exists":
            return lambda item: resolve(item, path) is not None
        if name == "attribute_not_exists":
            return lambda item: resolve(item, path) is None
        if argument is None:
            raise ExpressionError(f"{name} needs two arguments in {self.text!r}")
        operand = argument
        if name == "attribute_type":
            return lambda item: (found := resolve(item, path)) is not None and _tag(found) == operand(item)["S"]  # type: ignore[index]
        if name == "begins_with":
            return lambda item: _begins_with(resolve(item, path), operand(item))
        return lambda item: _contains(resolve(item, path), operand(item))

    def operand(self) -> Operand:
        token = self.peek()
        if token is not None and token[0] == "value":
            self.position += 1
            if token[1] not in self.values:
                raise ExpressionError(f"{token[1]} is not in ExpressionAttributeValues")
            constant = self.values[token[1]]
            return lambda item: constant
        if token is not None and token[0] == "word" and token[1] == "size" and self.at_punct("(", 1):
            self.position += 2
            path = self.path()
            self.expect_punct(")")
            return lambda item: _size(resolve(item, path))
        path = self.path()
        return lambda item: resolve(item, path)

    def path(self) -> list[PathElement]:
        path: list[PathElement] = [self.attribute_name()]
        while True:
            if self.at_punct("."):
                self.position += 1
                path.append(self.attribute_name())
            elif self.at_punct("["):
                self.position += 1
                kind, text = self.next()
                if kind != "number":
                    raise ExpressionError(f"expected a list index, found {text!r} in {self.text!r}")
                path.append(int(text))
                self.expect_punct("]")
            else:
                return path

    def attribute_name(self) -> str:
        kind, text = self.next()
        if kind == "name":
            if text not in self.names:
                raise ExpressionError(f"{text} is not in ExpressionAttributeNames")
            return self.names[text]
        if kind == "word" and text.lower() not in _KEYWORDS:
            return text
        raise ExpressionError(f"expected an attribute name, found {text!r} in {self.text!r}")


def _begins_with(found: Value | None, prefix: Value) -> bool:
    if found is None or _tag(found) != _tag(prefix) or _tag(found) not in ("S", "B"):
        return False
    return bool(_scalar(found).startswith(_scalar(prefix)))


def _contains(found: Value | None, operand: Value) -> bool:
    if found is None:
        return False
    tag = _tag(found)
    if tag == "S" and _tag(operand) == "S":
        return operand["S"] in found["S"]
    if tag == "B" and _tag(operand) == "B":
        return bool(_scalar(operand) in _scalar(found))
    if tag in ("SS", "NS", "BS") and _tag(operand) == tag[0]:
        return any(values_equal({tag[0]: member}, operand) for member in found[tag])
    if tag == "L":
        return any(values_equal(element, operand) for element in found["L"])
    return False


def _size(found: Value | None) -> Value | None:
    if found is None:
        return None
    tag = _tag(found)
    if tag == "S":
        return {"N": str(len(found["S"].encode()))}
    if tag == "B":
        return {"N": str(len(_scalar(found)))}
    if tag in ("SS", "NS", "BS", "L", "M"):
        return {"N": str(len(found[tag]))}
    return None


# -- public --------------------------------------------------------------------------------------------


def compile_condition(
    expression: str, names: Mapping[str, str] | None = None, values: Mapping[str, Value] | None = None
) -> Condition:
    """A predicate over items for a Condition/Filter/KeyCondition expression."""
    parser = _Parser(expression, names, values)
    condition = parser.condition()
    parser.finish()
    return condition


def parse_projection(expression: str, names: Mapping[str, str] | None = None) -> list[list[PathElement]]:
    """The document paths of a ProjectionExpression."""
    parser = _Parser(expression, names, None)
    paths = [parser.path()]
    while parser.at_punct(","):
        parser.position += 1
        paths.append(parser.path())
    parser.finish()
    return paths


def project(item: Item, paths: list[list[PathElement]]) -> dict[str, Any]:
    """The item restricted to ``paths`` (nested map paths keep their enclosing maps; list indexes unsupported)."""
    projected: dict[str, Any] = {}
    for path in paths:
        if any(isinstance(step, int) for step in path):
            raise ExpressionError("projections through list indexes are not supported by this evaluator")
        found = resolve(item, path)
        if found is None:
            continue
        target = projected
        for step in path[:-1]:
            assert isinstance(step, str)
            target = target.setdefault(step, {"M": {}})["M"]
        target[path[-1]] = found  # type: ignore[index]
    return projected
