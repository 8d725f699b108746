"""Nothing from a file is executed: every torch.load in usedge passes weights_only=True, and no
module unpickles, evals or shells out on data (checked on the source's syntax tree, so a new call
site cannot slip in). The runtime's ONNX loading refuses external data outside the model's folder
(tested with real files in test_reliability_badinput)."""

from __future__ import annotations

import ast
from pathlib import Path

import usedge

PACKAGE = Path(usedge.__file__).parent
FORBIDDEN_CALLS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "load"), ("marshal", "loads"),
                   ("yaml", "load"), ("dill", "load"), ("joblib", "load")}
FORBIDDEN_NAMES = {"eval", "exec", "compile"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return tuple(reversed(parts))


def test_no_unsafe_deserialisation_or_code_execution(reliability_ledger):
    problems, torch_loads, files = [], 0, 0
    for path in sorted(PACKAGE.rglob("*.py")):
        files += 1
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in _calls(tree):
            name = _dotted(call.func)
            where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno}"
            kwargs = {k.arg: k.value for k in call.keywords}
            if name[-2:] == ("torch", "load"):
                torch_loads += 1
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if len(name) >= 2 and name[-2:] in FORBIDDEN_CALLS:
                problems.append(f"{where}: {'.'.join(name)} runs code from data")
            if isinstance(call.func, ast.Name) and call.func.id in FORBIDDEN_NAMES:
                problems.append(f"{where}: {name[0]}()")
            if name in (("np", "load"), ("numpy", "load")):
                ap = kwargs.get("allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    problems.append(f"{where}: np.load(allow_pickle=True)")
            sh = kwargs.get("shell")
            if isinstance(sh, ast.Constant) and sh.value is True:
                problems.append(f"{where}: subprocess with shell=True")
    assert not problems, problems
    assert torch_loads >= 1          # the checkpoint loader is among them
    reliability_ledger.add("untrusted.static_scan", files_scanned=files, outputs_checked=torch_loads)
