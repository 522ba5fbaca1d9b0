"""What ``/openapi.json`` promises, in the terms the end-to-end tests check it: the statuses each operation
documents, against what the local server answered (``LocalServer.served``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Served = tuple[str, str, int]
"""One answer of a template route: (method, path template, status)."""


def documented_statuses(document: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    """The statuses each operation (method, path template) documents."""
    return {
        (method.upper(), path): {int(status) for status in operation.get("responses") or {}}
        for path, operations in (document.get("paths") or {}).items()
        for method, operation in operations.items()
    }


def undocumented(served: Iterable[Served], document: dict[str, Any]) -> list[Served]:
    """The answers whose status the document does not list for their operation, each once."""
    documented = documented_statuses(document)
    return sorted({answer for answer in served if answer[2] not in documented.get(answer[:2], set())})
