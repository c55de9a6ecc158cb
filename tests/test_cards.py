"""Model cards come from a run's metrics.json."""

import json

import pytest

from neurofm.cards import render_card, write_card


def test_card_front_matter_and_table(tmp_path):
    metrics = {
        "family": "neuroformer", "name": "neuroformer-demo", "license": "mit",
        "data": {"description": "simulated network", "datasets": ["neurofm-simulated-spikes"], "n_units": 50},
        "protocol": "last 20% of time held out, 1 s gap",
        "metrics": {"bits_per_spike": 0.1234567},
        "baselines": {"mean-rate Poisson": {"bits_per_spike": 0.0}},
        "training": {"steps": 300, "device": "cpu"}, "n_params": 123456, "neurofm_version": "0.1.0",
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "config.yaml").write_text("model:\n  n_embd: 64\n")
    out = write_card(tmp_path)
    text = out.read_text()
    front = text.split("---")[1]
    assert "library_name: neurofm" in front and "- bits_per_spike" in front
    assert "- neurofm-simulated-spikes" in front
    assert "| this model | 0.1235 |" in text
    assert "| mean-rate Poisson | 0 |" in text or "| mean-rate Poisson | 0.0 |" in text
    assert "n_embd: 64" in text and "123,456" in text
    assert "last 20% of time held out" in text


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json: missing"):
        write_card(tmp_path)


def test_render_without_config():
    assert render_card({"family": "barista", "metrics": {"auroc": 0.8}}).startswith("---\nlibrary_name: neurofm")
