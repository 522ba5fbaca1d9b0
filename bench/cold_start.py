"""Cold start of every function in ``template.yaml``: the time to import its handler module in a new interpreter.

Each import runs in a fresh ``python`` set up as Lambda sets one up: the function's ``CodeUri`` folder first on
``sys.path`` (``/var/task``) and the shared layer after it (``/opt/python``), the ``CodeUri`` folder as working
folder, the function's resolved ``Environment`` and, unless ``outside_lambda``, ``LAMBDA_TASK_ROOT`` (Powertools'
Tracer and the X-Ray SDK only trace, and only patch libraries, when it is set). The baseline imports only what
any handler needs anyway (boto3, pydantic, Powertools' HTTP resolver, Logger and Metrics), so the ratio
handler / baseline says what our own modules add. Every run is a pair: the baseline imported in one new
interpreter, then the handler in the next, each alone as in its own Lambda instance (what a module imports
first decides what some libraries load: Powertools' batch utility builds its pydantic event models only if
pydantic was imported before it). The pair's ratio compares two imports made one after the other, under the
machine's load of that moment. The report takes the median over runs of the time and of the ratio; rounds are
interleaved (every function, in a new order each round). Both wall and CPU time are reported: on a machine shared
with other work the CPU time is the steadier of the two (an import waits on nothing but the CPU once the files are
in the page cache).
Every module is imported from valid bytecode (the warm-up round writes what is missing), so the numbers say what
the imports execute, not what compiling them costs.

    python bench/cold_start.py [--runs 9] [--outside-lambda]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
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
# What any handler of ours loads before its own code runs, imported as a handler imports (the cyclic GC paused, as
# billing_lambda.startup pauses it): the baseline's `import pydantic` is lazy and loads none of pydantic's model
# machinery, which every module that declares a model needs; and Powertools' Tracer with botocore patched, which
# every function needs to trace its AWS calls.
_PYDANTIC_MODELS = "from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field"
_TRACER = "from aws_lambda_powertools import Tracer\nTracer(auto_patch=False).patch(['botocore'])"
_MODELS_FLOOR = f"import gc\ngc.disable()\n{BASELINE_IMPORTS}\n{_PYDANTIC_MODELS}"
FLOORS = {
    "floor: + pydantic's model machinery": _MODELS_FLOOR,
    "floor: + pydantic's model machinery and the X-Ray tracer": f"{_MODELS_FLOOR}\n{_TRACER}",
}
# The child prints the wall and CPU seconds of the import, so interpreter start-up is left out.
_TIMED = (
    "import time\n_wall, _cpu = time.perf_counter(), time.process_time()\n{imports}\n"
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
    """One pair of cold starts, the baseline's and then the target's, in wall and CPU seconds."""

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
    """The baseline and the floors, then every function of the template with the environment Lambda would give
    it."""
    template = load_template()
    resolver = Resolver(template)
    baseline_environment = _lambda_environment(LAYER_DIR, outside_lambda)
    targets = [ImportTarget(BASELINE, BASELINE_IMPORTS, LAYER_DIR, baseline_environment)]
    targets += [ImportTarget(name, imports, LAYER_DIR, baseline_environment) for name, imports in FLOORS.items()]
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


def import_run(target: ImportTarget, baseline: ImportTarget, python: str = sys.executable) -> ImportRun:
    """The baseline's cold start, then ``target``'s, each in a new interpreter (raises if an import fails)."""
    baseline_wall, baseline_cpu = _timed_import(baseline, python)
    wall, cpu = _timed_import(target, python)
    return ImportRun(baseline_wall, baseline_cpu, wall, cpu)


def _timed_import(target: ImportTarget, python: str) -> tuple[float, float]:
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
    wall, cpu = map(float, result.stdout.splitlines()[-1].split())
    return wall, cpu


def measure(runs: int = 9, *, outside_lambda: bool = False) -> list[ColdStart]:
    """Median cold start of every function and the baseline over ``runs`` interleaved rounds (after a warm-up
    round that writes the bytecode caches), the baseline first."""
    targets = import_targets(outside_lambda=outside_lambda)
    samples: dict[str, list[ImportRun]] = {target.name: [] for target in targets}
    for round_number in range(runs + 1):
        order = random.sample(targets, len(targets))
        for target in order:
            run = import_run(target, targets[0])
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


# Functions whose cold start is also measured from the built layer (one per kind: HTTP API, payments, SQS worker).
DEPLOYED_FUNCTIONS = ("CalendarApiFunction", "AddPaymentFunction", "AutoPayWorkerFunction")
BUILD_DIR = REPO_ROOT / ".aws-sam" / "artifacts" / "build"  # `make artifacts`


@dataclass(frozen=True)
class DeployedColdStart:
    """Median import of one function from the built artifacts: the layer as layers/billing/Makefile builds it
    (bytecode compiled at build time) and as SAM's python3.12 builder ships it (sources only)."""

    name: str
    precompiled_seconds: float
    sources_only_seconds: float


def deployed_cold_starts(runs: int = 5, build_dir: Path = BUILD_DIR) -> list[DeployedColdStart]:
    """Each of `DEPLOYED_FUNCTIONS` imported as Lambda imports it from what ``sam build`` wrote: the function's
    folder, then the layer's ``python`` folder, nothing else (``-S``: the layer carries boto3 too), and no bytecode
    written (Lambda's /var/task and /opt are read-only). Interleaved rounds; median wall time of each."""
    layer = build_dir / "BillingLayer" / "python"
    if not layer.is_dir():
        raise RuntimeError(f"{layer} is missing: run `make artifacts` first")
    template = load_template()
    resolver = Resolver(template)
    with tempfile.TemporaryDirectory() as scratch:
        sources_only = Path(scratch) / "python"
        shutil.copytree(layer, sources_only, ignore=shutil.ignore_patterns("__pycache__"))
        samples: dict[tuple[str, bool], list[float]] = {}
        for _ in range(runs):
            for name in DEPLOYED_FUNCTIONS:
                code_dir = build_dir / name
                module = template.functions[name].handler_module
                environment = _lambda_environment(code_dir, False) | resolver.function_environment(name)
                environment |= {"PYTHONDONTWRITEBYTECODE": "1", "AWS_LAMBDA_FUNCTION_NAME": name}
                for precompiled, layer_dir in ((True, layer), (False, sources_only)):
                    seconds = _deployed_import(code_dir, layer_dir, module, environment)
                    samples.setdefault((name, precompiled), []).append(seconds)
    return [
        DeployedColdStart(name, statistics.median(samples[(name, True)]), statistics.median(samples[(name, False)]))
        for name in DEPLOYED_FUNCTIONS
    ]


def _deployed_import(code_dir: Path, layer_dir: Path, module: str, environment: dict[str, str]) -> float:
    program = (
        f"import sys, time\nsys.path[:0] = [{str(code_dir)!r}, {str(layer_dir)!r}]\n"
        f"started = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - started)"
    )
    environment = {name: value for name, value in environment.items() if name != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", program], cwd=code_dir, env=environment, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{code_dir.name}: import from the built artifacts failed\n{result.stderr}")
    return float(result.stdout.split()[-1])


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
