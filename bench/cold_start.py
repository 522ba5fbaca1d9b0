"""Cold start of every function in ``template.yaml``: the time to import its handler module in a new interpreter.

Each import runs in a fresh ``python`` set up as Lambda sets one up: the function's ``CodeUri`` folder first on
``sys.path`` (``/var/task``) and the shared layer after it (``/opt/python``), the ``CodeUri`` folder as working
folder, the function's resolved ``Environment`` and, unless ``outside_lambda``, ``LAMBDA_TASK_ROOT`` (Powertools'
Tracer and the X-Ray SDK only trace, and only patch libraries, when it is set). The baseline imports only what
any handler needs anyway (boto3, pydantic, Powertools' HTTP resolver, Logger and Metrics), so the ratio
handler / baseline says what our own modules add. Rounds are interleaved (baseline, then every function, in a
new order each round) so that a busy machine slows all of them alike; the report takes the median of each.

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
# The child prints the seconds its imports took, so interpreter start-up is left out of every number.
_TIMED = "import time\n_start = time.perf_counter()\n{imports}\nprint(time.perf_counter() - _start)"


@dataclass(frozen=True)
class ImportTarget:
    """What one cold start imports, and where: a function's handler module, or the baseline."""

    name: str
    imports: str
    code_dir: Path
    environment: dict[str, str]


@dataclass(frozen=True)
class ColdStart:
    """Median import time of one target, and its ratio to the baseline's median."""

    name: str
    handler: str
    median_seconds: float
    ratio: float


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
    environment.update(
        PYTHONPATH=os.pathsep.join([str(code_dir), str(LAYER_DIR)]),
        AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        AWS_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    if not outside_lambda:
        environment["LAMBDA_TASK_ROOT"] = str(code_dir)
    return environment


def import_seconds(target: ImportTarget, python: str = sys.executable) -> float:
    """One cold start of ``target`` in a new interpreter (raises if the import fails)."""
    result = subprocess.run(
        [python, "-c", _TIMED.format(imports=target.imports)],
        cwd=target.code_dir,
        env=target.environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{target.name}: import failed\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def measure(runs: int = 9, *, outside_lambda: bool = False) -> list[ColdStart]:
    """Median cold start of every function and the baseline over ``runs`` interleaved rounds (after a warm-up
    round that writes the bytecode caches), the baseline first."""
    targets = import_targets(outside_lambda=outside_lambda)
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    for round_number in range(runs + 1):
        order = random.sample(targets, len(targets))
        for target in order:
            seconds = import_seconds(target)
            if round_number:
                samples[target.name].append(seconds)
    medians = {name: statistics.median(seconds) for name, seconds in samples.items()}
    return [
        ColdStart(target.name, target.imports, medians[target.name], medians[target.name] / medians[BASELINE])
        for target in targets
    ]


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=9, help="measured rounds (median of these), default 9")
    parser.add_argument("--outside-lambda", action="store_true", help="leave LAMBDA_TASK_ROOT unset (as locally)")
    options = parser.parse_args(arguments)
    for cold_start in measure(options.runs, outside_lambda=options.outside_lambda):
        sys.stdout.write(f"{cold_start.name:30} {cold_start.median_seconds * 1000:7.1f} ms  {cold_start.ratio:4.2f}x\n")


if __name__ == "__main__":
    main()
