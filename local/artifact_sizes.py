"""Unzipped sizes of what ``sam build`` built, against Lambda's 250 MB limit.

Reads the template SAM writes into its build folder, measures each function's and layer's folder (the bytes its
zip holds once unzipped) and adds to each function the layers it runs with (``Globals`` first, as SAM merges
them): Lambda counts a function's code and all its layers together. ``make artifacts`` runs it; by hand::

    python -m local.artifact_sizes --build-dir .aws-sam/build [--not-built WeasyPrintLayer]

Prints a table and exits 1 when a function with its layers, or one artifact, is not below the limit, when an
artifact was not built and is not named with ``--not-built`` (a resource SAM skipped without anyone deciding so),
or when ``--not-built`` names something the template lacks. A function that uses an unbuilt layer is checked on
what was built: its total is a lower bound. It also exits 1 when a built layer, or a function that ships installed
packages, holds a Python module without unchecked-hash bytecode beside it: Lambda's /opt and /var/task are
read-only, so such a module is compiled again in every cold start (layers/billing/Makefile and
functions/render_invoice/Makefile compile them at build time). A function of our own modules alone is a few
kilobytes of source and is not held to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.template import parse_template_text

# Lambda refuses a function or layer whose unzipped size is not "smaller than 262144000 bytes" (250 MiB).
LAMBDA_UNZIPPED_LIMIT = 262_144_000
MIB = 1024 * 1024

# Where each buildable resource type keeps the folder SAM rewrites to its built artifact.
FUNCTION_CODE = {"AWS::Serverless::Function": "CodeUri", "AWS::Lambda::Function": "Code"}
LAYER_CONTENT = {"AWS::Serverless::LayerVersion": "ContentUri", "AWS::Lambda::LayerVersion": "Content"}


@dataclass(frozen=True)
class Artifact:
    """A function's code or a layer; ``size`` is None when it was not built into the build folder."""

    logical_id: str
    kind: str  # "function" or "layer"
    size: int | None
    uncompiled: tuple[str, ...] = ()  # modules without bytecode usable as it ships (layers, functions with packages)


@dataclass(frozen=True)
class FunctionTotal:
    """A function's code and the layers it runs with, as Lambda adds them up."""

    function: Artifact
    layers: tuple[Artifact, ...]

    @property
    def known_size(self) -> int:
        """The bytes of the parts that were built (all of them when ``complete``)."""
        return sum(part.size or 0 for part in (self.function, *self.layers))

    @property
    def complete(self) -> bool:
        """Whether every part was built, so ``known_size`` is the size Lambda will see."""
        return all(part.size is not None for part in (self.function, *self.layers))

    @property
    def over_limit(self) -> bool:
        """True when even the built parts are not below the limit."""
        return self.known_size >= LAMBDA_UNZIPPED_LIMIT


@dataclass(frozen=True)
class BuildReport:
    """Every artifact of a build folder and every zip function's total."""

    artifacts: tuple[Artifact, ...]
    functions: tuple[FunctionTotal, ...]

    def problems(self, allowed_unbuilt: Iterable[str] = ()) -> list[str]:
        """Why the build cannot be deployed as it is; empty when it can (the allowed unbuilt ones aside)."""
        allowed = set(allowed_unbuilt)
        known = {artifact.logical_id for artifact in self.artifacts}
        # A stale name would let a renamed resource's skip go unnoticed.
        found = [f"--not-built {name}: the template has no such function or layer" for name in sorted(allowed - known)]
        found += [
            f"{artifact.logical_id} was not built"
            for artifact in self.artifacts
            if artifact.size is None and artifact.logical_id not in allowed
        ]
        found += [
            f"{artifact.logical_id}: {len(artifact.uncompiled)} modules without unchecked-hash bytecode, compiled "
            f"again in every cold start (e.g. {', '.join(artifact.uncompiled[:3])})"
            for artifact in self.artifacts
            if artifact.uncompiled
        ]
        found += [
            f"{artifact.logical_id} alone is {_mb(artifact.size)}, not below {_mb(LAMBDA_UNZIPPED_LIMIT)}"
            for artifact in self.artifacts
            if artifact.size is not None and artifact.size >= LAMBDA_UNZIPPED_LIMIT
        ]
        found += [
            f"{total.function.logical_id} with its layers is {_mb(total.known_size)}"
            f"{'' if total.complete else ' or more'}, not below {_mb(LAMBDA_UNZIPPED_LIMIT)}"
            for total in self.functions
            if total.over_limit
        ]
        return found


def folder_size(folder: Path) -> int:
    """The bytes of every file under ``folder``, symbolic links followed (as SAM zips them)."""
    return sum(
        (Path(root) / name).stat().st_size for root, _dirs, files in os.walk(folder, followlinks=True) for name in files
    )


# The flags word of a .pyc (PEP 552): bit 0 hash-based, bit 1 check the source. Unchecked-hash bytecode is used
# whatever the source's timestamp, which a zip does not keep.
UNCHECKED_HASH_FLAGS = 0b01


def modules_without_bytecode(folder: Path) -> list[str]:
    """The ``.py`` files under ``folder`` (relative) whose CPython 3.12 bytecode is missing or would be checked
    against the source's timestamp or hash."""
    missing = []
    for source in sorted(folder.rglob("*.py")):
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        header = compiled.read_bytes()[:8] if compiled.is_file() else b""
        if len(header) < 8 or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH_FLAGS:
            missing.append(str(source.relative_to(folder)))
    return missing


def read_build(build_dir: Path) -> BuildReport:
    """Measure the functions and layers of the template SAM wrote into ``build_dir``."""
    build_dir = build_dir.resolve()
    document = parse_template_text((build_dir / "template.yaml").read_text(encoding="utf-8"))
    resources: dict[str, dict[str, Any]] = {
        logical_id: resource
        for logical_id, resource in (document.get("Resources") or {}).items()
        if isinstance(resource, dict)
    }
    global_layers = list(((document.get("Globals") or {}).get("Function") or {}).get("Layers") or [])

    layers: dict[str, Artifact] = {}
    functions: dict[str, Artifact] = {}
    for logical_id, resource in resources.items():
        resource_type = resource.get("Type")
        properties = resource.get("Properties") or {}
        if resource_type in LAYER_CONTENT:
            folder = _built_folder(build_dir, properties.get(LAYER_CONTENT[resource_type]))
            layers[logical_id] = Artifact(
                logical_id,
                "layer",
                None if folder is None else folder_size(folder),
                () if folder is None else tuple(modules_without_bytecode(folder)),
            )
        elif resource_type in FUNCTION_CODE and _is_zip_function(properties):
            folder = _built_folder(build_dir, properties.get(FUNCTION_CODE[resource_type]))
            ships_packages = folder is not None and any(folder.glob("*.dist-info"))
            functions[logical_id] = Artifact(
                logical_id,
                "function",
                None if folder is None else folder_size(folder),
                tuple(modules_without_bytecode(folder)) if folder is not None and ships_packages else (),
            )

    totals = []
    for logical_id, function in functions.items():
        properties = resources[logical_id].get("Properties") or {}
        declared = list(properties.get("Layers") or [])
        if resources[logical_id].get("Type") == "AWS::Serverless::Function":
            declared = global_layers + declared  # SAM puts the Globals list first
        totals.append(FunctionTotal(function, tuple(_layer(reference, layers) for reference in declared)))
    return BuildReport(artifacts=(*layers.values(), *functions.values()), functions=tuple(totals))


def render(report: BuildReport, allowed_unbuilt: Iterable[str] = ()) -> str:
    """The report as two tables: each artifact, then each function with its layers."""
    allowed = set(allowed_unbuilt)
    limit = LAMBDA_UNZIPPED_LIMIT
    width = max([len(artifact.logical_id) for artifact in report.artifacts] + [len("function")])
    lines = [
        f"Unzipped sizes; Lambda's limit is {_mb(limit)} ({limit:,} bytes) for a function's code and its layers",
        "together (kB = 1024 bytes, MB = 1024 kB).",
        "",
        f"{'artifact':<{width}}  {'kind':<8}  {'unzipped':>9}  {'of limit':>8}",
    ]
    for artifact in sorted(report.artifacts, key=lambda item: (item.kind, item.logical_id)):
        if artifact.size is None:
            reason = "deliberately not built here" if artifact.logical_id in allowed else "NOT BUILT"
            lines.append(f"{artifact.logical_id:<{width}}  {artifact.kind:<8}  {reason}")
        else:
            lines.append(
                f"{artifact.logical_id:<{width}}  {artifact.kind:<8}  {_mb(artifact.size):>9}  "
                f"{_percent(artifact.size):>8}"
            )
    lines += ["", f"{'function':<{width}}  {'code':>9}  {'+ layers':>9}  {'= total':>11}  {'of limit':>9}  layers"]
    for total in sorted(report.functions, key=lambda item: item.function.logical_id):
        layer_bytes = total.known_size - (total.function.size or 0)
        bound = "" if total.complete else ">="
        names = ", ".join(
            layer.logical_id + ("" if layer.size is not None else " (not built here)") for layer in total.layers
        )
        code = _mb(total.function.size) if total.function.size is not None else "not built"
        lines.append(
            f"{total.function.logical_id:<{width}}  {code:>9}  {_mb(layer_bytes):>9}  "
            f"{bound + _mb(total.known_size):>11}  {bound + _percent(total.known_size):>9}  {names or '-'}"
        )
    if any(not total.complete for total in report.functions):
        lines += ["", ">= : a layer was not built here; the total counts what was built."]
    return "\n".join(lines)


def main(arguments: Sequence[str] | None = None) -> int:
    """Print the tables; return 1 (with the reasons on stderr) when the build cannot be deployed as it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--build-dir", type=Path, default=Path(".aws-sam/build"), help="sam build's --build-dir")
    parser.add_argument(
        "--not-built",
        action="append",
        default=[],
        metavar="LOGICAL_ID",
        help="a function or layer left out of this build on purpose (sam build --exclude); repeatable",
    )
    options = parser.parse_args(arguments)
    report = read_build(options.build_dir)
    print(render(report, options.not_built))
    problems = report.problems(options.not_built)
    for problem in problems:
        print(f"artifact sizes: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _is_zip_function(properties: dict[str, Any]) -> bool:
    # Images have their own 10 GB limit and inline code has no folder: neither is measured here.
    return properties.get("PackageType", "Zip") == "Zip" and "InlineCode" not in properties


def _built_folder(build_dir: Path, location: Any) -> Path | None:
    # SAM rewrites a built artifact's location to its folder inside the build folder; one it did not build
    # (--exclude) keeps pointing at the source, outside it.
    if not isinstance(location, str):
        return None
    folder = (build_dir / location).resolve()
    return folder if folder.is_dir() and folder.is_relative_to(build_dir) else None


def _layer(reference: Any, layers: dict[str, Artifact]) -> Artifact:
    if isinstance(reference, dict) and reference.get("Ref") in layers:
        return layers[reference["Ref"]]
    # A layer ARN or parameter: published elsewhere, so its size is not in this build.
    return Artifact(str(reference.get("Ref") if isinstance(reference, dict) else reference), "layer", None)


def _mb(size: int) -> str:
    # Handler folders weigh kilobytes; "0.0 MB" would hide them.
    return f"{size / MIB:.1f} MB" if size >= MIB else f"{size / 1024:.0f} kB"


def _percent(size: int) -> str:
    return f"{100 * size / LAMBDA_UNZIPPED_LIMIT:.1f}%"


if __name__ == "__main__":
    sys.exit(main())
