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
                      region/<atlas> (str per channel, "" = unknown), bad (bool),
                      optional type (str: seeg, ecog, ecg, misc, ...)
    /behavior/<name>  timestamps (float64), values (float32, [T] or [T, D]); attrs e.g. unit
    /stimulus/<name>  timestamps (float64), frames ([T, ...])
    /events/<name>    onset (float64), duration (float64), label (str)
    /intervals/<name> start, end (float64), optional per-interval columns
    /ground_truth/... anything a simulator knows (kept, never required)
    anything else     kept and listed by Session.extra_groups, never an error

:class:`SessionWriter` writes to a temporary file beside the target and renames it into
place only when everything was written, so a crash never leaves a half file under the final
name. :class:`Session` opens lazily and reads windows of time by binary search, touching only
the chunks a window needs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import h5py
import numpy as np

from neurofm.atomic import atomic_output, check_destination, is_output_errno, output_error, publish, temp_beside
from neurofm.data.splits import Intervals, check_disjoint

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


class ConvertError(SessionFormatError):
    """An input recording (NWB, EDF, BIDS sidecar, ...) cannot be converted to a session file.

    Same message shape as :class:`SessionFormatError`, but ``file`` is the INPUT file (the
    thing the user has to fix); converters raise it before anything is written under the
    output name.
    """


# --------------------------------------------------------------------------------------------
# conventions shared by the converters
# --------------------------------------------------------------------------------------------

UNKNOWN_LABELS = frozenset({"", "n/a", "na", "nan", "none", "unknown", "unknown label"})

_MM_PER_UNIT = {
    "m": 1e3, "meter": 1e3, "meters": 1e3, "metre": 1e3, "metres": 1e3,
    "cm": 10.0, "centimeter": 10.0, "centimeters": 10.0,
    "mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "millimetre": 1.0, "millimetres": 1.0,
    "um": 1e-3, "µm": 1e-3, "μm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
    "micrometers": 1e-3,
}


def clean_labels(labels) -> np.ndarray:
    """Atlas labels as str with every spelling of "unknown" (``n/a``, ``Unknown``, NaN, None)
    turned into ``""``, the format's one value for unknown (category 0 downstream)."""
    out = []
    for v in labels:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            out.append("")
            continue
        v = v.decode() if isinstance(v, bytes) else str(v)
        out.append("" if v.strip().lower() in UNKNOWN_LABELS else v.strip())
    return np.asarray(out, dtype=object)


def mm_per_unit(unit: str) -> float | None:
    """Millimetres in one ``unit`` (``"m"`` -> 1000, ``"um"`` -> 0.001); None if not a length."""
    return _MM_PER_UNIT.get(str(unit).strip().lower())


#: Electrode-coordinate units a user can name (``coordinate_unit=``, CLI ``--coordinate-unit``),
#: largest first. Longer spellings (``"metres"``, ``"microns"``) are accepted in Python too.
COORDINATE_UNITS = ("m", "cm", "mm", "um")

#: No electrode of a brain lies farther than this from the origin of any brain coordinate
#: space (MNI/ACPC/scanner RAS: within about +-100 mm; rodent atlases: tens of mm). Beyond it
#: the coordinates were almost surely read in the wrong unit.
BRAIN_EXTENT_MM = 300.0


def coordinate_scale(unit: str, file: str | os.PathLike, field: str = "coordinate_unit") -> float:
    """Millimetres in one ``unit`` a user gave for electrode coordinates.

    Raises :class:`ConvertError` naming the input ``file`` and ``field`` when ``unit`` is not a
    length: guessing would write unknown (or wrong) positions for every channel.
    """
    scale = mm_per_unit(unit)
    if scale is None:
        raise ConvertError(file, field, f"{unit!r} is not a length unit for electrode x, y, z",
                           f"give one of {', '.join(COORDINATE_UNITS)}; CLI --coordinate-unit "
                           f"{'|'.join(COORDINATE_UNITS)}")
    return scale


def check_brain_coordinates(xyz_mm, scale: float, file: str | os.PathLike, field: str, stacklevel: int = 3) -> bool:
    """Warn when electrode positions (mm) cannot be in a brain: ``|x|``, ``|y|`` or ``|z|`` >
    :data:`BRAIN_EXTENT_MM`. ``scale`` is the mm per unit they were read with; the warning
    names the unit that would bring them into range (e.g. microns read as millimetres).
    Returns True when it warned."""
    xyz_mm = np.asarray(xyz_mm, dtype=np.float64).reshape(-1, 3)
    finite = np.abs(xyz_mm[np.isfinite(xyz_mm)])
    if not finite.size or finite.max() <= BRAIN_EXTENT_MM:
        return False
    biggest = float(finite.max())
    n_far = int((np.abs(np.nan_to_num(xyz_mm)) > BRAIN_EXTENT_MM).any(axis=1).sum())
    read_as = next((u for u in COORDINATE_UNITS if np.isclose(_MM_PER_UNIT[u], scale)), f"{scale:g} mm units")
    # units that bring the largest coordinate into [1, BRAIN_EXTENT_MM] mm
    reach = {u: biggest / scale * _MM_PER_UNIT[u] for u in COORDINATE_UNITS if _MM_PER_UNIT[u] < scale}
    fits = [u for u, v in reach.items() if 1.0 <= v <= BRAIN_EXTENT_MM] or \
        [u for u, v in reach.items() if v <= BRAIN_EXTENT_MM][:1]
    if len(fits) == 1:
        fix = (f"if they are in {fits[0]}, convert again with coordinate_unit={fits[0]!r} "
               f"(CLI --coordinate-unit {fits[0]})")
    elif fits:
        fix = (f"read in {fits[0]} they would reach {reach[fits[0]]:g} mm"
               + "".join(f", in {u} {reach[u]:g} mm" for u in fits[1:])
               + f": convert again with the right coordinate_unit= (CLI --coordinate-unit {'|'.join(fits)})")
    else:
        fix = "check the coordinates and their unit"
    n_known = int(np.isfinite(xyz_mm).any(axis=1).sum())
    warnings.warn(f"{file}: {field}: {n_far} of {n_known} known electrode positions lie more than "
                  f"{BRAIN_EXTENT_MM:g} mm from the origin (largest |coordinate| {biggest:g} mm, read as {read_as}), "
                  f"too far for a brain; {fix}", stacklevel=stacklevel)
    return True


# Channel names that carry no neural signal even where a file types them EEG: EDF has no
# channel types, so MNE types every EDF channel "eeg" (the sample sEEG's EKG1/2 and DC01..08
# analogue inputs included, and a lab's grip-force or accelerometer input). The ONE table of
# name patterns: channel type (BIDS / MNE) -> patterns, each a regular expression matched at the
# start of the name and not followed by another letter ("DC03", "MOV_RIGHT", "ACC_X" yes;
# "DCA1", "MOVA" no). Body and behaviour sensors (continuous: they can be decoding targets,
# ``--behavior-channel``), event lines (stim) and references.
_AXIS = r"(?:[_\s-]?(?:(?:L|R|LEFT|RIGHT)[_\s-]?)?[XYZ])"
#: An amplifier's general-purpose inputs (DC01, ADC1, ANALOG2, AUX1: BrainAmp / ExG auxiliary
#: inputs): typed misc by name, and fed a sensor (force, a microphone) or TTL pulses alike, so the
#: name cannot say which (:func:`is_input_line`).
INPUT_LINE_PATTERNS = ("DC", "ANALOG", "ADC", "AUX")
_NON_NEURAL_PATTERNS = {
    "ecg": ("ECG", "EKG"),
    "emg": ("EMG",),
    "eog": ("EOG", "HEOG", "VEOG"),
    "resp": ("RESP", "RESPIRATION", "RESPIRATORY", "BREATH", "BREATHING"),
    "stim": ("TRIG", "TRIGGER", "STI", "STIM", "STIMULUS", "MARK", "MARKER", "MARKERS", "EVENT", "EVENTS",
             "PHOTIC", "PHOTO", "PHOTODIODE", "PHOTOSENSOR"),
    "bio": ("SPO2", "PULSE", "PLETH", "OSAT"),
    # behaviour / sensors recorded as channels (the input lines too). ACC only with an axis
    # ("ACC_X", "ACC_R_Z", "ACCX"): "ACC1".."ACC12" are anterior-cingulate sEEG shafts
    "misc": (*INPUT_LINE_PATTERNS, "GRIP", "GRIPFORCE", "FORCE", "MOV", "MOVE", "MOVEMENT", "JOYSTICK",
             "ACC" + _AXIS, "ACCEL" + _AXIS + "?", "ACCELEROMETER" + _AXIS + "?", "GYRO" + _AXIS + "?",
             "GYROSCOPE" + _AXIS + "?", "EYE" + _AXIS + "?", "EYEGAZE", "PUPIL", "AUDIO", "MIC", "MICROPHONE",
             "SOUND"),
    "ref": ("REF", "GND"),
}
#: Types of :data:`_NON_NEURAL_PATTERNS` that mark events or references, not a continuous
#: signal a lab would decode: the converter's ``--behavior-channel`` hint leaves them out.
NOT_CONTINUOUS_TYPES = frozenset({"stim", "trig", "ref", "reference", "syst", "sysclock", "dac"})
#: Types of body signals (heart, muscle, eyes, breathing, skin): continuous but no behaviour; the
#: converter says they stay out of the model and names ``--behavior-channel`` only as the way to
#: decode one anyway.
BODY_SIGNAL_TYPES = frozenset({"ecg", "ekg", "emg", "eog", "heog", "veog", "resp", "bio", "ppg", "gsr", "temp",
                               "temperature"})

#: Channel types (BIDS channels.tsv ``type`` lower-cased, and MNE's) that carry no neural
#: signal: the segmenter leaves such channels out, the converter says which.
NON_NEURAL_TYPES = frozenset({"ecg", "ekg", "eog", "heog", "veog", "emg", "misc", "stim", "trig", "resp", "bio",
                              "syst", "sysclock", "temp", "temperature", "gsr", "audio", "pupil", "eyegaze", "pd",
                              "ppg", "adc", "dac", "ref", "reference", "chpi", "exci", "ias"})


def non_neural(types) -> np.ndarray:
    """``(C,)`` bool: which channel ``types`` (BIDS / MNE type strings, any case and padding) are
    :data:`NON_NEURAL_TYPES`, the channels the model leaves out."""
    return np.asarray([str(t).strip().lower() in NON_NEURAL_TYPES for t in types], dtype=bool)

#: Body leads recorded on both sides carry the side right after the prefix: EKGL/EKGR (the
#: sample EDFs of Nihon Kohden and Natus systems), ECGR, EMGL, EOGR.
_SIDED_PREFIXES = ("ECG", "EKG", "EMG", "EOG")
_SIDE = r"(?:LEFT|RIGHT|LT|RT|L|R)"


def _alternatives(patterns) -> str:
    """Longest literal first, so "TRIGGER" wins over "TRIG" (patterns with regex syntax last)."""
    return "|".join(sorted(patterns, key=lambda p: (not p.isalnum(), -len(p), p)))


#: The one rule for "named like a non-neural channel" (converters type such channels, the
#: iEEG evaluation leaves them out): a pattern of :data:`_NON_NEURAL_PATTERNS` at the start
#: of the name (after an optional ``EEG``/``POL``/``SEEG`` label prefix), for ECG/EKG/EMG/EOG
#: optionally followed by a side (``L``, ``R``, ``LT``, ``RT``, ``LEFT``, ``RIGHT``), and then
#: not by another letter ("DC03", "EKG1", "EKGL", "EMG_L", "POL DC01", "STI 014", "MOV_RIGHT"
#: yes; "DCA1", "EMGA", "EKGLA1" no). Anchored at the start on purpose: sEEG shafts are named by
#: side + structure ("LEC1" left entorhinal, "LEKG"...), and short names like "E1" are grid
#: contacts in iEEG (EOG only in sleep montages), so neither is read as a body lead.
#: A body lead's name also counts as a word of its own after a label ("Chin EMG", "Rt EMG",
#: "X1-EKG"), never glued to a letter or digit before it. Use with ``re.IGNORECASE``; the
#: named group that matched (``t_<type>`` or ``w_<type>``) says the type.
_LABEL = r"^(?:(?:EEG|POL|SEEG)\s+)?"  # a label some systems put before every channel name
NON_NEURAL_NAMES = (_LABEL + r"(?:"
                    + "|".join(f"(?P<t_{t}>{_alternatives(ps)})" for t, ps in _NON_NEURAL_PATTERNS.items()) + r")"
                    + r"(?:(?<=" + "|".join(_SIDED_PREFIXES) + r")" + _SIDE + r")?(?![A-Z])"
                    + r"|(?<![A-Z0-9])(?:(?P<w_ecg>ECG|EKG)|(?P<w_emg>EMG)|(?P<w_eog>EOG))(?![A-Z])")
_NON_NEURAL_RX = re.compile(NON_NEURAL_NAMES, re.IGNORECASE)
_INPUT_LINE_RX = re.compile(_LABEL + r"(?:" + _alternatives(INPUT_LINE_PATTERNS) + r")(?![A-Z])", re.IGNORECASE)


def is_input_line(name) -> bool:
    """Whether channel ``name`` is one of :data:`INPUT_LINE_PATTERNS` by the rule of
    :data:`NON_NEURAL_NAMES` (label prefix, then not followed by a letter: "DC01", "POL AUX1" yes,
    "DCA1" no)."""
    return bool(_INPUT_LINE_RX.match(str(name).strip()))


def channel_types_from_names(names) -> np.ndarray:
    """``(C,)`` str: the channel type a name says (``"ecg"``, ``"misc"``, ``"stim"``, ...), or
    ``""`` where the name says nothing (a neural contact, or unknown). See :data:`NON_NEURAL_NAMES`."""
    out = []
    for name in names:
        m = _NON_NEURAL_RX.search(str(name).strip())
        out.append(m.lastgroup.split("_", 1)[1] if m else "")
    return np.asarray(out, dtype=object)


#: MNE names a BrainVision marker ``<type>/<description>`` ("Comment/grip", "Stimulus/S  1").
#: Marker types that mark events, and types that are bookkeeping of the recording (a new
#: segment, amplifier sync, DC correction, impedance check), not events.
_BV_EVENT_TYPES = ("Stimulus", "Response", "Comment")
_BV_RECORDING_TYPES = ("New Segment", "SyncStatus", "DC Correction", "Impedance", "Time 0")
_BV_MARKER = re.compile(r"^(?P<type>" + "|".join(_BV_EVENT_TYPES + _BV_RECORDING_TYPES) + r")/(?P<desc>.*)$",
                        re.IGNORECASE | re.DOTALL)
_BV_CODE = re.compile(r"^(?P<letter>[SR])\s*(?P<number>\d+)$")  # "S  1", "R 12": a stimulus / response code

#: The rule, as the CLI help states it.
EVENT_LABEL_RULE = ("BrainVision markers are labelled by their description, without the marker type MNE puts "
                    "before it: 'Comment/grip' -> 'grip', 'Stimulus/S  1' -> 'S1', 'Response/R 12' -> 'R12'; "
                    "New Segment, SyncStatus, DC Correction, Impedance and Time 0 markers (the recording's "
                    "bookkeeping) are left out; other labels are kept as written, without leading or trailing "
                    "spaces")


def event_label(label: str) -> str | None:
    """The label a user recognises for one event label as MNE gives it (:data:`EVENT_LABEL_RULE`),
    or ``None`` for a BrainVision bookkeeping marker that is no event."""
    text = str(label)
    m = _BV_MARKER.match(text.strip())
    if m is None:
        return text.strip()  # an EDF annotation 'Face ' is the event 'Face' (a BIDS events.tsv reads so too)
    kind = next(t for t in _BV_EVENT_TYPES + _BV_RECORDING_TYPES if t.lower() == m.group("type").lower())
    if kind in _BV_RECORDING_TYPES:
        return None
    desc = m.group("desc").strip()
    code = _BV_CODE.match(desc) if kind in ("Stimulus", "Response") else None
    if code:
        return f"{code.group('letter').upper()}{int(code.group('number'))}"
    return desc or kind


#: /intervals/<DISCONTINUITIES>: times (start == end) where the recording resumed after a pause
#: (BrainVision "New Segment" markers after the first sample): the samples either side are
#: adjacent in the file but not in time, so no window or segment of the data modules spans one.
DISCONTINUITIES = "discontinuities"
#: /intervals/<BAD_SEGMENTS>: spans annotated ``BAD*`` (MNE's convention: artefacts, seizures,
#: movement): the data modules read no window or segment that overlaps one.
BAD_SEGMENTS = "bad_segments"


def is_new_segment(label: str) -> bool:
    """Whether an MNE annotation label is a BrainVision "New Segment" marker ("New Segment/...")."""
    m = _BV_MARKER.match(str(label).strip())
    return m is not None and m.group("type").lower() == "new segment"


def event_labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (N,) str, keep (N,) bool)``: :func:`event_label` for every label; ``keep`` is False
    for bookkeeping markers. Where two labels that differ would become one (a Comment "S1" and a
    Stimulus "S  1"), both keep their names as given, so no two kinds of event merge."""
    given = [str(x).strip() for x in labels]
    short = [event_label(x) for x in given]
    sources: dict[str, set[str]] = {}
    for g, n in zip(given, short):
        if n is not None:
            sources.setdefault(n, set()).add(g)
    out = [g if n is None or len(sources[n]) > 1 else n for g, n in zip(given, short)]
    return np.asarray(out, dtype=object), np.asarray([n is not None for n in short], dtype=bool)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _compression() -> dict[str, Any]:
    return {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def _strings(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _writes(method):
    """Check the output file after a writing method: a failed write (disk full...) becomes an
    :class:`~neurofm.atomic.OutputError` naming the output, and the temporary file goes."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            out = method(self, *args, **kwargs)
        except BaseException:
            self._raise_if_write_failed()
            raise
        self._raise_if_write_failed()
        return out

    return wrapper


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
        self.path = check_destination(path, overwrite)  # a directory there, or exists and not overwrite
        self._overwrite = overwrite
        self._closed = True  # until the temp file exists, there is nothing to clean up
        self._tmp = temp_beside(self.path)
        try:
            self._file = _OutputFile(self._tmp)
            self._h5 = h5py.File(self._file, "w")
        except BaseException as e:
            getattr(self, "_file", None) and self._file.close()
            self._tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise output_error(e, self.path) from None
            raise
        self._closed = False
        try:
            root = self._h5.attrs
            root["neurofm_format"] = FORMAT_VERSION
            for key, value in dict(session_id=session_id, subject_id=subject_id, species=species,
                                   lab=lab, source=source, **attrs).items():
                root[key] = "" if value is None else value
        except BaseException:
            self.abort()
            raise
        self._t_min = np.inf
        self._t_max = -np.inf
        self._n_units: int | None = None
        self._n_channels: int | None = None
        self._cont_rows = 0
        self._nan_policy = "raise"
        self._nonfinite = np.zeros(0, dtype=bool)

    def __del__(self):
        # A writer dropped without close() (no ``with``, an exception before close) must not
        # leave its temporary file behind.
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self.abort()

    def _raise_if_write_failed(self) -> None:
        failed = None if self._closed else self._file.error
        if failed is not None:
            self.abort()
            raise output_error(failed, self.path) from None

    def _span(self, t0: float, t1: float) -> None:
        self._t_min = min(self._t_min, float(t0))
        self._t_max = max(self._t_max, float(t1))

    def _err(self, field: str, problem: str, fix: str = "") -> SessionFormatError:
        return SessionFormatError(self.path, field, problem, fix)

    # -- units and spikes -----------------------------------------------------------------
    @_writes
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

    @_writes
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
        # chunked and compressed when there is data; a recording without spikes (every unit
        # silent) gets empty contiguous datasets (HDF5 refuses a chunk larger than the data)
        layout = dict(chunks=(min(times.size, 1 << 16),), **_compression()) if times.size else {}
        g.create_dataset("times", data=times, **layout)
        g.create_dataset("unit_index", data=unit_index.astype(np.int32), **layout)
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
    @_writes
    def add_continuous(self, data, sampling_rate: float, unit: str = "uV", t_start: float = 0.0,
                       nan_policy: str = "raise", channel_names=None,
                       channel_units: Mapping[str, str] | None = None) -> None:
        """Continuous samples ``data`` (T, C) float32 at ``sampling_rate`` Hz from ``t_start`` s.

        ``unit`` is the data's unit; ``channel_units`` (``{channel name: unit}``, ``""`` =
        unknown) names the channels stored in another one (an audio envelope, a force sensor:
        not voltages), kept as the attr ``channel_units`` (JSON) that
        ``neurofm convert session --behavior-channel`` reads.

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
        nan_policy = str(nan_policy).replace("-", "_")
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
        if channel_units:
            g.attrs["channel_units"] = json.dumps({str(k): str(v) for k, v in channel_units.items()})
        self._sr, self._cont_t0 = float(sampling_rate), float(t_start)
        self.append_continuous(data)

    @_writes
    def append_continuous(self, chunk) -> None:
        """Append ``chunk`` (T, C) samples to ``/continuous/data``."""
        if "continuous" not in self._h5:
            raise self._err("/continuous/data", "append_continuous() called before add_continuous()",
                            "call add_continuous(first_chunk, sampling_rate) first")
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

    @_writes
    def add_channels(self, names, x=None, y=None, z=None, regions: Mapping[str, Any] | None = None,
                     bad=None, coordinate_space: str = "unknown", types=None) -> None:
        """Channel table: names (C,), coordinates in mm (NaN where unknown), atlas labels.

        ``regions`` maps an atlas name (e.g. ``"destrieux"``) to one label per channel, ``""``
        for unknown. ``types`` (optional, C strings) records what each channel is (``seeg``,
        ``ecog``, ``ecg``, ``misc``...) so models can leave out non-neural channels.
        """
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
        if bad.shape != (n,):
            raise self._err("/channels/bad", f"has shape {bad.shape}, expected ({n},)")
        g.create_dataset("bad", data=bad)
        if types is not None:
            types = _strings(types)
            if len(types) != n:
                raise self._err("/channels/type", f"has {len(types)} entries for {n} channels")
            g.create_dataset("type", data=types, dtype=_STR)

    # -- behaviour, stimulus, events, intervals --------------------------------------------
    @_writes
    def add_behavior(self, name: str, timestamps, values, **attrs) -> None:
        """A behaviour variable: ``timestamps`` (T,) s, strictly increasing; ``values`` (T,) or (T, D).

        ``attrs`` (e.g. ``unit="cm"``, ``description=...``) are stored on the group.
        """
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        values = np.asarray(values, dtype=np.float32)
        self._check_name("behavior", name)
        self._check_timestamps(f"/behavior/{name}", ts, len(values))
        g = self._h5.require_group("behavior").create_group(name)
        g.create_dataset("timestamps", data=ts, **_compression())
        g.create_dataset("values", data=values, **_compression())
        g.attrs.update({k: ("" if v is None else v) for k, v in attrs.items()})
        if ts.size:
            self._span(ts[0], ts[-1])

    @_writes
    def add_stimulus(self, name: str, timestamps, frames, **attrs) -> None:
        """A stimulus stream: ``timestamps`` (T,) s, ``frames`` (T, ...) e.g. (T, H, W) uint8."""
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        frames = np.asarray(frames)
        self._check_name("stimulus", name)
        self._check_timestamps(f"/stimulus/{name}", ts, len(frames))
        g = self._h5.require_group("stimulus").create_group(name)
        g.create_dataset("timestamps", data=ts)
        g.create_dataset("frames", data=frames, chunks=(1,) + frames.shape[1:], **_compression())
        g.attrs.update({k: ("" if v is None else v) for k, v in attrs.items()})
        # the stimulus does not widen the recording's span: it may run past the neural data

    @_writes
    def add_events(self, name: str, onset, duration=None, label=None) -> None:
        """Point or extended events: onsets (s), durations (s, default 0), string labels."""
        onset = np.asarray(onset, dtype=np.float64).ravel()
        duration = np.zeros_like(onset) if duration is None else np.asarray(duration, dtype=np.float64).ravel()
        label = _strings([name] * len(onset) if label is None else label)
        if not (len(duration) == len(label) == len(onset)):
            raise self._err(f"/events/{name}", "onset, duration and label must have the same length")
        self._check_name("events", name)
        if not np.isfinite(onset).all() or not np.isfinite(duration).all():
            raise self._err(f"/events/{name}", "onset or duration contains NaN or inf", "drop those events")
        g = self._h5.require_group("events").create_group(name)
        g.create_dataset("onset", data=onset)
        g.create_dataset("duration", data=duration)
        g.create_dataset("label", data=label, dtype=_STR)

    @_writes
    def add_intervals(self, name: str, start, end, **columns) -> None:
        """Time intervals (s), e.g. trials or train/valid/test blocks; end >= start."""
        start = np.asarray(start, dtype=np.float64).ravel()
        end = np.asarray(end, dtype=np.float64).ravel()
        if start.shape != end.shape or np.any(end < start):
            raise self._err(f"/intervals/{name}", "start and end must pair up with end >= start")
        self._check_name("intervals", name)
        g = self._h5.require_group("intervals").create_group(name)
        g.create_dataset("start", data=start)
        g.create_dataset("end", data=end)
        for key, col in columns.items():
            col = np.asarray(col)
            if len(col) != len(start):
                raise self._err(f"/intervals/{name}/{key}", f"has {len(col)} rows for {len(start)} intervals")
            g.create_dataset(key, data=_strings(col) if col.dtype.kind in "OUS" else col,
                             dtype=_STR if col.dtype.kind in "OUS" else None)

    @_writes
    def add_array(self, path: str, data, **attrs) -> None:
        """Any extra dataset (e.g. ``ground_truth/connectivity``); kept by every reader."""
        dset = self._h5.create_dataset(path, data=data)
        dset.attrs.update(attrs)

    def _check_name(self, group: str, name: str) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise self._err(f"/{group}/{name}", "is not a valid group name (empty or contains '/')",
                            "pick a name without '/'")
        if f"{group}/{name}" in self._h5:
            raise self._err(f"/{group}/{name}", "was written twice", "give each stream its own name")

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
        """Finish the file and move it into place. Returns the final path.

        Everything is flushed BEFORE the HDF5 file is closed, so a write error (disk full)
        surfaces here as an :class:`~neurofm.atomic.OutputError` naming the output, and the
        temporary file is removed; with ``overwrite=False`` the file is published with an
        exclusive link, so a file created at ``path`` meanwhile is never replaced.
        """
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
            self._h5.flush()
            self._raise_if_write_failed()
            self._h5.close()
            self._raise_if_write_failed()
            self._file.close()
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError) and is_output_errno(e):
                raise output_error(e, self.path) from None
            raise
        self._closed = True
        publish(self._tmp, self.path, overwrite=self._overwrite)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; nothing appears under the final name.

        Writes are discarded from here on: HDF5 flushes its caches when the file closes, and a
        flush that fails (the disk that just filled up) would make h5py crash the process
        (segfault) when it frees the file's objects."""
        if self._closed:
            return
        self._file.discard = True
        try:
            self._h5.close()
        except Exception:
            pass
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        self._closed = True


class _OutputFile:
    """The binary file h5py writes a session through (h5py's file-object driver).

    A write that fails (disk full, quota, file size limit) is remembered in ``error`` and
    from then on every write is accepted and dropped (``discard``): HDF5 is never shown the
    failure, because its error paths leave the library in a state where h5py later crashes
    the process (segfault) when it frees the file's objects or flushes on close. The writer
    checks ``error`` after each call and reports it as an output error naming the output;
    the temporary file is then removed."""

    def __init__(self, path: Path):
        self._f = open(path, "r+b", buffering=0)  # unbuffered: a failed write fails at its call
        self.error: OSError | None = None
        self.discard = False

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        if not self.discard:
            try:
                done = 0
                while done < view.nbytes:  # a raw write may be short (e.g. the last blocks of a disk)
                    done += self._f.write(view[done:])
            except OSError as e:
                self.error, self.discard = e, True
        return view.nbytes

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if not self.discard:
            try:
                return self._f.truncate(size)
            except OSError as e:
                self.error, self.discard = e, True
        return self._f.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: nothing held back

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channels:
    """Channel metadata. ``xyz`` (C, 3) mm, NaN where unknown; ``regions[atlas]`` (C,) str
    (``""`` = unknown); ``bad`` (C,) bool; ``types`` (C,) str or None when not recorded."""

    names: list[str]
    xyz: np.ndarray
    regions: dict[str, np.ndarray]
    bad: np.ndarray
    coordinate_space: str
    types: np.ndarray | None = None


def _nan_rows(dset, chunk: int = 1 << 20) -> int:
    """Rows of a behaviour dataset (T,) or (T, D) holding a NaN, read in chunks of rows."""
    if dset.dtype.kind != "f":
        return 0
    n = 0
    for i in range(0, dset.shape[0], chunk):
        v = np.asarray(dset[i:i + chunk]).reshape(min(chunk, dset.shape[0] - i), -1)
        n += int(np.isnan(v).any(axis=1).sum())
    return n


def _decode(a) -> np.ndarray:
    return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)


def _jsonable(v):
    """Attribute values (numpy scalars, bytes) as plain JSON types."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


_KNOWN_GROUPS = ("units", "spikes", "continuous", "channels", "behavior", "stimulus", "events", "intervals",
                 "ground_truth")


def _reads(field: str):
    """Turn an HDF5 read failure (a damaged chunk: h5py's bare OSError) into a
    :class:`SessionFormatError` naming the file and ``field``."""
    def wrap(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (SessionFormatError, FileNotFoundError):
                raise
            except OSError as e:
                where = field.format(*args, **kwargs) if "{" in field else field
                raise SessionFormatError(self.path, where, f"cannot be read ({str(e).splitlines()[0]}): the file is "
                                         "damaged", "copy it again from its source, or convert the recording "
                                         "again") from None
        return wrapper

    return wrap


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
        self._cache: dict[str, Any] = {}  # per-process: small arrays and open dataset handles
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        attrs = self.h5.attrs
        if "neurofm_format" not in attrs:
            raise SessionFormatError(self.path, "/ attrs neurofm_format", "missing: not a neurofm session file",
                                     "convert the recording with `neurofm convert`")
        try:
            version = int(attrs["neurofm_format"])
        except (TypeError, ValueError):
            raise SessionFormatError(self.path, "/ attrs neurofm_format",
                                     f"{_jsonable(attrs['neurofm_format'])!r} is not a format version number "
                                     f"(this neurofm writes {FORMAT_VERSION})",
                                     "the file was not written by neurofm's SessionWriter: convert the recording "
                                     "again with `neurofm convert`") from None
        if version > FORMAT_VERSION:
            raise SessionFormatError(self.path, "/ attrs neurofm_format",
                                     f"format version {version} is newer than this neurofm reads ({FORMAT_VERSION})",
                                     "upgrade neurofm: pip install -U neurofm")
        self.attrs = {k: _jsonable(v) for k, v in attrs.items()}
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
                # 8 MiB chunk cache per dataset (h5py's default is 1 MiB): a window of a few
                # seconds of 100+ channels, plus its neighbour, stays decompressed, so
                # overlapping windows (stride < window) do not decompress the same chunks again
                self._h5 = h5py.File(self.path, "r", rdcc_nbytes=8 << 20)
            except OSError as e:
                raise SessionFormatError(self.path, "/", f"cannot be opened as HDF5 ({e})",
                                         "the file is truncated or not HDF5: write it again") from None
            self._pid = os.getpid()
            self._cache = {}
        return self._h5

    def close(self) -> None:
        self._cache = {}
        if self._h5 is not None:
            if self._pid == os.getpid():
                self._h5.close()
            self._h5 = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, kinds={self.kinds}, {self.duration:.1f} s)"

    def _dset(self, path: str) -> h5py.Dataset:
        """An open dataset, kept for the life of the file handle: HDF5 caches decompressed
        chunks per open dataset, so reusing the handle makes neighbouring windows nearly free
        (reopening by path costs a lookup and a fresh decompression every time)."""
        f = self.h5
        key = "dset:" + path
        if key not in self._cache:
            self._cache[key] = f[path]
        return self._cache[key]

    def _bad(self, field: str, problem: str) -> SessionFormatError:
        return SessionFormatError(self.path, field, problem,
                                  "the file is damaged or was not written by SessionWriter: write it again")

    def _validate(self) -> None:
        """Cheap structural checks (shapes and presence only; no bulk data is read)."""
        f = self.h5
        if "spikes" in f:
            for key in ("times", "unit_index"):
                if key not in f["spikes"]:
                    raise self._bad(f"/spikes/{key}", "missing")
            if "units" not in f or "id" not in f["units"]:
                raise self._bad("/units/id", "missing while /spikes exists")
            if f["spikes/times"].shape != f["spikes/unit_index"].shape:
                raise self._bad("/spikes/unit_index", "length differs from /spikes/times")
        if "continuous" in f:
            if "data" not in f["continuous"] or f["continuous/data"].ndim != 2:
                raise self._bad("/continuous/data", "missing or not 2-D (time, channel)")
            if "sampling_rate" not in f["continuous"].attrs:
                raise self._bad("/continuous attrs sampling_rate", "missing")
            if "channels" in f and "name" in f["channels"]:
                n_ch, n_names = f["continuous/data"].shape[1], f["channels/name"].shape[0]
                if n_ch != n_names:
                    raise self._bad("/channels/name", f"{n_names} channel names for {n_ch} columns of /continuous/data")
        if "channels" in f and "name" not in f["channels"]:
            raise self._bad("/channels/name", "missing")
        for group, key in (("behavior", "values"), ("stimulus", "frames")):
            for name, g in f[group].items() if group in f else ():
                if not isinstance(g, h5py.Group) or "timestamps" not in g or key not in g:
                    raise self._bad(f"/{group}/{name}", f"needs datasets 'timestamps' and '{key}'")
                if g["timestamps"].shape[0] != g[key].shape[0]:
                    raise self._bad(f"/{group}/{name}/{key}",
                                    f"{g[key].shape[0]} samples for {g['timestamps'].shape[0]} timestamps")
        for group, keys in (("events", ("onset",)), ("intervals", ("start", "end"))):
            for name, g in f[group].items() if group in f else ():
                for key in keys:
                    if not isinstance(g, h5py.Group) or key not in g:
                        raise self._bad(f"/{group}/{name}/{key}", "missing")

    @_reads("/ (contents)")
    def validate(self, block: int = 1 << 22) -> None:
        """Check the contents, not only the structure (``neurofm validate``; data modules run it
        before training). Raises :class:`SessionFormatError` naming the file, the path inside
        it, what is wrong and the fix. Vectorised NumPy over blocks of ``block`` values: one
        pass over the spikes, memory bounded whatever the file's size.

        Checked: spike times float64, finite, sorted; unit indices integers in range; unit ids
        unique; ``/spikes/index`` consistent with the times (a file edited in place after it
        was written fails here); behaviour / stimulus timestamps float, finite and increasing;
        continuous data float with a positive sampling rate and one channel row per column;
        events finite; intervals with end >= start.
        """
        f = self.h5
        rewrite = "write the file again with SessionWriter (neurofm convert / neurofm simulate)"
        if "units" in f and "id" in f["units"]:
            ids = _decode(f["units/id"][()])
            uniq, counts = np.unique(ids.astype(str), return_counts=True)
            if (counts > 1).any():
                raise SessionFormatError(self.path, "/units/id", f"unit ids are not unique: {uniq[counts > 1][:5].tolist()}",
                                         "give every unit its own id and " + rewrite)
        if "spikes" in f:
            self._validate_spikes(block, rewrite)
        for group, key in (("behavior", "values"), ("stimulus", "frames")):
            for name, g in f[group].items() if group in f else ():
                self._validate_timestamps(f"/{group}/{name}/timestamps", g["timestamps"], rewrite)
                if group == "behavior" and g[key].dtype.kind not in "fiu":
                    raise SessionFormatError(self.path, f"/{group}/{name}/{key}", f"dtype {g[key].dtype} is not numeric",
                                             rewrite)
        if "continuous" in f:
            d = f["continuous/data"]
            if d.dtype.kind != "f":
                raise SessionFormatError(self.path, "/continuous/data", f"dtype {d.dtype} is not float", rewrite)
            sr = float(f["continuous"].attrs["sampling_rate"])
            if not np.isfinite(sr) or sr <= 0:
                raise SessionFormatError(self.path, "/continuous attrs sampling_rate", f"{sr} is not a positive rate",
                                         rewrite)
            if "channels" not in f:
                raise SessionFormatError(self.path, "/channels", "missing while /continuous exists", rewrite)
        for name, g in f["events"].items() if "events" in f else ():
            onset = g["onset"][()]
            if onset.dtype.kind != "f" or not np.isfinite(onset).all():
                raise SessionFormatError(self.path, f"/events/{name}/onset", "must be finite float seconds", rewrite)
        for name, g in f["intervals"].items() if "intervals" in f else ():
            start, end = g["start"][()], g["end"][()]
            if start.shape != end.shape or not (np.isfinite(start).all() and np.isfinite(end).all()) \
                    or np.any(end < start):
                raise SessionFormatError(self.path, f"/intervals/{name}", "start and end must be finite pairs with "
                                         "end >= start", rewrite)

    def _validate_timestamps(self, field: str, dset: h5py.Dataset, rewrite: str) -> None:
        ts = dset[()]
        if ts.dtype.kind != "f":
            raise SessionFormatError(self.path, field, f"dtype {ts.dtype}, must be float64 seconds", rewrite)
        if not np.isfinite(ts).all():
            raise SessionFormatError(self.path, field, f"{int((~np.isfinite(ts)).sum())} timestamps are NaN or inf",
                                     "drop those samples and " + rewrite)
        if ts.size > 1 and np.any(np.diff(ts) <= 0):
            i = int(np.argmax(np.diff(ts) <= 0))
            raise SessionFormatError(self.path, field, f"timestamps do not increase at sample {i + 1} "
                                     f"({ts[i]} -> {ts[i + 1]} s)", "sort the samples, drop duplicates and " + rewrite)

    def _validate_spikes(self, block: int, rewrite: str) -> None:
        f = self.h5
        times, units = f["spikes/times"], f["spikes/unit_index"]
        if times.dtype != np.float64:
            raise SessionFormatError(self.path, "/spikes/times", f"dtype {times.dtype}, must be float64 seconds",
                                     "convert the times to float64 seconds and " + rewrite)
        if units.dtype.kind not in "iu":
            raise SessionFormatError(self.path, "/spikes/unit_index", f"dtype {units.dtype} is not an integer type",
                                     rewrite)
        n_units, n = self.n_units, times.shape[0]
        index = f["spikes/index"] if "index" in f["spikes"] else None
        if index is not None:
            stored = index[()]
            edges = float(index.attrs["t_start"]) + float(index.attrs["step"]) * np.arange(len(stored))
            counted = np.zeros(len(stored), dtype=np.int64)
        prev = -np.inf
        for a in range(0, n, block):
            t = times[a:a + block]
            u = units[a:a + block]
            bad = ~np.isfinite(t)
            if bad.any():
                i = a + int(np.argmax(bad))
                raise SessionFormatError(self.path, "/spikes/times", f"spike {i} has time {t[i - a]}: "
                                         f"{int(bad.sum())} or more times are NaN or inf",
                                         "drop those spikes and " + rewrite)
            step_back = np.diff(np.concatenate([[prev], t])) < 0
            if step_back.any():
                i = a + int(np.argmax(step_back))
                raise SessionFormatError(self.path, "/spikes/times", f"not sorted: spike {i} at {times[i]} s comes "
                                         f"after one at {times[i - 1]} s", "sort the spikes (units paired) and " + rewrite)
            out = (u < 0) | (u >= n_units)
            if out.any():
                i = a + int(np.argmax(out))
                raise SessionFormatError(self.path, "/spikes/unit_index", f"spike {i} has unit index {u[i - a]}, "
                                         f"outside [0, {n_units}) (/units/id has {n_units} units)",
                                         "the unit table and the spikes do not belong together: " + rewrite)
            if index is not None:
                counted += np.searchsorted(t, edges, side="left")
            prev = t[-1] if t.size else prev
        if index is not None and not np.array_equal(counted, stored):
            k = int(np.argmax(counted != stored))
            raise SessionFormatError(self.path, "/spikes/index",
                                     f"does not match /spikes/times (entry {k}, t = {edges[k]:.3f} s: {stored[k]} "
                                     f"stored, {counted[k]} counted); the times were changed after the file was written",
                                     rewrite + ", which rebuilds the index")

    # -- summary --------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        return [k for k in ("spikes", "continuous") if k in self.h5]

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start

    @property
    def extra_groups(self) -> list[str]:
        """Top-level groups/datasets this version does not interpret (kept, never an error)."""
        return sorted(k for k in self.h5.keys() if k not in _KNOWN_GROUPS)

    def summary(self) -> dict[str, Any]:
        """Everything ``neurofm inspect --json`` prints: plain JSON types only.

        Reads only shapes, attributes and the small tables (channels, events, intervals).
        """
        f = self.h5
        a = self.attrs
        out: dict[str, Any] = {
            "path": str(self.path),
            "session_id": self.session_id,
            "subject_id": self.subject_id,
            "species": str(a.get("species", "")),
            "lab": str(a.get("lab", "")),
            "source": str(a.get("source", "")),
            "neurofm_format": int(a.get("neurofm_format", FORMAT_VERSION)),
            "kinds": self.kinds,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "duration_s": self.duration,
            "n_units": self.n_units,
            "n_spikes": self.n_spikes,
            "spike_rate_hz": None,
            "unit_columns": sorted(k for k in f["units"].keys() if k != "id") if "units" in f else [],
            "n_channels": self.n_channels,
            "n_samples": self.n_samples,
            "sampling_rate": self.sampling_rate,
            "signal_unit": str(_jsonable(f["continuous"].attrs.get("unit", ""))) if "continuous" in f else None,
            "n_bad_channels": 0,
            "n_channels_with_coords": 0,
            "coordinate_space": None,
            "atlases": [],
            "channel_types": {},
            "behavior": self.behavior_names,
            "behavior_shapes": {n: list(f[f"behavior/{n}/values"].shape) for n in self.behavior_names},
            # rows with a NaN (tracking lost): never a window's target, so worth seeing up front
            "behavior_nan_rows": {n: _nan_rows(f[f"behavior/{n}/values"]) for n in self.behavior_names},
            "stimulus": self.stimulus_names,
            "stimulus_shapes": {n: list(f[f"stimulus/{n}/frames"].shape) for n in self.stimulus_names},
            "events": self.event_names,
            "n_events": {n: int(f[f"events/{n}/onset"].shape[0]) for n in self.event_names},
            "intervals": self.interval_names,
            "n_intervals": {n: int(f[f"intervals/{n}/start"].shape[0]) for n in self.interval_names},
            "extra_groups": self.extra_groups,
            "extra_attrs": {k: _jsonable(v) for k, v in a.items()
                            if k not in ("session_id", "subject_id", "species", "lab", "source",
                                         "neurofm_format", "t_start", "t_end")},
        }
        # time no window reads (/intervals/bad_segments: a recording pause, invalid_times, BAD
        # annotations), left out of the population rate
        live = self.duration
        if BAD_SEGMENTS in self.interval_names:
            iv = self.intervals(BAD_SEGMENTS)
            live = Intervals.from_pairs([(self.t_start, self.t_end)]).minus(iv["start"], iv["end"]).duration
        out["bad_segments_s"] = float(self.duration - live)
        out["spike_rate_hz"] = (self.n_spikes / live) if self.n_spikes and live > 0 else None
        # units a model sees too few spikes of to learn anything about (sorting leftovers, silent units)
        out["units_under_20_spikes"] = {}
        if self.n_spikes:
            counts = np.bincount(self._dset("spikes/unit_index")[()], minlength=self.n_units)
            few = np.flatnonzero(counts < 20)
            ids = self.unit_ids
            out["units_under_20_spikes"] = {ids[k]: int(counts[k]) for k in few[np.argsort(counts[few], kind="stable")]}
        # the classes `finetune --task classify --events NAME` would learn, most frequent first
        out["event_labels"] = {}
        for n in self.event_names:
            if "label" in f[f"events/{n}"]:
                labels, counts = np.unique(np.asarray([x.decode() if isinstance(x, bytes) else str(x)
                                                       for x in f[f"events/{n}/label"][()]]), return_counts=True)
                order = np.lexsort((labels, -counts))
                out["event_labels"][n] = {str(labels[i]): int(counts[i]) for i in order}
        if "channels" in f:
            ch = self.channels()
            out["n_bad_channels"] = int(np.sum(ch.bad))
            out["n_channels_with_coords"] = int(np.isfinite(ch.xyz).all(axis=1).sum())
            out["coordinate_space"] = ch.coordinate_space
            out["atlases"] = sorted(ch.regions)
            if ch.types is not None:
                kinds, counts = np.unique(ch.types.astype(str), return_counts=True)
                out["channel_types"] = {str(k): int(c) for k, c in zip(kinds, counts)}
        return out

    def describe(self) -> str:
        """A few lines a person reads (``neurofm inspect``)."""
        s = self.summary()

        def names(xs, counts=None, unit=""):
            if not xs:
                return "-"
            return ", ".join(f"{x} ({counts[x]:,}{unit})" if counts else str(x) for x in xs)

        who = ", ".join(f"{k} {s[k]}" for k in ("subject_id", "species", "lab") if s[k]) or "no subject metadata"
        lines = [
            f"session {s['session_id']} ({who})",
            f"  file       {s['path']} (neurofm format {s['neurofm_format']}); source: {s['source'] or '-'}",
            f"  time       {s['t_start']:.3f} .. {s['t_end']:.3f} s ({s['duration_s']:.3f} s)",
        ]
        if "spikes" in s["kinds"]:
            rate = f", {s['spike_rate_hz']:.2f} spikes/s summed" if s["spike_rate_hz"] else ""
            if rate and s.get("bad_segments_s"):
                rate += f" (outside the {s['bad_segments_s']:.1f} s of /intervals/{BAD_SEGMENTS})"
            cols = ", ".join(s["unit_columns"]) or "-"
            lines.append(f"  spikes     {s['n_units']:,} units, {s['n_spikes']:,} spikes{rate}; unit columns: {cols}")
            few = s.get("units_under_20_spikes") or {}
            if few:
                eg = ", ".join(f"{k} {v}" for k, v in list(few.items())[:5]) + (", ..." if len(few) > 5 else "")
                lines.append(f"  units      {len(few)} with fewer than 20 spikes ({eg}): a model learns next to "
                             f"nothing about them")
        if "continuous" in s["kinds"]:
            lines.append(f"  continuous {s['n_channels']:,} channels x {s['n_samples']:,} samples at "
                         f"{s['sampling_rate']:.10g} Hz ({s['signal_unit']}); {s['n_bad_channels']} bad")
        if s["n_channels"] and s["coordinate_space"] is not None:
            types = ", ".join(f"{k} {v}" for k, v in s["channel_types"].items())
            lines.append(f"  channels   {s['n_channels_with_coords']}/{s['n_channels']} with coordinates "
                         f"(space {s['coordinate_space']}); atlases: {names(s['atlases'])}"
                         + (f"; types: {types}" if types else ""))
        shapes = {n: " x ".join(f"{d:,}" for d in shp) for n, shp in s["behavior_shapes"].items()}
        nan = {n: f"; {k:,} rows NaN ({k / max(s['behavior_shapes'][n][0], 1):.1%})"
               for n, k in s["behavior_nan_rows"].items() if k}
        lines.append("  behavior   " + (", ".join(f"{n} ({shapes[n]}{nan.get(n, '')})" for n in s["behavior"]) or "-"))
        if s["stimulus"]:
            shapes = {n: " x ".join(f"{d:,}" for d in shp) for n, shp in s["stimulus_shapes"].items()}
            lines.append("  stimulus   " + ", ".join(f"{n} ({shapes[n]})" for n in s["stimulus"]))
        def labelled(name):
            labels = s["event_labels"].get(name) or {}
            shown = ", ".join(f"{k or '(empty)'} {v:,}" for k, v in list(labels.items())[:6])
            more = f" +{len(labels) - 6} more" if len(labels) > 6 else ""
            return f"{name} ({s['n_events'][name]:,}" + (f"; labels {shown}{more}" if labels else "") + ")"

        lines.append("  events     " + (", ".join(labelled(n) for n in s["events"]) or "-"))
        lines.append(f"  intervals  {names(s['intervals'], s['n_intervals'])}")
        if s["extra_groups"]:
            lines.append(f"  extra      {names(s['extra_groups'])} (kept, not interpreted)")
        return "\n".join(lines)

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
        if not (np.isfinite(t0) and np.isfinite(t1)) or t1 <= t0:
            raise SessionFormatError(self.path, "window", f"[{t0}, {t1}) is empty or not finite",
                                     "give a window with t_end > t_start (seconds)")
        if t1 - t0 > self.duration + 1e-9:
            raise SessionFormatError(self.path, "window",
                                     f"window of {t1 - t0:.3f} s is longer than the recording ({self.duration:.3f} s, "
                                     f"{self.t_start:.3f}..{self.t_end:.3f} s)",
                                     f"use a window of at most {self.duration:.3f} s")

    def _spike_index(self) -> tuple[np.ndarray, float, float] | None:
        """The coarse index (one offset per ``step`` seconds; small, cached per process)."""
        if "spikes/index" not in self._cache:
            g = self.h5["spikes"]
            if "index" not in g:
                self._cache["spikes/index"] = None
            else:
                idx = g["index"]
                self._cache["spikes/index"] = (idx[()], float(idx.attrs["t_start"]), float(idx.attrs["step"]))
        return self._cache["spikes/index"]

    def _spike_range(self, t0: float, t1: float) -> tuple[int, int]:
        """Indices ``[i0, i1)`` of the spikes with ``t0 <= t < t1``, reading only nearby chunks.

        The coarse index brackets each bound between two index entries (one bucket of margin
        on each side absorbs float rounding of the bucket edges); a binary search inside that
        bracket reads only the chunks of ``/spikes/times`` it spans.
        """
        times = self._dset("spikes/times")
        n = times.shape[0]
        index = self._spike_index()
        if index is None:
            all_times = times[()]
            return int(np.searchsorted(all_times, t0)), int(np.searchsorted(all_times, t1))
        idx, ts, step = index
        m = idx.shape[0]

        def bound(t: float) -> int:
            if not np.isfinite(t):
                return n if t > 0 else 0
            k = int(np.floor((t - ts) / step))  # idx[k] <= answer <= idx[k + 1], up to rounding
            lo = 0 if k - 1 < 0 else int(idx[min(k - 1, m - 1)])
            hi = n if k + 2 >= m else int(idx[max(k + 2, 0)])
            return lo + int(np.searchsorted(times[lo:hi], t, side="left"))

        i0 = bound(t0)
        return i0, max(i0, bound(t1))

    def spike_span(self) -> tuple[float, float]:
        """Times (s) of the first and the last spike: two reads, not the whole ``/spikes/times``."""
        times = self._dset("spikes/times")
        if times.shape[0] == 0:
            raise SessionFormatError(self.path, "/spikes/times", "no spikes", "use a session that holds spikes")
        return float(times[0]), float(times[-1])

    @_reads("/spikes")
    def spikes(self, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Spikes with ``t0 <= t < t1``: ``(times (N,) float64 s, unit_index (N,) int32)``."""
        if "spikes" not in self.h5:
            raise SessionFormatError(self.path, "/spikes", "this session has no spikes",
                                     f"it holds {self.kinds or 'no neural data'}; use a spike session")
        times, unit_index = self._dset("spikes/times"), self._dset("spikes/unit_index")
        if t0 is None and t1 is None:
            return times[()], unit_index[()]
        i0, i1 = self._spike_range(-np.inf if t0 is None else t0, np.inf if t1 is None else t1)
        return times[i0:i1], unit_index[i0:i1]

    # -- continuous -----------------------------------------------------------------------
    @property
    def sampling_rate(self) -> float | None:
        return float(self.h5["continuous"].attrs["sampling_rate"]) if "continuous" in self.h5 else None

    @property
    def continuous_t_start(self) -> float | None:
        """Time (s) of row 0 of ``/continuous/data`` (attr ``t_start``, 0 when absent); None without continuous data.

        Not always the session's ``t_start``: spikes or events may start before the samples.
        """
        return float(self.h5["continuous"].attrs.get("t_start", 0.0)) if "continuous" in self.h5 else None

    @property
    def n_samples(self) -> int:
        return self.h5["continuous/data"].shape[0] if "continuous" in self.h5 else 0

    @property
    def n_channels(self) -> int:
        if "continuous" in self.h5:
            return self.h5["continuous/data"].shape[1]
        return len(self.h5["channels/name"]) if "channels" in self.h5 else 0

    @_reads("/continuous/data")
    def continuous(self, t0: float | None = None, t1: float | None = None) -> np.ndarray:
        """Samples in ``[t0, t1)`` as ``(T, C)`` float32 (reads only the chunks it needs).

        Sample ``i`` is at ``t_start + i / sampling_rate``; the bounds are rounded to the
        nearest sample, so every window of the same length has the same ``T``. Parts of the
        window outside the recording are left out (``T`` shrinks).
        """
        if "continuous" not in self.h5:
            raise SessionFormatError(self.path, "/continuous", "this session has no continuous data",
                                     f"it holds {self.kinds or 'no neural data'}; use an iEEG/LFP session")
        if "continuous/timing" not in self._cache:
            g = self.h5["continuous"]
            self._cache["continuous/timing"] = (float(g.attrs["sampling_rate"]), float(g.attrs.get("t_start", 0.0)))
        sr, ct0 = self._cache["continuous/timing"]
        i0 = 0 if t0 is None else int(round((t0 - ct0) * sr))
        i1 = self._dset("continuous/data").shape[0] if t1 is None else int(round((t1 - ct0) * sr))
        return self.continuous_samples(i0, i1)

    @_reads("/continuous/data")
    def continuous_samples(self, i0: int, i1: int) -> np.ndarray:
        """Rows ``[i0, i1)`` of ``/continuous/data`` as ``(T, C)`` float32 (clipped to the recording)."""
        dset = self._dset("continuous/data")
        n = dset.shape[0]
        i0 = min(max(int(i0), 0), n)
        i1 = min(max(int(i1), i0), n)
        return dset[i0:i1]

    @_reads("/channels")
    def channels(self) -> Channels:
        if "channels" not in self.h5:
            raise KeyError(f"{self.path}: no /channels (this session holds {self.kinds}; channel tables come "
                           f"with continuous data)")
        g = self.h5["channels"]
        n = len(g["name"])
        xyz = np.stack([g[a][()] for a in ("x", "y", "z")], axis=1) if "x" in g else np.full((n, 3), np.nan)
        regions = {k: _decode(v[()]) for k, v in g["region"].items()} if "region" in g else {}
        bad = g["bad"][()] if "bad" in g else np.zeros(n, dtype=bool)
        types = _decode(g["type"][()]) if "type" in g else None
        return Channels(names=_decode(g["name"][()]).tolist(), xyz=xyz, regions=regions, bad=bad,
                        coordinate_space=str(_jsonable(g.attrs.get("coordinate_space", "unknown"))), types=types)

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

    def behavior_unit(self, name: str) -> str:
        """The ``unit`` attr of ``/behavior/<name>`` as text ("" when absent, or no such behaviour)."""
        field = f"behavior/{name}"
        if field not in self.h5:
            return ""
        unit = self.h5[field].attrs.get("unit", "")
        return unit.decode() if isinstance(unit, bytes) else str(unit)

    def behavior(self, name: str, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps (T,), values (T,) or (T, D))`` of behaviour ``name`` within ``[t0, t1)``."""
        return self._timeseries("behavior", name, "values", t0, t1)

    def stimulus(self, name: str, t0: float | None = None, t1: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps (T,), frames (T, ...))`` of stimulus ``name`` within ``[t0, t1)``."""
        return self._timeseries("stimulus", name, "frames", t0, t1)

    @_reads("/{0}/{1}")
    def _timeseries(self, group: str, name: str, key: str, t0, t1):
        """Timestamps are cached per process (8 bytes a sample) so that many windows cost one
        binary search each; only the rows of ``key`` inside the window are read."""
        if f"{group}/{name}" not in self.h5:
            raise KeyError(f"{self.path}: no /{group}/{name}; available: {self._names(group)}")
        cache_key = f"{group}/{name}/timestamps"
        if cache_key not in self._cache:
            self._cache[cache_key] = self.h5[cache_key][()]
        ts = self._cache[cache_key]
        i0 = 0 if t0 is None else int(np.searchsorted(ts, t0, side="left"))
        i1 = len(ts) if t1 is None else int(np.searchsorted(ts, t1, side="left"))
        i1 = max(i0, i1)
        return ts[i0:i1].copy(), self._dset(f"{group}/{name}/{key}")[i0:i1]

    @_reads("/events/{0}")
    def events(self, name: str) -> dict[str, np.ndarray]:
        if f"events/{name}" not in self.h5:
            raise KeyError(f"{self.path}: no /events/{name}; available: {self.event_names}")
        g = self.h5[f"events/{name}"]
        n = g["onset"].shape[0]
        return {"onset": g["onset"][()],
                "duration": g["duration"][()] if "duration" in g else np.zeros(n),
                "label": _decode(g["label"][()]) if "label" in g else np.full(n, name, dtype=object)}

    @_reads("/intervals/{0}")
    def intervals(self, name: str) -> dict[str, np.ndarray]:
        if f"intervals/{name}" not in self.h5:
            raise KeyError(f"{self.path}: no /intervals/{name}; available: {self.interval_names}")
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


_VALIDATED: dict[tuple, bool] = {}


def validate_sessions(sessions) -> None:
    """:meth:`Session.validate` each session once per process and file version (path, size,
    modification time): data modules call this at setup, before any training step."""
    for s in sessions:
        st = s.path.stat()
        key = (str(s.path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _VALIDATED:
            s.validate()
            _VALIDATED[key] = True


def open_sessions(paths) -> Iterator[Session]:
    """Open many session files (str, Path or a list of them)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        yield Session(p)


#: ``set_intervals`` / ``neurofm split``: a block edge at most this far (s) outside the recording is
#: clipped to it (a recording starts at its first sample or spike, e.g. 1.4 ms after a video
#: clock's 0 with jittered frames); farther is an error (another clock, or a typo).
SPLIT_EDGE_S = 1.0


def set_intervals(path: str | os.PathLike, blocks: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Add ``/intervals/<name>`` groups to an existing session file, atomically.

    ``blocks`` maps a name to ``[(start, end), ...]`` in seconds, e.g. the ``train`` / ``valid``
    / ``test`` blocks that :class:`~neurofm.data.splits.TimeBlockSplit` then uses instead of
    its fractions (useful when the default "test = last block" would fall in a rest period).
    The file is copied, edited and renamed into place, so a crash leaves the original intact.
    """
    path = Path(path)
    with Session(path) as s:
        t0, t1 = s.t_start, s.t_end
        kept = {n: np.stack([s.intervals(n)["start"], s.intervals(n)["end"]], axis=1)
                for n in ("train", "valid", "test") if n in s.interval_names and n not in blocks}
    parsed = {}
    for name, pairs in blocks.items():
        arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
        # A recording spans its first to last sample or spike: a tracking clock whose first frame
        # came 1.4 ms in made `--train 0:1065` an error. Edges under SPLIT_EDGE_S outside are
        # clipped to the recording (nothing is recorded there), with a note; farther is refused.
        outside = np.maximum(t0 - arr, 0.0) + np.maximum(arr - t1, 0.0)
        if arr.size and 0 < outside.max() <= SPLIT_EDGE_S and np.all(arr[:, 1] > arr[:, 0]):
            clipped = np.clip(arr, t0, t1)
            if np.all(clipped[:, 1] > clipped[:, 0]):
                warnings.warn(f"{path}: /intervals/{name}: block edges {arr[outside > 0].tolist()} are outside the "
                              f"recording [{t0:.3f}, {t1:.3f}] s by at most {outside.max():.3f} s: clipped to it",
                              stacklevel=2)
                arr = clipped
        if np.any(arr[:, 1] <= arr[:, 0]) or arr.min() < t0 - 1e-9 or arr.max() > t1 + 1e-9:
            raise SessionFormatError(path, f"/intervals/{name}",
                                     f"blocks {arr.tolist()} must have end > start inside the recording "
                                     f"[{t0:.3f}, {t1:.3f}] s", "give start:end pairs in seconds inside that span")
        parsed[name] = arr
    # the split blocks must not overlap, each with itself or with another split: a window in both
    # would be trained on and scored (`neurofm split --train 0:500 --valid 490:560` was written, and
    # only the data module refused it, at the next run's setup)
    splits = {}
    for name in ("train", "valid", "test"):  # the file's own blocks of a split not given stay, so count too
        if name in parsed or name in kept:
            try:
                splits[name] = Intervals.from_pairs(parsed.get(name, kept.get(name)))
            except ValueError as e:
                raise SessionFormatError(path, f"/intervals/{name}", str(e).removeprefix("Intervals: "),
                                         "give blocks that do not overlap (join them into one)") from None
    try:
        check_disjoint(splits, 0.0, f"{path}: /intervals")
    except ValueError as e:
        raise SessionFormatError(path, "/intervals", str(e).split(": ", 2)[-1].split("; ")[0],
                                 "give blocks that do not overlap, with a gap between splits: windows that read "
                                 "across it are in neither (finetune's data.split.gap, 5 s)") from None
    with atomic_output(path) as tmp:
        shutil.copy2(path, tmp)
        with h5py.File(tmp, "r+") as f:
            g = f.require_group("intervals")
            for name, arr in parsed.items():
                if name in g:
                    if not overwrite:
                        raise SessionFormatError(path, f"/intervals/{name}", "already exists",
                                                 "pass overwrite=True (CLI: --overwrite) to replace it")
                    del g[name]
                sub = g.create_group(name)
                sub.create_dataset("start", data=arr[:, 0])
                sub.create_dataset("end", data=arr[:, 1])


#: ``unit`` attrs of an angle in radians / in degrees (a circular target that R2 and ridge read as a line)
RADIAN_UNITS = ("rad", "rads", "radian", "radians")
DEGREE_UNITS = ("deg", "degs", "degree", "degrees", "°")
ANGLE_UNITS = RADIAN_UNITS + DEGREE_UNITS


def parse_renames(specs, option: str, what: str, default: Callable[[str], str] = lambda name: name
                  ) -> list[tuple[str, str]]:
    """``["FORCE", "EMG_R=emg_right"]`` (or ``{"FORCE": "grip"}``) -> ``[(name, as_name), ...]``:
    the ``NAME[=as_name]`` values of a CLI ``option`` (``--behavior-channel``, ``--angle``), each
    of which becomes ``/behavior/<as_name>``; one given without ``=`` is named ``default(NAME)``.
    An empty name, an ``as_name`` with ``/`` (a nested group) or two ``what`` (channels, angles)
    to one ``as_name`` is a ``ValueError`` naming the option."""
    pairs = list(specs.items()) if isinstance(specs, Mapping) else \
        [tuple(x.split("=", 1)) if "=" in x else (x, default(x)) for x in (str(v) for v in specs or ())]
    out, seen = [], set()
    for name, as_name in pairs:
        name, as_name = str(name).strip(), str(as_name).strip()
        if not name or not as_name or "/" in as_name:
            raise ValueError(f"{option} {name}={as_name}: give NAME or NAME=as_name, as_name without '/'")
        if as_name in seen:
            raise ValueError(f"{option}: two {what} would become /behavior/{as_name}; give each its own "
                             f"name with NAME=as_name")
        seen.add(as_name)
        out.append((name, as_name))
    return out


def _with_behaviours(in_path: Path, out_path: Path, added: dict, overwrite: bool) -> Path:
    """Copy ``in_path`` to ``out_path`` (which may be ``in_path``) with ``added`` ({as_name:
    (timestamps, values, attrs)}) as new /behavior groups: copied, edited and renamed into place."""
    in_place = out_path.resolve() == in_path.resolve()
    with atomic_output(out_path, overwrite=overwrite or in_place) as tmp:
        shutil.copy2(in_path, tmp)
        with h5py.File(tmp, "r+") as f:
            for as_name, (ts, values, attrs) in added.items():
                g = f.require_group("behavior").create_group(as_name)
                g.create_dataset("timestamps", data=ts, **_compression())
                g.create_dataset("values", data=values, **_compression())
                g.attrs.update(attrs)
    return out_path


def rectify_behaviors(in_path: str | os.PathLike, out_path: str | os.PathLike, names, *,
                      overwrite: bool = True) -> Path:
    """Copy a session file with the named behaviours stored full-wave rectified; returns ``out_path``.

    ``names``: ``/behavior`` names (a BIDS physio column, an NWB behaviour, a channel moved by
    ``--behavior-channel``). Each keeps its timestamps, unit and name, its values become ``|x|``
    and its attr ``rectified`` true, as ``convert_ieeg``'s ``rectify_behavior`` stores channels:
    the mean over a segment, what a BaRISTA regression predicts, is then the signal's mean
    absolute amplitude (a joystick's deflection from centre, an EMG's envelope), where the raw
    signal's own segment mean is noise around zero. NaN samples stay NaN. A name that is no
    behaviour of the file is an error listing them. Rectified in blocks of rows (memory bounded),
    copied, edited and renamed into place: ``in_path`` is never modified (``out_path`` may equal it).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    names = [str(n).strip() for n in names or ()]
    if not names or not all(names):
        raise ValueError("rectify_behaviors: name at least one behaviour (CLI --rectify NAME)")
    with Session(in_path) as s:
        for name in names:
            if name not in s.behavior_names:
                raise SessionFormatError(in_path, f"/behavior/{name}", "missing",
                                         f"--rectify NAME names a behaviour of the file: one of {s.behavior_names} "
                                         f"(a channel becomes one with --behavior-channel NAME[=as_name])")
            if s.h5[f"behavior/{name}/values"].dtype.kind not in "iuf":
                raise SessionFormatError(in_path, f"/behavior/{name}/values",
                                         f"dtype {s.h5[f'behavior/{name}/values'].dtype} is not numeric",
                                         "name a numeric behaviour")
    in_place = out_path.resolve() == in_path.resolve()
    with atomic_output(out_path, overwrite=overwrite or in_place) as tmp:
        shutil.copy2(in_path, tmp)
        with h5py.File(tmp, "r+") as f:
            for name in dict.fromkeys(names):
                values = f[f"behavior/{name}/values"]
                rows = max(1, (1 << 22) // max(1, int(np.prod(values.shape[1:]))))  # ~32 MB of float64 a block
                for i0 in range(0, values.shape[0], rows):  # same shape and dtype: written in place
                    values[i0:i0 + rows] = np.abs(values[i0:i0 + rows])
                f[f"behavior/{name}"].attrs["rectified"] = True
    return out_path


def _check_derived_name(s: "Session", in_path: Path, name: str, as_name: str, what: str, quantity: str,
                        taken=()) -> None:
    """A behaviour derived from ``/behavior/<name>`` (``--angle``, ``--speed-from``,
    ``--velocity-from``) needs ``name`` in the file and ``as_name`` free, in the file and among
    ``taken`` (the names this call adds already); else a ``SessionFormatError`` naming the fix
    (``what``: the source asked for, ``quantity``: what is derived)."""
    if name not in s.behavior_names:
        raise SessionFormatError(in_path, f"/behavior/{name}", "missing",
                                 f"name {what} among the behaviours: {s.behavior_names}")
    if as_name in s.behavior_names or as_name in taken:
        raise SessionFormatError(in_path, f"/behavior/{as_name}", "exists already",
                                 f"give the {quantity} another name with NAME=as_name")


def add_cos_sin(in_path: str | os.PathLike, out_path: str | os.PathLike, angles, *, unit: str | None = None,
                overwrite: bool = True) -> Path:
    """Copy a session file with each angle behaviour's cosine and sine added; returns ``out_path``.

    ``angles``: ``"NAME"`` or ``"NAME=as_name"`` per angle (head direction, a wheel's or a
    grating's angle); ``/behavior/<as_name>`` (default ``<NAME>_cos_sin``) gets the same
    timestamps and the values ``(cos, sin)`` as 2 columns, unitless (attrs ``source_behavior``,
    ``transform``), so a decoder's target, its R2 and ridge see 359 and 1 degree as neighbours.
    The angle's ``unit`` attr says radians or degrees (``unit`` overrides it; an angle without
    one is an error naming the fix). NaN angles (tracking lost) stay NaN. Copied, edited and
    renamed into place: ``in_path`` is never modified (``out_path`` may equal it).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    pairs = parse_renames(angles, "--angle", "angles", lambda name: f"{name}_cos_sin")
    if not pairs:
        raise ValueError("add_cos_sin: name at least one angle behaviour")
    if unit is not None and unit.strip().lower() not in ANGLE_UNITS:
        raise SessionFormatError(in_path, "unit", f"{unit!r} is not an angle unit", "give rad or deg")
    added = {}
    with Session(in_path) as s:
        for name, as_name in pairs:
            _check_derived_name(s, in_path, name, as_name, "an angle", "cosine and sine")
            own = s.behavior_unit(name).strip()
            u = (unit or own).strip().lower()
            if u not in ANGLE_UNITS:
                raise SessionFormatError(in_path, f"/behavior/{name} attrs unit",
                                         f"{own or 'no unit'}: not an angle unit, so radians or degrees is unknown",
                                         "give the unit (CLI --angle-unit rad|deg) if it is an angle")
            ts, values = s.behavior(name)
            if values.ndim != 1 and not (values.ndim == 2 and values.shape[1] == 1):
                raise SessionFormatError(in_path, f"/behavior/{name}", f"has {values.shape[1]} columns, an angle one",
                                         "name a one-column angle")
            theta = np.asarray(values, np.float64).ravel() * (np.pi / 180.0 if u in DEGREE_UNITS else 1.0)
            added[as_name] = (ts, np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32),
                              {"unit": "", "source_behavior": name, "columns": "cos, sin",
                               "transform": f"cosine and sine of /behavior/{name} ({u})"})
    return _with_behaviours(in_path, out_path, added, overwrite)


#: units a cumulative distance may carry (a wheel's rotary encoder converted to a length)
_LENGTH_UNITS = {"m": "m/s", "meter": "m/s", "meters": "m/s", "metre": "m/s", "metres": "m/s", "cm": "cm/s",
                 "mm": "mm/s", "um": "um/s", "px": "px/s", "pixels": "pixels/s", "deg": "deg/s", "rad": "rad/s"}


def _time_derivatives(in_path: Path, pairs, quantity: str, what: str, *, magnitude: bool):
    """``{as_name: (timestamps, values, attrs)}``, what :func:`_with_behaviours` adds, for each
    ``(NAME, as_name)`` of ``pairs``: ``d NAME / dt`` by central differences on the samples' own
    times, per column, unsmoothed (the moving rule smooths, and a decoder's 50 ms windows average),
    as float32 in NAME's unit per second, or with ``magnitude`` (a speed) ``|d NAME / dt|`` of a
    one-column NAME; attrs ``unit``, ``source_behavior`` and ``transform``. NaN samples stay NaN.
    A NAME missing, in no length or angle unit, with one sample, or (``magnitude``) with several
    columns, or an ``as_name`` that exists already, is a ``SessionFormatError`` naming the fix."""
    out = {}
    with Session(in_path) as s:
        for name, as_name in pairs:
            _check_derived_name(s, in_path, name, as_name, what, quantity, taken=out)
            own = s.behavior_unit(name).strip()
            if own.lower() not in _LENGTH_UNITS:
                raise SessionFormatError(in_path, f"/behavior/{name} attrs unit",
                                         f"{own or 'no unit'}: not a length or angle unit",
                                         f"name {what} (m, cm, mm, px, deg, rad); one in {own or 'no unit'} "
                                         f"is not a distance whose derivative is a {quantity}")
            ts, values = s.behavior(name)
            values = np.asarray(values, dtype=np.float64)
            values = values[:, None] if values.ndim == 1 else values.reshape(len(ts), -1)
            if magnitude and values.shape[1] != 1:
                raise SessionFormatError(in_path, f"/behavior/{name}", f"has {values.shape[1]} columns",
                                         "name a one-column cumulative distance (a 2-D position's speed is "
                                         "what the moving rule derives itself; its signed velocity is "
                                         f"--velocity-from {name})")
            if len(ts) < 2:
                raise SessionFormatError(in_path, f"/behavior/{name}", f"{len(ts)} sample(s)",
                                         f"a {quantity} needs two samples or more")
            d = np.gradient(values, np.asarray(ts, dtype=np.float64), axis=0)
            out[as_name] = (ts, (np.abs(d) if magnitude else d).astype(np.float32),
                            {"unit": _LENGTH_UNITS[own.lower()], "source_behavior": name,
                             "transform": (f"|d/dt| of /behavior/{name}" if magnitude else
                                           f"d/dt of /behavior/{name} per column") + " (central differences)"})
    return out


def add_speed(in_path: str | os.PathLike, out_path: str | os.PathLike, distances, *,
              overwrite: bool = True) -> Path:
    """Copy a session file with the speed of each cumulative-distance behaviour added; returns ``out_path``.

    ``distances``: ``"NAME"`` or ``"NAME=as_name"`` per behaviour (default ``as_name``: ``speed``,
    the name the moving rule reads as a measured speed); NAME is one column that only accumulates,
    such as a head-fixed animal's wheel (a rotary encoder's ticks times the NWB ``conversion``, in
    metres). ``/behavior/<as_name>`` gets the same timestamps and ``|d NAME / dt|`` (central
    differences on the samples' own times), in NAME's unit per second; no smoothing (the moving rule
    smooths, and a decoder's 50 ms bins average). NaN samples stay NaN. A NAME with no length or
    angle unit is an error naming the behaviour, as is a NAME that exists as ``as_name`` already.
    Copied, edited and renamed into place: ``in_path`` is never modified (``out_path`` may equal it).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    pairs = parse_renames(distances, "--speed-from", "distances", lambda name: "speed")
    if not pairs:
        raise ValueError("add_speed: name at least one cumulative-distance behaviour")
    added = _time_derivatives(in_path, pairs, "speed", "a cumulative distance", magnitude=True)
    return _with_behaviours(in_path, out_path, added, overwrite)


def add_velocity(in_path: str | os.PathLike, out_path: str | os.PathLike, positions, *,
                 overwrite: bool = True) -> Path:
    """Copy a session file with the signed velocity of each position behaviour added; returns ``out_path``.

    ``positions``: ``"NAME"`` or ``"NAME=as_name"`` per behaviour (default ``as_name``:
    ``<NAME>_velocity``); NAME is a position of any number of columns in a length (or angle) unit,
    such as a hand's (x, y) from a manipulandum. ``/behavior/<as_name>`` gets the same timestamps
    and ``d NAME / dt`` per column (central differences on the samples' own times), in NAME's unit
    per second: the hand velocity a motor-cortex decoder is scored
    on. No smoothing: a decoder's target is the mean over its window, in which the differences of
    a sensor's noise cancel (a 50 ms mean of central differences is the displacement across it
    over 50 ms). NaN samples stay NaN (and make their neighbours' differences NaN). Errors as
    :func:`add_speed`. Copied, edited and renamed into place: ``in_path`` is never modified.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    pairs = parse_renames(positions, "--velocity-from", "positions", lambda name: f"{name}_velocity")
    if not pairs:
        raise ValueError("add_velocity: name at least one position behaviour")
    added = _time_derivatives(in_path, pairs, "velocity", "a position", magnitude=False)
    return _with_behaviours(in_path, out_path, added, overwrite)
