"""README.md shows real outputs: ``tools/readme.py`` reruns the marked blocks and this test
fails when one is stale (refresh with ``python tools/readme.py``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "data"
spec = importlib.util.spec_from_file_location("readme_tool", ROOT / "tools" / "readme.py")
readme_tool = sys.modules["readme_tool"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tool)


def _doc(output: str) -> str:
    return ("# t\n\n```bash\necho one; echo two >&2\nneurofm --version\n```\n<!-- readme: output -->\n"
            f"```text\n{output}```\n\nprose\n<!-- readme: run -->\n```python\nopen('made.txt', 'w').write('x')\n"
            "```\n```python\nimport warnings; warnings.warn('careful')\nprint(open('made.txt').read())\n```\n"
            "<!-- readme: output -->\n```text\nstale\n```\n")


def test_the_tool_rewrites_stale_blocks_and_check_fails_until_then(tmp_path, capsys):
    import neurofm

    doc = tmp_path / "README.md"
    doc.write_text(_doc("old\n"))
    assert readme_tool.main([str(doc), "--check"]) == 1
    assert "-old" in capsys.readouterr().out and doc.read_text() == _doc("old\n")  # --check writes nothing
    assert readme_tool.main([str(doc)]) == 0
    fresh = doc.read_text()
    assert f"```text\none\ntwo\nneurofm {neurofm.__version__}\n```" in fresh  # stdout and stderr, in order
    assert "```text\nUserWarning: careful\nx\n```" in fresh  # setup block ran first; warnings without paths
    assert "prose\n<!-- readme: run -->" in fresh and fresh.count("```") == _doc("").count("```")
    assert readme_tool.main([str(doc), "--check"]) == 0


def test_markers_that_point_nowhere_are_errors(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("<!-- readme: output -->\n```text\nx\n```\n")
    with pytest.raises(SystemExit, match="must follow a bash or python block"):
        readme_tool.main([str(doc), "--check"])
    doc.write_text("```bash\ntrue\n```\n<!-- readme: output -->\nsome prose\n```text\nx\n```\n")
    with pytest.raises(SystemExit, match="must come right before a fenced block"):
        readme_tool.main([str(doc), "--check"])
    doc.write_text("```bash\nexit 3\n```\n<!-- readme: output -->\n```text\nx\n```\n")
    with pytest.raises(SystemExit, match="exited with status 3"):
        readme_tool.main([str(doc)])


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent: the README's examples read it")
def test_readme_outputs_are_current():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "readme.py"), "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"README.md is stale; run `python tools/readme.py`:\n{done.stdout[-6000:]}" \
                                 f"\n{done.stderr[-2000:]}"
