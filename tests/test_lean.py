"""The bedside runtime never needs torch: `import usedge.runtime` and `usedge infer` (files and a stream)
run in a process where importing torch raises, and no runtime module imports torch/train/export."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import usedge

RUNTIME = Path(usedge.__file__).parent / "runtime"
FORBIDDEN = ("torch", "torchvision", "usedge.train", "usedge.export", "onnx", "sklearn", "optuna")


@pytest.fixture(scope="module")
def torchless_env(tmp_path_factory) -> dict:
    """PYTHONPATH with `torch` (and `openvino`) packages whose import raises, as on a base install."""
    block = tmp_path_factory.mktemp("no_torch")
    for name in ("torch", "torchvision", "openvino"):
        (block / name).mkdir()
        (block / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (blocked by test_lean)')\n")
    path = os.pathsep.join([str(block), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout after the block
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_runtime_module_imports_torch_train_or_export():
    bad = []
    for path in RUNTIME.rglob("*.py"):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(RUNTIME)}: {name}")
    assert not bad, bad


def test_import_runtime_without_torch(torchless_env):
    code = ("import sys, importlib, pkgutil, usedge.runtime as r\n"
            "mods = [m.name for m in pkgutil.walk_packages(r.__path__, 'usedge.runtime.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "import usedge.cli\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnx', 'openvino')], 'heavy import'\n"
            "print(len(mods))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=torchless_env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 10


def test_infer_image_and_stream_without_torch(torchless_env, runtime_model, runtime_images, runtime_video, tmp_path):
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=torchless_env)
    assert check.returncode != 0 and "blocked by test_lean" in check.stderr
    image = sorted(runtime_images.glob("*.png"))[0]
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), str(image)],
                         capture_output=True, text=True, env=torchless_env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[0])["label"]
    summary = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-m", "usedge", "infer", str(runtime_model), "--stream", str(runtime_video),
                          "--max-frames", "6", "--summary", str(summary)],
                         capture_output=True, text=True, env=torchless_env, timeout=120)
    assert res.returncode == 0, res.stderr
    ran = json.loads(summary.read_text())
    assert ran["frames_read"] == 6
    assert ran["backend_reason"].startswith("ort-cpu: the only CPU backend")   # auto without openvino installed


@pytest.fixture(scope="module")
def missing_extras_env(tmp_path_factory) -> dict:
    """PYTHONPATH where torch, onnx and sklearn are missing as on a base install: importing them raises
    ModuleNotFoundError naming the module, as Python does for a package that is not there."""
    block = tmp_path_factory.mktemp("no_extras")
    for name in ("torch", "torchvision", "onnx", "sklearn", "openvino"):
        (block / name).mkdir()
        (block / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    path = os.pathsep.join([str(block), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("args, package, extra", [
    (["train", "{data}", "--out", "{tmp}/run"], "torch", "train"),
    (["explain", "{tmp}/m.pt", "{data}", "--out", "{tmp}/e"], "torch", "train"),
    (["export", "{tmp}/m.pt", "--out", "{tmp}/x"], "onnx", "export"),
    (["augment", "search", "{data}", "--out", "{tmp}/p.json"], "scikit-learn", "train"),
])
def test_a_command_whose_extra_is_missing_says_which_extra_in_one_line(missing_extras_env, tiny_cohort, tmp_path,
                                                                        args, package, extra):
    """On the base install `usedge train` (and the other torch commands) ended in a ModuleNotFoundError
    traceback (outside audit); now one line names the extra, as `usedge demo` and `usedge serve` did."""
    (tmp_path / "m.pt").write_bytes(b"x")
    argv = [a.format(data=tiny_cohort, tmp=tmp_path) for a in args]
    res = subprocess.run([sys.executable, "-m", "usedge", *argv], capture_output=True, text=True,
                         env=missing_extras_env, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    command = " ".join(["usedge", *args[:2 if args[0] == "augment" else 1]])
    assert f"usedge: {command} needs the package '{package}', which is not installed" in res.stderr
    assert f"pip install 'usedge[{extra}]'" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_the_source_distribution_holds_what_make_test_needs(tmp_path):
    """The sdist shipped the test files without conftest.py and tests/fixtures (22 collection errors), and
    without the Makefile, constraints, docs and LICENSE (outside audit): MANIFEST.in adds them."""
    import tarfile

    import setuptools.build_meta as backend

    root = Path(usedge.__file__).parent.parent
    if not (root / "MANIFEST.in").is_file():
        pytest.skip("not a source checkout")
    cwd = os.getcwd()
    try:
        os.chdir(root)
        name = backend.build_sdist(str(tmp_path))
    finally:
        os.chdir(cwd)
    with tarfile.open(tmp_path / name) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "Makefile", "constraints/ci.txt", "tests/conftest.py", "tests/fixtures/__init__.py",
                   "tests/fixtures/runtime.py", "docs/runtime.md", "benchmarks/cpuid_mask.c", "usedge/runtime/presets.toml",
                   "usedge/serve/static/index.html"):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_doctor_says_when_an_installed_package_does_not_import(missing_extras_env):
    """`usedge doctor` read torch's version from its metadata and said ok while `usedge train` could not
    import it (outside audit): an installed package that does not import is a failed check with the reason."""
    res = subprocess.run([sys.executable, "-m", "usedge", "doctor", "--json"], capture_output=True, text=True,
                         env=missing_extras_env, timeout=180)
    assert res.returncode == 0, res.stderr
    torch_check = next(c for c in json.loads(res.stdout) if c["name"] == "torch")
    assert not torch_check["ok"] and "does not import (ModuleNotFoundError" in torch_check["detail"]
    assert next(c for c in json.loads(res.stdout) if c["name"] == "numpy")["ok"]


def test_export_without_torch_names_the_export_extra():
    """`usedge export` without torch said pip install 'usedge[train]', which lacks onnx (outside audit)."""
    from usedge.cli import missing_extra

    exc = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert "pip install 'usedge[export]'" in missing_extra(exc, ["export", "m.pt", "--out", "x"]).one_line()
    assert "pip install 'usedge[train]'" in missing_extra(exc, ["train", "data"]).one_line()
    assert missing_extra(ModuleNotFoundError("x", name="yaml"), ["train"]) is None
