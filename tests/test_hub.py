"""save_pretrained / from_pretrained: strict, offline, pickle-free."""

import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from neurofm.hub import PretrainedError, PretrainedMixin, load_pretrained


@dataclass
class TinyConfig:
    d: int = 4
    units: list[str] = field(default_factory=lambda: ["s/u0", "s/u1"])


class Tiny(nn.Module, PretrainedMixin):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(len(config.units), config.d)
        self.head = nn.Linear(config.d, 1)


def _model(**kw):
    torch.manual_seed(0)
    return Tiny(TinyConfig(**kw))


def test_round_trip_is_exact_and_writes_no_pickle(tmp_path):
    m = _model(d=6, units=["a/1", "a/2", "b/7"])
    m.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model_type"] == "Tiny" and meta["config"]["units"] == ["a/1", "a/2", "b/7"]
    assert "neurofm_version" in meta
    loaded = Tiny.from_pretrained(tmp_path / "m")
    assert loaded.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert load_pretrained(tmp_path / "m").config == m.config


def test_loads_in_a_fresh_process_offline(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from test_hub import Tiny\n"
        "m = Tiny.from_pretrained(%r)\n"
        "print(m.config.d)\n"
    ) % (str(__import__('pathlib').Path(__file__).parent), str(tmp_path / "m"))
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "4"


def test_mismatched_weights_name_the_key(tmp_path):
    _model(d=4).save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["d"] = 5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match=r"emb\.weight.*file \(2, 4\) vs model \(2, 5\)"):
        Tiny.from_pretrained(tmp_path / "m")


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    from safetensors.torch import save_file

    _model().save_pretrained(tmp_path / "m")
    state = {k: v for k, v in _model().state_dict().items() if k != "head.bias"}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(PretrainedError, match=r"missing keys head\.bias.*unexpected keys extra\.weight"):
        Tiny.from_pretrained(tmp_path / "m")


def test_truncated_weights_fail_clearly(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(PretrainedError, match="truncated or corrupt"):
        Tiny.from_pretrained(tmp_path / "m")


def test_older_folder_missing_a_key_loads_with_warning(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["units"]  # as if written before the field existed; the default fits
    meta["neurofm_version"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"0\.0\.1.*units"):
        Tiny.from_pretrained(tmp_path / "m")


def test_unknown_config_key_is_an_error(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["n_wings"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="n_wings"):
        Tiny.from_pretrained(tmp_path / "m")


def test_not_a_folder_nor_repo_id(tmp_path):
    with pytest.raises(PretrainedError, match="not a pretrained folder"):
        Tiny.from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="config.json: missing"):
        Tiny.from_pretrained(tmp_path / "empty")


def test_unreachable_hub_repo_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedError, match="could not be fetched"):
        Tiny.from_pretrained("neurofm-test/does-not-exist", local_files_only=True)
