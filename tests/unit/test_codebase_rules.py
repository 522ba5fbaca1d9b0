"""Rules the whole codebase keeps: no Scan on any path, and money fields that are integers only."""

import importlib
import inspect
import pkgutil
import re
import types
import typing
from pathlib import Path

import pydantic

import billing

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = [ROOT / "layers", ROOT / "functions"]


def test_no_deployed_code_scans_the_table() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for folder in DEPLOYED
        for path in folder.rglob("*.py")
        if re.search(r"\.scan\(|[\"']Scan[\"']|paginate\(\s*[\"']scan", path.read_text())
    ]
    assert offenders == []


def _domain_models() -> list[type[pydantic.BaseModel]]:
    models = []
    for info in pkgutil.iter_modules(billing.__path__):
        module = importlib.import_module(f"billing.{info.name}")
        models += [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, pydantic.BaseModel) and obj.__module__ == module.__name__
        ]
    return models


def _base_types(annotation: object) -> set[object]:
    """The plain types behind Optional/Union/Annotated."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _base_types(typing.get_args(annotation)[0])
    if typing.get_args(annotation) and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in typing.get_args(annotation)))
    return {annotation}


def test_every_money_field_of_every_domain_model_is_an_integer() -> None:
    checked = 0
    for model in _domain_models():
        for name, field in model.model_fields.items():
            if not name.endswith("_cents"):
                continue
            checked += 1
            assert _base_types(field.annotation) <= {int, type(None)}, f"{model.__name__}.{name}: {field.annotation}"
    assert checked > 20
