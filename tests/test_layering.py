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
