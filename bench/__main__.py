"""``make bench`` (``python -m bench``): run every benchmark and write bench/results.md.

``--quick`` runs each with small sizes and ``--only NAME`` (repeatable) runs some of them, to try a change out:
both print the report instead of writing bench/results.md, where only a full run belongs."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from bench import api_latency, documents, imports, night, round_trips
from bench.functions import functions_against
from bench.measure import progress, quiet_stdout
from bench.moto_server import cost_per_request_like_dynamodb
from bench.report import Section, document
from local.aws import provision, start_moto
from local.template import load_template

RESULTS = Path(__file__).resolve().parent / "results.md"


IN_PROCESS = {"round_trips": round_trips.run, "api_latency": api_latency.run}
BENCHMARKS = ("cold_start", "documents", *IN_PROCESS, "night")


def in_process_sections(names: list[str], quick: bool) -> list[Section]:
    """Round-trips and API latency: the handlers in this process against one moto server."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    cost_per_request_like_dynamodb()  # else a write's latency grows with all the table holds
    aws = start_moto()
    try:
        with functions_against(aws, provision(aws, load_template())) as functions:
            return [IN_PROCESS[name](functions, quick) for name in names]
    finally:
        aws.stop()


def run(names: list[str], quick: bool, night_sizes: tuple[int, ...] | None = None) -> list[Section]:
    """The chosen benchmarks, in the report's order: subprocess and in-process ones first, the night last."""
    sections = [imports.run(quick)] if "cold_start" in names else []
    sections += [documents.run(quick)] if "documents" in names else []
    in_process = [name for name in IN_PROCESS if name in names]
    sections += in_process_sections(in_process, quick) if in_process else []
    sections += [night.run(quick, night_sizes)] if "night" in names else []
    return sections


def preamble(quick: bool, seconds: float, load: tuple[float, float, float]) -> str:
    kind = "a quick run (small sizes): not the figures to quote" if quick else "a full run"
    return (
        "# Benchmarks\n\n"
        f"Written by `make bench` ({kind}) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s, on "
        f"{os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}; load average "
        f"{load[0]:.1f} when it started). Every baseline was measured in the same run, interleaved with ours where "
        "timing is concerned; ratios are ours / baseline. None of this is a test: `make test` fails on no time "
        "(tests/integration/test_round_trips.py checks the round-trip counts). The capacity a night of a million "
        "practices needs on AWS is worked out from these figures in [docs/scale.md](../docs/scale.md)."
    )


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (prints the report)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this one (prints the report)")
    parser.add_argument("--night-sizes", type=_sizes, help="practices per night, e.g. 250,500,1000,2000")
    options = parser.parse_args()
    warnings.simplefilter("ignore")  # Powertools warns when a request records no metric; moto about dates
    started, load = time.perf_counter(), os.getloadavg()
    with quiet_stdout():
        sections = run(options.only or list(BENCHMARKS), options.quick, options.night_sizes)
    text = document(preamble(options.quick, time.perf_counter() - started, load), sections)
    if options.quick or options.only:
        sys.stdout.write(text)
    else:
        RESULTS.write_text(text)
        progress(f"wrote {RESULTS} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
