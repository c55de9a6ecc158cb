"""Figures a neuroscience user looks at: rasters, decoded behaviour, ROC-AUC, masking, losses,
connectivity.

Every function takes NumPy arrays (or plain dicts of numbers), returns the matplotlib
``Figure`` and, given ``path``, writes it there atomically (a temporary file in the same
folder, then a rename, so a half-written PNG never sits under the final name). The format
follows the suffix (``.png`` by default; ``.pdf`` / ``.svg`` work too).

matplotlib is imported inside the functions, so ``import neurofm`` stays light. When the
caller already uses ``matplotlib.pyplot`` (a notebook or an interactive session), figures are
made through pyplot and show as usual (close them with ``plt.close(fig)``); otherwise they are
standalone figures on the Agg canvas: no display needed, nothing kept in global state, so a
script can render hundreds of them in a loop.

Bad input raises ``ValueError`` naming the function, the argument and the fix.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from neurofm import metrics
from neurofm.atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | os.PathLike

#: Colours: recorded / true data in near-black, model output in one accent colour throughout.
RECORDED = "0.15"
GENERATED = "tab:red"
EXCLUDED = "0.88"

# -- shared helpers ------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float]) -> "Figure":
    """A constrained-layout figure: pyplot-managed when the caller uses pyplot, else Agg."""
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, layout="constrained")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: PathLike | None, dpi: float, fn: str) -> None:
    """Write ``fig`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    if path is None:
        return
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"{fn}: path {str(path)!r} has suffix .{fmt}, which matplotlib cannot write; "
                         f"use one of {', '.join('.' + s for s in sorted(supported))} (e.g. .png)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))


def _finite_scalar(fn: str, name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be finite, got {v}")
    return v


def _vector(fn: str, name: str, x: Any, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{fn}: {name} must be 1-D, got shape {a.shape}")
    try:
        return a.astype(dtype, copy=False)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name} must hold {np.dtype(dtype).name} values, got dtype {a.dtype}") from None


def _index_vector(fn: str, name: str, x: Any) -> np.ndarray:
    """1-D non-negative integer indices (floats that are whole numbers are accepted)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{fn}: {name} must be 1-D, got shape {a.shape}")
    if a.size and a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise ValueError(f"{fn}: {name} must hold integer unit indices, got non-integer values")
    if a.size and a.dtype.kind not in "iuf" and a.dtype != bool:
        raise ValueError(f"{fn}: {name} must hold integer unit indices, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{fn}: {name} holds negative indices (min {a.min()}); unit indices start at 0")
    return a


def _nice_bin(span: float, target_bins: int = 100) -> float:
    """The smallest 1-2-5 x 10^k bin width giving at most ``target_bins`` bins over ``span``."""
    raw = span / target_bins
    k = math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10.0**k >= raw * (1 - 1e-9):
            return m * 10.0**k
    return 10.0 ** (k + 1)  # pragma: no cover


def _tiling_edges(t0: float, t1: float, width: float) -> np.ndarray:
    """Bin edges from ``t0`` in steps of ``width`` up to ``t1``; a remainder shorter than half a
    bin is merged into the last bin rather than shown as a noisy sliver."""
    span = t1 - t0
    n_full = int(math.floor(span / width + 1e-9))
    edges = t0 + width * np.arange(n_full + 1)
    rest = t1 - edges[-1]
    if n_full == 0 or rest >= 0.5 * width:
        return np.append(edges, t1) if rest > 1e-9 * max(span, 1.0) else edges
    edges[-1] = t1
    return edges


def _clock_ticks(ax: "Axes") -> None:
    """Time ticks in the recording's own clock: matplotlib's default would write a few seconds of
    an acquisition clock at 36,380 s as ticks 0..4 and a corner ``+3.638e4`` that is easy to miss."""
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over pairs where both are finite; NaN when undefined (constant or < 2 pairs)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    return float(metrics.pearson_r(a[ok], b[ok]))


def _fmt_r(r: float) -> str:
    return "n/a" if not math.isfinite(r) else f"{r:.3f}"


# -- spikes --------------------------------------------------------------------------------------


def raster_compare(real_times, real_units, gen_times, gen_units, t0: float, t1: float, unit_order=None,
                   title: str = "Recorded vs generated spikes", *, unit_labels: Sequence[str] | None = None,
                   n_units: int | None = None, bin_size: float | None = None, order_label: str | None = None,
                   path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """Recorded and generated spike rasters one above the other, on the same time range and
    unit axis, with per-unit rates beside each raster and the population PSTH underneath.

    Generated spikes are only convincing if the same unit shows the same firing in the same
    row, so both rasters share the unit axis (``unit_order``) and the time axis, and the rates
    (spikes/s) are drawn on shared scales.

    Parameters
    ----------
    real_times, gen_times : (S,), (S') float, seconds
        Spike times of the recorded and generated trains (any order).
    real_units, gen_units : (S,), (S') int
        Unit index of each spike (into one unit list shared by both trains).
    t0, t1 : float, seconds
        Time range shown; spikes with ``t0 <= t < t1`` are drawn and counted.
    unit_order : (R,) int, optional
        Units to show, top row first (e.g. sorted by place-field peak or rate); units not
        listed are left out of every panel. Default: all units ``0..n_units-1`` in order.
    title : str
        Figure title.
    unit_labels : sequence of str, optional
        Name of each unit index (e.g. ``Session.unit_ids``) for the y tick labels.
    n_units : int, optional
        Size of the unit list; default: one past the largest index seen.
    order_label : str, optional
        How ``unit_order`` was chosen, for the unit axis label (e.g. ``"by preferred speed"``,
        see :func:`unit_order`).
    bin_size : float, seconds, optional
        PSTH bin width; default the smallest 1-2-5 width giving at most 100 bins. Bins start at
        ``t0``; a remainder at ``t1`` shorter than half a bin joins the last bin (each bin's
        rate is divided by its own width).
    path : str or PathLike, optional
        Where to write the figure (PNG unless the suffix says otherwise).
    dpi : float
        Resolution of the written file.

    Returns
    -------
    Figure with six axes: recorded raster (one marker per shown spike, in a PathCollection),
    its per-unit rate bars (spikes/s), the generated raster and its rate bars, the population
    PSTH (spikes/s summed over the shown units; the Pearson r of the two PSTHs in its title),
    and generated vs recorded per-unit rate (with their Pearson r).
    """
    fn = "raster_compare"
    rt = _vector(fn, "real_times", real_times)
    ru = _index_vector(fn, "real_units", real_units)
    gt = _vector(fn, "gen_times", gen_times)
    gu = _index_vector(fn, "gen_units", gen_units)
    for tn, t, un, u in (("real_times", rt, "real_units", ru), ("gen_times", gt, "gen_units", gu)):
        if t.shape != u.shape:
            raise ValueError(f"{fn}: {un} has {u.size} entries but {tn} has {t.size}; "
                             f"pass one unit index per spike")
    t0, t1 = _finite_scalar(fn, "t0", t0), _finite_scalar(fn, "t1", t1)
    if t1 <= t0:
        raise ValueError(f"{fn}: t1 ({t1}) must be after t0 ({t0})")
    labels = None if unit_labels is None else [str(s) for s in unit_labels]
    order = None if unit_order is None else _index_vector(fn, "unit_order", unit_order)

    seen = max([int(u.max()) + 1 for u in (ru, gu) if u.size] + [0])
    if n_units is None:
        n_units = max(seen, len(labels) if labels is not None else 0,
                      int(order.max()) + 1 if order is not None and order.size else 0)
    n_units = int(n_units)
    for name, u in (("real_units", ru), ("gen_units", gu)):
        if u.size and u.max() >= n_units:
            raise ValueError(f"{fn}: {name} holds unit index {u.max()} but n_units is {n_units}; "
                             f"raise n_units or drop those spikes")
    if labels is not None and len(labels) < n_units:
        raise ValueError(f"{fn}: unit_labels has {len(labels)} names but unit indices go up to "
                         f"{n_units - 1}; pass one name per unit")
    if order is None:
        order = np.arange(n_units)
    if order.size == 0:
        raise ValueError(f"{fn}: unit_order is empty; list at least one unit to show")
    if order.max() >= n_units:
        raise ValueError(f"{fn}: unit_order holds unit {order.max()} but there are {n_units} units")
    if np.unique(order).size != order.size:
        raise ValueError(f"{fn}: unit_order lists some units twice; give each unit once")
    n_rows = order.size
    row_of = np.full(n_units, -1, dtype=np.int64)
    row_of[order] = np.arange(n_rows)

    span = t1 - t0
    bin_size = _nice_bin(span) if bin_size is None else _finite_scalar(fn, "bin_size", bin_size)
    if bin_size <= 0:
        raise ValueError(f"{fn}: bin_size must be positive, got {bin_size}")
    edges = _tiling_edges(t0, t1, bin_size)  # (n_bins + 1,) s

    def shown(t: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = (t >= t0) & (t < t1)
        keep[keep] = row_of[u[keep]] >= 0
        return t[keep], row_of[u[keep]]  # (s,) seconds, (s,) row

    panels = [("recorded", RECORDED, *shown(rt, ru)), ("generated", GENERATED, *shown(gt, gu))]
    rates = [np.bincount(rows, minlength=n_rows) / span for _, _, _, rows in panels]  # (R,) spikes/s
    psth = [np.histogram(t, edges)[0] / np.diff(edges) for _, _, t, _ in panels]  # (n_bins,) spikes/s

    fig = _figure((10.0, 7.8))
    gs = fig.add_gridspec(3, 2, height_ratios=[3, 3, 2.0], width_ratios=[6, 1.2])
    ax_psth = fig.add_subplot(gs[2, 0])
    rate_axes = []
    row_edges = np.arange(n_rows + 1) - 0.5
    # Marker "|" length in points ~ one row's height (raster panels are ~2.3 in tall).
    tick_len = float(np.clip(0.85 * 2.3 * 72 / n_rows, 0.6, 8.0))
    rate_max = max(float(r.max()) for r in rates)
    for i, ((name, colour, t, rows), rate) in enumerate(zip(panels, rates)):
        ax = fig.add_subplot(gs[i, 0], sharex=ax_psth)
        ax_rate = fig.add_subplot(gs[i, 1], sharey=ax, sharex=rate_axes[0] if rate_axes else None)
        rate_axes.append(ax_rate)
        ax.scatter(t, rows, marker="|", s=tick_len**2, c=colour, linewidths=0.8 if n_rows < 100 else 0.5,
                   rasterized=t.size > 20000)
        ax.set_ylim(n_rows - 0.5, -0.5)  # first unit of unit_order on top
        ax.set_ylabel("unit" if unit_order is None else f"unit ({order_label or 'ordered'})")
        ax.set_title(name, loc="left", fontweight="bold", color=colour)
        ax.set_title(f"{t.size:,} spikes, {t.size / span:.1f} spikes/s in {n_rows} units", loc="right",
                     fontsize="small", color="0.3")
        ax.tick_params(labelbottom=False)
        _unit_ticks(ax, order, labels)
        ax_rate.stairs(rate, row_edges, orientation="horizontal", fill=True, color=colour, alpha=0.8)
        ax_rate.set_xlim(0, 1.05 * rate_max if rate_max > 0 else 1.0)
        ax_rate.tick_params(labelleft=False, labelsize="small")
        ax_rate.set_xlabel("rate (spikes/s)", fontsize="small")
        ax_rate.set_title("per unit", fontsize="small", color="0.3")
        ax_psth.stairs(psth[i], edges, color=colour, linewidth=1.3, label=name)
    ax_psth.set_xlim(t0, t1)
    _clock_ticks(ax_psth)
    ax_psth.set_xlabel("time (s)")
    ax_psth.set_ylabel("population\nrate (spikes/s)")
    ax_psth.set_title(f"population PSTH, {_fmt_seconds(edges[1] - edges[0])} bins: "
                      f"r = {_fmt_r(_pearson(psth[0], psth[1]))}", loc="left", fontsize="medium")
    ax_psth.set_ylim(0, 1.3 * max(float(p.max()) for p in psth) or 1.0)
    ax_psth.legend(loc="upper right", ncols=2, fontsize="small", frameon=False)

    ax_sc = fig.add_subplot(gs[2, 1])  # do single units keep their rates?
    top = 1.05 * rate_max if rate_max > 0 else 1.0
    ax_sc.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=0.8)
    ax_sc.scatter(rates[0], rates[1], s=10, color=GENERATED, alpha=0.7, edgecolors="none")
    ax_sc.set(xlim=(0, top), ylim=(0, top))
    ax_sc.set_box_aspect(1)
    ax_sc.tick_params(labelsize="x-small")
    ax_sc.set_xlabel("recorded (spikes/s)", fontsize="x-small")
    ax_sc.set_ylabel("generated", fontsize="x-small")
    ax_sc.set_title(f"unit rates: r = {_fmt_r(_pearson(rates[0], rates[1]))}", fontsize="small", color="0.3")
    fig.suptitle(title)
    _save(fig, path, dpi, fn)
    return fig


def unit_order(counts, behavior=None, *, behavior_name: str = "behaviour", n_bins: int = 20,
               min_spikes: int = 5) -> tuple[np.ndarray, str]:
    """Row order for a raster, and how it was chosen (for :func:`raster_compare`'s ``order_label``).

    With ``behavior``, units are ordered by their preferred value of it (place-field order for
    position): the bin centre where the unit's occupancy-normalised rate peaks, over
    ``n_bins`` equal bins of the first dimension; units with fewer than ``min_spikes`` spikes
    (no tuning to read) go last, by rate. Without it, by mean rate, highest first.

    Parameters
    ----------
    counts : (W, N) spike counts per window (e.g. the training windows) and unit.
    behavior : (W,) or (W, D) float, optional
        The behaviour at each window (NaN: unlabelled, ignored).
    behavior_name : used in the returned label.

    Returns
    -------
    order : (N,) int, unit indices, top row first.
    label : e.g. ``"by preferred speed"`` or ``"by rate"``.
    """
    fn = "unit_order"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"{fn}: counts must be (windows, units), got shape {counts.shape}")
    rate_rank = np.argsort(-counts.sum(0), kind="stable")  # (N,)
    if behavior is None:
        return rate_rank, "by rate"
    b = np.asarray(behavior, dtype=np.float64)
    b = b.reshape(len(b), -1)[:, 0] if b.ndim > 1 else b
    if b.shape[0] != counts.shape[0]:
        raise ValueError(f"{fn}: behavior has {b.shape[0]} windows but counts has {counts.shape[0]}")
    ok = np.isfinite(b)
    if ok.sum() < 2 or np.ptp(b[ok]) == 0:
        return rate_rank, "by rate"
    edges = np.linspace(b[ok].min(), b[ok].max(), n_bins + 1)
    which = np.clip(np.digitize(b[ok], edges[1:-1]), 0, n_bins - 1)  # (W_ok,)
    occupancy = np.bincount(which, minlength=n_bins).astype(np.float64)  # windows per bin
    spikes = np.zeros((n_bins, counts.shape[1]))
    np.add.at(spikes, which, counts[ok])
    rate = spikes / np.maximum(occupancy, 1)[:, None]  # (n_bins, N) spikes per window
    centres = (edges[:-1] + edges[1:]) / 2
    preferred = centres[np.argmax(rate, axis=0)]  # (N,)
    tuned = counts[ok].sum(0) >= min_spikes
    key = np.where(tuned, preferred, np.inf)
    order = np.lexsort((np.argsort(rate_rank), key))  # preferred value, then rate among untuned
    return order, f"by preferred {behavior_name}"


def _unit_ticks(ax: "Axes", order: np.ndarray, labels: list[str] | None) -> None:
    """Row ticks named by unit label (or index): every row when few, else a few integer rows."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    n = order.size
    ax.yaxis.set_major_locator(FixedLocator(np.arange(n)) if n <= 20 else MaxNLocator(8, integer=True))

    def name(v, _pos):
        i = int(round(v))
        if not 0 <= i < n or abs(v - i) > 1e-6:
            return ""
        return labels[order[i]] if labels is not None else str(order[i])

    ax.yaxis.set_major_formatter(FuncFormatter(name))
    ax.tick_params(axis="y", labelsize="x-small" if n > 12 else "small")


# -- behaviour decoding --------------------------------------------------------------------------


def _false_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of each run of False in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], (~mask).astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


#: characters of a suptitle line that fit the 10-inch-wide figures at the default title size
TITLE_LINE_CHARS = 90


def _wrap_entries(entries: Sequence[str], width: int = TITLE_LINE_CHARS) -> str:
    """``entries`` joined by "; ", a new line before an entry that would pass ``width``
    characters: four baselines on one line ran past both edges of the decoding figure."""
    lines: list[str] = []
    for e in entries:
        if lines and len(lines[-1]) + 2 + len(e) <= width:
            lines[-1] += "; " + e
        else:
            lines.append(e)
    return "\n".join(lines)


def decoding_trace(t, true, pred, moving_mask=None, names: Sequence[str] | None = None, r2=None, *,
                   unit: str = "", baseline_r2: Mapping[str, float] | None = None, title: str = "Decoded behaviour",
                   path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """True vs decoded behaviour over time, one panel per dimension, with the bins left out of
    scoring shaded.

    Decoding scores on linear-track-like data are computed on moving bins only (rest would
    inflate or deflate R2), so the figure shows the excluded bins as grey spans: the eye
    should judge the same bins the number judged.

    Parameters
    ----------
    t : (T,) float, seconds
        Bin centres, strictly increasing (at least 2).
    true, pred : (T,) or (T, D) float
        Recorded and decoded behaviour (e.g. position in cm or px); NaN leaves a gap.
    moving_mask : (T,) bool, optional
        True for the bins that were scored; each run of False is shaded from its first bin's
        left edge to its last bin's right edge (edges halfway between centres).
    names : sequence of D str, optional
        Name of each dimension; default ``("x", "y")`` for 2-D, ``x`` / ``x, y, z`` /
        ``dim k`` otherwise.
    r2 : float or (D,) floats, optional
        R2 to print: one number goes in the figure title, one per dimension in each panel's.
    unit : str
        Unit of the behaviour values for the y labels (e.g. ``"cm"``).
    baseline_r2 : {name: R2}, optional
        R2 of baselines on the same scored bins, printed in the title beside the model's.
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with D axes sharing the time axis; each has the true line, the decoded line and,
    with ``moving_mask``, one PolyCollection of the excluded spans.
    """
    fn = "decoding_trace"
    t = _vector(fn, "t", t)
    if t.size < 2:
        raise ValueError(f"{fn}: t needs at least 2 time points, got {t.size}")
    if not np.isfinite(t).all() or (np.diff(t) <= 0).any():
        raise ValueError(f"{fn}: t must be finite and strictly increasing (bin centres in seconds)")
    arrays = []
    for name, a in (("true", true), ("pred", pred)):
        a = np.asarray(a, dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[0] != t.size:
            raise ValueError(f"{fn}: {name} must be (T,) or (T, D) with T = len(t) = {t.size}, got shape "
                             f"{np.shape(a)}")
        arrays.append(a)
    true, pred = arrays
    if true.shape != pred.shape:
        raise ValueError(f"{fn}: pred has shape {pred.shape} but true has {true.shape}; decode the same "
                         f"dimensions as the target")
    n_dims = true.shape[1]
    if names is None:
        names = {1: ("x",), 2: ("x", "y"), 3: ("x", "y", "z")}.get(n_dims, [f"dim {k}" for k in range(n_dims)])
    names = [str(s) for s in names]
    if len(names) != n_dims:
        raise ValueError(f"{fn}: names has {len(names)} entries but the behaviour has {n_dims} dimensions")
    r2_dims: list[float] | None = None
    r2_total: float | None = None
    if r2 is not None:
        r2a = np.atleast_1d(np.asarray(r2, dtype=np.float64))
        if r2a.ndim != 1 or (r2a.size != 1 and r2a.size != n_dims) or (np.ndim(r2) == 1 and r2a.size != n_dims):
            raise ValueError(f"{fn}: r2 must be one number or one per dimension ({n_dims}), got shape {np.shape(r2)}")
        if np.ndim(r2) == 0:
            r2_total = float(r2a[0])
        else:
            r2_dims = [float(v) for v in r2a]
    if moving_mask is not None:
        moving_mask = np.asarray(moving_mask)
        if moving_mask.shape != t.shape:
            raise ValueError(f"{fn}: moving_mask has shape {moving_mask.shape} but t has {t.shape}; "
                             f"pass one flag per time bin")
        if moving_mask.dtype != bool:
            if not np.isin(moving_mask, [0, 1]).all():
                raise ValueError(f"{fn}: moving_mask must be boolean (True = scored bin)")
            moving_mask = moving_mask.astype(bool)

    from matplotlib.collections import PolyCollection

    half = np.diff(t) / 2
    edges = np.concatenate([[t[0] - half[0]], t[:-1] + half, [t[-1] + half[-1]]])  # (T+1,) s
    verts = np.zeros((0, 4, 2))
    if moving_mask is not None:
        starts, ends = _false_runs(moving_mask)
        a, b = edges[starts], edges[ends]  # (n_runs,) s
        zero, one = np.zeros_like(a), np.ones_like(a)
        verts = np.stack([np.stack([a, zero], 1), np.stack([a, one], 1), np.stack([b, one], 1),
                          np.stack([b, zero], 1)], 1)  # (n_runs, 4, 2): x in data, y in axes coords

    fig = _figure((10.0, 1.0 + 2.3 * n_dims))
    axes = fig.subplots(n_dims, 1, sharex=True, squeeze=False)[:, 0]
    for k, ax in enumerate(axes):
        if len(verts):
            ax.add_collection(PolyCollection(verts, transform=ax.get_xaxis_transform(), facecolors=EXCLUDED,
                                             edgecolors="none", zorder=0, label="not scored (e.g. rest)"),
                              autolim=False)
        ax.plot(t, true[:, k], color=RECORDED, linewidth=1.0, label="true")
        ax.plot(t, pred[:, k], color=GENERATED, linewidth=1.0, alpha=0.85, label="decoded")
        ax.set_ylabel(f"{names[k]} ({unit})" if unit else names[k])
        if r2_dims is not None:
            ax.set_title(f"{names[k]}: R² = {r2_dims[k]:.3f}", loc="left", fontsize="medium")
    axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.0 if r2_dims is None else 1.12), ncols=3,
                   frameon=False, fontsize="small")
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(edges[0], edges[-1])
    _clock_ticks(axes[-1])
    head = title if r2_total is None else f"{title}: R² = {_fmt_r(r2_total)}"
    if baseline_r2:  # a baseline that could not be scored (NaN) reads n/a: a figure never fails a run
        head += "\n" + _wrap_entries([f"{k}: R² = {_fmt_r(float(v))}" for k, v in baseline_r2.items()])
    fig.suptitle(head)
    _save(fig, path, dpi, fn)
    return fig


# -- classification ------------------------------------------------------------------------------


def auroc_table(results: Mapping[str, Mapping[str, float]], title: str = "ROC-AUC", *,
                path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """Grouped bars of ROC-AUC per condition (x groups) and model (bars), values printed,
    chance (0.5) marked.

    Parameters
    ----------
    results : {model: {condition: auc}}
        e.g. ``{"BaRISTA parcel": {"sentence onset": 0.862, "speech": 0.869}, ...}``. A model
        may lack a condition (shown as "n/a"); each AUC is in [0, 1].
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with one axis: one bar per (model, condition) value, each labelled with its value,
    and a dashed chance line.
    """
    fn = "auroc_table"
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"{fn}: results must be a non-empty dict {{model: {{condition: auc}}}}")
    models = [str(m) for m in results]
    conditions: list[str] = []
    for m, per in results.items():
        if not isinstance(per, Mapping) or not per:
            raise ValueError(f"{fn}: results[{m!r}] must be a non-empty dict {{condition: auc}}, got {per!r}")
        conditions += [str(c) for c in per if str(c) not in conditions]
    values = np.full((len(models), len(conditions)), np.nan)  # (M, K)
    for i, (m, per) in enumerate(results.items()):
        for c, v in per.items():
            v = _finite_scalar(fn, f"results[{m!r}][{c!r}]", v)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{fn}: results[{m!r}][{c!r}] = {v} is not an AUC (must be in [0, 1])")
            values[i, conditions.index(str(c))] = v

    n_models, n_cond = values.shape
    crowded = n_models * n_cond > 12
    fig = _figure((max(5.0, 1.0 + n_cond * (0.45 * n_models + 0.5)), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / n_models
    x = np.arange(n_cond)
    for i, m in enumerate(models):
        ok = np.isfinite(values[i])
        xs = x + (i - (n_models - 1) / 2) * width
        bars = ax.bar(xs[ok], values[i, ok], width * 0.95, label=m, color=f"C{i % 10}")
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values[i, ok]], padding=2,
                     fontsize="x-small" if crowded else "small", rotation=90 if crowded else 0)
        for xm in xs[~ok]:
            ax.text(xm, 0.02, "n/a", ha="center", va="bottom", fontsize="x-small", color="0.4", rotation=90)
    ax.axhline(0.5, color="0.2", linestyle="--", linewidth=1.0, label="chance (0.5)", zorder=3)
    ax.set_xticks(x, conditions, rotation=30 if n_cond > 4 else 0, ha="right" if n_cond > 4 else "center")
    ax.set_ylim(0.0, 1.12 if crowded else 1.06)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("ROC-AUC")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title)
    _save(fig, path, dpi, fn)
    return fig


def roc_curves(curves: Mapping[str, Sequence[Any]], title: str = "ROC curves", *, path: PathLike | None = None,
               dpi: float = 150) -> "Figure":
    """ROC curves, one per model, each labelled with its area (trapezoid rule), on a square
    [0, 1] axis with the chance diagonal.

    Parameters
    ----------
    curves : {name: (fpr, tpr)} or {name: (fpr, tpr, thresholds)}
        False and true positive rates (each (P,), P >= 2, in [0, 1]), as returned by
        ``sklearn.metrics.roc_curve`` or ``torchmetrics``' ROC (thresholds ignored).
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with one axis: one line per curve plus the chance diagonal.
    """
    fn = "roc_curves"
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"{fn}: curves must be a non-empty dict {{name: (fpr, tpr)}}")
    parsed = []
    for name, c in curves.items():
        if not isinstance(c, (tuple, list)) or len(c) not in (2, 3):
            raise ValueError(f"{fn}: curves[{name!r}] must be a pair (fpr, tpr) (or sklearn's (fpr, tpr, thresholds))")
        fpr = _vector(fn, f"curves[{name!r}] fpr", c[0])
        tpr = _vector(fn, f"curves[{name!r}] tpr", c[1])
        if fpr.shape != tpr.shape:
            raise ValueError(f"{fn}: curves[{name!r}]: tpr has {tpr.size} points but fpr has {fpr.size}")
        if fpr.size < 2:
            raise ValueError(f"{fn}: curves[{name!r}] needs at least 2 points")
        for what, v in (("fpr", fpr), ("tpr", tpr)):
            if not (np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1):
                raise ValueError(f"{fn}: curves[{name!r}] {what} must be rates in [0, 1]")
        o = np.lexsort((tpr, fpr))
        fpr, tpr = fpr[o], tpr[o]
        parsed.append((str(name), fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))))

    fig = _figure((5.6, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1.0, label="chance (AUC = 0.5)")
    for i, (name, fpr, tpr, area) in enumerate(parsed):
        ax.plot(fpr, tpr, color=f"C{i % 10}", linewidth=1.6, label=f"{name} (AUC = {area:.3f})",
                drawstyle="default")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title)
    _save(fig, path, dpi, fn)
    return fig


# -- BaRISTA masking -----------------------------------------------------------------------------

_UNKNOWN = ("", "nan", "none")


def masking_example(channel_mask_2d, categories, *, mask_scale: str | None = None, title: str | None = None,
                    path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """Which (channel, patch) tokens are masked, channels grouped by spatial category.

    BaRISTA masks whole categories at the masking scale (every patch of every channel in a
    chosen parcel or lobe, or single channels): grouping rows by category makes that structure
    (and its difference from random token masking) visible at a glance.

    Parameters
    ----------
    channel_mask_2d : (C, n) bool
        True where token (channel c, patch p) is masked (replaced by the mask token and
        reconstructed); n = patches per segment, time runs left to right.
    categories : (C,) str or int
        Category of each channel at the masking scale (e.g. its parcel, lobe or channel name);
        empty, None and NaN labels form one "unknown" group. Groups appear in order of first
        appearance, channels keep their order inside a group.
    mask_scale : str, optional
        Name of the masking scale for the title (e.g. ``"parcel"``).
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with one image axis (rows = channels grouped by category, y ticks = category names
    with channel counts, fully masked categories' names in the mask colour; one LineCollection
    of G - 1 separators between G groups).
    """
    fn = "masking_example"
    mask = np.asarray(channel_mask_2d)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"{fn}: channel_mask_2d must be a non-empty (C, n) array (channels x patches), got "
                         f"shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, [0, 1]).all():
            raise ValueError(f"{fn}: channel_mask_2d must be boolean (True = masked token)")
        mask = mask.astype(bool)
    cats = np.asarray(categories, dtype=object)
    if cats.ndim != 1 or cats.size != mask.shape[0]:
        raise ValueError(f"{fn}: categories has shape {cats.shape} but channel_mask_2d has {mask.shape[0]} "
                         f"channels; pass one category per channel (row)")
    cats = np.asarray(["unknown" if c is None or str(c).strip().lower() in _UNKNOWN else str(c) for c in cats])

    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names, first, codes = np.unique(cats, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # category -> its order of first appearance
    order = np.argsort(rank[codes], kind="stable")  # (C,) rows grouped, order kept inside a group
    grouped = mask[order]  # (C, n)
    group_of_row = rank[codes][order]
    bounds = np.flatnonzero(np.diff(group_of_row)) + 1  # first row of each group after the first
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [mask.shape[0]]])
    group_names = names[np.argsort(rank)]

    n_ch, n_patch = mask.shape
    fig = _figure((min(4.0 + 0.35 * n_patch, 12.0), min(2.0 + 0.16 * n_ch, 9.0)))
    ax = fig.add_subplot()
    ax.imshow(grouped, cmap=ListedColormap(["#e6e6e6", GENERATED]), vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    if n_patch <= 64 and n_ch <= 200:  # cell borders
        ax.set_xticks(np.arange(n_patch + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n_ch + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    ax.hlines(bounds - 0.5, -0.5, n_patch - 0.5, colors="0.1", linewidth=1.4)
    ax.set_yticks((starts + stops - 1) / 2, [f"{g} ({b - a})" for g, a, b in zip(group_names, starts, stops)],
                  fontsize="small" if len(starts) <= 30 else "xx-small")
    ax.tick_params(axis="y", length=0)
    for label, a, b in zip(ax.get_yticklabels(), starts, stops):
        if grouped[a:b].all():
            label.set_color(GENERATED)
    step = max(1, int(math.ceil(n_patch / 16)))
    ax.set_xticks(np.arange(0, n_patch, step))
    ax.set_xlabel("patch (time →)")
    ax.set_ylabel("channels, grouped by category" + (f" ({mask_scale})" if mask_scale else ""))
    frac = float(mask.mean())
    head = title or "Masked tokens"
    scale = f", mask_scale = {mask_scale}" if mask_scale else ""
    ax.set_title(f"{head}: {frac:.0%} of {n_ch} x {n_patch} tokens masked{scale}", fontsize="medium")
    ax.legend(handles=[Patch(color=GENERATED, label="masked"), Patch(color="#e6e6e6", label="visible")],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")
    _save(fig, path, dpi, fn)
    return fig


# -- training ------------------------------------------------------------------------------------


def load_history(path: PathLike) -> dict[str, list[float]]:
    """Read a training history: a metrics CSV (e.g. Lightning's ``CSVLogger`` ``metrics.csv``,
    one row per log call, empty cells where a metric was not logged) or JSON (``{name: [...]}``
    or a list of ``{name: value}`` records).

    Returns ``{column: [float, ...]}`` with NaN for missing cells; columns that are not
    numbers (e.g. a run name) are left out.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such history file (expected a metrics .csv or .json)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):
            if not all(isinstance(r, Mapping) for r in data):
                raise ValueError(f"{path}: a JSON history list must hold one {{name: value}} record per entry")
            keys: list[str] = []
            for r in data:
                keys += [k for k in r if k not in keys]
            cols = {k: [r.get(k) for r in data] for k in keys}
        elif isinstance(data, Mapping):
            cols = {k: v if isinstance(v, list) else [v] for k, v in data.items()}
        else:
            raise ValueError(f"{path}: JSON history must be {{name: [values]}} or [{{name: value}}, ...]")
    elif suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = {k: [r.get(k) for r in rows] for k in (rows[0].keys() if rows else [])}
    else:
        raise ValueError(f"{path}: history files must be .csv or .json, got {suffix or 'no suffix'}")
    out = {}
    for k, vals in cols.items():
        try:
            out[str(k)] = [float("nan") if v is None or v == "" else float(v) for v in vals]
        except (TypeError, ValueError):
            continue  # not a numeric column
    return out


_X_KEYS = ("step", "epoch")


def loss_curves(history: Mapping[str, Sequence[float]] | PathLike, *, keys: Sequence[str] | None = None,
                x: str | None = None, logy: bool | None = None, title: str = "Training curves",
                path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """Training and validation loss curves, the best validation value marked.

    Parameters
    ----------
    history : {name: [value, ...]} or a path to a metrics .csv / .json (:func:`load_history`)
        NaN entries (metrics not logged at that row, as in Lightning's ``metrics.csv``) are
        skipped per series.
    keys : names to plot; default every series whose name contains "loss" (or every series
        but ``step`` / ``epoch`` when none does).
    x : the series to use as the x axis; default ``"step"`` if present, else ``"epoch"``, else
        each series' own index (e.g. one value per epoch). Every plotted series must then have
        as many entries as ``history[x]``.
    logy : log-scaled y axis; default when all values are positive and span over a decade.
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with one axis: one line per series (validation-like ones, whose name contains
    "val", with markers and their minimum starred).
    """
    fn = "loss_curves"
    if isinstance(history, (str, os.PathLike)):
        history = load_history(history)
    if not isinstance(history, Mapping) or not history:
        raise ValueError(f"{fn}: history must be a non-empty dict {{name: [values]}} or a metrics .csv/.json path")
    series = {str(k): _vector(fn, f"history[{k!r}]", v) for k, v in history.items()}
    if x is None:
        x = next((k for k in _X_KEYS if k in series), None)
    elif x not in series:
        raise ValueError(f"{fn}: x={x!r} is not in history (keys: {', '.join(series)})")
    if keys is None:
        keys = [k for k in series if "loss" in k.lower() and k != x] or [k for k in series
                                                                         if k not in _X_KEYS and k != x]
    keys = [str(k) for k in keys]
    for k in keys:
        if k not in series:
            raise ValueError(f"{fn}: keys names {k!r}, which is not in history (keys: {', '.join(series)})")
        if x is not None and series[k].size != series[x].size:
            raise ValueError(f"{fn}: history[{k!r}] has {series[k].size} entries but history[{x!r}] (the x axis) "
                             f"has {series[x].size}; log them on the same rows or pass x=None")
    if not keys:
        raise ValueError(f"{fn}: history has no series to plot besides {x!r}")

    lines = []
    for k in keys:
        xs = series[x] if x is not None else np.arange(series[k].size, dtype=np.float64)
        ok = np.isfinite(series[k]) & np.isfinite(xs)
        if ok.any():
            lines.append((k, xs[ok], series[k][ok]))
    if not lines:
        raise ValueError(f"{fn}: every value of {', '.join(keys)} is NaN; nothing to plot")
    allv = np.concatenate([v for _, _, v in lines])
    if logy is None:
        logy = bool(allv.min() > 0 and allv.max() / allv.min() > 10)

    fig = _figure((7.5, 4.5))
    ax = fig.add_subplot()
    for i, (k, xs, ys) in enumerate(lines):
        is_val = "val" in k.lower()
        ax.plot(xs, ys, color=f"C{i % 10}", linewidth=1.5, label=k,
                marker="o" if is_val and ys.size <= 60 else None, markersize=3.5)
        if is_val:
            j = int(np.argmin(ys))
            ax.plot(xs[j], ys[j], marker="*", markersize=12, color=f"C{i % 10}", markeredgecolor="k",
                    linestyle="none", label=f"best {k}: {ys[j]:.4g} at {x or 'entry'} {xs[j]:g}")
    if logy:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        if allv.max() / allv.min() < 100:  # few decades: label minor ticks too, as plain numbers
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(x or "entry (log row)")
    ax.set_ylabel("loss" if all("loss" in k.lower() for k, _, _ in lines) else "value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    _save(fig, path, dpi, fn)
    return fig


# -- connectivity --------------------------------------------------------------------------------


def connectivity_compare(true_W, est_W, *, labels: Sequence[str] = ("ground truth", "estimated"),
                         include_diagonal: bool = False, title: str = "Connectivity",
                         path: PathLike | None = None, dpi: float = 150) -> "Figure":
    """Ground-truth and estimated connectivity side by side on one colour scale, with their
    correlation, plus a scatter of estimated vs true weights.

    Parameters
    ----------
    true_W, est_W : (N, M) float
        Coupling matrices, ``W[i, j]`` = effect of unit j on unit i (row = target, column =
        source: the convention of :func:`neurofm.data.synthetic.simulate_spikes`'s
        ``/ground_truth/connectivity``). NaN entries are ignored.
    labels : two names for the panels.
    include_diagonal : count the diagonal (self-history terms, often on another scale than
        coupling) in the correlation and scatter; default False for square matrices.
    title, path, dpi : see :func:`raster_compare`.

    Returns
    -------
    Figure with four axes: the two matrices (one shared colour scale set by the compared entries:
    symmetric diverging when any is negative, else sequential from 0; values beyond it
    saturate), the scatter, and the shared colour bar.
    The suptitle gives the Pearson r over the compared entries.
    """
    fn = "connectivity_compare"
    mats = []
    for name, w in (("true_W", true_W), ("est_W", est_W)):
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(f"{fn}: {name} must be a non-empty 2-D (N, M) matrix, got shape {w.shape}")
        mats.append(w)
    tw, ew = mats
    if tw.shape != ew.shape:
        raise ValueError(f"{fn}: est_W has shape {ew.shape} but true_W has {tw.shape}; compare the same units")
    labels = [str(s) for s in labels]
    if len(labels) != 2:
        raise ValueError(f"{fn}: labels must name the two panels, got {len(labels)} names")

    compared = np.ones(tw.shape, dtype=bool)
    if tw.shape[0] == tw.shape[1] and not include_diagonal and tw.shape[0] > 1:
        np.fill_diagonal(compared, False)
    a, b = tw[compared], ew[compared]
    r = _pearson(a, b)
    both = np.concatenate([a, b])
    finite = both[np.isfinite(both)]  # colour scale from the compared entries (a strong diagonal saturates)
    lo = float(finite.min()) if finite.size else 0.0
    top = float(np.abs(finite).max()) if finite.size else 1.0
    top = top if top > 0 else 1.0
    if lo < 0:
        cmap, vmin, vmax = "RdBu_r", -top, top
    else:
        cmap, vmin, vmax = "viridis", 0.0, top

    n, m = tw.shape
    fig = _figure((13.0, 4.6))
    fig.get_layout_engine().set(wspace=0.06)
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 0.9])
    im = None
    axes = []
    for k, (w, name) in enumerate(zip(mats, labels)):
        ax = fig.add_subplot(gs[0, k])
        im = ax.imshow(w, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
        ax.set_title(name)
        ax.set_xlabel("source unit j (column)")
        if k == 0:
            ax.set_ylabel("target unit i (row)")
        axes.append(ax)
    full = np.concatenate([tw[np.isfinite(tw)], ew[np.isfinite(ew)]])
    below, above = bool((full < vmin).any()), bool((full > vmax).any())
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    fig.colorbar(im, ax=axes, label="W[i, j]: effect of j on i", shrink=0.85, extend=extend[below, above])
    ax_s = fig.add_subplot(gs[0, 2])
    ok = np.isfinite(a) & np.isfinite(b)
    ax_s.scatter(a[ok], b[ok], s=6 if ok.sum() > 2000 else 12, alpha=0.5, color="C0", edgecolors="none",
                 rasterized=ok.sum() > 20000)
    ax_s.axhline(0, color="0.7", linewidth=0.8, zorder=0)
    ax_s.axvline(0, color="0.7", linewidth=0.8, zorder=0)
    ax_s.set_xlabel(f"{labels[0]} weight")
    ax_s.set_ylabel(f"{labels[1]} weight")
    what = "all entries" if compared.all() else "off-diagonal"
    ax_s.set_title(f"{what}: {int(ok.sum()):,} pairs", fontsize="medium")
    ax_s.set_box_aspect(1)
    fig.suptitle(f"{title}: r = {_fmt_r(r)} ({what}, {n} x {m})")
    _save(fig, path, dpi, fn)
    return fig
