"""The package as users install it: a wheel built from the repository, installed outside it.

The wheel is built from a copy of ``pyproject.toml``, ``README.md`` and ``neurofm/`` (so the
repository gets no build/ or egg-info), installed with ``pip install --no-deps --target`` (the
dependencies are the test environment's own; nothing is downloaded) and run from a folder
outside the repository with only that folder on ``PYTHONPATH``: the shipped configs, the
console script and a short training must work from the installed files alone.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    return {**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The built wheel installed into a fresh folder; returns that folder (the site)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "neurofm", src / "neurofm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("neurofm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("neuroformer/demo", "neuroformer/paper", "neuroformer/finetune", "barista/demo",
                   "barista/paper", "barista/finetune"):
        assert f"neurofm/configs/{config}.yaml" in names, f"{config} not shipped in {wheel.name}"
    assert "neurofm/data/tables/lobes.tsv" in names
    site = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return site


def test_declared_dependencies_are_the_imported_ones():
    """Every third-party module neurofm imports is declared (a dependency or an extra), and
    every declared dependency is imported somewhere in neurofm."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    def dist(req: str) -> str:
        return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower().replace("_", "-")

    required = {dist(r) for r in meta["dependencies"]}
    extras = {dist(r) for reqs in meta["optional-dependencies"].values() for r in reqs}
    module_of = {"huggingface-hub": "huggingface_hub", "flash-attn": "flash_attn", "mne-bids": "mne_bids",
                 "pyyaml": "yaml"}
    imported = set()
    for path in (ROOT / "neurofm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"neurofm", "__future__"}
    third_party = imported - stdlib
    declared_modules = {module_of.get(d, d) for d in required | extras} | {"tensorboardX"}
    assert third_party <= declared_modules, f"imported, not declared: {sorted(third_party - declared_modules)}"
    unused = {d for d in required if module_of.get(d, d) not in imported}
    assert not unused, f"declared in [project.dependencies] but never imported by neurofm: {sorted(unused)}"


def test_wheel_installed_outside_the_repo_trains(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env(installed)
    where = subprocess.run([sys.executable, "-c", "import neurofm; print(neurofm.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).resolve().is_relative_to(installed.resolve()), where.stdout + where.stderr

    # the console script pip wrote, and the shipped configs by name
    script = installed / "bin" / "neurofm"
    done = subprocess.run([str(script), "--version"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().startswith("neurofm "), done.stdout + done.stderr
    done = subprocess.run([str(script), "config", "show", "barista/paper"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "family: barista" in done.stdout and "n_layers: 12" in done.stdout, done.stderr

    tiny = ["data.simulate.duration=40", "data.simulate.n_units=12", "model.n_embd=32", "model.n_head=2",
            "model.temporal_hidden=32", "model.block_size.id=16", "model.block_size.prev_id=32",
            "eval.generate_windows=0", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2", "trainer.progress_bar=false", "run_dir=run"]
    done = subprocess.run([sys.executable, "-m", "neurofm.cli", "train", "demo", *tiny], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (work / "run" / "pretrained" / "model.safetensors").is_file() and (work / "run" / "metrics.json").is_file()
    assert (work / "data" / "demo_spikes.h5").is_file()  # the demo simulates its session in the working folder
    assert not (work / "runs").exists()
