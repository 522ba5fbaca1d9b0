"""Cold start of every function in ``template.yaml``: the time to import its handler module in a new interpreter.

Each import runs in a fresh ``python`` set up as Lambda sets one up: the function's ``CodeUri`` folder first on
``sys.path`` (``/var/task``) and the shared layer after it (``/opt/python``), the ``CodeUri`` folder as working
folder, the function's resolved ``Environment`` and, unless ``outside_lambda``, ``LAMBDA_TASK_ROOT`` (Powertools'
Tracer and the X-Ray SDK only trace, and only patch libraries, when it is set). The baseline imports only what
any handler needs anyway (boto3, pydantic, Powertools' HTTP resolver, Logger and Metrics), so the ratio
handler / baseline says what our own modules add. Every run times the baseline's imports first and then the
handler's import in the same interpreter, and its ratio is (baseline + handler) / baseline: the two parts share
the machine's load of that moment, so a busy machine shifts both alike. The report takes the median over runs
of the time and of the ratio; rounds are interleaved (every function, in a new order each round). Both wall and
CPU time are reported: on a machine shared with other work the CPU time is the steadier of the two (an import
waits on nothing but the CPU once the files are in the page cache).
Every module is imported from valid bytecode (the warm-up round writes what is missing), so the numbers say what
the imports execute, not what compiling them costs.

    python bench/cold_start.py [--runs 9] [--outside-lambda]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `local` importable
    sys.path.insert(0, str(REPO_ROOT))

from local.template import Resolver, load_template  # noqa: E402

LAYER_DIR = REPO_ROOT / "layers" / "billing"
BASELINE_IMPORTS = (
    "import boto3, pydantic\n"
    "from aws_lambda_powertools import Logger, Metrics\n"
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver"
)
BASELINE = "baseline"
# The child prints the wall and CPU seconds of the baseline's imports, then of the target's import (what it adds
# to them), so interpreter start-up is left out of every number.
_TIMED = (
    "import time\n_wall, _cpu = time.perf_counter(), time.process_time()\n{baseline}\n"
    "print(time.perf_counter() - _wall, time.process_time() - _cpu)\n"
    "_wall, _cpu = time.perf_counter(), time.process_time()\n{imports}\n"
    "print(time.perf_counter() - _wall, time.process_time() - _cpu)"
)


@dataclass(frozen=True)
class ImportTarget:
    """What one cold start imports, and where: a function's handler module, or the baseline."""

    name: str
    imports: str
    code_dir: Path
    environment: dict[str, str]


@dataclass(frozen=True)
class ImportRun:
    """One cold start: the baseline's imports, and the whole import (baseline included), in wall and CPU seconds."""

    baseline_seconds: float
    baseline_cpu_seconds: float
    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class ColdStart:
    """Median import time of one target (wall and CPU), and the median of its runs' ratios to their baseline."""

    name: str
    handler: str
    median_seconds: float
    ratio: float
    median_cpu_seconds: float
    cpu_ratio: float


def import_targets(*, outside_lambda: bool = False) -> list[ImportTarget]:
    """The baseline, then every function of the template with the environment Lambda would give it."""
    template = load_template()
    resolver = Resolver(template)
    targets = [ImportTarget(BASELINE, BASELINE_IMPORTS, LAYER_DIR, _lambda_environment(LAYER_DIR, outside_lambda))]
    for function_id, spec in template.functions.items():
        environment = _lambda_environment(spec.code_dir, outside_lambda) | resolver.function_environment(function_id)
        environment["AWS_LAMBDA_FUNCTION_NAME"] = function_id
        targets.append(ImportTarget(function_id, f"import {spec.handler_module}", spec.code_dir, environment))
    return targets


def _lambda_environment(code_dir: Path, outside_lambda: bool) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("POWERTOOLS_", "AWS_"))}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)  # see the module's docstring: bytecode is never compiled twice
    environment.update(
        PYTHONPATH=os.pathsep.join([str(code_dir), str(LAYER_DIR)]),
        AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        AWS_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    if not outside_lambda:
        environment["LAMBDA_TASK_ROOT"] = str(code_dir)
    return environment


def import_run(target: ImportTarget, python: str = sys.executable) -> ImportRun:
    """One cold start of ``target`` in a new interpreter (raises if the import fails)."""
    result = subprocess.run(
        [python, "-c", _TIMED.format(baseline=BASELINE_IMPORTS, imports=target.imports)],
        cwd=target.code_dir,
        env=target.environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{target.name}: import failed\n{result.stderr}")
    (baseline_wall, baseline_cpu), (wall, cpu) = (map(float, line.split()) for line in result.stdout.splitlines()[-2:])
    return ImportRun(baseline_wall, baseline_cpu, baseline_wall + wall, baseline_cpu + cpu)


def measure(runs: int = 9, *, outside_lambda: bool = False) -> list[ColdStart]:
    """Median cold start of every function and the baseline over ``runs`` interleaved rounds (after a warm-up
    round that writes the bytecode caches), the baseline first."""
    targets = import_targets(outside_lambda=outside_lambda)
    samples: dict[str, list[ImportRun]] = {target.name: [] for target in targets}
    for round_number in range(runs + 1):
        order = random.sample(targets, len(targets))
        for target in order:
            run = import_run(target)
            if round_number:
                samples[target.name].append(run)
    return [_cold_start(target, samples[target.name]) for target in targets]


def _cold_start(target: ImportTarget, runs: list[ImportRun]) -> ColdStart:
    return ColdStart(
        target.name,
        target.imports,
        statistics.median(run.seconds for run in runs),
        statistics.median(run.seconds / run.baseline_seconds for run in runs),
        statistics.median(run.cpu_seconds for run in runs),
        statistics.median(run.cpu_seconds / run.baseline_cpu_seconds for run in runs),
    )


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=9, help="measured rounds (median of these), default 9")
    parser.add_argument("--outside-lambda", action="store_true", help="leave LAMBDA_TASK_ROOT unset (as locally)")
    options = parser.parse_args(arguments)
    sys.stdout.write(f"{'function':30} {'wall':>9} {'ratio':>6} {'cpu':>9} {'ratio':>6}\n")
    for cold_start in measure(options.runs, outside_lambda=options.outside_lambda):
        sys.stdout.write(
            f"{cold_start.name:30} {cold_start.median_seconds * 1000:6.0f} ms {cold_start.ratio:5.2f}x"
            f" {cold_start.median_cpu_seconds * 1000:6.0f} ms {cold_start.cpu_ratio:5.2f}x\n"
        )


if __name__ == "__main__":
    main()
