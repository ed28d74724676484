"""The library never imports the applications: attention, layers, models, data, checkpoints, tasks and train import
nothing from qtvit.tools (nor from the old top-level homes of the applications), read from the code itself, lazy
imports inside functions and ``importlib.import_module("...")`` strings included."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "qtvit"
LIBRARY = ("attention", "layers", "models", "data", "checkpoints", "tasks", "train")
APPLICATIONS = ("qtvit.tools", "qtvit.export", "qtvit.viz", "qtvit.viz_seg", "qtvit.bench", "qtvit.study",
                "qtvit.figures")


def _module_name(path: Path, pkg_root: Path) -> tuple[str, str]:
    """(the module's dotted name, the package its relative imports start from)."""
    parts = list(path.relative_to(pkg_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported_modules(source: str, path: Path, pkg_root: Path) -> set[str]:
    """Every qtvit module a file imports, wherever the import statement sits, relative imports resolved; a name
    imported from a package counts as its submodule too (``from qtvit import tools`` imports qtvit.tools)."""
    _, package = _module_name(path, pkg_root)
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {m for m in found if m == "qtvit" or m.startswith("qtvit.")}


def library_to_application(pkg_root: Path) -> list[str]:
    bad = []
    for path in sorted(pkg_root.rglob("*.py")):
        if path.relative_to(pkg_root).parts[0] not in LIBRARY:
            continue
        for module in sorted(imported_modules(path.read_text(), path, pkg_root)):
            if any(module == app or module.startswith(app + ".") for app in APPLICATIONS):
                bad.append(f"{path.relative_to(pkg_root)} imports {module}")
    return bad


def test_the_library_never_imports_the_applications():
    assert [p for p in LIBRARY if (PKG / p).is_dir()], "no library package found: wrong root?"
    assert library_to_application(PKG) == []


def test_the_check_finds_a_lazy_relative_import(tmp_path):
    """The parser above sees what it must refuse: a lazy relative import, a package-name import, an import_module."""
    pkg = tmp_path / "qtvit"
    (pkg / "train").mkdir(parents=True)
    (pkg / "tools").mkdir()
    (pkg / "train" / "a.py").write_text("def f():\n    from ..tools.export import export_onnx\n")
    (pkg / "train" / "b.py").write_text("from .. import tools\n")
    (pkg / "train" / "c.py").write_text("import importlib\nimportlib.import_module('qtvit.tools.bench')\n")
    (pkg / "train" / "d.py").write_text("from ..models import create_model\n")  # library to library: fine
    (pkg / "tools" / "e.py").write_text("from ..train import a\n")  # application to library: fine
    bad = library_to_application(pkg)
    assert bad == ["train/a.py imports qtvit.tools.export", "train/a.py imports qtvit.tools.export.export_onnx",
                   "train/b.py imports qtvit.tools", "train/c.py imports qtvit.tools.bench"]


def test_the_applications_live_in_tools():
    """No application module sits beside the library except the deprecated one-line aliases."""
    for name in ("bench", "study", "figures"):
        assert not (PKG / name).exists(), f"src/qtvit/{name} belongs under src/qtvit/tools/"
    for alias in ("export.py", "viz.py"):
        if (PKG / alias).exists():
            code = [n for n in ast.parse((PKG / alias).read_text()).body
                    if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
            assert len(code) <= 5, f"src/qtvit/{alias} should only re-export qtvit.tools (one piece of code per job)"


def test_the_task_checker_agrees():
    """The project's checker (../shared/tools/check_tasks.py beside the checkout, where present) counts 0 too."""
    checker = ROOT.parent / "shared" / "tools" / "check_tasks.py"
    if not checker.is_file():
        pytest.skip(f"no {checker} beside this checkout")
    out = subprocess.run([sys.executable, str(checker)], cwd=ROOT, capture_output=True, text=True).stdout
    assert " 0 library->application imports" in out, out


@pytest.mark.parametrize("old, new", [("qtvit.export", "qtvit.tools.export"), ("qtvit.viz", "qtvit.tools.figures")])
def test_old_module_paths_warn_and_give_the_same_objects(old, new):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        alias = importlib.import_module(old)
    target = importlib.import_module(new)
    assert alias.__all__ == target.__all__ and alias.__all__
    assert all(getattr(alias, name) is getattr(target, name) for name in target.__all__)
