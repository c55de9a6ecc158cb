"""Model cards come from a run's files: metrics.json, config.yaml and the exported config.json."""

import json

import pytest
from huggingface_hub import ModelCard, ModelCardData

from neurofm.cards import BIBTEX, data_sources, render_card, weights_license, write_card
from neurofm.data.session import SessionWriter


def _metrics(sources=None):
    return {
        "family": "neuroformer", "name": "neuroformer-demo",
        "data": {"description": "simulated network", "datasets": ["neurofm-simulated-spikes"], "n_units": 40,
                 "n_test_windows": 1187, **({"sources": sources} if sources is not None else {})},
        "protocol": "last 10% of time held out, 1 s gap",
        "metrics": {"speed_r2": 0.8888, "speed_pearson_r": 0.9435, "speed_n_scored": 1187, "window_f1": 0.286},
        "baselines": {"ridge on window counts": {"speed_r2": 0.8535}, "unigram (firing-rate) null": {"id_bits": 0.0}},
        "training": {"steps": 1800, "epochs": 6, "wall_time_s": 361.5, "device": "cpu"},
        "n_params": 123456, "neurofm_version": "0.1.0",
    }


def _run_dir(tmp_path, license="MIT", lab="Some lab"):
    """A run folder as experiment.run leaves it, with a real session file and model folder."""
    import torch

    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    session = tmp_path / "s.h5"
    attrs = {"license": license} if license else {}
    with SessionWriter(session, session_id="s1", lab=lab, source="rig 3", **attrs) as w:
        w.add_units([f"u{i}" for i in range(5)])
        w.add_spikes([0.1, 0.2, 0.3], [0, 1, 4])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(_metrics()))
    (run / "config.yaml").write_text(f"family: neuroformer\ndata:\n  sessions:\n  - {session}\nmodel:\n"
                                     f"  n_units: 1\n  units: []\n  n_embd: 32\ntask:\n  lr: 0.001\n")
    torch.manual_seed(0)
    model = Neuroformer(NeuroformerConfig(n_units=5, units=[f"s1/u{i}" for i in range(5)], n_embd=32, n_head=2))
    model.save_pretrained(run / "pretrained")
    return run, model


def test_run_card_embeds_the_weights_config_and_parses_as_a_hub_card(tmp_path):
    run, model = _run_dir(tmp_path)
    text = write_card(run).read_text()
    card = ModelCard(text)  # huggingface_hub's own parsing: YAML, model-index -> EvalResults
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.library_name == "neurofm" and data.license == "mit"
    assert data.datasets is None  # local file names are not Hub dataset ids
    assert set(data.metrics) == {"r2", "pearsonr", "f1"}
    # model-index: the held-out metrics and the baselines, never the counts
    results = {(r.metric_type, r.metric_config): r.metric_value for r in data.eval_results}
    assert results[("speed_r2", None)] == pytest.approx(0.8888)
    assert results[("speed_r2", "baseline: ridge on window counts")] == pytest.approx(0.8535)
    assert not any("n_scored" in k for k, _ in results)
    assert all(r.dataset_split == "test" for r in data.eval_results)
    assert {r.dataset_type for r in data.eval_results} == {"neurofm-simulated-spikes"}
    # the embedded config is the exported model's (5 units), not the run YAML's request (n_units: 1)
    block = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    embedded = json.loads(block)
    assert embedded["config"]["units"] == model.config.units and embedded["config"]["n_units"] == 5
    assert "n_units: 1" not in text and "units: []" not in text
    assert "model: (see config.json" in text and "lr: 0.001" in text
    from neurofm import cli

    assert cli.main(["card", str(run), "--out", str(tmp_path / "c.md"), "--repo-id", "my-lab/nf"]) == 0
    assert 'neurofm.from_pretrained("my-lab/nf")' in (tmp_path / "c.md").read_text()


def test_a_run_on_several_sessions_names_them_all_as_its_dataset():
    """A two-day pretraining's model-index typed its data as the first day alone ('ses1')."""
    m = _metrics()
    m["data"]["datasets"] = ["sub-M1_ses-1", "sub-M1_ses-2"]
    card = ModelCard(render_card(m))
    assert {r.dataset_type for r in card.data.eval_results} == {"sub-m1_ses-1-sub-m1_ses-2"}


def test_counts_are_separate_from_metrics(tmp_path):
    run, _ = _run_dir(tmp_path)
    text = write_card(run).read_text()
    evaluation = text.split("## Evaluation", 1)[1].split("## Intended use", 1)[0]
    metric_table, counts = evaluation.split("What the numbers rest on:")
    header = next(line for line in metric_table.splitlines() if line.startswith("| model |"))
    assert "speed_r2" in header and "n_scored" not in header and "n_test_windows" not in header
    assert "| speed_n_scored | 1,187 |" in counts and "| n_test_windows | 1,187 |" in counts
    assert "| baseline: ridge on window counts |  |  | 0.8535 |  |" in metric_table


def test_data_licence_is_carried_and_shown(tmp_path):
    run, _ = _run_dir(tmp_path, license="CC-BY-4.0", lab="Kemere lab")
    text = write_card(run).read_text()
    assert ModelCard(text).data.license == "cc-by-4.0"
    assert "| Kemere lab | rig 3 | CC-BY-4.0 |" in text
    assert "Code (neurofm): MIT" in text and "Weights: `cc-by-4.0`" in text


def test_unknown_data_licence_is_not_claimed_as_mit(tmp_path):
    run, _ = _run_dir(tmp_path, license=None, lab="Kemere lab (via nelpy/example-data, MIT licence)")
    text = write_card(run).read_text()
    assert ModelCard(text).data.license is None
    assert "do not record" in text and "Kemere lab (via nelpy/example-data, MIT licence)" in text


def test_weights_license_rules(tmp_path):
    assert weights_license([{"license": "MIT"}, {"license": "mit"}]) == "mit"
    assert weights_license([{"license": "MIT"}, {"license": "CC-BY-4.0"}]) == "other"
    assert weights_license([{"license": "MIT"}, {"license": ""}]) is None
    assert weights_license([]) is None
    assert data_sources([tmp_path / "gone.h5"]) == [{"path": str(tmp_path / "gone.h5"), "missing": True}]


def test_simulated_sessions_state_their_licence(tmp_path):
    from neurofm.data.synthetic import SIMULATED_LICENSE, simulate_spikes

    path = simulate_spikes(tmp_path / "sim.h5", n_units=4, duration=2.0, seed=0)
    (src,) = data_sources([path])
    assert src["license"] == SIMULATED_LICENSE and src["lab"] == "neurofm"


def test_card_has_usage_and_citations():
    text = render_card(_metrics([{"path": "x.h5", "license": "MIT"}]))
    assert 'neurofm.from_pretrained("PATH_OR_REPO_ID")' in text
    assert "neurofm finetune --pretrained" in text
    citation = text.split("## Citation", 1)[1]
    assert citation.index("2311.00136") < citation.index("2512.12135")  # the family's paper first
    assert BIBTEX["neuroformer"] in text and BIBTEX["barista"] in text


def test_usage_names_the_behaviour_the_model_decodes():
    """A running-speed model's card said `--behavior position` (a new lab's V1 fine-tune)."""
    meta = {"model_type": "Neuroformer", "config": {"behavior": [
        {"name": "speed", "dim": 1, "task": "regression", "target": True},
        {"name": "pupil", "dim": 1, "task": "regression", "target": False}]}}
    text = render_card(_metrics(), model_meta=meta)
    assert "--behavior speed --run-dir runs/ft" in text and "--behavior position" not in text
    assert "--behavior position" in render_card(_metrics())  # no decoder yet: the README's example


def test_barista_usage_names_the_events_classes_and_target_of_the_run():
    """A BaRISTA classifier fine-tuned on a BrainVision file's 'annotations' (S1 vs S2) said
    `neurofm finetune ... --events word_onset` (the demo's group, and a fine-tune of a fine-tune);
    now evaluate with its events and classes; a regressor names its behaviour."""
    m = {**_metrics(), "family": "barista"}
    cls = {"model_type": "BaristaFinetuned", "config": {"task": "classification", "label_names": ["S1", "S2"]}}
    yaml_cls = "family: barista\ndata:\n  events: annotations\n  labels:\n  - S1\n  - S2\n  target: ''\n"
    text = render_card(m, yaml_cls, model_meta=cls)
    assert "neurofm evaluate --pretrained PATH_OR_REPO_ID --data my_ieeg.h5 --events annotations " \
           "data.labels='[S1,S2]'" in text and "word_onset" not in text and "(S1, S2)" in text
    reg = {"model_type": "BaristaFinetuned", "config": {"task": "regression", "label_names": []}}
    text = render_card(m, "data:\n  events: ''\n  target: joystick\n", model_meta=reg)
    assert "neurofm evaluate --pretrained PATH_OR_REPO_ID --data my_ieeg.h5 --behavior joystick" in text
    enc = {"model_type": "BaristaEncoder", "config": {"d_model": 64}}
    assert "--task classify --events annotations\n" in render_card(m, "data:\n  events: annotations\n", model_meta=enc)


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json: missing"):
        write_card(tmp_path)


def test_render_without_config_or_run():
    text = render_card({"family": "barista", "metrics": {"test_auroc": 0.8, "n_test_events": 177},
                        "data": {"description": "sEEG", "test_segments": 354,
                                 "test_segments_per_class": {"rest": 177, "word_onset": 177}}})
    assert "| test_segments | 354 |" in text and '| test_segments_per_class | {"rest": 177' in text
    assert "| n_test_events | 177 |" in text
    card = ModelCard(text)
    assert card.data.library_name == "neurofm" and card.data.metrics == ["roc_auc"]
    assert [r.metric_type for r in card.data.eval_results] == ["test_auroc"]
    weights_only = render_card(None, model_meta={"model_type": "Barista", "config": {"d_model": 64}})
    assert "None recorded with these weights" in weights_only and "model-index" not in weights_only


def test_bids_dataset_licence_is_read_from_its_root(tmp_path):
    from neurofm.data.ieeg import bids_license

    rec = tmp_path / "ds" / "sub-01" / "ses-1" / "ieeg" / "sub-01_ses-1_task-x_ieeg.edf"
    rec.parent.mkdir(parents=True)
    assert bids_license(rec) == ""
    (tmp_path / "ds" / "dataset_description.json").write_text(json.dumps({"Name": "x", "License": "CC0"}))
    assert bids_license(rec) == "CC0"
    assert weights_license([{"license": "CC0"}]) == "cc0-1.0"


def test_converted_nwb_keeps_the_licence_given(tmp_path):
    from pathlib import Path

    from neurofm import cli

    nwb = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "spikes" / "linear-track.nwb"
    if not nwb.exists():
        pytest.skip(f"{nwb} absent (sample recordings are not part of a clone)")
    pytest.importorskip("pynwb")
    out = tmp_path / "lt.h5"
    assert cli.main(["convert", "nwb", str(nwb), str(out), "--license", "MIT", "--electrical-series", "none"]) == 0
    (src,) = data_sources([out])
    assert src["license"] == "MIT" and "Kemere" in src["lab"]


@pytest.mark.parametrize("name", ["neuroformer-demo", "barista-demo"])
def test_published_cards_parse_and_describe_their_weights(name):
    """model_cards/ are written by `neurofm card`: Hub-valid, and the embedded config.json is
    self-consistent (a unit vocabulary of n_units names, never the run YAML's placeholder)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "model_cards" / f"{name}.md"
    text = path.read_text()
    card = ModelCard(text)
    assert card.data.library_name == "neurofm" and card.data.license == "mit"  # simulated data: neurofm's licence
    assert card.data.eval_results and card.data.model_name == name
    meta = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    cfg = meta["config"]
    if meta["model_type"] == "Neuroformer":
        assert cfg["n_units"] == len(cfg["units"]) > 1
    assert "## Citation" in text and "2311.00136" in text and "2512.12135" in text


def test_an_undefined_metric_reads_undefined_not_none(tmp_path):
    """The training-mean null's Pearson r is null in metrics.json (its prediction is constant);
    a new lab's card showed it as 'None'."""
    run, _ = _run_dir(tmp_path)
    metrics = _metrics()
    metrics["baselines"]["null (training mean)"] = {"speed_r2": -0.01, "speed_pearson_r": None}
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = write_card(run).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| baseline: null (training mean) |"))
    assert "None" not in row and "| undefined |" in row


def test_a_confidence_interval_reads_as_its_metric(tmp_path):
    """A BaRISTA card's Evaluation table showed probe_auroc_ci95 as [0.6510416666666666, 0.9221162518037518]."""
    run, _ = _run_dir(tmp_path)
    metrics = _metrics()
    metrics["metrics"]["speed_r2_ci95"] = [0.6510416666666666, 0.9221162518037518]
    (run / "metrics.json").write_text(json.dumps(metrics))
    text = write_card(run).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| this model |"))
    assert "| [0.651, 0.9221] |" in row and "0.6510416" not in text


def test_card_says_whether_generated_spikes_beat_the_poisson_generator():
    lose = ("generated spikes LOSE to the mean-rate Poisson generator: window F1 0.250 vs 0.300 "
            "(difference -0.050, 95% CI [-0.070, -0.030])")
    m = {**_metrics(), "generation": {"verdicts": [lose], "n_windows": 256, "n_draws": 4, "n_blocks": 13, "block_s": 1.0,
                                      "beats_mean_rate_poisson_generator": False, "limitations": [lose]},
         "limitations": [lose]}
    text = render_card(m)
    evaluation = text.split("## Evaluation", 1)[1].split("## Intended use", 1)[0]
    assert ("window F1 on 256 test windows (mean of 4 draws per window), 95% CIs from a paired bootstrap over 13 "
            "blocks of 1 s") in evaluation
    assert f"- {lose}" in evaluation
    assert f"- {lose}" in text.split("## Limitations", 1)[1]
    assert "Generated spikes" not in render_card(_metrics())  # no generation scored, no line


def test_card_says_when_the_exported_weights_are_the_starting_state(tmp_path):
    """Fine-tuning ran 795 steps but model selection kept step 0 (the start beat every check):
    the card's limitation said only "cpu, 795 steps", as if the exported model were the last
    step's. A kept check names its step."""
    run, _ = _run_dir(tmp_path)
    m = _metrics()
    m["training"].update(steps=795, selection={"kept": "start", "selected_step": 0,
                                               "why": "no validation check scored above the start"})
    (run / "metrics.json").write_text(json.dumps(m))
    text = write_card(run).read_text()
    assert ("(cpu, 795 steps; the exported weights are the starting state (step 0: no validation check scored "
            "above the start), not the last step)") in text
    m["training"]["selection"] = {"kept": "check", "selected_step": 540}
    (run / "metrics.json").write_text(json.dumps(m))
    assert "(cpu, 795 steps; the exported weights are step 540's, the best validation check)" in write_card(run).read_text()
    del m["training"]["selection"]   # pretraining: no selection
    (run / "metrics.json").write_text(json.dumps(m))
    assert "(cpu, 795 steps); numbers on other" in write_card(run).read_text()


def test_card_lists_a_decode_report_loss_as_a_limitation(tmp_path):
    """A fine-tuned Neuroformer's metrics.json has its verdicts in decode_report only; the card
    now lists the one where the model loses (a 100% hand-velocity fine-tune lost to Poisson
    Bayes, r2 0.912 vs 0.933) under Limitations, once, and not the ones it wins or ties."""
    run, _ = _run_dir(tmp_path)
    m = _metrics()
    lose = "MODEL LOSES to Poisson Bayes: r2 0.912 vs 0.933 (difference -0.021, 95% CI [-0.048, -0.012])"
    m["decode_report"] = {"speed": {"verdicts": ["model beats linear probe: r2 0.912 vs 0.468", lose,
                                                 "model is below ridge but within the CI: r2 0.912 vs 0.912"]}}
    (run / "metrics.json").write_text(json.dumps(m))
    limits = write_card(run).read_text().split("## Limitations", 1)[1].split("## Citation", 1)[0]
    assert f"- {lose}" in limits and "beats linear probe" not in limits and "within the CI" not in limits
    m["limitations"] = [lose]   # BaRISTA: the run lists it itself; not twice
    (run / "metrics.json").write_text(json.dumps(m))
    limits = write_card(run).read_text().split("## Limitations", 1)[1].split("## Citation", 1)[0]
    assert limits.count("LOSES to Poisson Bayes") == 1


def test_a_fine_tuned_models_card_says_what_it_decodes_and_what_it_started_from():
    """A fine-tuned envelope regressor's card (nui12 trial) opened, and said under Intended use,
    "Pretrained iEEG encoder for event detection, behaviour regression and channel reconstruction
    after fine-tuning on a new subject": the pretraining run's text, for a model that is none of
    that. A fine-tuning run's card now says what it decodes and what it started from."""
    def card(task: str, data: str, family: str = "barista") -> str:
        text = render_card({**_metrics(), "family": family}, f"data:\n{data}\ntask:\n{task}\n")
        return text.split("---\n", 2)[2]

    regress = card("  mode: finetune\n  finetune_task: regression\n  pretrained: runs/pre/pretrained\n"
                   "  from_scratch: false", "  target: envelope\n  events: ''")
    said = ("BaRISTA model fine-tuned for regression of the behaviour 'envelope' (its mean over each segment) on "
            "the recordings below, from the pretrained model runs/pre/pretrained.")
    assert said in regress.split("## Model", 1)[0] and said in regress.split("## Intended use", 1)[1]
    assert "Pretrained iEEG encoder" not in regress
    scratch = card("  mode: finetune\n  finetune_task: classification\n  pretrained: runs/pre/pretrained\n"
                   "  from_scratch: true", "  events: annotations\n  labels: [intact, reversed]")
    assert ("fine-tuned for classification of the events 'annotations' (intact, reversed) on the recordings below, "
            "from random init in the shape of runs/pre/pretrained (--from-scratch") in scratch
    spikes = card("  mode: finetune\n  pretrained: runs/p/pretrained", "  behavior: [speed]", family="neuroformer")
    assert "Neuroformer fine-tuned for decoding of speed on the recordings below, from the pretrained model" in spikes
    pretrain = card("  mode: pretrain", "  events: annotations")
    assert "Pretrained iEEG encoder for event detection" in pretrain  # pretraining: as before


def test_card_says_when_trainer_max_steps_cut_the_run_short():
    """The nui12 pretraining was capped at trainer.max_steps=240 to fit the machine (9 of the
    config's 15 epochs); its card listed 'steps: 240, epochs: 9' as if that were the schedule."""
    m = _metrics()
    m["training"].update(steps=240, epochs=9)
    capped = render_card(m, "trainer:\n  max_epochs: 15\n  max_steps: 240\n")
    assert ("- stopped by the cap trainer.max_steps=240, in epoch 9 of the config's max_epochs=15: a shortened run, "
            "not the config's schedule") in capped
    assert "stopped by the cap" not in render_card(m, "trainer:\n  max_epochs: 9\n  max_steps: -1\n")
    # a Neuroformer fine-tune's config.yaml holds the recipe's step budget as max_steps: its schedule, no cap
    assert "stopped by the cap" not in render_card(m, "task:\n  mode: finetune\ntrainer:\n  max_epochs: 15\n"
                                                      "  max_steps: 240\n")
