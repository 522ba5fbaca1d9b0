"""The one optimistic-concurrency loop: plan from what is stored, commit conditionally, and on a lost race
read again and plan again. Every use case that commits a unit of work goes through `optimistic`."""

import random
import time
from collections.abc import Callable
from typing import TypeVar

from billing.errors import Conflict, StaleState

Result = TypeVar("Result")

MAX_ATTEMPTS = 10


def optimistic(attempt: Callable[[], Result], *, attempts: int = MAX_ATTEMPTS) -> Result:
    """Run ``attempt`` until it commits without a StaleState. A short, growing, jittered pause between tries
    spreads out writers racing for the same item. After ``attempts`` lost races the caller gets a 409
    ``concurrent_change`` (retrying the request is safe: everything here is idempotent)."""
    for number in range(attempts):
        try:
            return attempt()
        except StaleState:
            if number == attempts - 1:
                break
            time.sleep(random.uniform(0, 0.004 * (2 ** min(number, 5))))
    raise Conflict("the data kept changing while the request was handled; retry", code="concurrent_change")
