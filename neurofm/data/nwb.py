"""NWB -> session file (DESIGN.md 2.2).

What is taken from an NWB 2 file, and where it goes::

    units table             -> /units (id + per-unit columns), /spikes (times, unit_index)
      spike_times             ragged per unit; concatenated and sorted once, vectorised
      tetrode, location, ...  scalar columns kept as they are
      electrodes              ragged row indices -> "3;4;5" strings, plus ``electrode`` (first
                              one) and, when the units table lacks them, ``location`` /
                              ``brain_region`` copied from that electrode's row
    processing/<module>     -> /behavior/<name>
    acquisition TimeSeries  -> /behavior/<name> too (not ElectricalSeries or images: a wheel
                              encoder's cumulative ticks become metres by ``conversion``)
      TimeSeries, SpatialSeries, and those inside Position / BehavioralTimeSeries /
      CompassDirection / PupilTracking ... containers; timestamps or starting_time + rate;
      data * conversion + offset (the series' own unit kept as an attribute); a series at 2 kHz or
      faster (a 30 kHz sync / analog line) is read in blocks and stored as block means at 1-2 kHz
      (``BEHAVIOR_MAX_RATE_HZ``, warned; attrs ``source_rate_hz``, ``block_mean_samples``)
    acquisition ElectricalSeries -> /continuous (microvolts, streamed in blocks of rows)
      its electrodes table rows -> /channels: name, x, y, z (mm), location / brain_region /
      other region-like string columns -> /channels/region/<column>
    stimulus TimeSeries     -> /stimulus/<name> (only data stored inside the file)
    trials, epochs, invalid_times, other TimeIntervals -> /intervals/<name>
      start_time/stop_time -> start/end, scalar columns kept, ragged ones (tags) joined by ";"
    SpatialSeries samples that jump away and back (mis-tracking: :func:`tracking_jumps`) are named
      in a warning, not changed
    invalid_times, and recording pauses (spans where no unit fires: see
    :func:`recording_pauses`) -> also /intervals/bad_segments (no window reads them; warned)

Nothing is written under the output name unless the whole conversion succeeds
(:class:`~neurofm.data.session.SessionWriter` writes a temporary file and renames it).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from neurofm.atomic import OutputError, check_destination
from neurofm.data.session import (BAD_SEGMENTS, ConvertError, SessionFormatError, SessionWriter,
                                  check_brain_coordinates, clean_labels, coordinate_scale, mm_per_unit)

#: Rows of an ElectricalSeries converted per block: bounds memory at ~32 MB of float64 whatever
#: the recording's length.
BLOCK_VALUES = 1 << 22

#: Electrodes-table string columns that describe anatomy (become ``/channels/region/<col>``);
#: any other column whose name contains one of these words is taken too.
_REGION_WORDS = ("location", "region", "atlas", "parcel", "area", "structure", "destrieux", "desikan", "ccf")
_NAME_COLUMNS = ("channel_name", "label", "name", "electrode_name")
_UNIT_SKIP = {"spike_times", "obs_intervals", "waveforms", "spike_amplitudes"}
#: A recording pause is a span in which no unit fires that is longer than both of these: at the
#: recording's mean pooled rate R, a Poisson population stays silent for PAUSE_MIN_ISIS / R
#: seconds with probability e^-100, and a rest period with a tenth of that rate still e^-10 per
#: interval; the floor keeps sparse recordings' long silences (a few units, under 10 Hz summed)
#: from reading as pauses.
PAUSE_MIN_ISIS = 100
PAUSE_MIN_S = 10.0
#: Two spikes of one unit closer than this are one spike counted twice (a spike sorter's template
#: overlap, or a merge of two clusters that both caught it): no neuron fires again within its
#: ~1 ms absolute refractory period, and threshold-crossing detectors have a dead time of that
#: order. The later spike of each such pair is dropped (SpikeInterface's
#: ``remove_duplicated_spikes`` uses the same 0.3 ms censored period).
DUPLICATE_ISI_S = 3e-4
#: Units-table columns where spike sorters and curation tools write a unit's label (phy:
#: ``group`` / ``quality``, Kilosort: ``KSLabel``, SpikeInterface / others: ``quality``, ``label``),
#: compared without case; a unit any of them labels ``noise`` is no neuron (an artefact cluster).
CURATION_COLUMNS = ("quality", "kslabel", "group", "cluster_group", "label", "curation")


def _pynwb():
    try:
        import pynwb
    except ImportError as e:
        raise ImportError(f"reading NWB files needs pynwb ({e}): install neurofm[nwb] "
                          f"(pip install 'neurofm[nwb]')") from None
    return pynwb


def convert_nwb(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    session_id: str | None = None,
    nan_policy: str = "raise",
    overwrite: bool = True,
    electrical_series: str | bool | None = None,
    coordinate_unit: str | None = None,
    license: str | None = None,
    keep_noise_units: bool = False,
) -> Path:
    """Convert one NWB file to a neurofm session file; returns ``out_path``.

    Parameters
    ----------
    in_path : the ``.nwb`` file (HDF5 backend).
    out_path : the session file to write (``.h5``).
    session_id : defaults to the input file's stem.
    nan_policy : ``"raise"`` (default) stops at the first NaN/inf voltage sample, naming the
        channel and time; ``"mark_bad"`` zeros them and flags the channel in ``/channels/bad``.
    overwrite : replace an existing ``out_path`` (the old file stays untouched if conversion fails).
    electrical_series : which ElectricalSeries becomes ``/continuous`` when the file holds
        several (by name); ``False`` leaves voltage traces out (e.g. spikes-only sessions from
        files that also carry 30 kHz raw data). Default: the only one, or the first (warned).
    coordinate_unit : unit of the electrodes table's x, y, z (``"m"``, ``"cm"``, ``"mm"``,
        ``"um"``) when the file does not say (NWB >= 2.8 asks for microns, which is the default
        assumption, with a warning). Positions farther than 300 mm from the origin are warned
        about, with the unit that would fit.
    license : the data's licence as an SPDX id (e.g. ``"CC-BY-4.0"``), stored as the root attr
        ``license`` that model cards carry (NWB files do not record one; DANDI sets state it).
    keep_noise_units : keep units a curation column (``quality``, ``KSLabel``, phy's ``group``...;
        ``CURATION_COLUMNS``) labels ``noise``. By default they are left out, with a warning that
        counts them and their spikes: a sorter's noise clusters are artefacts, and at their
        rates they would be most of the tokens the model reads. ``mua`` units are kept.

    Spikes of one unit within ``DUPLICATE_ISI_S`` (0.3 ms) of its previous spike are double
    counts of one spike: the later one is dropped, with a warning naming the units.

    The session spans every spike, behaviour sample and trials/epochs/other interval (and
    the voltage traces when converted), not just first..last spike, so that time-block
    splits cut the real recording.

    Raises
    ------
    FileNotFoundError, ConvertError (a ``ValueError``) naming the input file, the NWB path and
    the fix; ImportError when pynwb is missing.
    """
    pynwb = _pynwb()
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.exists():
        raise FileNotFoundError(f"{in_path}: no such NWB file (check the path; convert_nwb reads .nwb files)")
    if in_path.resolve() == out_path.resolve():
        raise ConvertError(in_path, "out_path", "is the input file itself", "write the session to another path")
    check_destination(out_path, overwrite)  # before reading: a directory there, or exists and not overwrite
    if coordinate_unit is not None:
        coordinate_scale(coordinate_unit, in_path)  # not a length: say so before reading anything
    try:
        io = pynwb.NWBHDF5IO(str(in_path), "r")
    except Exception as e:  # h5py raises OSError for truncated / non-HDF5 files
        raise ConvertError(in_path, "/", f"cannot be opened as NWB (HDF5): {e}",
                           "the file is truncated or not an NWB 2 HDF5 file: copy or export it again") from None
    try:
        try:
            nwb = io.read()
        except Exception as e:
            raise ConvertError(in_path, "/", f"cannot be read as NWB: {type(e).__name__}: {e}",
                               "the file is damaged or not NWB 2: validate it with `pynwb-validate` and export it again") from None
        return _convert(nwb, in_path, out_path, session_id=session_id, nan_policy=nan_policy, overwrite=overwrite,
                        electrical_series=electrical_series, coordinate_unit=coordinate_unit, license=license,
                        keep_noise_units=keep_noise_units)
    except (FileExistsError, OutputError):  # the output's problem, already named as such
        raise
    except OSError as e:  # h5py: a read from a damaged input file failed mid-way (the writer has cleaned up)
        raise ConvertError(in_path, "/", f"read failed mid-way: {e}",
                           "the file is truncated or damaged: copy or export it again") from None
    finally:
        io.close()


def _convert(nwb, in_path: Path, out_path: Path, *, session_id, nan_policy, overwrite, electrical_series,
             coordinate_unit, license=None, keep_noise_units=False) -> Path:
    pynwb = _pynwb()
    units = nwb.units if nwb.units is not None and len(nwb.units) > 0 else None
    series = _pick_electrical_series(nwb, in_path, electrical_series)
    if units is None and series is None:
        raise ConvertError(in_path, "units / acquisition ElectricalSeries",
                           "has neither a units table with spike times nor an ElectricalSeries of voltage traces",
                           "neurofm needs spikes or continuous data: add a units table (nwbfile.add_unit) or an "
                           "ElectricalSeries in acquisition, or convert the file that holds them")
    # Read and check everything small before the writer exists, so that input errors never
    # create even a temporary file.
    unit_ids, unit_cols, spike_t, spike_u = _read_units(units, nwb, in_path) if units is not None else (None,) * 4
    if units is not None and not keep_noise_units:
        unit_ids, unit_cols, spike_t, spike_u = _drop_noise_units(unit_ids, unit_cols, spike_t, spike_u, in_path)
    behaviour = list(_read_behaviour(nwb, in_path, pynwb))
    stimuli = list(_read_stimuli(nwb, in_path, pynwb))
    intervals = list(_read_intervals(nwb, in_path))
    channels = _read_channels(series, in_path, coordinate_unit) if series is not None else None
    span = _recording_span(spike_t, behaviour, intervals, unit_cols) if units is not None else (None, None)
    bad = _bad_segments(spike_t, span, intervals, in_path) if units is not None else None

    subject = nwb.subject
    attrs: dict[str, Any] = dict(
        session_id=session_id or in_path.stem,
        subject_id=(getattr(subject, "subject_id", None) or "") if subject is not None else "",
        species=(getattr(subject, "species", None) or "") if subject is not None else "",
        lab=nwb.lab or "",
        source=str(in_path),
        license=license or "",
        source_format="nwb",
        nwb_identifier=nwb.identifier or "",
        session_description=nwb.session_description or "",
        session_start_time=nwb.session_start_time.isoformat() if nwb.session_start_time else "",
    )
    try:
        with SessionWriter(out_path, overwrite=overwrite, **attrs) as w:
            if units is not None:
                w.add_units(unit_ids, **unit_cols)
                w.add_spikes(spike_t, spike_u, *span)
            if series is not None:
                _write_continuous(w, series, channels, in_path, nan_policy)
            for name, ts, values, extra in behaviour:
                w.add_behavior(name, ts, values, **extra)
            for name, ts, frames, extra in stimuli:
                w.add_stimulus(name, ts, frames, **extra)
            for name, start, end, cols in intervals:
                if name != BAD_SEGMENTS:  # an NWB table of that name is merged into ``bad`` below
                    w.add_intervals(name, start, end, **cols)
            if bad is not None:
                w.add_intervals(BAD_SEGMENTS, bad[0], bad[1], **bad[2])
    except ConvertError:
        raise
    except SessionFormatError as e:  # problems found while writing are problems of the input
        raise ConvertError(in_path, e.field, e.problem, e.fix) from None
    return out_path


def recording_pauses(spike_t: np.ndarray, t_start: float, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` of the spans between two spikes in which no unit fires for longer than
    ``PAUSE_MIN_ISIS`` mean pooled inter-spike intervals (the rate over ``t_start..t_end``) and
    ``PAUSE_MIN_S`` seconds: acquisition paused (two recording epochs on one clock), or spike
    sorting left out part of the session. Read as data, such a span is thousands of empty windows
    that pretraining learns as silence. Only pauses between the first and the last spike: a
    session's silent head or tail (tracking that ran on past the neural recording) is left as it is."""
    t = np.asarray(spike_t, np.float64)
    if len(t) < 2 or t_end <= t_start:
        return np.zeros(0), np.zeros(0)
    min_gap = max(PAUSE_MIN_S, PAUSE_MIN_ISIS * (t_end - t_start) / len(t))
    k = np.flatnonzero(np.diff(t) > min_gap)
    return t[k], t[k + 1]


def _bad_segments(spike_t, span, intervals, in_path: Path):
    """``(start, end, {label})`` for /intervals/bad_segments: the NWB file's ``invalid_times`` (and
    a table it calls ``bad_segments``) and the recording pauses, each warned about; None if none."""
    start, end, label = [], [], []
    for name, a, b, _ in intervals:
        if name in ("invalid_times", BAD_SEGMENTS) and len(a):
            start.append(a), end.append(b), label.append(np.full(len(a), name, dtype=object))
            warnings.warn(f"{in_path}: intervals/{name}: {len(a)} span(s), {float(np.sum(b - a)):.1f} s in all, "
                          f"marked invalid by the file; no window of training, validation, test or the "
                          f"baselines reads them (/intervals/{BAD_SEGMENTS})", stacklevel=3)
    if span[0] is not None:
        a, b = recording_pauses(spike_t, *span)
        if len(a):
            start.append(a), end.append(b), label.append(np.full(len(a), "recording pause", dtype=object))
            eg = ", ".join(f"{x:.1f}-{y:.1f} s" for x, y in zip(a[:3], b[:3]))
            warnings.warn(f"{in_path}: units/spike_times: no unit fires for {float(np.sum(b - a)):.1f} s in "
                          f"{len(a)} span(s) ({eg}{', ...' if len(a) > 3 else ''}), over {PAUSE_MIN_ISIS} mean "
                          f"pooled inter-spike intervals and {PAUSE_MIN_S:g} s each: read as recording pauses "
                          f"(acquisition stopped, or sorting covers part of the session) and kept out of "
                          f"every window as /intervals/{BAD_SEGMENTS}. If the population really was silent, "
                          f"delete that group (h5py) before training", stacklevel=3)
    if not start:
        return None
    start, end, label = np.concatenate(start), np.concatenate(end), np.concatenate(label)
    order = np.argsort(start, kind="stable")
    return start[order], end[order], {"label": label[order]}


def _recording_span(spike_t: np.ndarray, behaviour: list, intervals: list, unit_cols: dict | None = None
                    ) -> tuple[float | None, float | None]:
    """``(t_start, t_end)`` over spikes, behaviour samples, intervals (trials, epochs, ...) and the
    units' observation intervals (``unit_cols``' ``obs_start`` / ``obs_end``: a recording observed
    from 0 s starts at 0 s, not at its first spike).

    A spikes-only session would otherwise span first..last spike, and fractional time-block
    splits would be fractions of that rather than of the recording the trials describe.
    ``None`` when there is nothing to span. (Stimulus frames are left out, as the session
    writer leaves them out: a stimulus may run past the neural data.)
    """
    lo, hi = [], []
    for t in [spike_t] + [ts for _, ts, _, _ in behaviour]:
        if len(t):
            lo.append(float(t[0]))
            hi.append(float(t[-1]))
    spans = [(start, end) for _, start, end, _ in intervals]
    if unit_cols and "obs_start" in unit_cols:
        spans.append((unit_cols["obs_start"], unit_cols["obs_end"]))
    for start, end in spans:
        start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
        if np.isfinite(start).any():
            lo.append(float(np.nanmin(start)))
            hi.append(float(np.nanmax(end)))
    return (min(lo), max(hi)) if lo else (None, None)


# -- tables ------------------------------------------------------------------------------------


def _column_values(table, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, ends)`` of one DynamicTable column; ``ends`` is None for a plain column,
    else the ragged index (row ``i`` owns ``values[ends[i-1]:ends[i]]``). Object references
    (e.g. ElectrodeGroup) become their names."""
    from hdmf.common.table import DynamicTableRegion, VectorIndex

    col = table[name]
    ends = None
    if isinstance(col, VectorIndex):
        ends = np.asarray(col.data[:], dtype=np.int64)
        col = col.target
    data = col.data
    if isinstance(col, DynamicTableRegion):
        values = np.asarray(data[:], dtype=np.int64)
    else:
        values = np.asarray(data[:]) if not isinstance(data, np.ndarray) else data
    if values.dtype == object and values.size and hasattr(values.flat[0], "name"):
        values = np.asarray([getattr(v, "name", str(v)) for v in values], dtype=object)
    if values.dtype.kind == "S":
        values = np.asarray([v.decode() for v in values], dtype=object)
    return values, ends


def _ragged_strings(values: np.ndarray, ends: np.ndarray) -> np.ndarray:
    starts = np.concatenate([[0], ends[:-1]])
    return np.asarray([";".join(str(v) for v in values[a:b]) for a, b in zip(starts, ends)], dtype=object)


def _is_ragged_index(name: str, colnames) -> bool:
    """``tags_index`` beside ``tags`` is the ragged column's index, not data; a column of its own
    named like ``target_index`` or ``shank_index`` is data and is kept."""
    return name.endswith("_index") and name[: -len("_index")] in colnames


def _read_units(units, nwb, in_path: Path):
    """Unit ids, per-unit columns, and all spikes sorted by time with their unit index."""
    n = len(units)
    ids = np.asarray(units.id.data[:]).astype(str)
    flat, ends = _column_values(units, "spike_times")
    flat = np.asarray(flat, dtype=np.float64)
    if ends is None or ends.shape != (n,):
        raise ConvertError(in_path, "units/spike_times", "is not a ragged column with one list per unit",
                           "write spike times with nwbfile.add_unit(spike_times=...)")
    counts = np.diff(np.concatenate([[0], ends]))
    unit_index = np.repeat(np.arange(n, dtype=np.int32), counts)  # (S,)
    bad = ~np.isfinite(flat)
    if bad.any():
        u = ids[unit_index[bad][0]]
        raise ConvertError(in_path, "units/spike_times", f"{int(bad.sum())} spike times are NaN or inf (first in unit {u})",
                           "drop those spikes in the NWB file")
    if flat.size > 1:
        within = unit_index[1:] == unit_index[:-1]  # pairs inside one unit
        backwards = within & (np.diff(flat) < 0)
        if backwards.any():
            bad_units = np.unique(unit_index[1:][backwards])
            warnings.warn(f"{in_path}: units/spike_times: spike times of {len(bad_units)} unit(s) were not sorted "
                          f"(e.g. unit {ids[bad_units[0]]}); sorted them", stacklevel=3)
    flat, unit_index = _drop_duplicate_spikes(flat, unit_index, ids, in_path)
    order = np.argsort(flat, kind="stable")
    spike_t, spike_u = flat[order], unit_index[order]

    columns: dict[str, np.ndarray] = {}
    skipped = []
    for name in units.colnames:
        if name in _UNIT_SKIP or _is_ragged_index(name, units.colnames):
            continue
        try:
            values, col_ends = _column_values(units, name)
        except Exception:
            skipped.append(name)
            continue
        if col_ends is not None:
            if values.ndim != 1:
                skipped.append(name)
                continue
            if name == "electrodes":
                e_ids = np.asarray(nwb.electrodes.id.data[:])
                columns["electrodes"] = _ragged_strings(e_ids[values], col_ends)
                columns.update(_first_electrode_columns(nwb, values, col_ends, e_ids, units.colnames))
            else:
                columns[name] = _ragged_strings(values, col_ends)
        elif len(values) == n and values.dtype.kind in "iufb":
            columns[name] = values  # any trailing shape, e.g. waveform_mean (N, T, C)
        elif len(values) == n and values.ndim == 1:
            columns[name] = clean_labels(values)
        else:
            skipped.append(name)
    if skipped:
        warnings.warn(f"{in_path}: units columns {skipped} are not per-unit scalars or strings; left out", stacklevel=3)
    if "obs_intervals" in units.colnames:
        columns.update(_observed_spans(units, ids, in_path))
    return ids, columns, spike_t, spike_u


def _drop_duplicate_spikes(t: np.ndarray, unit_index: np.ndarray, ids: np.ndarray, in_path: Path):
    """``t`` and ``unit_index`` without the spikes within ``DUPLICATE_ISI_S`` of their unit's
    previous spike (warned about, naming the units with the most)."""
    if t.size < 2:
        return t, unit_index
    by_unit = np.lexsort((t, unit_index))  # each unit's spikes in time order
    tu, uu = t[by_unit], unit_index[by_unit]
    dup = np.zeros(t.size, dtype=bool)
    dup[1:] = (uu[1:] == uu[:-1]) & (np.diff(tu) < DUPLICATE_ISI_S)
    if not dup.any():
        return t, unit_index
    per_unit = np.bincount(uu[dup], minlength=len(ids))
    total = np.bincount(uu, minlength=len(ids))
    worst = np.argsort(-per_unit, kind="stable")[: min(3, int((per_unit > 0).sum()))]
    named = ", ".join(f"unit {ids[u]}: {per_unit[u]:,} of {total[u]:,} ({100 * per_unit[u] / total[u]:.1f}%)"
                      for u in worst)
    warnings.warn(f"{in_path}: units/spike_times: {int(dup.sum()):,} spikes of {int((per_unit > 0).sum())} unit(s) "
                  f"follow their unit's previous spike within {DUPLICATE_ISI_S * 1e3:.1f} ms ({named}): one spike "
                  f"counted twice (no neuron fires again that soon); dropped the later of each. Remove duplicates "
                  f"in the sorter's output to silence this", stacklevel=4)
    keep = np.ones(t.size, dtype=bool)
    keep[by_unit[dup]] = False
    return t[keep], unit_index[keep]


def noise_units(columns: dict[str, np.ndarray]) -> tuple[np.ndarray | None, list[str]]:
    """``(mask, columns)``: units labelled ``noise`` by any curation column (``CURATION_COLUMNS``,
    names compared without case), and the names of the columns that do; ``(None, [])`` when the
    table has no such column."""
    mask, used = None, []
    for name, col in columns.items():
        col = np.asarray(col)
        if name.lower() not in CURATION_COLUMNS or col.ndim != 1 or col.dtype.kind not in "OUS":
            continue
        is_noise = np.char.lower(np.char.strip(col.astype(str))) == "noise"
        mask = is_noise if mask is None else (mask | is_noise)
        if is_noise.any():
            used.append(name)
    return mask, used


def _drop_noise_units(ids, columns, spike_t, spike_u, in_path: Path):
    """Leave out the units a curation column labels ``noise`` (and their spikes), with a warning."""
    noise, used = noise_units(columns)
    if noise is None or not noise.any():
        return ids, columns, spike_t, spike_u
    if noise.all():
        raise ConvertError(in_path, f"units/{used[0]}", f"labels all {len(ids)} units noise",
                           "curate the sorting (phy) before exporting, or pass --keep-noise-units "
                           "(keep_noise_units=True) to convert them anyway")
    n_spk = np.bincount(spike_u, minlength=len(ids))
    dropped = int(n_spk[noise].sum())
    warnings.warn(f"{in_path}: units/{'/'.join(used)}: left out {int(noise.sum())} of {len(ids)} units labelled "
                  f"noise ({', '.join(ids[noise][:6])}{' ...' if noise.sum() > 6 else ''}) and their {dropped:,} "
                  f"spikes ({100 * dropped / max(1, spike_t.size):.1f}% of all): a sorter's noise clusters are "
                  f"artefacts, not neurons; 'mua' units are kept. --keep-noise-units (keep_noise_units=True) "
                  f"keeps them", stacklevel=4)
    new_index = np.cumsum(~noise) - 1  # old unit index -> new
    keep_spk = ~noise[spike_u]
    columns = {k: np.asarray(v)[~noise] for k, v in columns.items()}
    return ids[~noise], columns, spike_t[keep_spk], new_index[spike_u[keep_spk]].astype(spike_u.dtype)


def _observed_spans(units, ids: np.ndarray, in_path: Path) -> dict[str, np.ndarray]:
    """``obs_start`` / ``obs_end`` / ``obs_s`` per unit from ``units/obs_intervals`` (first start,
    last end, total observed seconds), with a warning naming the units observed for under 99% of
    the span all units together cover: outside its intervals a unit has no spikes in the session
    file, which a model or decoder reads as silence, not as "not recorded"."""
    flat, ends = _column_values(units, "obs_intervals")
    flat = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
    if ends is None or ends.shape != (len(ids),) or not len(flat):
        return {}
    starts = np.concatenate([[0], ends[:-1]])
    obs_start = np.array([flat[a:b, 0].min() if b > a else np.nan for a, b in zip(starts, ends)])
    obs_end = np.array([flat[a:b, 1].max() if b > a else np.nan for a, b in zip(starts, ends)])
    obs_s = np.array([np.sum(flat[a:b, 1] - flat[a:b, 0]) for a, b in zip(starts, ends)])
    span = float(np.nanmax(obs_end) - np.nanmin(obs_start))
    partial = np.flatnonzero(obs_s < 0.99 * span)
    if len(partial):
        eg = ", ".join(f"{ids[k]}: {obs_s[k]:.0f} s ({obs_start[k]:.1f}-{obs_end[k]:.1f})" for k in partial[:3])
        more = f" and {len(partial) - 3} more" if len(partial) > 3 else ""
        warnings.warn(f"{in_path}: units/obs_intervals: {len(partial)} of {len(ids)} units were recorded for only "
                      f"part of the {span:.0f} s the units cover (unit {eg}{more}); outside their intervals "
                      f"they have no spikes, which models and decoders read as silence. Kept as /units/obs_start, "
                      f"obs_end, obs_s: choose train/valid/test blocks inside them (`neurofm split`) or drop those "
                      f"units from the NWB file", stacklevel=4)
    return {"obs_start": obs_start, "obs_end": obs_end, "obs_s": obs_s}


def _first_electrode_columns(nwb, rows, ends, e_ids, unit_colnames) -> dict[str, np.ndarray]:
    """``electrode`` (id of each unit's first electrode, -1 if none) and anatomy columns
    (``location``, ``brain_region``) copied from that electrode's row when the units table
    lacks them."""
    starts = np.concatenate([[0], ends[:-1]])
    has = ends > starts
    first = np.zeros(len(ends), dtype=np.int64)  # row of each unit's first electrode
    first[has] = rows[starts[has]]
    out = {"electrode": np.where(has, e_ids[first], -1).astype(np.int64)}
    for col in ("location", "brain_region"):
        if col in unit_colnames or col not in nwb.electrodes.colnames:
            continue
        labels, _ = _column_values(nwb.electrodes, col)
        labels = clean_labels(labels)
        out[col] = np.where(has, labels[first], "").astype(object)
    return out


# -- behaviour and stimulus --------------------------------------------------------------------


def _series_in(container, pynwb) -> Iterator[tuple[str, Any]]:
    """``(path, TimeSeries)`` inside a processing module, or in ``nwb.acquisition`` (a mapping of
    name to object): bare series and the ones held by MultiContainerInterfaces (Position,
    BehavioralTimeSeries, ...)."""
    from pynwb.ecephys import ElectricalSeries

    objects = container.data_interfaces if hasattr(container, "data_interfaces") else container
    for name, obj in objects.items():
        if isinstance(obj, pynwb.TimeSeries):
            yield name, obj
            continue
        for attr in ("spatial_series", "time_series"):
            children = getattr(obj, attr, None)
            if isinstance(children, dict):
                for child_name, child in children.items():
                    if isinstance(child, pynwb.TimeSeries) and not isinstance(child, ElectricalSeries):
                        yield f"{name}/{child_name}", child


def _timestamps(ts, field: str, in_path: Path) -> np.ndarray:
    n = ts.data.shape[0] if hasattr(ts.data, "shape") else len(ts.data)
    if ts.timestamps is not None:
        t = np.asarray(ts.timestamps[:], dtype=np.float64)
    elif ts.rate:
        t = float(ts.starting_time or 0.0) + np.arange(n, dtype=np.float64) / float(ts.rate)
    else:
        raise ConvertError(in_path, f"{field}/timestamps", "has neither timestamps nor starting_time + rate",
                           "give the series timestamps or a rate")
    if t.shape != (n,):
        raise ConvertError(in_path, f"{field}/timestamps", f"{t.size} timestamps for {n} samples",
                           "give one timestamp per sample")
    if not np.isfinite(t).all():
        raise ConvertError(in_path, f"{field}/timestamps", "contains NaN or inf", "drop those samples")
    d = np.diff(t)
    if d.size and (d < 0).any():
        i = int(np.argmax(d < 0))
        raise ConvertError(in_path, f"{field}/timestamps",
                           f"do not increase: they go back in time at sample {i + 1} ({t[i]} -> {t[i + 1]} s; "
                           f"{int((d < 0).sum())} places)",
                           "sort the samples by time in the NWB file (or fix the clock that stamped them)")
    return t


def _drop_repeats(t: np.ndarray, values: np.ndarray, field: str, in_path: Path):
    """Samples stamped with the same time as the one before (a camera clock glitch, seen in
    real files) are dropped, keeping the first, with a warning: the session format needs
    strictly increasing timestamps, and a repeated stamp carries no new time information."""
    repeat = np.concatenate([[False], np.diff(t) == 0])
    if repeat.any():
        i = int(np.argmax(repeat))
        warnings.warn(f"{in_path}: {field}/timestamps: {int(repeat.sum())} sample(s) repeat the previous timestamp "
                      f"(first at sample {i}, t = {t[i]} s); kept the first of each", stacklevel=4)
        t, values = t[~repeat], values[~repeat]
    return t, values


def _scaled(ts, values=None) -> np.ndarray:
    """``ts``' data (or ``values``, rows of it) x ``conversion`` + ``offset`` (numeric data only)."""
    values = np.asarray(ts.data[:] if values is None else values)
    if values.dtype.kind in "iufb":
        conv = float(getattr(ts, "conversion", 1.0) or 1.0)
        offset = float(getattr(ts, "offset", 0.0) or 0.0)
        values = values.astype(np.float64) * conv + offset
    return values


def _read_behaviour(nwb, in_path: Path, pynwb):
    """``(name, timestamps, values, attrs)`` for every numeric series under processing/ and, not
    an ElectricalSeries or image, in acquisition/ (raw behaviour: a wheel's rotary encoder, a lick
    sensor)."""
    from pynwb.ecephys import ElectricalSeries
    from pynwb.image import ImageSeries

    found = []
    places = [(f"processing/{m}", m, module) for m, module in nwb.processing.items()]
    places.append(("acquisition", "acquisition", nwb.acquisition))
    for where, module_name, module in places:
        for path, ts in _series_in(module, pynwb):
            if isinstance(ts, (ElectricalSeries, ImageSeries)):
                continue  # LFP belongs to continuous data, images to stimulus
            field = f"{where}/{path}"
            shape = getattr(ts.data, "shape", None) or np.shape(ts.data)
            dtype = getattr(ts.data, "dtype", np.asarray(ts.data[:1]).dtype)
            if len(shape) > 2 or np.dtype(dtype).kind not in "iufb":
                warnings.warn(f"{in_path}: {field}: shape {tuple(shape)} / dtype {dtype} is not a (T,) or (T, D) "
                              f"numeric series; left out of /behavior", stacklevel=3)
                continue
            rate = _series_rate(ts, shape[0])
            k = int(rate / BEHAVIOR_MAX_RATE_HZ * (1 + 1e-9)) if rate else 1  # 20 kHz from timestamps: 19999.99 Hz
            if k > 1:  # a sync / analog line at kHz: block means, read in blocks of rows
                t, values = _block_means(ts, shape, k, rate, field, in_path)
                extra = dict(source_rate_hz=rate, block_mean_samples=k)
            else:
                t, values, extra = *_drop_repeats(_timestamps(ts, field, in_path), _scaled(ts), field, in_path), {}
            if isinstance(ts, pynwb.behavior.SpatialSeries):
                _warn_tracking_jumps(t, values, field, str(getattr(ts, "unit", "") or ""), in_path)
            found.append((module_name, path, ts.name, t, values,
                          dict(unit=str(getattr(ts, "unit", "") or ""), description=str(ts.description or ""),
                               nwb_path=field, **extra)))
    counts: dict[str, int] = {}
    for _, _, name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    for module_name, path, name, t, values, extra in found:
        # keep the series' own name ("position"); disambiguate only on collisions
        out_name = name if counts[name] == 1 else f"{module_name}_{path}".replace("/", "_")
        yield out_name, t, values, extra


#: Behaviour sampled at twice this rate or faster (a 30 kHz sync or analog line kept as a plain
#: TimeSeries) is stored as the means of blocks of ``k = floor(rate / BEHAVIOR_MAX_RATE_HZ)``
#: samples, at ``rate / k`` (1 to 2 kHz). The finest time a model reads a behaviour at is ~6 ms
#: (Neuroformer's 8 interpolated input samples across its default 50 ms window; the demo's dt
#: tokens are 5 ms, BaRISTA's segments seconds) and its target is the time-weighted mean over a
#: window or segment, which the block means keep to within one block (<= 1 ms) at each edge. A
#: block mean is also a (boxcar) low-pass: a component at a multiple of the stored rate averages
#: out exactly and others faster than it are attenuated (sidelobes -13 dB and falling), where
#: plain decimation would fold them onto slow ones at full amplitude. Read in blocks of rows: memory is bounded
#: by ``BLOCK_VALUES`` and the stored rate, not the series' length (an hour at 30 kHz: 108 M
#: samples in, 3.6 M stored).
BEHAVIOR_MAX_RATE_HZ = 1000.0


def _series_rate(ts, n: int) -> float | None:
    """Samples per second of a TimeSeries: its ``rate``, else from its first and last timestamps
    (two reads, whatever its length); None when neither says (the full checks come later)."""
    if ts.timestamps is None:
        return float(ts.rate) if ts.rate else None
    if n < 2 or len(ts.timestamps) != n:
        return None
    t0, t1 = float(ts.timestamps[0]), float(ts.timestamps[n - 1])
    return (n - 1) / (t1 - t0) if np.isfinite(t1 - t0) and t1 > t0 else None


def _block_means(ts, shape, k: int, rate: float, field: str, in_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(times, values)`` of a behaviour series as the means of blocks of ``k`` samples (the last
    one of what is left), each at the mean time of its samples, read ``BLOCK_VALUES`` at a time
    (see ``BEHAVIOR_MAX_RATE_HZ``); a NaN sample makes its block NaN (a gap, as readers skip)."""
    n, width = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    rows = k * max(1, BLOCK_VALUES // (k * max(width, 1)))
    stamps = ts.timestamps
    t_out, v_out, last = [], [], -np.inf
    for i0 in range(0, n, rows):
        v = _scaled(ts, ts.data[i0:min(n, i0 + rows)]).astype(np.float64).reshape(-1, max(width, 1))
        starts = np.arange(0, len(v), k)
        count = np.diff(np.append(starts, len(v)))
        if stamps is None:
            t = float(ts.starting_time or 0.0) + (i0 + starts + (count - 1) / 2) / rate
        else:
            raw = np.asarray(stamps[i0:i0 + len(v)], dtype=np.float64)
            back = np.diff(np.concatenate([[last], raw])) < 0
            if not np.isfinite(raw).all() or back.any():
                i = i0 + int(np.argmax(back if back.any() else ~np.isfinite(raw)))
                raise ConvertError(in_path, f"{field}/timestamps", f"contain NaN or inf, or go back in time (at "
                                   f"sample {i})", "drop those samples, or sort them by time in the NWB file")
            last = raw[-1]
            t = np.add.reduceat(raw, starts) / count
        t_out.append(t)
        v_out.append(np.add.reduceat(v, starts, axis=0) / count[:, None])
    t, values = np.concatenate(t_out), np.concatenate(v_out)
    values = values.reshape((len(values),) + tuple(shape[1:]))
    warnings.warn(f"{in_path}: {field}: sampled at {rate:.6g} Hz ({n:,} samples): stored as the means of blocks of "
                  f"{k} samples, {rate / k:.6g} Hz ({len(t):,} samples), the rate no model reads a behaviour "
                  f"finer than (window and segment means are kept; neurofm.data.nwb.BEHAVIOR_MAX_RATE_HZ). A voltage "
                  f"trace to model belongs in an ElectricalSeries (/continuous)", stacklevel=4)
    return _drop_repeats(t, values, field, in_path)


#: A tracking jump: a step between successive valid samples over JUMP_STEPS x the series' 99th
#: percentile step, that comes back (to within that distance of where it left) after at most
#: JUMP_MAX_SAMPLES samples: a camera locking onto a reflection for a frame or two, not movement.
JUMP_STEPS = 10.0
JUMP_MAX_SAMPLES = 3


def tracking_jumps(values: np.ndarray) -> np.ndarray:
    """Indices of the samples of a position series (T,) or (T, D) that are tracking jumps (see
    ``JUMP_STEPS``); NaN rows (tracking lost) are skipped, not counted."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v.reshape(len(v), -1)
    ok = np.flatnonzero(np.isfinite(v).all(axis=1))
    if len(ok) < 3:
        return np.zeros(0, dtype=np.int64)
    x = v[ok]
    step = np.linalg.norm(np.diff(x, axis=0), axis=1)  # step[k]: from valid sample k to k + 1
    limit = JUMP_STEPS * float(np.percentile(step, 99))
    if not limit > 0:
        return np.zeros(0, dtype=np.int64)
    big = np.flatnonzero(step > limit)
    out = []
    for a, b in zip(big[:-1], big[1:]):  # leaves after sample a, comes back at sample b + 1
        if b - a <= JUMP_MAX_SAMPLES and np.linalg.norm(x[b + 1] - x[a]) < limit:
            out.extend(range(a + 1, b + 1))
    return ok[np.unique(np.asarray(out, dtype=np.int64))]


def _warn_tracking_jumps(t: np.ndarray, values: np.ndarray, field: str, unit: str, in_path: Path) -> None:
    bad = tracking_jumps(values)
    if len(bad):
        warnings.warn(f"{in_path}: {field}: {len(bad)} sample(s) jump away and back within {JUMP_MAX_SAMPLES} samples "
                      f"by over {JUMP_STEPS:g} x the series' 99th-percentile step (first at t = {t[bad[0]]:.3f} s"
                      f"{', '.join([''] + [f'{t[i]:.3f}' for i in bad[1:4]])}{' ...' if len(bad) > 4 else ''}): "
                      f"mis-tracking, read as position by every window that holds one (its mean target, and the "
                      f"speed that picks moving windows); set those samples to NaN in the NWB file (NaN rows "
                      f"are skipped) and convert again", stacklevel=4)


def _read_stimuli(nwb, in_path: Path, pynwb):
    for name, ts in nwb.stimulus.items():
        if not isinstance(ts, pynwb.TimeSeries):
            continue
        if getattr(ts, "external_file", None) is not None and ts.data is not None and len(ts.data) == 0:
            warnings.warn(f"{in_path}: stimulus/{name}: frames live in an external file; left out", stacklevel=3)
            continue
        t, frames = _drop_repeats(_timestamps(ts, f"stimulus/{name}", in_path), np.asarray(ts.data[:]),
                                  f"stimulus/{name}", in_path)
        yield name, t, frames, dict(
            unit=str(getattr(ts, "unit", "") or ""), nwb_path=f"stimulus/{name}")


def _read_intervals(nwb, in_path: Path):
    """``(name, start, end, columns)`` for trials, epochs, invalid_times and other TimeIntervals."""
    for name, table in (nwb.intervals or {}).items():
        if table is None or len(table) == 0:
            continue
        start = np.asarray(table["start_time"].data[:], dtype=np.float64)
        end = np.asarray(table["stop_time"].data[:], dtype=np.float64)
        if np.any(end < start) or not (np.isfinite(start).all() and np.isfinite(end).all()):
            raise ConvertError(in_path, f"intervals/{name}", "has rows with stop_time < start_time or NaN times",
                               "fix those rows in the NWB file")
        cols: dict[str, np.ndarray] = {}
        for col in table.colnames:
            if col in ("start_time", "stop_time") or _is_ragged_index(col, table.colnames):
                continue
            try:
                values, ends = _column_values(table, col)
            except Exception:
                continue
            if ends is not None:
                if values.ndim == 1 and values.dtype.kind in "OUSifb":
                    cols[col] = _ragged_strings(values, ends)
            elif values.ndim == 1 and len(values) == len(start) and values.dtype.kind in "OUSifb":
                cols[col] = values if values.dtype.kind != "O" else np.asarray([str(v) for v in values], dtype=object)
        yield name, start, end, cols


# -- continuous data ---------------------------------------------------------------------------


def _pick_electrical_series(nwb, in_path: Path, choice):
    """The ElectricalSeries that becomes /continuous (acquisition first, then processing)."""
    if choice is False:
        return None
    from pynwb.ecephys import ElectricalSeries

    def walk(objects, prefix):
        for name, obj in objects.items():
            if isinstance(obj, ElectricalSeries):
                yield f"{prefix}/{name}", obj
            for child_name, child in (getattr(obj, "electrical_series", None) or {}).items():
                yield f"{prefix}/{name}/{child_name}", child

    found = list(walk(nwb.acquisition, "acquisition"))
    if not found:
        for module_name, module in nwb.processing.items():
            found += list(walk(module.data_interfaces, f"processing/{module_name}"))
    if isinstance(choice, str):
        hits = [(p, s) for p, s in found if s.name == choice or p == choice]
        if not hits:
            raise ConvertError(in_path, f"ElectricalSeries {choice!r}", "not found",
                               f"pick one of {[p for p, _ in found] or 'none (the file has no ElectricalSeries)'}")
        return hits[0]
    if not found:
        return None
    if len(found) > 1:
        warnings.warn(f"{in_path}: {len(found)} ElectricalSeries ({[p for p, _ in found]}); converting "
                      f"{found[0][0]} (choose with electrical_series=NAME, CLI --electrical-series)", stacklevel=3)
    return found[0]


def _read_channels(picked, in_path: Path, coordinate_unit: str | None) -> dict[str, Any]:
    """The electrodes-table rows of ``picked`` as /channels columns (coordinates in mm)."""
    field, es = picked
    n_ch = es.data.shape[1] if len(es.data.shape) > 1 else 1
    region = es.electrodes
    if region is None:
        return dict(names=[f"ch{i}" for i in range(n_ch)])
    rows = np.asarray(region.data[:], dtype=np.int64)
    table = region.table
    if len(rows) != n_ch:
        raise ConvertError(in_path, f"{field}/electrodes", f"lists {len(rows)} electrodes for {n_ch} data columns",
                           "make the electrodes region match the data's channel axis")
    colnames = list(table.colnames)
    e_ids = np.asarray(table.id.data[:])[rows]

    def col(name):
        values, ends = _column_values(table, name)
        return None if ends is not None else values[rows]

    names = None
    for c in _NAME_COLUMNS:
        if c in colnames and (v := col(c)) is not None:
            names = [str(x) for x in v]
            break
    if names is None:
        groups = col("group_name") if "group_name" in colnames else None
        names = [f"{g}-{i}" if groups is not None else f"e{i}" for g, i in
                 zip(groups if groups is not None else e_ids, e_ids)]
    if len(set(names)) != len(names):
        names = [f"{nm}-{i}" for nm, i in zip(names, e_ids)]
    out: dict[str, Any] = dict(names=names, coordinate_space="nwb electrodes table")
    if all(a in colnames for a in "xyz"):
        xyz = np.stack([np.asarray(col(a), dtype=np.float64) for a in "xyz"], axis=1)
        scale = _nwb_mm_per_unit(table, xyz, in_path, coordinate_unit)
        out["x"], out["y"], out["z"] = (xyz * scale).T
        check_brain_coordinates(xyz * scale, scale, in_path, "electrodes x, y, z", stacklevel=5)
    regions = {}
    for c in colnames:
        if c in ("group", "group_name") or c in _NAME_COLUMNS:
            continue
        if any(w in c.lower() for w in _REGION_WORDS):
            v = col(c)
            if v is not None and v.dtype.kind in "OUS":
                regions[c] = clean_labels(v)
    out["regions"] = regions
    if "bad" in colnames:
        out["bad"] = np.asarray(col("bad"), dtype=bool)
    elif "good" in colnames:
        out["bad"] = ~np.asarray(col("good"), dtype=bool)
    return out


def _nwb_mm_per_unit(table, xyz: np.ndarray, in_path: Path, coordinate_unit: str | None) -> float:
    if coordinate_unit is not None:
        return coordinate_scale(coordinate_unit, in_path)
    unit = None
    for a in "xyz":
        attrs = getattr(table[a].data, "attrs", {})
        unit = unit or attrs.get("unit") or attrs.get("units")
    if unit is not None and mm_per_unit(unit) is not None:
        return mm_per_unit(unit)
    finite = np.abs(xyz[np.isfinite(xyz)])
    if finite.size == 0:
        return 1.0
    warnings.warn(f"{in_path}: electrodes x/y/z: no unit recorded; assumed microns as NWB >= 2.8 specifies "
                  f"(largest |coordinate| {finite.max():g}); pass coordinate_unit='mm' (CLI --coordinate-unit) "
                  f"if they are millimetres", stacklevel=4)
    return 1e-3


def _write_continuous(w: SessionWriter, picked, channels: dict, in_path: Path, nan_policy: str) -> None:
    """Stream the ElectricalSeries into /continuous in blocks of rows, in microvolts."""
    field, es = picked
    data = es.data
    shape = data.shape
    n, n_ch = shape[0], (shape[1] if len(shape) > 1 else 1)
    if es.rate:
        sr, t0 = float(es.rate), float(es.starting_time or 0.0)
    else:
        sr, t0 = _rate_from_timestamps(es, field, in_path)
    scale = float(es.conversion or 1.0) * 1e6  # volts -> microvolts
    offset = float(getattr(es, "offset", 0.0) or 0.0) * 1e6
    per_channel = np.ones(n_ch)
    if getattr(es, "channel_conversion", None) is not None:
        per_channel = np.asarray(es.channel_conversion[:], dtype=np.float64)
    rows = max(1, BLOCK_VALUES // max(n_ch, 1))
    for i0 in range(0, max(n, 1), rows):
        block = np.asarray(data[i0:min(n, i0 + rows)], dtype=np.float64).reshape(-1, n_ch)
        block = (block * per_channel * scale + offset).astype(np.float32)
        if i0 == 0:
            w.add_continuous(block, sampling_rate=sr, unit="uV", t_start=t0, nan_policy=nan_policy,
                             channel_names=channels["names"])
            w.add_channels(channels["names"], x=channels.get("x"), y=channels.get("y"), z=channels.get("z"),
                           regions=channels.get("regions"), bad=channels.get("bad"),
                           coordinate_space=channels.get("coordinate_space", "unknown"))
        else:
            w.append_continuous(block)


def _rate_from_timestamps(es, field: str, in_path: Path) -> tuple[float, float]:
    """Sampling rate of a series given by timestamps; they must lie on a regular grid
    (within half a sample), checked block by block without loading them all."""
    ts = es.timestamps
    n = len(ts)
    if n < 2:
        raise ConvertError(in_path, f"{field}/timestamps", "fewer than two samples", "give the series a rate")
    t0, t1 = float(ts[0]), float(ts[n - 1])
    if not t1 > t0:
        raise ConvertError(in_path, f"{field}/timestamps", "do not increase", "give the series a rate")
    sr = (n - 1) / (t1 - t0)
    step = 1 << 20
    for i0 in range(0, n, step):
        t = np.asarray(ts[i0:i0 + step], dtype=np.float64)
        dev = np.abs(t - (t0 + np.arange(i0, i0 + t.size) / sr))
        if not np.all(dev < 0.5 / sr):
            i = i0 + int(np.argmax(~(dev < 0.5 / sr)))
            raise ConvertError(in_path, f"{field}/timestamps",
                               f"are not regularly sampled (sample {i} is {dev[i - i0] * sr:.2f} samples off a "
                               f"{sr:.3f} Hz grid)", "resample the series to a fixed rate before converting")
    return sr, t0
