"""The import contract of pyproject.toml ([tool.importlinter]): the package's layering
(cli > experiment > recipes > tasks/evaluation > models | data > hub/tokens/atlas > nn >
config/metrics), and models free of data, Lightning tasks, recipes and runners. A violation,
even a lazy import inside a function, fails this test with import-linter's report naming the
importing line."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout, run.stdout


def test_pyflakes_clean():
    """No unused import, undefined name or placeholder-less f-string in the package, the benches,
    the tools, train.py and the tests (``python -m pyflakes neurofm bench tools train.py tests``)."""
    pytest.importorskip("pyflakes", reason="pyflakes is in the dev extra: pip install -e '.[dev]'")
    run = subprocess.run([sys.executable, "-m", "pyflakes", "neurofm", "bench", "tools", "train.py", "tests"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_every_neurofm_import_names_an_existing_module():
    """Imports inside functions run only on their code path: one naming a module that moved
    (e.g. ``neurofm.data.atlas`` after SpatialVocab moved to ``neurofm.atlas``) fails only when
    a user reaches it. Every ``import neurofm...`` / ``from neurofm... import`` in the package
    must resolve, wherever it sits."""
    import ast
    import importlib.util

    missing = []
    for path in sorted((ROOT / "neurofm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "neurofm" and importlib.util.find_spec(name) is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not missing, "\n".join(missing)
