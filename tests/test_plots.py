"""neurofm.plots: each figure draws what it was given (counted artist by artist), writes a
valid PNG of the right size atomically, and rejects bad input naming the argument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.collections import LineCollection, PathCollection, PolyCollection  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from matplotlib.patches import Rectangle, StepPatch  # noqa: E402

from neurofm import plots  # noqa: E402

DPI = 40  # small files keep the suite fast; sizes scale exactly with dpi

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    """If another test module imported pyplot, figures are pyplot-managed: close them."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def assert_png(path: Path, fig) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    width, height = fig.get_size_inches() * DPI
    assert imread(path).shape[:2] == (int(height), int(width))  # Agg truncates to whole pixels
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


def axis_titled(fig, left_title: str):
    (ax,) = [a for a in fig.axes if a.get_title(loc="left") == left_title]
    return ax


# -- raster ------------------------------------------------------------------------------------


def _spikes(rng, n_units: int, n: int, t_lo: float, t_hi: float):
    t = rng.uniform(t_lo, t_hi, n)
    u = rng.integers(0, n_units, n)
    return t, u


def test_raster_draws_exactly_the_spikes_in_window(tmp_path):
    rng = np.random.default_rng(0)
    rt, ru = _spikes(rng, 8, 400, 0.0, 12.0)
    gt, gu = _spikes(rng, 8, 300, 0.0, 12.0)
    rt = np.append(rt, [2.0, 10.0])  # exactly t0 (drawn) and exactly t1 (not drawn)
    ru = np.append(ru, [3, 3])
    order = np.array([5, 0, 3, 1, 7, 2])  # units 4 and 6 left out; unit 5 on the top row
    fig = plots.raster_compare(rt, ru, gt, gu, 2.0, 10.0, unit_order=order, bin_size=0.5,
                               path=tmp_path / "raster.png", dpi=DPI)
    assert len(fig.axes) == 6
    row_of = {u: i for i, u in enumerate(order)}
    for name, t, u in (("recorded", rt, ru), ("generated", gt, gu)):
        ax = axis_titled(fig, name)
        keep = (t >= 2.0) & (t < 10.0) & np.isin(u, order)
        (pts,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        xy = pts.get_offsets()
        assert xy.shape == (keep.sum(), 2)
        got = sorted(zip(xy[:, 0], xy[:, 1]))
        want = sorted(zip(t[keep], [row_of[k] for k in u[keep]]))
        np.testing.assert_allclose(got, want)
        assert ax.get_ylim() == (len(order) - 0.5, -0.5)  # first unit of unit_order on top
        # Per-unit rate bars beside this raster share its rows: spikes/s over the 8 s window.
        (rate_ax,) = [a for a in fig.axes if a is not ax and a.get_shared_y_axes().joined(a, ax)]
        (bars,) = [p for p in rate_ax.patches if isinstance(p, StepPatch)]
        want_rates = np.bincount([row_of[k] for k in u[keep]], minlength=len(order)) / 8.0
        np.testing.assert_allclose(bars.get_data().values, want_rates)
    psth_ax = [a for a in fig.axes if a.get_xlabel() == "time (s)"][0]
    steps = [p for p in psth_ax.patches if isinstance(p, StepPatch)]
    assert [s.get_label() for s in steps] == ["recorded", "generated"]
    for s, t, u in zip(steps, (rt, gt), (ru, gu)):
        values, edges = s.get_data().values, s.get_data().edges
        assert edges[0] == 2.0 and edges[-1] == 10.0 and len(values) == 16  # 0.5 s bins tile [2, 10)
        keep = (t >= 2.0) & (t < 10.0) & np.isin(u, order)
        assert np.sum(values * np.diff(edges)) == pytest.approx(keep.sum())  # spikes/s x s = spikes
    assert "r = " in psth_ax.get_title(loc="left") and "500 ms bins" in psth_ax.get_title(loc="left")
    assert fig.get_suptitle() == "Recorded vs generated spikes"
    assert_png(tmp_path / "raster.png", fig)


def test_raster_unit_labels_and_default_bins():
    rt = np.array([0.1, 0.2, 0.35, 5.9])
    ru = np.array([0, 1, 1, 2])
    fig = plots.raster_compare(rt, ru, rt + 0.01, ru, 0.0, 6.0, unit_labels=["a1", "b2", "c3"])
    ax = axis_titled(fig, "recorded")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a1", "b2", "c3"]
    psth_ax = [a for a in fig.axes if a.get_xlabel() == "time (s)"][0]
    edges = psth_ax.patches[0].get_data().edges
    np.testing.assert_allclose(np.diff(edges), 0.1)  # 6 s -> 1-2-5 width giving <= 100 bins
    assert "4 spikes" in ax.get_title(loc="right")


def test_raster_bad_input_names_the_argument():
    t, u = np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="gen_units has 2 entries but gen_times has 3"):
        plots.raster_compare(t, u, t, u[:2], 0.0, 1.0)
    with pytest.raises(ValueError, match="real_units"):
        plots.raster_compare(t, np.array([0, -1, 1]), t, u, 0.0, 1.0)
    with pytest.raises(ValueError, match="t1"):
        plots.raster_compare(t, u, t, u, 1.0, 1.0)
    with pytest.raises(ValueError, match="unit_order lists some units twice"):
        plots.raster_compare(t, u, t, u, 0.0, 1.0, unit_order=[1, 1])
    with pytest.raises(ValueError, match="real_units holds unit index 1 but n_units is 1"):
        plots.raster_compare(t, u, t, u, 0.0, 1.0, n_units=1)


# -- decoding ----------------------------------------------------------------------------------


def test_decoding_shaded_spans_match_non_moving_runs(tmp_path):
    t = np.arange(40) * 0.1 + 0.05  # bin centres (s); bin edges every 0.1 s from 0
    true = np.stack([np.sin(t), np.cos(t)], 1)
    pred = true + 0.1
    moving = np.ones(40, dtype=bool)
    moving[:3] = False  # run at the start
    moving[10:15] = False  # one inside
    moving[20] = False  # a single bin
    moving[36:] = False  # run at the end
    fig = plots.decoding_trace(t, true, pred, moving, names=("x", "y"), r2=[0.81, 0.5], unit="cm",
                               path=tmp_path / "dec.png", dpi=DPI)
    assert len(fig.axes) == 2
    want = [(0.0, 0.3), (1.0, 1.5), (2.0, 2.1), (3.6, 4.0)]
    for ax, name, r2 in zip(fig.axes, "xy", ("0.810", "0.500")):
        (spans,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        got = [(p.vertices[:, 0].min(), p.vertices[:, 0].max()) for p in spans.get_paths()]
        np.testing.assert_allclose(got, want, atol=1e-12)
        # spans fill the axis height whatever the data range (axes coordinates in y)
        assert all(np.ptp(p.vertices[:, 1]) == 1.0 for p in spans.get_paths())
        assert [line.get_label() for line in ax.get_lines()] == ["true", "decoded"]
        np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), pred[:, "xy".index(name)])
        assert ax.get_ylabel() == f"{name} (cm)"
        assert ax.get_title(loc="left") == f"{name}: R² = {r2}"
    assert fig.axes[0].get_xlim() == pytest.approx((0.0, 4.0))
    assert_png(tmp_path / "dec.png", fig)


def test_decoding_scalar_r2_and_no_mask():
    t = np.linspace(0, 1, 11)
    fig = plots.decoding_trace(t, np.arange(11.0), np.arange(11.0), r2=0.734, title="Decoded speed")
    assert len(fig.axes) == 1 and fig.get_suptitle() == "Decoded speed: R² = 0.734"
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert fig.axes[0].get_ylabel() == "x"


def test_decoding_title_with_every_baseline_fits_the_figure(tmp_path):
    """The four baselines a fine-tuning run puts in the title ran past both edges of the figure
    ("near probe: ...; null (training mean): R² = -0.01"); they now wrap onto lines that fit."""
    t = np.linspace(580.0, 640.0, 200)
    baselines = {"linear probe": 0.46, "ridge on binned counts": 0.732, "Poisson Bayes": 0.054,
                 "null (training mean)": -0.014}
    fig = plots.decoding_trace(t, np.sin(t), np.sin(t) + 0.1, r2=0.756, unit="cm/s", names=["running_speed"],
                               baseline_r2=baselines, title="Decoded running_speed, held-out test block "
                               "(1,207 scored windows)", path=tmp_path / "dec.png", dpi=DPI)
    text = fig.get_suptitle()
    assert all(f"{k}: R² = " in text for k in baselines) and len(text.split("\n")) >= 3
    renderer = fig.canvas.get_renderer()
    box, page = fig._suptitle.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1


def test_decoding_bad_input_names_the_argument():
    t = np.arange(5.0)
    y = np.zeros((5, 2))
    with pytest.raises(ValueError, match="pred"):
        plots.decoding_trace(t, y, y[:4])
    with pytest.raises(ValueError, match="pred has shape"):
        plots.decoding_trace(t, y, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="moving_mask"):
        plots.decoding_trace(t, y, y, np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="names"):
        plots.decoding_trace(t, y, y, names=("x",))
    with pytest.raises(ValueError, match="r2"):
        plots.decoding_trace(t, y, y, r2=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="strictly increasing"):
        plots.decoding_trace(t[::-1], y, y)


# -- AUROC -------------------------------------------------------------------------------------


def test_auroc_table_bars_values_and_chance(tmp_path):
    results = {"parcel": {"onset": 0.862, "speech": 0.869}, "channel": {"onset": 0.778, "speech": 0.764},
               "ridge": {"onset": 0.71}}
    fig = plots.auroc_table(results, title="BaRISTA", path=tmp_path / "auc.png", dpi=DPI)
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted(round(b.get_height(), 3) for b in bars) == [0.71, 0.764, 0.778, 0.862, 0.869]
    texts = [t.get_text() for t in ax.texts]
    assert sorted(t for t in texts if t != "n/a") == ["0.710", "0.764", "0.778", "0.862", "0.869"]
    assert texts.count("n/a") == 1  # ridge has no speech score
    (chance,) = [line for line in ax.get_lines() if "chance" in line.get_label()]
    assert set(chance.get_ydata()) == {0.5}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["onset", "speech"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance (0.5)", "parcel", "channel", "ridge"]
    assert_png(tmp_path / "auc.png", fig)


def test_auroc_table_rejects_non_auc():
    with pytest.raises(ValueError, match=r"results\['m'\]\['c'\] = 1.2"):
        plots.auroc_table({"m": {"c": 1.2}})
    with pytest.raises(ValueError, match="results"):
        plots.auroc_table({})


def test_roc_curves_label_areas(tmp_path):
    perfect = (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]))
    diag = (np.linspace(0, 1, 5), np.linspace(0, 1, 5), np.linspace(1, 0, 5))  # sklearn triple
    fig = plots.roc_curves({"perfect": perfect, "coin": diag}, path=tmp_path / "roc.png", dpi=DPI)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["chance (AUC = 0.5)", "perfect (AUC = 1.000)", "coin (AUC = 0.500)"]
    assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"
    assert_png(tmp_path / "roc.png", fig)
    with pytest.raises(ValueError, match=r"curves\['a'\]: tpr has 2 points but fpr has 3"):
        plots.roc_curves({"a": (np.array([0, 0.5, 1]), np.array([0, 1]))})
    with pytest.raises(ValueError, match=r"curves\['a'\] fpr must be rates"):
        plots.roc_curves({"a": (np.array([0, 2.0]), np.array([0, 1.0]))})


# -- masking -----------------------------------------------------------------------------------


def test_masking_example_groups_channels_by_category(tmp_path):
    cats = np.array(["STG", "HPC", "STG", None, "HPC", "AMY", "STG"], dtype=object)
    mask = np.zeros((7, 4), dtype=bool)
    mask[[0, 2, 6]] = True  # all of STG (a whole category, every patch)
    mask[5, 1] = True  # one token of AMY
    fig = plots.masking_example(mask, cats, mask_scale="parcel", path=tmp_path / "mask.png", dpi=DPI)
    (ax,) = fig.axes
    order = [0, 2, 6, 1, 4, 3, 5]  # groups by first appearance, channel order kept inside
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), mask[order])
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == ["STG (3)", "HPC (2)", "unknown (1)", "AMY (1)"]
    np.testing.assert_allclose(ax.get_yticks(), [1.0, 3.5, 5.0, 6.0])
    assert labels[0].get_color() == plots.GENERATED and labels[3].get_color() != plots.GENERATED
    (sep,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    np.testing.assert_allclose([s[0][1] for s in sep.get_segments()], [2.5, 4.5, 5.5])
    assert "46% of 7 x 4 tokens masked" in ax.get_title() and "parcel" in ax.get_title()
    assert_png(tmp_path / "mask.png", fig)


def test_masking_example_bad_input():
    with pytest.raises(ValueError, match="categories has shape"):
        plots.masking_example(np.zeros((3, 2), bool), ["a", "b"])
    with pytest.raises(ValueError, match="channel_mask_2d must be a non-empty"):
        plots.masking_example(np.zeros(3, bool), ["a", "b", "c"])
    with pytest.raises(ValueError, match="channel_mask_2d must be boolean"):
        plots.masking_example(np.full((2, 2), 0.5), ["a", "b"])


# -- loss curves -------------------------------------------------------------------------------


def test_loss_curves_from_lightning_csv(tmp_path):
    rows = ["epoch,step,train_loss,val_loss,lr"]
    for step in range(1, 21):
        rows.append(f"{(step - 1) // 5},{step * 10},{5.0 / step},,0.001")
        if step % 5 == 0:
            rows.append(f"{(step - 1) // 5},{step * 10},,{[3.0, 1.0, 1.5, 2.0][step // 5 - 1]},")
    csv = tmp_path / "metrics.csv"
    csv.write_text("\n".join(rows) + "\n")
    hist = plots.load_history(csv)
    assert set(hist) == {"epoch", "step", "train_loss", "val_loss", "lr"} and len(hist["step"]) == 24
    fig = plots.loss_curves(csv, path=tmp_path / "loss.png", dpi=DPI)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train_loss"].get_xdata(), np.arange(1, 21) * 10)
    np.testing.assert_allclose(lines["val_loss"].get_xdata(), [50, 100, 150, 200])
    np.testing.assert_allclose(lines["val_loss"].get_ydata(), [3.0, 1.0, 1.5, 2.0])
    (best,) = [k for k in lines if k.startswith("best val_loss")]
    assert best == "best val_loss: 1 at step 100" and lines[best].get_xydata().tolist() == [[100.0, 1.0]]
    assert "lr" not in lines and ax.get_xlabel() == "step" and ax.get_yscale() == "log"  # 0.25..5: > 1 decade
    assert_png(tmp_path / "loss.png", fig)


def test_loss_curves_json_records_and_errors(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps([{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.5, "acc": 0.7}]))
    hist = plots.load_history(path)
    assert list(hist) == ["epoch", "loss", "acc"] and hist["loss"] == [2.0, 1.5]
    assert np.isnan(hist["acc"][0]) and hist["acc"][1] == 0.7  # missing in a record -> NaN
    fig = plots.loss_curves(path)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["loss"]
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match=r"history\['val_loss'\] has 2 entries but history\['step'\]"):
        plots.loss_curves({"step": [1, 2, 3], "val_loss": [1.0, 0.5]})
    with pytest.raises(ValueError, match="keys names 'nope'"):
        plots.loss_curves({"loss": [1.0]}, keys=["nope"])
    (tmp_path / "history.txt").write_text("1")
    with pytest.raises(ValueError, match=r"history.txt: history files must be \.csv or \.json"):
        plots.load_history(tmp_path / "history.txt")


# -- connectivity ------------------------------------------------------------------------------


def test_connectivity_compare_shared_scale_and_r(tmp_path):
    rng = np.random.default_rng(1)
    true_w = rng.normal(0, 1, (12, 12))
    np.fill_diagonal(true_w, -5.0)  # self-history, left out of r and of the colour scale
    est_w = 0.5 * true_w + rng.normal(0, 0.5, (12, 12))
    off = ~np.eye(12, dtype=bool)
    r = np.corrcoef(true_w[off], est_w[off])[0, 1]
    fig = plots.connectivity_compare(true_w, est_w, path=tmp_path / "conn.png", dpi=DPI)
    assert len(fig.axes) == 4  # two matrices, scatter, colour bar
    assert fig.get_suptitle() == f"Connectivity: r = {r:.3f} (off-diagonal, 12 x 12)"
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 2 and images[0].get_clim() == images[1].get_clim()
    vmax = max(np.abs(true_w[off]).max(), np.abs(est_w[off]).max())
    assert images[0].get_clim() == pytest.approx((-vmax, vmax))
    (scatter,) = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert scatter.get_offsets().shape == (132, 2)
    assert_png(tmp_path / "conn.png", fig)
    with pytest.raises(ValueError, match="est_W has shape"):
        plots.connectivity_compare(true_w, est_w[:5])
    with pytest.raises(ValueError, match="true_W must be"):
        plots.connectivity_compare(np.zeros(3), np.zeros(3))


# -- saving and import -------------------------------------------------------------------------


def test_save_creates_folders_replaces_and_rejects_unknown_suffix(tmp_path):
    t = np.linspace(0, 1, 5)
    out = tmp_path / "a" / "b" / "trace.png"
    fig = plots.decoding_trace(t, t, t, path=out, dpi=DPI)
    first = out.read_bytes()
    plots.decoding_trace(t, t, 1 - t, path=out, dpi=DPI)  # overwrite in place
    assert out.read_bytes() != first
    assert_png(out, fig)
    with pytest.raises(ValueError, match=r"path .*\.xyz"):
        plots.decoding_trace(t, t, t, path=tmp_path / "trace.xyz")
    assert not (tmp_path / "trace.xyz").exists()


def test_import_is_light_and_figures_need_no_display(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import neurofm.plots as p\n"
        "assert 'matplotlib' not in sys.modules, 'import neurofm.plots pulled in matplotlib'\n"
        "fig = p.roc_curves({'a': (np.array([0., 1.]), np.array([0., 1.]))})\n"
        "from matplotlib.backends.backend_agg import FigureCanvasAgg\n"
        "assert 'matplotlib.pyplot' not in sys.modules and isinstance(fig.canvas, FigureCanvasAgg)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env, timeout=60)


# -- what the recipes draw -----------------------------------------------------------------------


def test_decoding_title_carries_baselines():
    t = np.linspace(0, 1, 11)
    fig = plots.decoding_trace(t, np.arange(11.0), np.arange(11.0), r2=0.734, title="Decoded speed",
                               baseline_r2={"ridge on window counts": 0.651})
    assert fig.get_suptitle() == "Decoded speed: R² = 0.734\nridge on window counts: R² = 0.651"
    fig = plots.decoding_trace(t, np.arange(11.0), np.arange(11.0), r2=float("nan"), title="Decoded speed",
                               baseline_r2={"ridge": float("nan")})  # unscoreable: said, not raised
    assert fig.get_suptitle() == "Decoded speed: R² = n/a\nridge: R² = n/a"


def test_unit_order_by_preferred_value_then_rate():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, 4000)  # (W,) cm
    centres = np.array([70.0, 10.0, 40.0])  # units 0..2 have place fields; unit 3 is silent
    lam = 2.0 * np.exp(-((pos[:, None] - centres) ** 2) / (2 * 8.0**2))
    counts = np.concatenate([rng.poisson(lam), np.zeros((4000, 1))], axis=1)
    order, label = plots.unit_order(counts, pos[:, None], behavior_name="position")
    assert order.tolist() == [1, 2, 0, 3] and label == "by preferred position"
    pos_nan = pos.copy()
    pos_nan[:100] = np.nan  # unlabelled windows are ignored
    assert plots.unit_order(counts, pos_nan, behavior_name="position")[0].tolist() == [1, 2, 0, 3]
    by_rate, label = plots.unit_order(np.array([[1, 5, 0], [2, 5, 1]]))
    assert by_rate.tolist() == [1, 0, 2] and label == "by rate"
    with pytest.raises(ValueError, match="unit_order: behavior has 3 windows but counts has 2"):
        plots.unit_order(np.ones((2, 2)), np.ones(3))


def test_raster_rows_follow_the_order_and_are_labelled():
    t = np.array([0.1, 0.2, 0.3])
    u = np.array([0, 1, 2])
    fig = plots.raster_compare(t, u, t, u, 0.0, 1.0, unit_order=[2, 0, 1], unit_labels=["a", "b", "c"],
                               order_label="by preferred position")
    rec = axis_titled(fig, "recorded")
    assert rec.get_ylabel() == "unit (by preferred position)"
    rows = rec.collections[0].get_offsets()[:, 1]
    np.testing.assert_array_equal(rows, [1, 2, 0])  # unit 0 -> row 1, unit 1 -> row 2, unit 2 -> row 0
    fig.canvas.draw()
    assert [tk.get_text() for tk in rec.get_yticklabels()] == ["c", "a", "b"]


def test_recipe_decoding_plot_is_in_seconds_with_scores_and_shading(tmp_path):
    """The Neuroformer recipe's caller: x = each test window's end time (s) of the first session,
    scored windows unshaded, R2 and baseline R2 in the title, the behaviour's unit on the y axis."""
    from neurofm.recipes.neuroformer import _decoding_plot

    n = 30
    ends = 500.0 + 0.05 * np.arange(1, n + 1)  # (n,) s, as collected (window end times)
    session = np.zeros(n, dtype=np.int64)
    session[25:] = 1  # a second session's windows are not mixed into the time axis
    true = np.linspace(0, 30, n)[:, None]
    test = {"interval": ends, "session": session, "beh_true": {"speed": true}, "beh_pred": {"speed": true + 1},
            "beh_mask": {"speed": np.r_[np.ones(20, bool), np.zeros(2, bool), np.ones(8, bool)]}}
    scored = np.ones(n, dtype=bool)
    scored[5:9] = False
    fig = _decoding_plot("speed", test, scored, 0.8123, {"ridge on window counts": 0.5}, "cm/s", tmp_path)
    (ax,) = fig.axes
    x = ax.get_lines()[0].get_xdata()
    keep = test["beh_mask"]["speed"] & (session == 0)
    np.testing.assert_allclose(x, ends[keep])
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(ends[0] - 0.025) and hi == pytest.approx(ends[24] + 0.025)
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "speed (cm/s)"
    (spans,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ((a, b),) = [(p.vertices[:, 0].min(), p.vertices[:, 0].max()) for p in spans.get_paths()]
    assert a == pytest.approx(ends[5] - 0.025) and b == pytest.approx(ends[8] + 0.025)
    title = fig.get_suptitle()
    assert "R² = 0.812" in title and "ridge on window counts: R² = 0.500" in title
    assert "24 scored windows" in title  # labelled and scored, every session (as the R2)
    assert (tmp_path / "plots" / "decoding_speed.png").exists()


def test_time_axes_read_the_recording_clock():
    """An acquisition clock that starts at ~3.6e4 s (a Utah-array session) showed ticks 0..4 and a
    corner '+3.638e4' on the raster and decoding plots; the ticks now read the clock itself."""
    t0 = 36380.0
    rt, ru = t0 + np.array([0.1, 1.2, 2.5, 3.9]), np.array([0, 1, 1, 0])
    t = np.linspace(t0, t0 + 4.0, 81)
    for fig in (plots.raster_compare(rt, ru, rt + 0.01, ru, t0, t0 + 4.0),
                plots.decoding_trace(t, np.sin(t), np.sin(t) + 0.1, r2=0.5, unit="m/s", names=["vx"])):
        fig.canvas.draw()
        ax = [a for a in fig.axes if a.get_xlabel() == "time (s)"][0]
        labels = [x.get_text().replace("\u2212", "-") for x in ax.get_xticklabels() if x.get_text()]
        assert ax.xaxis.get_offset_text().get_text() == ""
        assert labels and all(float(x.replace(",", "")) >= t0 - 1 for x in labels), labels
