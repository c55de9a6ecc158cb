"""Session files: one HDF5 file per recording session (DESIGN.md 2.1).

Layout (times in seconds, float64)::

    /                 attrs: neurofm_format, session_id, subject_id, species, lab, source,
                             t_start, t_end
    /units            id (str), optional per-unit columns (brain_region, electrode, ...)
    /spikes           times (float64, sorted), unit_index (int32 into /units),
                      index (int64, offset of the first spike at or after t_start + k * index_step)
    /continuous       data (float32, [T, C], chunked along time),
                      attrs: sampling_rate, unit, t_start
    /channels         name (str), x, y, z (float, mm; attrs coordinate_space),
                      region/<atlas> (str per channel), bad (bool)
    /behavior/<name>  timestamps (float64), values (float32, [T] or [T, D])
    /stimulus/<name>  timestamps (float64), frames ([T, ...])
    /events/<name>    onset (float64), duration (float64), label (str)
    /intervals/<name> start, end (float64)
    /ground_truth/... anything a simulator knows (kept, never required)

:class:`SessionWriter` writes to a temporary file beside the target and renames it into
place only when everything was written, so a crash never leaves a half file under the final
name. :class:`Session` opens lazily and reads windows of time by binary search, touching only
the chunks a window needs.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

FORMAT_VERSION = 1
INDEX_STEP_S = 1.0  # spacing of the coarse spike-time index
_STR = h5py.string_dtype("utf-8")


class SessionFormatError(ValueError):
    """A session file (or the data about to be written to one) is not valid.

    The message always names the file, the path inside it and what to do.
    """

    def __init__(self, file: str | os.PathLike, field: str, problem: str, fix: str = ""):
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        msg = f"{file}: {field}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _compression() -> dict[str, Any]:
    return {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def _strings(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


class SessionWriter:
    """Write one session file atomically.

    Use as a context manager; the file appears under ``path`` only when the ``with`` block
    ends without an exception::

        with SessionWriter("s1.h5", session_id="s1", subject_id="m1") as w:
            w.add_units(["u0", "u1"])
            w.add_spikes(times, unit_index)
            w.add_behavior("speed", t, v)

    Every ``add_*`` validates its input and raises :class:`SessionFormatError` naming the
    field and the fix. ``overwrite=False`` refuses to replace an existing file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        session_id: str,
        subject_id: str = "",
        species: str = "",
        lab: str = "",
        source: str = "",
        overwrite: bool = True,
        **attrs: Any,
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._h5 = h5py.File(self._tmp, "w")
        root = self._h5.attrs
        root["neurofm_format"] = FORMAT_VERSION
        for key, value in dict(session_id=session_id, subject_id=subject_id, species=species,
                               lab=lab, source=source, **attrs).items():
            root[key] = value
        self._t_min = np.inf
        self._t_max = -np.inf
        self._n_units: int | None = None
        self._n_channels: int | None = None
        self._cont_rows = 0
        self._closed = False

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _span(self, t0: float, t1: float) -> None:
        self._t_min = min(self._t_min, float(t0))
        self._t_max = max(self._t_max, float(t1))

    def _err(self, field: str, problem: str, fix: str = "") -> SessionFormatError:
        return SessionFormatError(self.path, field, problem, fix)

    # -- units and spikes -----------------------------------------------------------------
    def add_units(self, ids, **columns) -> None:
        """Unit table: ``ids`` (N,) names, plus optional per-unit columns of length N."""
        ids = _strings(ids)
        if len(set(ids.tolist())) != len(ids):
            raise self._err("/units/id", "unit ids are not unique", "give every unit its own id")
        g = self._h5.create_group("units")
        g.create_dataset("id", data=ids, dtype=_STR)
        for name, col in columns.items():
            col = np.asarray(col)
            if len(col) != len(ids):
                raise self._err(f"/units/{name}", f"has {len(col)} rows for {len(ids)} units")
            if col.dtype.kind in "OUS":
                g.create_dataset(name, data=_strings(col), dtype=_STR)
            else:
                g.create_dataset(name, data=col)
        self._n_units = len(ids)

    def add_spikes(self, times, unit_index, t_start: float | None = None, t_end: float | None = None) -> None:
        """Spike times (s) and the index of each spike's unit in ``/units``.

        Unsorted times are sorted (stable, units kept paired) with a warning.
        ``t_start``/``t_end`` give the recording's span if it is wider than its spikes.
        """
        times = np.asarray(times, dtype=np.float64).ravel()
        unit_index = np.asarray(unit_index).ravel()
        if self._n_units is None:
            raise self._err("/spikes", "written before /units", "call add_units() first")
        if times.shape != unit_index.shape:
            raise self._err("/spikes/unit_index", f"{unit_index.size} entries for {times.size} spike times")
        if not np.isfinite(times).all():
            raise self._err("/spikes/times", f"{int((~np.isfinite(times)).sum())} spike times are NaN or inf",
                            "drop them before writing")
        if unit_index.size and (unit_index.min() < 0 or unit_index.max() >= self._n_units):
            raise self._err("/spikes/unit_index", f"values must be in [0, {self._n_units})")
        if times.size > 1 and np.any(np.diff(times) < 0):
            warnings.warn(f"{self.path}: /spikes/times were not sorted; sorted them (units kept paired)",
                          stacklevel=2)
            order = np.argsort(times, kind="stable")
            times, unit_index = times[order], unit_index[order]
        g = self._h5.create_group("spikes")
        chunk = (min(max(times.size, 1), 1 << 16),)
        g.create_dataset("times", data=times, chunks=chunk, **_compression())
        g.create_dataset("unit_index", data=unit_index.astype(np.int32), chunks=chunk, **_compression())
        lo = float(times[0]) if times.size else 0.0
        hi = float(times[-1]) if times.size else 0.0
        t0 = lo if t_start is None else float(t_start)
        t1 = hi if t_end is None else float(t_end)
        if times.size and (lo < t0 or hi > t1):
            raise self._err("/spikes/times", f"spikes span [{lo}, {hi}] s, outside t_start..t_end [{t0}, {t1}]")
        edges = t0 + INDEX_STEP_S * np.arange(int(np.ceil((t1 - t0) / INDEX_STEP_S)) + 2)
        g.create_dataset("index", data=np.searchsorted(times, edges, side="left").astype(np.int64))
        g["index"].attrs.update(t_start=t0, step=INDEX_STEP_S)
        self._span(t0, t1)

    # -- continuous data ------------------------------------------------------------------
    def add_continuous(self, data, sampling_rate: float, unit: str = "uV", t_start: float = 0.0,
                       nan_policy: str = "raise", channel_names=None) -> None:
        """Continuous samples ``data`` (T, C) float32 at ``sampling_rate`` Hz from ``t_start`` s.

        More samples can follow with :meth:`append_continuous` (for recordings too large to
        hold in memory). ``nan_policy``: ``"raise"`` (default) reports the first NaN/inf
        channel and time; ``"mark_bad"`` zeros those samples and flags the channel in
        ``/channels/bad`` (needs :meth:`add_channels` to be called afterwards or before).
        """
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 2:
            raise self._err("/continuous/data", f"must be 2-D (time, channel), got shape {data.shape}")
        if not sampling_rate or sampling_rate <= 0:
            raise self._err("/continuous", f"sampling_rate must be positive, got {sampling_rate}")
        if nan_policy not in ("raise", "mark_bad"):
            raise ValueError(f"nan_policy must be 'raise' or 'mark_bad', got {nan_policy!r}")
        self._nan_policy = nan_policy
        self._channel_names_for_errors = None if channel_names is None else list(channel_names)
        self._nonfinite = np.zeros(data.shape[1], dtype=bool)
        n_ch = data.shape[1]
        if self._n_channels is not None and self._n_channels != n_ch:
            raise self._err("/continuous/data", f"has {n_ch} channels but /channels has {self._n_channels}")
        self._n_channels = n_ch
        g = self._h5.create_group("continuous")
        rows = int(max(256, min(1 << 15, (1 << 19) // (4 * max(n_ch, 1)))))
        g.create_dataset("data", shape=(0, n_ch), maxshape=(None, n_ch), dtype=np.float32,
                         chunks=(rows, n_ch), **_compression())
        g.attrs.update(sampling_rate=float(sampling_rate), unit=unit, t_start=float(t_start))
        self._sr, self._cont_t0 = float(sampling_rate), float(t_start)
        self.append_continuous(data)

    def append_continuous(self, chunk) -> None:
        """Append ``chunk`` (T, C) samples to ``/continuous/data``."""
        chunk = np.asarray(chunk, dtype=np.float32)
        dset = self._h5["continuous/data"]
        if chunk.ndim != 2 or chunk.shape[1] != dset.shape[1]:
            raise self._err("/continuous/data", f"chunk of shape {chunk.shape} does not fit (T, {dset.shape[1]})")
        bad = ~np.isfinite(chunk)
        if bad.any():
            rows, cols = np.nonzero(bad)
            if self._nan_policy == "raise":
                names = self._channel_names_for_errors
                ch = names[cols[0]] if names else f"#{cols[0]}"
                t = self._cont_t0 + (self._cont_rows + rows[0]) / self._sr
                raise self._err(
                    "/continuous/data",
                    f"{bad.sum()} NaN/inf samples in {len(np.unique(cols))} channel(s), first in channel "
                    f"{ch} at t = {t:.4f} s",
                    "clean the recording, or pass nan_policy='mark_bad' (CLI: --nan mark-bad) to zero them "
                    "and mark those channels bad",
                )
            self._nonfinite[np.unique(cols)] = True
            chunk = np.where(bad, 0.0, chunk).astype(np.float32)
        n = dset.shape[0]
        dset.resize(n + chunk.shape[0], axis=0)
        dset[n:] = chunk
        self._cont_rows = n + chunk.shape[0]
        self._span(self._cont_t0, self._cont_t0 + self._cont_rows / self._sr)

    def add_channels(self, names, x=None, y=None, z=None, regions: Mapping[str, Any] | None = None,
                     bad=None, coordinate_space: str = "unknown") -> None:
        """Channel table: names (C,), coordinates in mm (NaN where unknown), atlas labels."""
        names = _strings(names)
        n = len(names)
        if self._n_channels is not None and self._n_channels != n:
            raise self._err("/channels/name", f"{n} channels but /continuous/data has {self._n_channels}")
        self._n_channels = n
        g = self._h5.create_group("channels")
        g.attrs["coordinate_space"] = coordinate_space
        g.create_dataset("name", data=names, dtype=_STR)
        for axis, values in (("x", x), ("y", y), ("z", z)):
            values = np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)
            if values.shape != (n,):
                raise self._err(f"/channels/{axis}", f"has shape {values.shape}, expected ({n},)")
            g.create_dataset(axis, data=values)
        rg = g.create_group("region")
        for atlas, labels in (regions or {}).items():
            labels = _strings(["" if lab is None else lab for lab in labels])
            if len(labels) != n:
                raise self._err(f"/channels/region/{atlas}", f"has {len(labels)} labels for {n} channels")
            rg.create_dataset(atlas, data=labels, dtype=_STR)
        bad = np.zeros(n, dtype=bool) if bad is None else np.asarray(bad, dtype=bool)
        g.create_dataset("bad", data=bad)

    # -- behaviour, stimulus, events, intervals --------------------------------------------
    def add_behavior(self, name: str, timestamps, values) -> None:
        """A behaviour variable: ``timestamps`` (T,) s, strictly increasing; ``values`` (T,) or (T, D)."""
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        values = np.asarray(values, dtype=np.float32)
        self._check_timestamps(f"/behavior/{name}", ts, len(values))
        g = self._h5.require_group("behavior").create_group(name)
        g.create_dataset("timestamps", data=ts, **_compression())
        g.create_dataset("values", data=values, **_compression())
        if ts.size:
            self._span(ts[0], ts[-1])

    def add_stimulus(self, name: str, timestamps, frames) -> None:
        """A stimulus stream: ``timestamps`` (T,) s, ``frames`` (T, ...) e.g. (T, H, W) uint8."""
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        frames = np.asarray(frames)
        self._check_timestamps(f"/stimulus/{name}", ts, len(frames))
        g = self._h5.require_group("stimulus").create_group(name)
        g.create_dataset("timestamps", data=ts)
        g.create_dataset("frames", data=frames, chunks=(1,) + frames.shape[1:], **_compression())

    def add_events(self, name: str, onset, duration=None, label=None) -> None:
        """Point or extended events: onsets (s), durations (s, default 0), string labels."""
        onset = np.asarray(onset, dtype=np.float64).ravel()
        duration = np.zeros_like(onset) if duration is None else np.asarray(duration, dtype=np.float64).ravel()
        label = _strings([name] * len(onset) if label is None else label)
        if not (len(duration) == len(label) == len(onset)):
            raise self._err(f"/events/{name}", "onset, duration and label must have the same length")
        g = self._h5.require_group("events").create_group(name)
        g.create_dataset("onset", data=onset)
        g.create_dataset("duration", data=duration)
        g.create_dataset("label", data=label, dtype=_STR)

    def add_intervals(self, name: str, start, end, **columns) -> None:
        """Time intervals (s), e.g. trials or train/valid/test blocks; end >= start."""
        start = np.asarray(start, dtype=np.float64).ravel()
        end = np.asarray(end, dtype=np.float64).ravel()
        if start.shape != end.shape or np.any(end < start):
            raise self._err(f"/intervals/{name}", "start and end must pair up with end >= start")
        g = self._h5.require_group("intervals").create_group(name)
        g.create_dataset("start", data=start)
        g.create_dataset("end", data=end)
        for key, col in columns.items():
            col = np.asarray(col)
            g.create_dataset(key, data=_strings(col) if col.dtype.kind in "OUS" else col,
                             dtype=_STR if col.dtype.kind in "OUS" else None)

    def add_array(self, path: str, data, **attrs) -> None:
        """Any extra dataset (e.g. ``ground_truth/connectivity``); kept by every reader."""
        dset = self._h5.create_dataset(path, data=data)
        dset.attrs.update(attrs)

    def _check_timestamps(self, field: str, ts: np.ndarray, n_values: int) -> None:
        if ts.size != n_values:
            raise self._err(f"{field}/timestamps", f"{ts.size} timestamps for {n_values} samples")
        if not np.isfinite(ts).all():
            raise self._err(f"{field}/timestamps", "contains NaN or inf")
        if ts.size > 1 and np.any(np.diff(ts) <= 0):
            i = int(np.argmax(np.diff(ts) <= 0))
            raise self._err(f"{field}/timestamps",
                            f"timestamps do not increase at sample {i + 1} ({ts[i]} -> {ts[i + 1]} s)",
                            "sort the samples and drop duplicated timestamps")

    # -- finishing ------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish the file and move it into place. Returns the final path."""
        if self._closed:
            return self.path
        try:
            if self._cont_rows and "channels" not in self._h5:
                self.add_channels([f"ch{i}" for i in range(self._n_channels)])
            if self._cont_rows and self._nonfinite.any():
                self._h5["channels/bad"][...] = self._h5["channels/bad"][...] | self._nonfinite
            root = self._h5.attrs
            root["t_start"] = float(self._t_min) if np.isfinite(self._t_min) else 0.0
            root["t_end"] = float(self._t_max) if np.isfinite(self._t_max) else 0.0
            self._h5.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; nothing appears under the final name."""
        if self._closed:
            return
        try:
            self._h5.close()
        except Exception:
            pass
        self._tmp.unlink(missing_ok=True)
        self._closed = True


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channels:
    """Channel metadata. ``xyz`` (C, 3) mm, NaN where unknown; ``regions[atlas]`` (C,) str."""

    names: list[str]
    xyz: np.ndarray
    regions: dict[str, np.ndarray]
    bad: np.ndarray
    coordinate_space: str


def _decode(a) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)


class Session:
    """A session file opened for lazy reading.

    Nothing beyond the root attributes and small tables is read on open; windows of spikes
    or continuous data are read on request. Safe to pickle into DataLoader workers (the HDF5
    handle is reopened per process).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such session file (convert a recording with "
                                    f"`neurofm convert` or simulate one with `neurofm simulate`)")
        self._h5: h5py.File | None = None
        self._pid = None
        f = self.h5
        attrs = f.attrs
        if "neurofm_format" not in attrs:
            raise SessionFormatError(self.path, "/ attrs neurofm_format", "missing: not a neurofm session file",
                                     "convert the recording with `neurofm convert`")
        version = int(attrs["neurofm_format"])
        if version > FORMAT_VERSION:
            raise SessionFormatError(self.path, "/ attrs neurofm_format",
                                     f"format version {version} is newer than this neurofm reads ({FORMAT_VERSION})",
                                     "upgrade neurofm: pip install -U neurofm")
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        self.session_id = str(self.attrs.get("session_id", self.path.stem))
        self.subject_id = str(self.attrs.get("subject_id", ""))
        self.t_start = float(self.attrs.get("t_start", 0.0))
        self.t_end = float(self.attrs.get("t_end", 0.0))
        self._validate()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                raise SessionFormatError(self.path, "/", f"cannot be opened as HDF5 ({e})",
                                         "the file is truncated or not HDF5: write it again") from None
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        return state

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, kinds={self.kinds}, {self.duration:.1f} s)"

    def _validate(self) -> None:
        f = self.h5
        if "spikes" in f:
            for key in ("times", "unit_index"):
                if key not in f["spikes"]:
                    raise SessionFormatError(self.path, f"/spikes/{key}", "missing")
            if "units" not in f or "id" not in f["units"]:
                raise SessionFormatError(self.path, "/units/id", "missing while /spikes exists")
            if f["spikes/times"].shape != f["spikes/unit_index"].shape:
                raise SessionFormatError(self.path, "/spikes/unit_index", "length differs from /spikes/times")
        if "continuous" in f:
            if "data" not in f["continuous"] or f["continuous/data"].ndim != 2:
                raise SessionFormatError(self.path, "/continuous/data", "missing or not 2-D (time, channel)")
            if "sampling_rate" not in f["continuous"].attrs:
                raise SessionFormatError(self.path, "/continuous attrs sampling_rate", "missing")

    # -- summary --------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        return [k for k in ("spikes", "continuous") if k in self.h5]

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start

    # -- units and spikes -----------------------------------------------------------------
    @property
    def unit_ids(self) -> list[str]:
        return _decode(self.h5["units/id"][()]).tolist() if "units" in self.h5 else []

    @property
    def n_units(self) -> int:
        return len(self.h5["units/id"]) if "units" in self.h5 else 0

    @property
    def n_spikes(self) -> int:
        return len(self.h5["spikes/times"]) if "spikes" in self.h5 else 0

    def unit_table(self) -> dict[str, np.ndarray]:
        g = self.h5["units"]
        return {k: (_decode(g[k][()]) if g[k].dtype.kind in "OS" else g[k][()]) for k in g}

    def check_window(self, t0: float, t1: float) -> None:
        """Raise if ``[t0, t1)`` is empty or longer than the recording."""
        if t1 <= t0:
            raise ValueError(f"{self.path}: window [{t0}, {t1}) is empty")
        if t1 - t0 > self.duration + 1e-9:
            raise SessionFormatError(self.path, "window",
                                     f"window of {t1 - t0:.3f} s is longer than the recording ({self.duration:.3f} s)",
                                     "use a shorter window")

    def _spike_range(self, t0: float, t1: float) -> tuple[int, int]:
        """Indices ``[i0, i1)`` of the spikes with ``t0 <= t < t1``, reading only nearby chunks."""
        g = self.h5["spikes"]
        times = g["times"]
        n = times.shape[0]
        if "index" in g:
            idx = g["index"]
            ts, step = float(idx.attrs["t_start"]), float(idx.attrs["step"])
            m = idx.shape[0]

            def bound(t: float) -> int:
                if not np.isfinite(t):
                    return n if t > 0 else 0
                k = int(np.floor((t - ts) / step))  # idx[k] <= answer <= idx[k + 1]
                lo = 0 if k < 0 else int(idx[min(k, m - 1)])
                hi = n if k + 1 >= m else int(idx[max(k + 1, 0)])
                return lo + int(np.searchsorted(times[lo:hi], t, side="left"))

            return bound(t0), bound(t1)
        all_times = times[()]
        return int(np.searchsorted(all_times, t0)), int(np.searchsorted(all_times, t1))

    def spikes(self, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Spikes with ``t0 <= t < t1``: ``(times (N,) float64 s, unit_index (N,) int32)``."""
        if "spikes" not in self.h5:
            raise SessionFormatError(self.path, "/spikes", "this session has no spikes")
        g = self.h5["spikes"]
        if t0 is None and t1 is None:
            return g["times"][()], g["unit_index"][()]
        i0, i1 = self._spike_range(self.t_start if t0 is None else t0, np.inf if t1 is None else t1)
        return g["times"][i0:i1], g["unit_index"][i0:i1]

    # -- continuous -----------------------------------------------------------------------
    @property
    def sampling_rate(self) -> float | None:
        return float(self.h5["continuous"].attrs["sampling_rate"]) if "continuous" in self.h5 else None

    @property
    def n_samples(self) -> int:
        return self.h5["continuous/data"].shape[0] if "continuous" in self.h5 else 0

    @property
    def n_channels(self) -> int:
        if "continuous" in self.h5:
            return self.h5["continuous/data"].shape[1]
        return len(self.h5["channels/name"]) if "channels" in self.h5 else 0

    def continuous(self, t0: float | None = None, t1: float | None = None) -> np.ndarray:
        """Samples in ``[t0, t1)`` as ``(T, C)`` float32 (reads only the chunks it needs)."""
        g = self.h5["continuous"]
        sr, ct0 = float(g.attrs["sampling_rate"]), float(g.attrs.get("t_start", 0.0))
        i0 = 0 if t0 is None else max(0, int(round((t0 - ct0) * sr)))
        i1 = g["data"].shape[0] if t1 is None else int(round((t1 - ct0) * sr))
        return self.continuous_samples(i0, i1)

    def continuous_samples(self, i0: int, i1: int) -> np.ndarray:
        """Rows ``[i0, i1)`` of ``/continuous/data`` as ``(T, C)`` float32."""
        return self.h5["continuous/data"][i0:i1]

    def channels(self) -> Channels:
        g = self.h5["channels"]
        xyz = np.stack([g[a][()] for a in ("x", "y", "z")], axis=1) if "x" in g else np.full((len(g["name"]), 3), np.nan)
        regions = {k: _decode(v[()]) for k, v in g["region"].items()} if "region" in g else {}
        bad = g["bad"][()] if "bad" in g else np.zeros(len(g["name"]), dtype=bool)
        return Channels(names=_decode(g["name"][()]).tolist(), xyz=xyz, regions=regions, bad=bad,
                        coordinate_space=str(g.attrs.get("coordinate_space", "unknown")))

    # -- behaviour, stimulus, events, intervals --------------------------------------------
    def _names(self, group: str) -> list[str]:
        return sorted(self.h5[group].keys()) if group in self.h5 else []

    @property
    def behavior_names(self) -> list[str]:
        return self._names("behavior")

    @property
    def stimulus_names(self) -> list[str]:
        return self._names("stimulus")

    @property
    def event_names(self) -> list[str]:
        return self._names("events")

    @property
    def interval_names(self) -> list[str]:
        return self._names("intervals")

    def behavior(self, name: str, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps (T,), values (T,) or (T, D))`` of behaviour ``name`` within ``[t0, t1)``."""
        return self._timeseries("behavior", name, "values", t0, t1)

    def stimulus(self, name: str, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps (T,), frames (T, ...))`` of stimulus ``name`` within ``[t0, t1)``."""
        return self._timeseries("stimulus", name, "frames", t0, t1)

    def _timeseries(self, group: str, name: str, key: str, t0, t1):
        if f"{group}/{name}" not in self.h5:
            raise KeyError(f"{self.path}: no /{group}/{name}; available: {self._names(group)}")
        g = self.h5[f"{group}/{name}"]
        ts = g["timestamps"][()]
        i0 = 0 if t0 is None else int(np.searchsorted(ts, t0, side="left"))
        i1 = len(ts) if t1 is None else int(np.searchsorted(ts, t1, side="left"))
        return ts[i0:i1], g[key][i0:i1]

    def events(self, name: str) -> dict[str, np.ndarray]:
        g = self.h5[f"events/{name}"]
        return {"onset": g["onset"][()], "duration": g["duration"][()], "label": _decode(g["label"][()])}

    def intervals(self, name: str) -> dict[str, np.ndarray]:
        g = self.h5[f"intervals/{name}"]
        return {k: (_decode(g[k][()]) if g[k].dtype.kind in "OS" else g[k][()]) for k in g}

    def ground_truth(self) -> dict[str, np.ndarray]:
        """Whatever a simulator stored under ``/ground_truth`` (empty for real recordings)."""
        if "ground_truth" not in self.h5:
            return {}
        out = {}
        self.h5["ground_truth"].visititems(
            lambda k, v: out.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None)
        return out


def open_sessions(paths) -> Iterator[Session]:
    """Open many session files (str, Path or a list of them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        yield Session(p)
