"""The end-to-end tests' view of the IAM audit: what the functions' workers recorded, test by test.

The rules and the checking live in `local.iam_audit` and run inside the worker processes (the
handlers no longer run in the test process): a stack started with ``iam_audit=<folder>`` has every
AWS call its functions make checked against the calling function's own IAM statements in the template,
and each call they do not allow appended to a file in that folder. `IamAuditLog` reads
them back so a test can assert that it caused none (conftest.py does, for every end-to-end test).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from local.iam_audit import read_violations

Snapshot = dict[str, int]
"""How many violations each file held at some moment."""


@dataclass(frozen=True)
class IamAuditLog:
    """The violations recorded in one stack's audit folder."""

    folder: Path

    def snapshot(self) -> Snapshot:
        """The current position, to compare with later (`since`)."""
        return {name: len(messages) for name, messages in read_violations(self.folder).items()}

    def since(self, snapshot: Snapshot) -> list[str]:
        """Violations recorded after ``snapshot`` was taken."""
        found: list[str] = []
        for name, messages in read_violations(self.folder).items():
            found.extend(messages[snapshot.get(name, 0) :])
        return found

    def all(self) -> list[str]:
        """Every violation recorded so far."""
        return self.since({})

    def forget(self, function_id: str) -> None:
        """Remove what ``function_id``'s workers recorded (tests that cause violations on purpose)."""
        for path in self.folder.glob(f"{function_id}.*.jsonl"):
            path.unlink()
