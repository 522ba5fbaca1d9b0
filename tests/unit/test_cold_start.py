"""What a cold start costs: importing a handler builds none of our pydantic models, makes no AWS client and loads
neither the Stripe SDK nor WeasyPrint; each of those is paid for on first use only (a charge, a document rendered).
Its imports run with the cyclic garbage collector paused, and it leaves the collector running
(``billing_lambda.startup``).

Handlers are imported in a fresh interpreter, as Lambda does (their folder first on ``sys.path``, then the
layer), one function after another with each function's own modules dropped in between.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from billing.schema import Model
from local.template import Resolver, load_template

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "billing"
DEPLOYED = [LAYER, ROOT / "functions"]
# Models a handler itself uses when imported: the refund route's default body (everything still refundable).
MADE_AT_IMPORT = {"AddPaymentFunction": ["RefundRequest"]}

_IMPORT_EVERY_HANDLER = """
import gc, importlib, json, sys
from billing.schema import Model
from billing_lambda import aws_clients

def built(model=Model):
    below = model.__subclasses__()
    return {m.__name__ for m in below if m.__pydantic_complete__}.union(*(built(m) for m in below))

seen = {}
for function_id, code_dir, module in json.loads(sys.argv[1]):
    before, frozen = built(), gc.get_freeze_count()
    sys.path.insert(0, code_dir)
    importlib.import_module(module)
    collector = {"enabled": gc.isenabled(), "froze": gc.get_freeze_count() > frozen}
    loaded = [name for name in ("stripe", "weasyprint") if name in sys.modules]
    clients = aws_clients.client.cache_info().currsize
    aws_clients.client.cache_clear()
    seen[function_id] = {"built": sorted(built() - before), "loaded": loaded, "clients": clients, "gc": collector}
    sys.path.remove(code_dir)
    own = [name for name, mod in sys.modules.items() if (getattr(mod, "__file__", "") or "").startswith(code_dir)]
    for name in own:
        del sys.modules[name]
print(json.dumps(seen))
"""


def _handler_imports() -> dict[str, dict[str, Any]]:
    template = load_template()
    resolver = Resolver(template)
    handlers, environment = [], {}
    for function_id, spec in template.functions.items():
        handlers.append((function_id, str(spec.code_dir), spec.handler_module))
        environment.update(resolver.function_environment(function_id))
    environment = {**os.environ, **environment, "PYTHONPATH": str(LAYER)}
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_HANDLER, json.dumps(handlers)],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_a_handler_builds_no_model_and_loads_no_sdk_it_may_never_use() -> None:
    seen = _handler_imports()

    assert seen, "no function in the template"
    for function_id, cold_start in seen.items():
        assert cold_start["built"] == MADE_AT_IMPORT.get(function_id, []), function_id
        assert cold_start["loaded"] == [], function_id
        assert cold_start["clients"] == 0, f"{function_id} makes an AWS client at import"
        assert cold_start["gc"] == {"enabled": True, "froze": True}, f"{function_id} did not call startup.ready()"


def test_every_handler_starts_with_the_collector_paused_and_ends_by_resuming_it() -> None:
    template = load_template()
    for function_id, spec in template.functions.items():
        module = ast.parse(spec.code_dir.joinpath(*spec.handler_module.split(".")).with_suffix(".py").read_text())
        statements = module.body[1:] if ast.get_docstring(module) else module.body
        first, last = ast.unparse(statements[0]), ast.unparse(statements[-1])
        assert first == "from billing_lambda import startup", f"{function_id}: {first}"
        assert last == "startup.ready()", f"{function_id}: {last}"


def test_a_batch_worker_does_not_build_powertools_event_models() -> None:
    # Powertools' batch utility builds its pydantic models of every event source (~25 ms) when pydantic was
    # imported before it; our workers read the SQS record as a data class, so they import it first.
    template = load_template()
    resolver = Resolver(template)
    workers = {
        function_id: spec
        for function_id, spec in template.functions.items()
        if "utilities.batch" in spec.code_dir.joinpath(*spec.handler_module.split(".")).with_suffix(".py").read_text()
    }
    assert workers, "no function of the template uses Powertools' batch utility"
    for function_id, spec in workers.items():
        environment = {
            **os.environ,
            **resolver.function_environment(function_id),
            "PYTHONPATH": os.pathsep.join([str(spec.code_dir), str(LAYER)]),
        }
        check = f"import sys, {spec.handler_module}; print('aws_lambda_powertools.utilities.parser' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", check], cwd=spec.code_dir, env=environment, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == "False", f"{function_id} builds Powertools' parser models at import"


def test_every_model_of_the_deployed_code_is_built_on_first_use() -> None:
    direct = re.compile(r"^class \w+\((pydantic\.)?BaseModel\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in DEPLOYED
        for path in folder.rglob("*.py")
        if direct.search(path.read_text()) and path != LAYER / "billing" / "schema.py"
    ]
    assert offenders == []  # they derive from billing.schema.Model (defer_build) instead


class _Line(Model):
    amount_cents: int


class _Statement(Model):
    lines: list[_Line]
    total: _Line | None = None


def test_a_model_made_by_another_models_validator_serializes_like_any_other() -> None:
    statement = _Statement.model_validate({"lines": [{"amount_cents": 100}], "total": {"amount_cents": 100}})

    # pydantic-core infers the type here and would raise on an unbuilt class: building _Statement built _Line.
    assert to_jsonable_python(statement.total) == {"amount_cents": 100}
    assert to_jsonable_python(statement.lines) == [{"amount_cents": 100}]
