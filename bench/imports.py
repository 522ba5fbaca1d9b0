"""Cold starts: each function's handler import in a fresh Lambda-like interpreter against the baseline
(bench/cold_start.py measures the medians), and which packages each import spends its time in
(``python -X importtime``, one run, summed per top-level package)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from bench.cold_start import BASELINE, FLOORS, ImportTarget, deployed_cold_starts, import_targets, measure
from bench.measure import progress
from bench.report import Row, Section, milliseconds, table

# Packages a handler should import only when it uses them: the card processor, X-Ray, the PDF renderer.
WATCHED = ("stripe", "aws_xray_sdk", "weasyprint")
RENDER_FUNCTIONS = {"RenderInvoiceFunction"}  # exempt from the 1.2 target: WeasyPrint is its job
TARGET_RATIO = 1.2
HEAVIEST = 6


def package_seconds(target: ImportTarget) -> dict[str, float]:
    """Seconds each top-level package's own module bodies took during ``target``'s import (``-X importtime``)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", target.imports],
        cwd=target.code_dir,
        env=target.environment,
        capture_output=True,
        text=True,
        check=True,
    )
    spent: defaultdict[str, float] = defaultdict(float)
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            if self_us.isdigit():
                spent[name.split(".")[0]] += int(self_us) / 1e6
    return spent


def _heaviest(spent: dict[str, float]) -> str:
    ranked = sorted(spent.items(), key=lambda entry: entry[1], reverse=True)[:HEAVIEST]
    return ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in ranked)


def run(quick: bool = False) -> Section:
    cold_starts = measure(runs=2 if quick else 7)
    baseline = next(c for c in cold_starts if c.name == BASELINE)
    rows = []
    for cold in cold_starts:
        if cold.name == BASELINE:
            continue
        if cold.name in FLOORS:
            figure = f"cold start, {cold.name}"
        else:
            goal = "" if cold.name in RENDER_FUNCTIONS else f", target ≤ {TARGET_RATIO}"
            figure = f"cold start: {cold.name} (`{cold.handler.removeprefix('import ')}`{goal})"
        rows.append(Row(figure, milliseconds(cold.median_seconds), milliseconds(baseline.median_seconds), cold.ratio))
    deployed = deployed_cold_starts(runs=2 if quick else 5)
    for built in deployed:
        rows.append(
            Row(
                f"cold start from the built layer: {built.name}",
                milliseconds(built.precompiled_seconds),
                f"as SAM's python3.12 builder ships it {milliseconds(built.sources_only_seconds)}",
                built.precompiled_seconds / built.sources_only_seconds,
            )
        )
    progress("cold starts measured; profiling imports")
    cpu_ratio = {cold.name: f"{cold.cpu_ratio:.2f}" for cold in cold_starts}
    profiles = []
    for target in import_targets():
        spent = package_seconds(target)
        flags = ("yes" if name in spent else "no" for name in WATCHED)
        profiles.append([target.name, cpu_ratio[target.name], _heaviest(spent), *flags])
    over = [row.figure.split()[2] for row in rows if "target" in row.figure and (row.ratio or 0) > TARGET_RATIO]
    notes = (
        "Each figure is the median, over 7 interleaved rounds (after a warm-up round that writes the bytecode "
        "caches), of the time to import the handler module in a new interpreter set up as Lambda sets one up "
        "(bench/cold_start.py: `CodeUri` then the layer on `sys.path`, the function's environment, "
        "`LAMBDA_TASK_ROOT`). Interpreter start-up is left out. The baseline imports only boto3, pydantic and "
        "Powertools' `APIGatewayHttpResolver`, `Logger` and `Metrics`, in a new interpreter of its own right before "
        "each handler's; a ratio is the median of those pairs' ratios. A handler's imports run with the cyclic "
        "garbage collector paused (`billing_lambda/startup.py`), the baseline's as any module's. The same "
        "rounds' CPU time, steadier on a shared machine, gives the CPU ratio below. The two *floor* rows import the "
        "baseline and then what every handler of ours loads before any of its own code, as a handler imports (the "
        "collector paused): pydantic's model machinery (`BaseModel`, `Field`, its validators; the baseline's lazy "
        "`import pydantic` loads none of it), then Powertools' Tracer with botocore patched for X-Ray. What a "
        "function costs above the second floor is our own code.\n\n"
        "*From the built layer*: the handler imported as Lambda imports it from what `sam build` wrote "
        "(`make artifacts`; the function's folder, then the layer's `python` folder and nothing else, no bytecode "
        "written since Lambda's folders are read-only), the layer as layers/billing/Makefile builds it (every module "
        "compiled at build time to unchecked-hash bytecode) against the same layer with only its sources, as SAM's "
        "python3.12 builder ships it: there every cold start compiles all it imports. Medians of "
        f"{2 if quick else 5} interleaved rounds. The ratios above compare against a baseline imported from "
        "bytecode caches, so this saving is not in them.\n\n"
        f"Over the {TARGET_RATIO} target in this run: {', '.join(over) or 'none'}.\n\n"
        "Where each import spends its time (`python -X importtime`, one run: milliseconds of module bodies summed "
        "per top-level package, heaviest first) and whether the heavy optional packages are imported at all:\n\n"
        + table(["function", "CPU ratio", "heaviest packages (ms)", *WATCHED], profiles)
    )
    return Section("Cold start", rows, notes)
