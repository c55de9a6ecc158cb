"""save_pretrained / from_pretrained: strict, offline, pickle-free."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from neurofm.hub import PretrainedError, PretrainedMixin, load_pretrained

_TESTS = Path(__file__).resolve().parent  # subprocesses import this checkout's neurofm, not an installed one


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
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
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
        "import sys; sys.path[:0] = [%r, %r]\n"
        "from test_hub import Tiny\n"
        "m = Tiny.from_pretrained(%r)\n"
        "print(m.config.d)\n"
    ) % (str(_TESTS), str(_TESTS.parent), str(tmp_path / "m"))
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


def test_a_run_folder_given_for_its_pretrained_folder_names_the_one_inside(tmp_path):
    """`neurofm finetune --pretrained runs/pre` (the run folder) said only "runs/pre/config.json: missing (is
    runs/pre a folder written by save_pretrained?)"; it now names runs/pre/pretrained, the folder to give."""
    from neurofm.hub import read_config

    _model().save_pretrained(tmp_path / "run" / "pretrained")
    with pytest.raises(PretrainedError, match=r"run is a run folder; its model is .*run/pretrained \(give "
                                              r"--pretrained .*run/pretrained\)"):
        read_config(tmp_path / "run")
    with pytest.raises(PretrainedError, match=r"a folder written by save_pretrained\?"):
        read_config(tmp_path)  # no pretrained/ inside either: the general message
    assert read_config(tmp_path / "run" / "pretrained")["model_type"] == "Tiny"


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


# -- huggingface_hub conventions: card, cache, revision, upload ---------------------------------


def test_is_a_huggingface_hub_mixin_and_writes_a_parsable_card(tmp_path):
    from huggingface_hub import ModelCard, ModelHubMixin

    m = _model()
    assert isinstance(m, ModelHubMixin)
    m.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.library_name == "neurofm"
    assert "`Tiny`" in card.text and "neurofm.from_pretrained" in card.text
    assert "None recorded with these weights" in card.text  # no run: no metrics claimed
    assert card.data.license is None  # data licence unknown: not claimed
    # an explicit card (a run's) replaces whatever README.md was there
    m.save_pretrained(tmp_path / "m", card="---\nlibrary_name: neurofm\n---\n# run card\n")
    assert (tmp_path / "m" / "README.md").read_text().endswith("# run card\n")
    with pytest.raises(TypeError, match=r"unexpected keywords \['config'\]"):
        m.save_pretrained(tmp_path / "m", config={"d": 3})  # never silently ignored


def _fake_hub_cache(cache, repo_id, model, commits):
    """Lay out a Hugging Face cache as huggingface_hub does: models--org--name/{refs,snapshots}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for ref, commit, d in commits:
        model.config.d = d
        snap = repo / "snapshots" / commit
        type(model)(model.config).save_pretrained(snap)
        (repo / "refs" / ref).write_text(commit)
    return repo


def test_loads_a_hub_repo_from_the_cache_offline_by_revision(tmp_path):
    commit_main, commit_v1 = "a" * 40, "b" * 40
    _fake_hub_cache(tmp_path / "hub", "neurofm-test/tiny", _model(),
                    [("main", commit_main, 6), ("v1", commit_v1, 3)])
    code = (
        "import sys; sys.path[:0] = [%r, %r]\n"
        "from test_hub import Tiny\n"
        "import neurofm\n"
        "print(Tiny.from_pretrained('neurofm-test/tiny').config.d)\n"
        "print(Tiny.from_pretrained('neurofm-test/tiny', revision='v1').config.d)\n"
        "print(neurofm.from_pretrained('neurofm-test/tiny', revision=%r).config.d)\n"
    ) % (str(_TESTS), str(_TESTS.parent), commit_v1)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home"),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", "3", "3"]


def test_cache_dir_and_local_files_only(tmp_path):
    _fake_hub_cache(tmp_path / "cache", "neurofm-test/tiny", _model(), [("main", "c" * 40, 5)])
    m = Tiny.from_pretrained("neurofm-test/tiny", cache_dir=tmp_path / "cache", local_files_only=True)
    assert m.config.d == 5
    with pytest.raises(PretrainedError, match=r"revision nope.*only the cache"):
        Tiny.from_pretrained("neurofm-test/tiny", cache_dir=tmp_path / "cache", local_files_only=True,
                             revision="nope")


def test_cached_repo_with_mismatched_weights_is_still_strict(tmp_path):
    repo = _fake_hub_cache(tmp_path / "cache", "neurofm-test/tiny", _model(), [("main", "d" * 40, 4)])
    meta_path = repo / "snapshots" / ("d" * 40) / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["d"] = 7
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match=r"emb\.weight.*file \(2, 4\) vs model \(2, 7\)"):
        load_pretrained("neurofm-test/tiny", cache_dir=tmp_path / "cache", local_files_only=True)


class _FakeApi:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        _FakeApi.calls.append({"repo_id": repo_id, "files": files, **kw})
        return f"https://huggingface.co/{repo_id}/commit/0"


def test_push_to_hub_uploads_weights_config_and_card(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    m = _model()
    url = m.push_to_hub("lab/tiny", token="t", branch="dev")
    call = _FakeApi.calls[-1]
    assert url.startswith("https://huggingface.co/lab/tiny")
    assert sorted(call["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert call["revision"] == "dev"
    assert b"library_name: neurofm" in call["files"]["README.md"]
    assert b'neurofm.from_pretrained("lab/tiny")' in call["files"]["README.md"]  # the snippet names the repo
    m.push_to_hub("lab/tiny", card="---\nlicense: mit\n---\n# mine\n")
    assert _FakeApi.calls[-1]["files"]["README.md"].endswith(b"# mine\n")


def test_push_pretrained_uploads_a_run_folder_with_its_card(monkeypatch, tmp_path):
    import huggingface_hub

    from neurofm.hub import push_pretrained

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    _model().save_pretrained(tmp_path / "m", card="---\nlibrary_name: neurofm\n---\n# the run's card\n")
    push_pretrained(tmp_path / "m", "lab/tiny")
    files = _FakeApi.calls[-1]["files"]
    assert files["README.md"].endswith(b"# the run's card\n") and "model.safetensors" in files
    # a folder whose weights do not match its config is never published
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["config"]["d"] = 9
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PretrainedError):
        push_pretrained(tmp_path / "m", "lab/tiny")
    assert len(_FakeApi.calls) == 1
    # a folder without a card gets one generated (naming the repo), its weights untouched
    _model().save_pretrained(tmp_path / "bare")
    (tmp_path / "bare" / "README.md").unlink()
    weights = (tmp_path / "bare" / "model.safetensors").read_bytes()
    push_pretrained(tmp_path / "bare", "lab/bare")
    files = _FakeApi.calls[-1]["files"]
    assert b'neurofm.from_pretrained("lab/bare")' in files["README.md"] and files["model.safetensors"] == weights


def test_top_level_loader_and_model_classes_are_lazy(tmp_path):
    code = (
        "import sys; sys.path[:0] = [%r]\n"
        "import neurofm\n"
        "assert 'torch' not in sys.modules, 'import neurofm pulled in torch'\n"
        "from neurofm import Neuroformer, Barista, BaristaFinetuned, from_pretrained\n"
        "from neurofm.hub import load_pretrained\n"
        "assert from_pretrained is load_pretrained and Neuroformer.__module__ == 'neurofm.models.neuroformer'\n"
        "print('ok')\n"
    ) % str(_TESTS.parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    import neurofm

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        neurofm.Nope  # noqa: B018
