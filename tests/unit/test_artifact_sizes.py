"""The deploy-size check: a function's code and all its layers together must stay below Lambda's limit."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from local.artifact_sizes import LAMBDA_UNZIPPED_LIMIT, folder_size, main, read_build

LIMIT = LAMBDA_UNZIPPED_LIMIT
SHARED_LAYER = 100 * 1024 * 1024

# What `sam build --exclude NativeLayer` writes: built artifacts point into the build folder, the excluded layer
# still at its source. SharedLayer comes from Globals, NativeLayer only to Renderer.
BUILT_TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.12
    Layers:
      - Ref: SharedLayer
Resources:
  SharedLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: SharedLayer
  NativeLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: ../../layers/native
  Api:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: Api
      Handler: app.lambda_handler
  Renderer:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: Renderer
      Handler: app.lambda_handler
      Layers:
        - !Ref NativeLayer
  Queue:
    Type: AWS::SQS::Queue
"""


def fake_build(root: Path, renderer_bytes: int, api_bytes: int = 2048) -> Path:
    """A build folder whose artifacts hold files of the given sizes (sparse, so nothing is really written); the
    layer's module has its bytecode, as layers/billing/Makefile builds it."""
    build = root / ".aws-sam" / "build"
    for folder, size in {"SharedLayer/python": SHARED_LAYER, "Api": api_bytes, "Renderer": renderer_bytes}.items():
        (build / folder).mkdir(parents=True)
        # Split in files in two folders: sizes add up over the whole tree.
        (build / folder / "app.py").write_bytes(b"x" * 1000)
        if folder == "SharedLayer/python":
            compile_layer_module(build / folder / "app.py", py_compile.PycInvalidationMode.UNCHECKED_HASH)
        (build / folder / "lib").mkdir()
        with (build / folder / "lib" / "blob.bin").open("wb") as blob:
            blob.truncate(size - folder_size(build / folder))
    (root / "layers" / "native").mkdir(parents=True)  # the excluded layer's source, outside the build
    (build / "template.yaml").write_text(BUILT_TEMPLATE, encoding="utf-8")
    return build


def compile_layer_module(source: Path, mode: py_compile.PycInvalidationMode) -> None:
    py_compile.compile(str(source), doraise=True, invalidation_mode=mode)


@pytest.mark.parametrize(
    "mode", [None, py_compile.PycInvalidationMode.TIMESTAMP, py_compile.PycInvalidationMode.CHECKED_HASH]
)
def test_a_layer_module_without_bytecode_usable_as_it_ships_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: py_compile.PycInvalidationMode | None
) -> None:
    build = fake_build(tmp_path, renderer_bytes=1024 * 1024)
    layer = build / "SharedLayer" / "python"
    (layer / "lib" / "extra.py").write_text("EXTRA = 1\n", encoding="utf-8")
    if mode is not None:  # timestamps a zip does not keep, or a hash checked against the source every import
        compile_layer_module(layer / "lib" / "extra.py", mode)
    uncompiled = {a.logical_id: a.uncompiled for a in read_build(build).artifacts}
    assert uncompiled["SharedLayer"] == ("python/lib/extra.py",)
    assert main(["--build-dir", str(build), "--not-built", "NativeLayer"]) == 1
    assert "SharedLayer: 1 modules without unchecked-hash bytecode" in capsys.readouterr().err


def test_a_function_that_ships_packages_needs_their_bytecode_and_one_of_our_modules_alone_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = fake_build(tmp_path, renderer_bytes=1024 * 1024)  # Api and Renderer: app.py, no bytecode
    assert main(["--build-dir", str(build), "--not-built", "NativeLayer"]) == 0
    (build / "Renderer" / "weasy-1.0.dist-info").mkdir()  # now it ships an installed package
    assert [a.uncompiled for a in read_build(build).artifacts if a.logical_id == "Renderer"] == [("app.py",)]
    assert main(["--build-dir", str(build), "--not-built", "NativeLayer"]) == 1
    assert "Renderer: 1 modules without unchecked-hash bytecode" in capsys.readouterr().err
    compile_layer_module(build / "Renderer" / "app.py", py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert main(["--build-dir", str(build), "--not-built", "NativeLayer"]) == 0


def test_a_function_is_measured_with_its_globals_layers_and_its_own(tmp_path: Path) -> None:
    report = read_build(fake_build(tmp_path, renderer_bytes=5000))

    totals = {total.function.logical_id: total for total in report.functions}
    assert totals["Api"].known_size == 2048 + SHARED_LAYER and totals["Api"].complete
    assert [layer.logical_id for layer in totals["Renderer"].layers] == ["SharedLayer", "NativeLayer"]
    assert totals["Renderer"].known_size == 5000 + SHARED_LAYER
    assert not totals["Renderer"].complete  # NativeLayer was not built: a lower bound
    sizes = {artifact.logical_id: artifact.size for artifact in report.artifacts}
    assert sizes == {"SharedLayer": SHARED_LAYER, "NativeLayer": None, "Api": 2048, "Renderer": 5000}


@pytest.mark.parametrize(
    ("renderer_bytes", "deployable"),
    [
        (LIMIT - SHARED_LAYER - 1, True),  # one byte below the limit with its layers
        (LIMIT - SHARED_LAYER, False),  # Lambda wants "smaller than" the limit
        (LIMIT - 1, False),  # below the limit alone, over it with the shared layer
    ],
)
def test_a_function_with_its_layers_must_stay_below_the_limit(
    tmp_path: Path, renderer_bytes: int, deployable: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    build = fake_build(tmp_path, renderer_bytes=renderer_bytes)

    exit_code = main(["--build-dir", str(build), "--not-built", "NativeLayer"])

    assert exit_code == (0 if deployable else 1)
    errors = capsys.readouterr().err
    assert ("Renderer with its layers is" in errors) is not deployable
    assert "Api" not in errors


def test_an_artifact_left_unbuilt_without_saying_so_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build(tmp_path, renderer_bytes=5000)

    assert main(["--build-dir", str(build)]) == 1
    assert "NativeLayer was not built" in capsys.readouterr().err
    assert main(["--build-dir", str(build), "--not-built", "NativeLayer"]) == 0


def test_a_skip_must_name_a_resource_of_the_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = fake_build(tmp_path, renderer_bytes=5000)

    assert main(["--build-dir", str(build), "--not-built", "NativeLayer", "--not-built", "OldLayer"]) == 1
    assert "--not-built OldLayer: the template has no such function or layer" in capsys.readouterr().err


def test_the_table_shows_each_artifact_and_each_function_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = fake_build(tmp_path, renderer_bytes=5000)

    main(["--build-dir", str(build), "--not-built", "NativeLayer"])

    table = capsys.readouterr().out
    assert "NativeLayer" in table and "deliberately not built here" in table
    renderer_row = next(line for line in table.splitlines() if line.startswith("Renderer ") and ">=" in line)
    assert "100.0 MB" in renderer_row and "SharedLayer, NativeLayer (not built here)" in renderer_row
