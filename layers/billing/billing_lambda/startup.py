"""A function's cold start: its handler module's imports run with Python's cyclic garbage collector paused, and
what they built is then kept out of every later collection.

A handler's imports make over 100,000 objects that live as long as the Lambda instance (modules, classes, the
validators of pydantic and Powertools) and almost no garbage (about 600 unreachable objects). While they pile up
the collector keeps running anyway, each full pass over everything made so far: about 30 ms of a 450 ms import
(bench/results.md). After the imports, ``ready`` moves what they made to the permanent generation (``gc.freeze``)
and turns the collector back on, so the collections a request triggers scan only what requests make. This is the
sequence the ``gc`` module's documentation gives for objects made once at start-up: disable early, freeze, enable.

Every handler module imports this module first, alone above an ``# isort: split`` line, and calls ``ready()``
as its last statement; tests/unit/test_cold_start.py fails if one does not.
"""

import gc

gc.disable()


def ready() -> None:
    """End the cold start: keep what the imports made out of later collections and collect again from here on."""
    gc.freeze()
    gc.enable()
