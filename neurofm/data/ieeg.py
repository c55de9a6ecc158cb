"""Intracranial EEG (anything MNE reads, BIDS-iEEG aware) -> session file (DESIGN.md 2.2).

What goes where::

    raw samples (EDF, BDF, BrainVision, FIF, EEGLAB, ...)  -> /continuous (microvolts for
        voltage channels, streamed in blocks of rows; t_start = time of the first sample on
        the file's own clock, ``raw.first_time``)
    channel names, types, bads                              -> /channels name, type, bad
        (without a channels.tsv, channels NAMED like non-neural inputs -- EKG1, DC01,
        TRIG, GRIP, MOV_RIGHT, ACC_X -- that the file types as EEG get the type their name
        says: ecg, misc, stim; a warning names every channel the model will leave out and,
        for continuous ones, the --behavior-channel NAME that makes a target of them)
    *_electrodes.tsv (or --electrodes FILE)                 -> /channels x, y, z (mm) and
        every non-standard column (``destrieux``, ``desikan-killiany``, ...) as
        /channels/region/<column name>; ``n/a`` and ``Unknown`` labels become "" (unknown)
    *_coordsystem.json                                      -> coordinate unit and space
    *_channels.tsv                                          -> type, ``status == bad``
    annotations, or a BIDS *_events.tsv when there is one   -> /events/annotations (one group,
        one ``label`` per event = the description / trial_type; BrainVision markers by their
        description without MNE's type prefix, "Comment/grip" -> "grip", "Stimulus/S  1" ->
        "S1", bookkeeping markers such as "New Segment" left out:
        :data:`neurofm.data.session.EVENT_LABEL_RULE`)
    annotations whose description starts with "BAD"        -> also /intervals/bad_segments
    BrainVision "New Segment" markers after the first       -> /intervals/discontinuities (start == end;
        sample (the recording paused and resumed)              a warning names the times; windows and
                                                               segments never span one)
    channels named by ``behavior_channels`` (a grip-force   -> /behavior/<as_name> (timestamps
        sensor, an accelerometer recorded as a channel)        from the sampling clock, values in
        the channel's own unit, attr ``unit``: the channels.tsv ``units`` where a BIDS sidecar
        gives one, else the recording's), and out of /continuous and /channels
    BIDS ``*_physio.tsv.gz`` + ``*_physio.json`` beside  -> /behavior/<column> per ``Columns`` entry
        the recording (a joystick, a respiration belt         (timestamps on the recording's clock:
        recorded by another device)                            ``StartTime`` + k / ``SamplingFrequency``;
                                                               attr ``unit`` from the column's ``Units``)

Events go to ONE group with labels rather than a group per description: descriptions are
free text (spaces, slashes, hundreds of distinct values in clinical files) and event
classification wants every label in one place. Where BIDS has an events.tsv, it is the
source of truth (as in mne-bids' ``read_raw_bids``) and replaces the file's own annotations.

Sidecars are found with mne-bids when it is installed (``BIDSPath.find_matching_sidecar``),
else by BIDS naming: ``<recording prefix>_electrodes.tsv`` beside the recording (or in a parent
folder), shortening the prefix one ``key-value`` entity at a time and allowing a ``space-``
entity. A plain ``recording.edf`` beside ``recording_electrodes.tsv`` is found the same way.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from neurofm.atomic import OutputError, atomic_output, check_destination
from neurofm.progress import progress
from neurofm.data.session import (BAD_SEGMENTS, BODY_SIGNAL_TYPES, DISCONTINUITIES, NON_NEURAL_TYPES,
                                  NOT_CONTINUOUS_TYPES, ConvertError, Session, non_neural, parse_renames,
                                  SessionFormatError, SessionWriter, channel_types_from_names, event_labels,
                                  is_input_line, is_new_segment,
                                  check_brain_coordinates, clean_labels, coordinate_scale, mm_per_unit)

#: Samples x channels converted per block (bounds memory for long clinical recordings).
BLOCK_VALUES = 1 << 22

#: Columns the BIDS specification defines for *_electrodes.tsv; any other column is an atlas.
BIDS_ELECTRODE_COLUMNS = frozenset({"name", "x", "y", "z", "size", "material", "manufacturer", "group",
                                    "hemisphere", "type", "impedance", "dimension"})
_NA = {"", "n/a", "na", "nan"}
_MODALITY_SUFFIXES = ("_ieeg", "_eeg", "_meg", "_raw")


def _mne():
    try:
        import mne
    except ImportError as e:
        raise ImportError(f"reading iEEG files needs MNE ({e}): install neurofm[ieeg] "
                          f"(pip install 'neurofm[ieeg]')") from None
    return mne


def _mne_bids():
    """mne-bids when installed, else None (sidecars are then found by BIDS naming)."""
    try:
        import mne_bids
    except ImportError:
        return None
    return mne_bids


# -- public entry point ------------------------------------------------------------------------


def convert_ieeg(
    in_path,
    out_path: str | os.PathLike,
    *,
    electrodes: str | os.PathLike | None = None,
    session_id: str | None = None,
    nan_policy: str = "raise",
    overwrite: bool = True,
    channels_tsv: str | os.PathLike | None = None,
    coordinate_unit: str | None = None,
    behavior_channels: Sequence[str] = (),
    license: str | None = None,
    rectify_behavior: bool = False,
    trigger_channels: Sequence[str] = (),
) -> Path:
    """Convert one iEEG recording to a neurofm session file; returns ``out_path``.

    Parameters
    ----------
    in_path : a file MNE reads (``.edf``, ``.bdf``, ``.vhdr``, ``.fif``, ``.set``, ...), or an
        ``mne_bids.BIDSPath``. Inside a BIDS-iEEG dataset its ``*_electrodes.tsv``,
        ``*_coordsystem.json``, ``*_channels.tsv`` and ``*_events.tsv`` are picked up.
    electrodes : an electrodes TSV (``name, x, y, z`` + atlas columns) to use instead of the
        one found beside the recording.
    nan_policy : ``"raise"`` (default) or ``"mark_bad"`` (zero NaN/inf samples, flag the channel).
    channels_tsv : a BIDS channels TSV to use instead of the one found beside the recording.
    coordinate_unit : unit of the electrodes' x, y, z (``"m"``, ``"cm"``, ``"mm"``, ``"um"``);
        overrides a coordsystem.json. Without either it is inferred from their magnitude, with
        a warning. Positions farther than 300 mm from the origin are warned about, with the
        unit that would fit.
    behavior_channels : ``"NAME"`` or ``"NAME=as_name"`` per channel that records behaviour
        (grip force, a joystick, an accelerometer): it becomes ``/behavior/<as_name>`` (default
        ``as_name``: the channel name) and leaves /continuous and /channels; its ``unit`` attr
        is the channels.tsv ``units`` when given (values rescaled when both are voltages),
        else the recording's. A name matching no channel is an error listing the channels. For
        a session file that exists already: :func:`move_channels_to_behavior`.
    rectify_behavior : store the ``behavior_channels`` full-wave rectified (``|x|``, attr
        ``rectified``), so the mean over a segment, what a BaRISTA regression predicts, is the
        channel's mean absolute amplitude: the envelope of a raw EMG, an accelerometer axis or
        a microphone, whose own mean over a segment is noise around zero. A BIDS physio column
        (or any behaviour of the written file) is rectified by
        :func:`~neurofm.data.session.rectify_behaviors` (CLI ``--rectify NAME``).
    trigger_channels : ``"NAME"`` or ``"NAME=label"`` per channel that carries trigger pulses
        (a clinical system's DC input fed TTL pulses, a TRIG line): each pulse's rising edge
        (:func:`trigger_pulses`) becomes an event of ``/events/annotations`` labelled ``label``
        (default: the name as given), beside the file's own annotations; the channel stays in
        /continuous typed ``stim``, which the model leaves out. A channel without pulses is an
        error naming it. A digital stim channel whose pulses carry several codes
        (:func:`trigger_codes`) gives each code its own label, ``label_CODE`` (``STI_1``, ``STI_2``).
    license : the data's licence (SPDX id), stored as the root attr ``license`` that model
        cards carry. Default: the ``License`` of the BIDS dataset's ``dataset_description.json``
        when the recording sits in one, else none.

    Raises
    ------
    FileNotFoundError; ConvertError (a ``ValueError``) naming the file, the field and the fix;
    ImportError when MNE is missing.
    """
    mne = _mne()
    in_path = Path(getattr(in_path, "fpath", in_path))  # BIDSPath -> its file
    out_path = Path(out_path)
    if not in_path.exists():
        raise FileNotFoundError(f"{in_path}: no such recording (check the path; convert_ieeg reads EDF, "
                                f"BrainVision .vhdr, FIF and the other formats MNE reads)")
    if in_path.is_dir() and in_path.suffix.lower() not in _DIRECTORY_FORMATS:
        _refuse_directory(in_path)
    if in_path.resolve() == out_path.resolve():
        raise ConvertError(in_path, "out_path", "is the input file itself", "write the session to another path")
    check_destination(out_path, overwrite)  # before reading: a directory there, or exists and not overwrite
    if coordinate_unit is not None:
        coordinate_scale(coordinate_unit, in_path)  # not a length: an error now, not unknown positions later
    for given in (electrodes, channels_tsv):
        if given is not None and not Path(given).exists():
            raise FileNotFoundError(f"{given}: no such sidecar file (check the path)")
    raw, dropped = _read_raw(mne, in_path)
    side = find_sidecars(in_path)
    if electrodes is not None:
        side["electrodes"] = Path(electrodes)
        guess = Path(str(electrodes).replace("_electrodes.tsv", "_coordsystem.json"))
        side["coordsystem"] = guess if guess != Path(electrodes) and guess.exists() else None
    if channels_tsv is not None:
        side["channels"] = Path(channels_tsv)

    names = list(raw.ch_names)
    moves = select_behavior_channels(names, behavior_channels, in_path)
    triggers = select_trigger_channels(names, trigger_channels, in_path)
    clash = sorted({names[i] for i, _ in moves} & {names[i] for i, _ in triggers})
    if clash:
        raise ConvertError(in_path, "--trigger-channel", f"{clash} given as --behavior-channel too",
                           "give a channel as one or the other")
    keep = np.setdiff1d(np.arange(len(names)), [i for i, _ in moves])
    if not keep.size:
        raise ConvertError(in_path, "--behavior-channel", f"would move all {len(names)} channels to /behavior",
                           "leave at least one neural channel in /continuous")
    # the channel table, its typing and its sidecar matching describe the channels that stay
    neural = raw if len(keep) == len(names) else raw.copy().pick(keep.tolist())
    onset, duration, label, events_source = _events(raw, side)
    table = _channel_table(neural, list(neural.ch_names), in_path, side, coordinate_unit,
                           moved=[names[i] for i, _ in moves], triggers=[names[i] for i, _ in triggers],
                           no_events=not onset.size and not triggers)
    if triggers:  # pulses in trigger channels: events on the /continuous clock, beside the file's own
        parts = [(onset, duration, label)]
        rate = float(raw.info["sfreq"])
        for i, lab in triggers:
            values, _ = _file_unit_values(raw, i)
            coded = trigger_codes(values)
            if coded is not None:  # a digital stim line (FIF STI 014...): each code its own event label
                rise, fall, code = coded
                labels = np.array([f"{lab}_{c}" for c in code], dtype=object)
                kinds, counts = np.unique(code, return_counts=True)
                warnings.warn(f"{in_path}: --trigger-channel {names[i]}: its pulses carry {len(kinds)} event codes "
                              f"({', '.join(f'{k}: {c} pulses' for k, c in zip(kinds, counts))}), not one level, so "
                              f"each code is its own label ({', '.join(f'{lab}_{k}' for k in kinds)}); to classify "
                              f"some of them, name them with data.labels=[...]", stacklevel=2)
            else:
                try:
                    rise, fall = trigger_pulses(values, rate, f"channel {names[i]!r}")
                except ValueError as e:
                    raise ConvertError(in_path, "--trigger-channel", str(e), "give the channel that carries the "
                                       "pulses (its trace steps from a baseline to a fixed level at each event)"
                                       ) from None
                labels = np.full(len(rise), lab, dtype=object)
            parts.append((raw.first_time + rise / rate, (fall - rise) / rate, labels))
        onset, duration, label = (np.concatenate([p[k] for p in parts]) for k in range(3))
        order = np.argsort(onset, kind="stable")
        onset, duration, label = onset[order], duration[order], label[order].astype(object)
        events_source = "; ".join(x for x in [events_source] + [f"trigger channel {names[i]} ({lab})"
                                                                for i, lab in triggers] if x)
    breaks = _discontinuities(raw, in_path)
    pauses, edf_breaks = _edf_plus_d(in_path, raw), np.zeros(0)
    if pauses is not None:  # EDF+D: records are not back to back in time; MNE reads them as if they were
        onset, duration, label, breaks, edf_breaks = _onto_sample_clock(pauses, raw, side, onset, duration, label,
                                                                        breaks, in_path)
    if dropped and side.get("events") is None and (pauses is None or not pauses.joins().size):
        warnings.warn(f"{in_path}: annotations: {dropped} that fall outside the recording's samples; their events "
                      f"are not in /events. Check that the annotations belong to this recording (a recording cut "
                      f"short, an export of part of a session, a clock offset)", stacklevel=2)
    physio = read_bids_physio(in_path, taken=[as_name for _, as_name in moves])
    label, is_event = event_labels(label)  # "Comment/grip" -> "grip"; New Segment markers left out
    onset, duration, label = onset[is_event], duration[is_event], label[is_event]
    events_source = events_source if onset.size else ""
    entities = _bids_entities(in_path)
    subject = entities.get("sub") or ""
    _warn_patient_fields(in_path, raw.info.get("subject_info") or {})
    meas = raw.info.get("meas_date")
    attrs: dict[str, Any] = dict(
        session_id=session_id or _recording_prefix(in_path),
        subject_id=str(subject),
        species="",
        lab="",
        source=str(in_path),
        license=license if license is not None else bids_license(in_path),
        source_format="mne:" + in_path.suffix.lower().lstrip("."),
        recording_start=meas.isoformat() if meas is not None else "",
        electrodes_file=str(side["electrodes"] or ""),
        channels_file=str(side["channels"] or ""),
        events_source=events_source,
    )
    mains, mains_source = _mains_frequency(raw, side.get("ieeg"), in_path)
    if mains:  # read by BaRISTA runs for the notch (neurofm.data.segmenter.recording_mains)
        attrs.update(mains_frequency=mains, mains_frequency_source=mains_source)
    try:
        with SessionWriter(out_path, overwrite=overwrite, **attrs) as w:
            _write_continuous(w, neural, list(neural.ch_names), table, in_path, nan_policy)
            tsv_units = _channels_tsv_units(side.get("channels"), [names[i] for i, _ in moves])
            for i, as_name in moves:
                values, unit = _channel_in_own_unit(raw, i, tsv_units.get(names[i], ""), side.get("channels"))
                times = raw.first_time + np.arange(raw.n_times) / float(raw.info["sfreq"])
                w.add_behavior(as_name, times, np.abs(values) if rectify_behavior else values, unit=unit,
                               source_channel=names[i], rectified=bool(rectify_behavior))
            for name, (times, values, meta) in physio.items():
                w.add_behavior(name, raw.first_time + times, values, **meta)
            if breaks.size:
                why = np.where(np.isin(breaks, edf_breaks), "EDF+D pause", "New Segment").astype(object)
                w.add_intervals(DISCONTINUITIES, breaks, breaks, label=why)
            if onset.size:
                w.add_events("annotations", onset, duration, label)
                is_bad = np.asarray([str(x).upper().startswith("BAD") for x in label], dtype=bool)
                if is_bad.any():
                    w.add_intervals(BAD_SEGMENTS, onset[is_bad], onset[is_bad] + duration[is_bad],
                                    label=label[is_bad])
    except ConvertError:
        raise
    except SessionFormatError as e:  # found while writing (NaN samples, ...): a problem of the input
        raise ConvertError(in_path, e.field, e.problem, e.fix) from None
    except (FileExistsError, OutputError):  # the output's problem, already named as such
        raise
    except (OSError, ValueError) as e:  # MNE failing to read a damaged file mid-way
        raise ConvertError(in_path, "data", f"read failed mid-way: {type(e).__name__}: {e}",
                           "the file is truncated or damaged: copy or export it again") from None
    return out_path


# -- reading the recording ---------------------------------------------------------------------

#: Recordings MNE stores as a folder (CTF .ds, EGI .mff): read as one recording, never refused.
_DIRECTORY_FORMATS = (".ds", ".mff")
#: Data-file suffixes of the recordings a folder (e.g. a BIDS root) holds, for the error listing them.
_RECORDING_SUFFIXES = (".edf", ".bdf", ".vhdr", ".fif", ".set", ".nwb", ".mefd")


def _refuse_directory(in_path: Path) -> None:
    """A folder (e.g. a BIDS dataset root) is many recordings, and a session file holds one: say
    which recordings it holds and how to convert each, instead of MNE's 'Unsupported file type ()'."""
    found = sorted(p for p in in_path.rglob("*") if p.suffix.lower() in _RECORDING_SUFFIXES and not
                   any(part.startswith(".") or part in ("derivatives", "sourcedata") for part in p.relative_to(in_path).parts))
    bids = [p for p in found if p.stem.endswith("_ieeg")]
    found = bids or found
    if not found:
        raise ConvertError(in_path, "input", "is a folder with no recording MNE reads in it "
                           f"(no {', '.join(_RECORDING_SUFFIXES)} file)",
                           "give one recording file (a BIDS dataset's sub-*/[ses-*/]ieeg/*_ieeg.edf, .vhdr, ...)")
    shown = ", ".join(str(p.relative_to(in_path)) for p in found[:4]) + (f" ... (+{len(found) - 4} more)"
                                                                         if len(found) > 4 else "")
    suffix = found[0].suffix
    glob = "*_ieeg" + suffix if bids else "*" + suffix
    raise ConvertError(in_path, "input", f"is a folder holding {len(found)} recording(s) ({shown}); a session file "
                       "holds one recording",
                       f"convert each to its own session file (a BIDS recording picks up its sidecars), e.g. "
                       f"`for f in $(find {in_path} -name '{glob}'); do neurofm convert ieeg \"$f\" "
                       f"\"$(basename \"${{f%{suffix}}}\").h5\"; done`, then train on the files together "
                       f"(data.sessions='[a.h5,b.h5]')")


def _read_raw(mne, in_path: Path):
    """Open lazily (preload=False); truncation MNE would paper over becomes an error. Returns
    ``(raw, dropped)``: ``dropped`` says how many annotations MNE left out as outside the
    samples ("" when none)."""
    if in_path.suffix.lower() in (".edf", ".bdf"):
        _check_edf_size(in_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # verbose="warning": MNE's warnings arrive here (recorded, not printed), checked below
            raw = mne.io.read_raw(in_path, preload=False, verbose="warning")
        except Exception as e:
            raise ConvertError(in_path, "header", f"MNE cannot read it: {type(e).__name__}: {e}",
                               "the file is truncated, damaged or not a format MNE reads "
                               "(EDF, BDF, BrainVision .vhdr, FIF, EEGLAB .set, ...)") from None
    dropped = ""
    for wm in caught:
        text = str(wm.message)
        if "Invalid tag" in text or "truncat" in text.lower():
            raise ConvertError(in_path, "data", f"MNE reports a damaged file: {text}",
                               "the file is truncated: copy or export it again")
        if text.startswith("Omitted") and "outside data range" in text:  # MNE drops them without a word at "error"
            dropped = text.split(" that")[0].replace("Omitted", "MNE dropped")  # said by convert_ieeg
    if raw.n_times == 0:
        raise ConvertError(in_path, "data", "holds no samples", "convert a recording with data in it")
    return raw, dropped


def _check_edf_size(path: Path) -> None:
    """EDF/BDF headers state the number of data records; MNE silently reads fewer when the
    file was cut short, so compare the promised size with the file's."""
    fix = "the file is truncated: copy it again from the source, or export it again"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise ConvertError(path, "EDF header", f"only {len(head)} of 256 header bytes", fix)
        try:
            n_records = int(head[236:244].strip() or b"-1")
            record_s = float(head[244:252].strip() or b"0")
            ns = int(head[252:256].strip())
            f.seek(256 + ns * 216)
            per_record = [int(f.read(8).strip()) for _ in range(ns)]
        except ValueError as e:
            raise ConvertError(path, "EDF header", f"unreadable ({e})", fix) from None
    width = 3 if path.suffix.lower() == ".bdf" else 2
    expected = 256 * (ns + 1) + max(n_records, 0) * sum(per_record) * width
    if n_records > 0 and size < expected:
        have = (size - 256 * (ns + 1)) / max(sum(per_record) * width, 1)
        raise ConvertError(path, "EDF data records",
                           f"the header promises {n_records} records ({n_records * record_s:g} s, {expected:,} bytes) "
                           f"but the file has {size:,} bytes (about {max(have, 0):.1f} records)", fix)


# -- sidecars ----------------------------------------------------------------------------------


def _strip_extension(name: str) -> str:
    for ext in (".fif.gz", ".nii.gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name else name


def _recording_prefix(path: Path) -> str:
    """File name without extension and modality suffix: ``sub-01_task-x_run-1_ieeg.edf`` ->
    ``sub-01_task-x_run-1``; ``sample_seeg.edf`` -> ``sample_seeg``."""
    stem = _strip_extension(path.name)
    for suffix in _MODALITY_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _bids_entities(path: Path) -> dict[str, str]:
    return dict(part.split("-", 1) for part in _recording_prefix(path).split("_") if "-" in part)


def bids_license(path: str | os.PathLike, max_up: int = 6) -> str:
    """``License`` of the BIDS dataset holding ``path`` (its root's ``dataset_description.json``,
    the nearest one above the file), or "" when there is none or it states none."""
    for folder in list(Path(path).resolve().parents)[:max_up]:
        desc = folder / "dataset_description.json"
        if desc.exists():
            try:
                return str(json.loads(desc.read_text()).get("License", "") or "").strip()
            except (json.JSONDecodeError, AttributeError, OSError):
                warnings.warn(f"{desc}: not valid JSON; the dataset's licence is not recorded", stacklevel=3)
                return ""
    return ""


def _mains_frequency(raw, sidecar: Path | None, in_path: Path) -> tuple[float, str]:
    """The mains frequency (Hz) the recording states and where: a BIDS ``*_ieeg.json``'s
    ``PowerLineFrequency``, else MNE's ``info["line_freq"]`` (FIF keeps it); ``(0.0, "")`` when
    neither says (EDF and BrainVision have no such field; ``"n/a"`` says nothing)."""
    if sidecar is not None:
        try:
            value = json.loads(Path(sidecar).read_text()).get("PowerLineFrequency")
        except (OSError, ValueError, AttributeError):
            warnings.warn(f"{sidecar}: not a JSON object; its PowerLineFrequency is not read (the notch then comes "
                          f"from a mains peak in the data, or data.line_noise)", stacklevel=3)
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value), f"PowerLineFrequency in {Path(sidecar).name}"
    line = raw.info.get("line_freq")
    if line:
        return float(line), f"line_freq in {in_path.name}"
    return 0.0, ""


def find_sidecars(path: str | os.PathLike) -> dict[str, Path | None]:
    """The BIDS sidecars of a recording: ``{"electrodes", "coordsystem", "channels", "events", "ieeg"}``
    -> path or None. mne-bids finds them when installed; BIDS naming otherwise (and for
    recordings outside a BIDS tree, e.g. ``rec.edf`` + ``rec_electrodes.tsv``).

    Where several electrodes files fit (one per ``space-``, or a placeholder of ``n/a``
    positions next to a real one), the one with the most known positions wins; a warning
    lists them when more than one has positions.
    """
    path = Path(path)
    wanted = {"electrodes": ".tsv", "coordsystem": ".json", "channels": ".tsv", "events": ".tsv", "ieeg": ".json"}
    found: dict[str, Path | None] = {k: None for k in wanted}
    mne_bids = _mne_bids()
    if mne_bids is not None and _bids_entities(path).get("sub"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bp = mne_bids.get_bids_path_from_fname(path, check=False)
                for suffix, ext in wanted.items():
                    hit = bp.find_matching_sidecar(suffix=suffix, extension=ext, on_error="ignore")
                    found[suffix] = Path(hit) if hit else None
        except Exception:  # not parseable as BIDS: fall back to naming
            pass
    for suffix, ext in wanted.items():
        candidates = _sidecars_by_name(path, suffix, ext)
        if suffix == "electrodes":
            pool = list(dict.fromkeys(([found[suffix]] if found[suffix] else []) + candidates))
            found[suffix] = _most_informative(path, pool)
        elif found[suffix] is None and candidates:
            found[suffix] = candidates[0]
    if found["electrodes"] is not None:
        # the coordsystem.json that belongs to THIS electrodes file (same entities, same space)
        paired = Path(str(found["electrodes"]).replace("_electrodes.tsv", "_coordsystem.json"))
        if paired.exists():
            found["coordsystem"] = paired
    return found


def _most_informative(path: Path, candidates: list[Path]) -> Path | None:
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    known = []
    for c in candidates:
        try:
            known.append(int(np.isfinite(read_electrodes_tsv(c)["xyz"]).all(axis=1).sum()))
        except ConvertError:
            known.append(-1)
    best = int(np.argmax(known))  # first of the best: mne-bids' pick, then name order
    if sum(k > 0 for k in known) > 1:
        warnings.warn(f"{path}: {len(candidates)} electrodes files fit ({[c.name for c in candidates]}); using "
                      f"{candidates[best].name} ({known[best]} positions). Pass electrodes=FILE (CLI --electrodes) "
                      f"to choose another", stacklevel=3)
    return candidates[best]


def _sidecars_by_name(path: Path, suffix: str, ext: str) -> list[Path]:
    """Sidecars named like the recording, most specific prefix first; all the files found at
    the first prefix (and folder) that has any."""
    parts = _recording_prefix(path).split("_")
    folders = [path.parent]
    for parent in list(path.parents)[:3]:  # BIDS inheritance: ses/, sub/, dataset root
        if parent not in folders:
            folders.append(parent)
    n = len(parts)
    while n > 0:
        prefix = "_".join(parts[:n])
        for folder in folders:
            exact = folder / f"{prefix}_{suffix}{ext}"
            hits = ([exact] if exact.exists() else []) + sorted(folder.glob(f"{prefix}_space-*_{suffix}{ext}"))
            if hits:
                return hits
        if "-" not in parts[n - 1]:
            break  # only BIDS key-value entities are dropped from a name
        n -= 1
    return []


def physio_files(path: str | os.PathLike) -> list[Path]:
    """The BIDS continuous recordings of a recording (``<prefix>[_recording-<label>]_physio.tsv.gz``
    beside it, most specific prefix first): behaviour or body signals sampled by another device."""
    path = Path(path)
    parts = _recording_prefix(path).split("_")
    for n in range(len(parts), 0, -1):
        prefix = "_".join(parts[:n])
        hits = sorted(path.parent.glob(f"{prefix}_physio.tsv.gz")) + sorted(
            path.parent.glob(f"{prefix}_recording-*_physio.tsv.gz"))
        if hits:
            return hits
        if "-" not in parts[n - 1]:
            break
    return []


def read_bids_physio(path: str | os.PathLike, taken: Sequence[str] = ()) -> dict[str, tuple]:
    """``{column: (timestamps s from the recording's first sample, values (T,), attrs)}`` from the
    BIDS ``*_physio.tsv.gz`` files beside the recording :func:`physio_files` finds (each with its
    ``*_physio.json``: ``SamplingFrequency``, ``StartTime`` (s, the physio's first sample relative
    to the recording's, negative when it started earlier) and ``Columns``; the TSV has no header).
    ``taken``: /behavior names given already (``--behavior-channel``); a clash is an error."""
    out: dict[str, tuple] = {}
    for tsv in physio_files(path):
        side = tsv.with_name(tsv.name[: -len(".tsv.gz")] + ".json")
        if not side.exists():
            raise ConvertError(tsv, "json", f"no sidecar {side.name} (SamplingFrequency, StartTime, Columns)",
                               "write it as BIDS specifies for physiological recordings, or move the physio file away")
        try:
            meta = json.loads(side.read_text())
        except ValueError as e:
            raise ConvertError(side, "json", f"unreadable ({e})", "fix the JSON") from None
        for key in ("SamplingFrequency", "Columns"):
            if key not in meta:
                raise ConvertError(side, key, "missing", "add it (BIDS: required for *_physio.json)")
        rate, columns = meta["SamplingFrequency"], meta["Columns"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
            raise ConvertError(side, "SamplingFrequency", f"{rate!r} is not a positive number of Hz", "write the rate in Hz")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
            raise ConvertError(side, "Columns", f"{columns!r} is not a list of column names",
                               'write one name per TSV column, e.g. ["joystick_x", "joystick_y"]')
        start = meta.get("StartTime", 0.0)
        if not isinstance(start, (int, float)) or isinstance(start, bool) or not np.isfinite(start):
            raise ConvertError(side, "StartTime", f"{start!r} is not a number of seconds",
                               "write the physio's first sample time relative to the recording's first sample (s)")
        try:  # loadtxt's C reader first (hours of a 1 kHz device); genfromtxt for n/a cells
            try:
                values = np.loadtxt(tsv, delimiter="\t", ndmin=2)
            except ValueError:
                values = np.genfromtxt(tsv, delimiter="\t", missing_values="n/a", filling_values=np.nan, ndmin=2)
        except ValueError as e:
            raise ConvertError(tsv, "data", f"unreadable as numbers ({e})",
                               "write one tab-separated row of numbers per sample, no header (BIDS)") from None
        if values.shape[1] != len(columns):
            raise ConvertError(tsv, "Columns", f"{values.shape[1]} columns in the file, {len(columns)} named in "
                               f"{side.name}", "name every column of the TSV, in order, in Columns")
        times = float(start) + np.arange(len(values)) / float(rate)
        for j, name in enumerate(columns):
            if name in out or name in taken:
                raise ConvertError(side, "Columns", f"{name!r} is a /behavior name already (another physio file "
                                   f"or --behavior-channel)", "rename the column, or give the channel another as_name")
            unit = meta.get(name, {}).get("Units", "") if isinstance(meta.get(name), dict) else ""
            out[name] = (times, values[:, j], dict(unit=str(unit), source_file=tsv.name,
                                                    sampling_rate=float(rate), start_time=float(start)))
    return out


def read_tsv(path: str | os.PathLike) -> dict[str, list[str]]:
    """A BIDS TSV as ``{column: [cell, ...]}`` (strings, as written)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ConvertError(path, "header", "the file is empty", "write a header row (name, x, y, z, ...)")
    header = [h.strip() for h in rows[0]]
    table: dict[str, list[str]] = {h: [] for h in header}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConvertError(path, f"line {i}", f"has {len(row)} cells for {len(header)} columns",
                               "separate cells with exactly one tab and write n/a for missing values")
        for h, cell in zip(header, row):
            table[h].append(cell.strip())
    return table


def _floats(cells: list[str], path: Path, column: str, names: list[str] | None = None) -> np.ndarray:
    """Numbers of a TSV column (``n/a`` and the like -> NaN); anything else that is not a
    number (``12,5``: a decimal comma) is an error naming the row and the column."""
    out = np.full(len(cells), np.nan)
    for i, c in enumerate(cells):
        if c.lower() not in _NA:
            try:
                out[i] = float(c)
            except ValueError:
                row = f"row {i + 1}" + (f" ({names[i]!r})" if names else "")
                raise ConvertError(path, f"column {column}, {row}", f"{c!r} is not a number",
                                   "write numbers with a decimal point (12.5), or n/a where unknown") from None
    return out


def read_electrodes_tsv(path: str | os.PathLike) -> dict[str, Any]:
    """``{"names": [E], "xyz": (E, 3) float (file units, NaN for n/a), "regions": {col: (E,) str}}``.

    Every column outside the BIDS standard set becomes an atlas; its labels are cleaned
    (``n/a``, ``Unknown`` -> ``""``).
    """
    path = Path(path)
    t = read_tsv(path)
    if "name" not in t:
        raise ConvertError(path, "name", f"no 'name' column (columns: {list(t)})",
                           "the first column of a BIDS electrodes file is 'name'")
    n = len(t["name"])
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(t["name"]):  # the match to channels ignores case and whitespace
        seen.setdefault(_norm(name), []).append(i + 1)
    dupes = {t["name"][rows[0] - 1]: rows for rows in seen.values() if len(rows) > 1}
    if dupes:
        shown = "; ".join(f"{name!r} in rows {rows}" for name, rows in list(dupes.items())[:5])
        raise ConvertError(path, "name", f"{len(dupes)} electrode name(s) appear more than once "
                           f"(names match channels ignoring case and spaces): {shown}",
                           "keep one row per electrode")
    xyz = np.stack([_floats(t[a], path, a, t["name"]) if a in t else np.full(n, np.nan) for a in "xyz"], axis=1)
    regions = {c: clean_labels(v) for c, v in t.items() if c.lower() not in BIDS_ELECTRODE_COLUMNS}
    return {"names": t["name"], "xyz": xyz, "regions": regions}


def _norm(name: str) -> str:
    return "".join(str(name).split()).casefold()


#: What clinical systems add around a contact's name: a signal-kind label before it (Nihon Kohden
#: "POL A1", "EEG A1"; "SEEG", "ECOG") and the reference after it (Natus / NK "EEG LT1-Ref").
_CLINICAL_NAME = re.compile(r"^(?:(?:EEG|POL|SEEG|ECOG|IEEG)\s+)?(?P<core>.+?)(?:-(?:REF|AVG|AV|AVERAGE))?$",
                            re.IGNORECASE)


def _clinical_core(name: str) -> str:
    """``"POL A1"``, ``"EEG A1-Ref"``, ``"a 1"`` -> ``"a1"``: a name without the system's label
    prefix and reference suffix, ignoring case and whitespace."""
    m = _CLINICAL_NAME.match(str(name).strip())
    return _norm(m.group("core") if m else name)


def _match(channel_names: list[str], other: list[str]) -> np.ndarray:
    """Row of ``other`` for every channel (-1 if none): exact name first, then ignoring case
    and whitespace, then ignoring a clinical system's label prefix and reference suffix
    (``POL A1`` / ``EEG A1-Ref`` is the electrode ``A1``) where that leaves one name on each side."""
    exact = {nm: i for i, nm in enumerate(other)}
    loose = {}
    for i, nm in enumerate(other):
        loose.setdefault(_norm(nm), i)
    rows = np.asarray([exact.get(nm, loose.get(_norm(nm), -1)) for nm in channel_names], dtype=np.int64)
    if (rows < 0).any():
        def unique_cores(names):
            cores: dict[str, list[int]] = {}
            for i, nm in enumerate(names):
                cores.setdefault(_clinical_core(nm), []).append(i)
            return {c: v[0] for c, v in cores.items() if len(v) == 1}

        theirs, ours = unique_cores(other), unique_cores(channel_names)
        taken = set(rows[rows >= 0].tolist())
        for i in np.flatnonzero(rows < 0):
            core = _clinical_core(channel_names[i])
            j = theirs.get(core, -1)
            if j >= 0 and ours.get(core) == i and j not in taken:
                rows[i] = j
                taken.add(j)
    return rows


def _check_not_too_close(xyz_mm: np.ndarray, scale: float, path: Path) -> None:
    """Warn when every known electrode lies within 1 mm of the origin (the rule that infers metres
    when no unit is given): intracranial contacts are millimetres apart, so these are metres (or
    cm) read as millimetres, and every channel would share one position."""
    finite = np.abs(xyz_mm[np.isfinite(xyz_mm).all(axis=1)])
    if len(finite) < 2 or finite.max() >= 1.0:
        return
    biggest = float(finite.max())
    fits = [u for u in ("cm", "m") if mm_per_unit(u) > scale and 1.0 <= biggest / scale * mm_per_unit(u) <= 300.0]
    fix = (f"if they are in {fits[-1]}, convert again with coordinate_unit={fits[-1]!r} (CLI --coordinate-unit "
           f"{fits[-1]}, or fix iEEGCoordinateUnits in the coordsystem.json)") if fits else "check the coordinates"
    warnings.warn(f"{path}: x, y, z: all {len(finite)} known electrode positions lie within {biggest:g} mm of the "
                  f"origin (read with {scale:g} mm per unit): too close together for intracranial contacts, so "
                  f"every channel would sit at one place; {fix}", stacklevel=4)


def _bipolar_rows(names: list[str], electrodes: list[str], row: np.ndarray, neural: np.ndarray) -> np.ndarray:
    """``(C, 2)`` electrode rows of the two contacts of each bipolar channel (``"LA1-LA2"``, a
    clinical bipolar montage) that has no row of its own but whose two contacts have one;
    ``-1`` elsewhere."""
    out = np.full((len(names), 2), -1, dtype=np.int64)
    for i, name in enumerate(names):
        parts = name.split("-")
        if row[i] >= 0 or not neural[i] or len(parts) != 2 or not all(p.strip() for p in parts):
            continue
        ab = _match([p.strip() for p in parts], electrodes)
        if (ab >= 0).all() and ab[0] != ab[1]:
            out[i] = ab
    return out


def _warn_partial_positions(names: list[str], mm: np.ndarray, used: np.ndarray, path: Path) -> None:
    """Warn when electrodes have some of x, y, z but not all (``z`` ``n/a``: a 2D layout read off a
    photograph or a schematic): such a position is no place in the brain and is left unknown,
    which without a word left every channel of a grid unplaced."""
    partial = used & np.isfinite(mm).any(axis=1) & ~np.isfinite(mm).all(axis=1)
    if not partial.any():
        return
    axes = np.asarray(["x", "y", "z"])
    i = int(np.flatnonzero(partial)[0])
    missing = "/".join(axes[~np.isfinite(mm[i])])
    warnings.warn(f"{path}: x, y, z: {int(partial.sum())} of {int(used.sum())} electrodes have some coordinates but "
                  f"not all (e.g. {names[i]}: {missing} n/a; a 2D layout from a photograph or a schematic): their "
                  f"positions are left unknown, so BaRISTA's coords encoding cannot place them. Give x, y and z in "
                  f"mm (in the space of the sessions you train with), or an atlas column of labels (e.g. "
                  f"destrieux) for model.encode_scale parcel / lobe", stacklevel=4)


def _coords_to_mm(xyz: np.ndarray, side: dict, coordinate_unit: str | None) -> tuple[np.ndarray, str, float]:
    """Electrode coordinates in mm, the coordinate space's name and the mm per file unit used."""
    space = "unknown"
    unit = coordinate_unit
    if side.get("coordsystem") is not None:
        try:
            meta = json.loads(Path(side["coordsystem"]).read_text())
        except (OSError, ValueError) as e:
            raise ConvertError(side["coordsystem"], "json", f"unreadable ({e})", "fix or remove the file") from None
        space = str(meta.get("iEEGCoordinateSystem") or space)
        unit = unit or meta.get("iEEGCoordinateUnits")
    entities = dict(p.split("-", 1) for p in Path(side["electrodes"]).stem.split("_") if "-" in p)
    if space == "unknown" and "space" in entities:
        space = entities["space"]
    finite = np.abs(xyz[np.isfinite(xyz)])
    if unit is not None and str(unit).lower() not in _NA:
        scale = mm_per_unit(unit)
        if scale is None:  # a coordsystem.json's "pixels" (BIDS allows it for photos): no physical coordinates
            warnings.warn(f"{side['coordsystem']}: iEEGCoordinateUnits: coordinates are in {unit!r}, not a length; "
                          f"left unknown. Pass coordinate_unit= (CLI --coordinate-unit) if they are in m, cm, mm "
                          f"or um; otherwise BaRISTA can place these channels only by an atlas column of labels (e.g. "
                          f"destrieux, read off the photograph) in the electrodes table, with model.encode_scale "
                          f"parcel or lobe", stacklevel=4)
            return np.full_like(xyz, np.nan), space, 1.0
        return xyz * scale, space, scale
    if finite.size == 0:
        return xyz, space, 1.0
    scale, guess = (1e3, "metres") if finite.max() < 1.0 else (1.0, "millimetres")
    warnings.warn(f"{side['electrodes']}: no coordinate unit (no *_coordsystem.json with iEEGCoordinateUnits); "
                  f"largest |coordinate| is {finite.max():g}, so assumed {guess}. Pass coordinate_unit= "
                  f"(CLI --coordinate-unit) if that is wrong", stacklevel=4)
    return xyz * scale, space, scale


#: Channel types that say "a neural signal, or we do not know": EDF and some other formats
#: type every channel like this, so a name that says otherwise (EKG1, DC01) wins over them.
_GENERIC_NEURAL_TYPES = frozenset({"eeg", "seeg", "ecog", "dbs"})


def _types_from_names(types: np.ndarray, names: list[str], typed_by_file: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(types, retyped)``: channel types with non-neural NAMES typed as such where no
    channels.tsv row typed them, and the ``(C,) bool`` of the channels that changed.

    MNE types every EDF channel ``eeg``, so ECG leads, DC analogue inputs, trigger lines and a
    lab's grip-force or accelerometer input would pass as neural (and DC01, DC02 would even
    become Laplacian neighbours of each other on a shaft "DC"). The rule is
    :func:`neurofm.data.session.channel_types_from_names`.
    """
    said = channel_types_from_names(names)
    generic = np.asarray([str(t).lower() in _GENERIC_NEURAL_TYPES for t in types], dtype=bool)
    change = (said != "") & generic & ~typed_by_file
    if change.any():
        types = types.copy()
        types[change] = said[change]
    return types, change


def _by_type(names: list[str], types: np.ndarray, mask: np.ndarray) -> str:
    by_type: dict[str, list[str]] = {}
    for i in np.flatnonzero(mask):
        by_type.setdefault(str(types[i]), []).append(names[i])
    return "; ".join(f"{t}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''} ({len(v)})" for t, v in by_type.items())


def _warn_non_neural(names: list[str], types: np.ndarray, was: np.ndarray, retyped: np.ndarray,
                     typed_by_file: np.ndarray, in_path: Path, channels_tsv, triggers=None,
                     no_events: bool = False) -> None:
    """One warning naming every channel the model will leave out as non-neural (the segmenter
    drops :data:`~neurofm.data.session.NON_NEURAL_TYPES`), why (its name, the channels.tsv, the
    file), and for the continuous ones the ``--behavior-channel NAME`` that makes a decoding
    target of them: a behaviour sensor (force, movement: type misc...) may be one; a body signal
    (:data:`~neurofm.data.session.BODY_SIGNAL_TYPES`: an EKG) is no behaviour, so for those the
    warning says they need nothing and names the option only for decoding one anyway."""
    leave_out = non_neural(types)
    if not leave_out.any():
        return
    n, parts = len(names), []
    if retyped.any():
        parts.append(f"{int(retyped.sum())} of {n} channels typed {'/'.join(sorted({str(t) for t in was[retyped]}))} "
                     f"by the file are named like non-neural inputs, so typed by their names "
                     f"({_by_type(names, types, retyped)})")
    triggers = np.zeros(n, dtype=bool) if triggers is None else np.asarray(triggers, dtype=bool)
    for source, m in ((f"channels.tsv ({Path(channels_tsv).name})" if channels_tsv else "", leave_out & typed_by_file),
                      ("--trigger-channel", triggers),
                      ("the file", leave_out & ~typed_by_file & ~retyped & ~triggers)):
        if m.any():
            parts.append(f"{int(m.sum())}{' more' if parts else f' of {n} channels'} typed non-neural by {source} "
                         f"({_by_type(names, types, m)})")
    kind = [str(t).strip().lower() for t in types]
    body = leave_out & np.asarray([t in BODY_SIGNAL_TYPES for t in kind], dtype=bool)
    sensors = [names[i] for i in np.flatnonzero(leave_out & ~body) if kind[i] not in NOT_CONTINUOUS_TYPES]
    hint = ""
    if body.any():
        hint += (f". Body signals ({_by_type(names, types, body)}) are no behaviour: typed non-neural, they stay "
                 f"out of the model and need nothing; only to decode one as a target, convert again with "
                 f"--behavior-channel NAME")
    if sensors:
        shown = ", ".join(sensors[:6]) + (f" ... (+{len(sensors) - 6} more)" if len(sensors) > 6 else "")
        hint += (f". To decode a behaviour recorded as a channel (force, movement, ...), convert again "
                 f"with --behavior-channel NAME (behavior_channels=[NAME]); here: {shown}")
    inputs = [n for n in sensors if is_input_line(n)]
    if inputs and not no_events and not triggers.any():
        # a DC / analog input carries a sensor or TTL pulses: its name cannot say which
        shown = (("it" if len(inputs) == 1 else "these") if inputs == sensors  # the list just given
                 else ", ".join(inputs[:6]) + (" ..." if len(inputs) > 6 else ""))
        hint += (f"; {shown} {'is an input' if len(inputs) == 1 else 'are inputs'} (DC / analog / AUX) that may "
                 f"carry trigger pulses instead: then --trigger-channel NAME=label puts each pulse into "
                 f"/events/annotations beside the file's events")
    if no_events and (sensors or any(k in NOT_CONTINUOUS_TYPES for k in kind)):
        hint += (". The recording has no events (no annotations, no events.tsv): if one of these channels carries "
                 "trigger pulses (a DC input fed TTL, a TRIG line), convert again with --trigger-channel NAME=label "
                 "(trigger_channels=[...]), which puts each pulse into /events/annotations")
    k = int(leave_out.sum())
    fix = (f"edit their type in {channels_tsv} to change that" if channels_tsv else
           "give a BIDS channels.tsv (channels_tsv=, CLI --channels) to set the types yourself")
    warnings.warn(f"{in_path}: /channels/type: {'; '.join(parts)}; the model leaves {'it' if k == 1 else f'these {k}'} "
                  f"out (kept in /continuous, typed): {fix}{hint}", stacklevel=4)


#: BIDS channels.tsv types of neural signals (lower-cased); with NON_NEURAL_TYPES every BIDS type.
_NEURAL_TYPES = _GENERIC_NEURAL_TYPES | frozenset({"meg", "megmag", "meggradaxial", "meggradplanar"})


def _channel_table(raw, names: list[str], in_path: Path, side: dict, coordinate_unit,
                   moved: Sequence[str] = (), triggers: Sequence[str] = (), no_events: bool = False
                   ) -> dict[str, Any]:
    """/channels columns for the recording's channels (in its order); ``moved``: channels
    taken to /behavior (their electrodes rows are not reported as matching no channel);
    ``triggers``: channels read for trigger pulses, typed ``stim`` whatever else says;
    ``no_events``: the recording has no events, so the warning names ``--trigger-channel``."""
    n = len(names)
    types = np.asarray(raw.get_channel_types(), dtype=object)
    bad = np.isin(names, raw.info["bads"])
    typed_by_file = np.zeros(n, dtype=bool)  # a channels.tsv row gave the type
    if side.get("channels") is not None:
        t = read_tsv(side["channels"])
        if "name" not in t:
            raise ConvertError(side["channels"], "name", "no 'name' column", "write a BIDS channels.tsv header")
        row = _match(names, t["name"])
        has = row >= 0
        if not has.any():
            raise ConvertError(side["channels"], "name",
                               f"none of its names matches a channel of {in_path} (file: {t['name'][:4]}, "
                               f"recording: {names[:4]})", "pass the channels.tsv that belongs to this recording")
        if "type" in t:
            file_types = np.asarray([x.lower() for x in t["type"]], dtype=object)
            types = np.where(has, file_types[np.maximum(row, 0)], types)
            typed_by_file = has
            odd = sorted({str(x) for x in types[has]} - _NEURAL_TYPES - NON_NEURAL_TYPES - set(_NA))
            if odd:
                which = [names[i] for i in np.flatnonzero(has & np.isin(types, odd))]
                warnings.warn(f"{side['channels']}: type: {', '.join(map(repr, odd))} is not a BIDS channel type "
                              f"(channels {', '.join(which[:6])}{' ...' if len(which) > 6 else ''}); these are fed to "
                              f"the model as neural signal. Write ECOG, SEEG, DBS or EEG for neural contacts, MISC "
                              f"(or TRIG, EMG, ECG, ...) for the others", stacklevel=3)
        if "status" in t:
            status = np.asarray([x.lower() for x in t["status"]], dtype=object)
            bad |= has & (status[np.maximum(row, 0)] == "bad")
    was = types
    types, retyped = _types_from_names(types, names, typed_by_file)
    is_trigger = np.isin(names, list(triggers))
    if is_trigger.any():  # the user says what these carry: pulses, no brain signal and no behaviour
        types = np.where(is_trigger, "stim", types).astype(object)
        retyped = retyped & ~is_trigger
        typed_by_file = typed_by_file & ~is_trigger
    _warn_non_neural(names, types, was, retyped, typed_by_file, in_path, side.get("channels"), is_trigger,
                     no_events)
    # an EKG, trigger or reference lead has no electrode row by nature: not worth a word
    neural = ~non_neural(types)
    xyz = np.full((n, 3), np.nan)
    regions: dict[str, np.ndarray] = {}
    space = "unknown"
    if side.get("electrodes") is not None:
        epath = Path(side["electrodes"])
        el = read_electrodes_tsv(epath)
        row = _match(names, el["names"])
        has = row >= 0
        if not has.any():
            raise ConvertError(epath, "name",
                               f"none of its {len(el['names'])} electrode names matches one of the {n} channels of "
                               f"{in_path} (electrodes e.g. {el['names'][:4]}, channels e.g. {names[:4]})",
                               "rename the electrodes to the recording's channel names, or pass the electrodes file "
                               "that belongs to this recording (--electrodes)")
        pair = _bipolar_rows(names, el["names"], row, neural)  # (C, 2): "LA1-LA2" -> rows of LA1, LA2
        is_pair = pair[:, 0] >= 0
        used = np.zeros(len(el["names"]), dtype=bool)
        used[row[has]] = True
        used[pair[is_pair].ravel()] = True
        has_any = has | is_pair
        used[[r for r in _match(list(moved), el["names"]) if r >= 0]] = True  # rows of /behavior channels
        if (neural & ~has_any).any() or (~used).any():
            extra = [el["names"][i] for i in np.nonzero(~used)[0][:4]]
            missing = [names[i] for i in np.nonzero(neural & ~has_any)[0][:4]]
            warnings.warn(f"{epath}: {int((~used).sum())} of {len(used)} electrodes match no channel of {in_path}"
                          + (f" (e.g. {extra})" if extra else "")
                          + f"; {int((neural & ~has_any).sum())} of {int(neural.sum())} neural channels have no electrode row"
                          + (f" (e.g. {missing}; their coordinates and labels are unknown, and the model reads "
                             f"them as brain signal: if they are no intracranial contacts (scalp EEG, a ground or "
                             f"system channel), a channels.tsv (--channels) typing them MISC or marking them "
                             f"status bad leaves them out)" if missing else ""),
                          stacklevel=3)
        mm, space, scale = _coords_to_mm(el["xyz"], side, coordinate_unit)
        _warn_partial_positions(el["names"], mm, used, epath)
        xyz[has] = mm[row[has]]
        xyz[is_pair] = mm[pair[is_pair]].mean(axis=1)  # a bipolar derivation sits between its two contacts
        check_brain_coordinates(xyz[has_any], scale, epath, "x, y, z", stacklevel=4)
        _check_not_too_close(xyz[has_any], scale, epath)
        for atlas, labels in el["regions"].items():
            one = np.where(has, labels[np.maximum(row, 0)], "").astype(object)
            a, b = labels[np.maximum(pair[:, 0], 0)], labels[np.maximum(pair[:, 1], 0)]
            regions[atlas] = np.where(is_pair & (a == b), a, one).astype(object)
        if is_pair.any():
            shown = [names[i] for i in np.flatnonzero(is_pair)]
            warnings.warn(f"{epath}: {len(shown)} bipolar channel(s) ({', '.join(shown[:6])}"
                          f"{' ...' if len(shown) > 6 else ''}) have no row of their own: each is placed at the "
                          f"midpoint of its two contacts' rows, with their atlas label where both share it (else "
                          f"unknown). Give the channel a row of its own to place it otherwise", stacklevel=3)
    else:
        locs = np.asarray([ch["loc"][:3] for ch in raw.info["chs"]], dtype=np.float64)  # metres, MNE always
        known = np.isfinite(locs).all(axis=1) & (np.abs(locs).sum(axis=1) > 0)
        if known.any():
            xyz[known] = locs[known] * 1e3
            montage = raw.get_montage()
            space = str(montage.get_positions()["coord_frame"]) if montage is not None else "unknown"
            check_brain_coordinates(xyz[known], 1e3, in_path, "channel positions (montage)", stacklevel=4)
    return dict(names=names, x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], regions=regions, bad=bad,
                coordinate_space=space, types=types)


def _events(raw, side: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(onset s, duration s, label, source)``, on the same clock as /continuous."""
    if side.get("events") is not None:
        path = Path(side["events"])
        t = read_tsv(path)
        if "onset" not in t:
            raise ConvertError(path, "onset", "no 'onset' column", "write a BIDS events.tsv header (onset, duration, ...)")
        onset = _floats(t["onset"], path, "onset")
        duration = np.nan_to_num(_floats(t["duration"], path, "duration") if "duration" in t else np.zeros(len(onset)))
        label_col = next((c for c in ("trial_type", "value", "stim_type") if c in t), None)
        label = np.asarray(t[label_col] if label_col else ["event"] * len(onset), dtype=object)
        label = np.asarray(["" if x.lower() in _NA else x for x in label], dtype=object)
        keep = np.isfinite(onset)
        return onset[keep] + raw.first_time, duration[keep], label[keep], str(path)
    ann = raw.annotations
    # MNE's annotation onsets and raw.first_time share one clock (seconds since meas_date).
    return (np.asarray(ann.onset, dtype=np.float64), np.asarray(ann.duration, dtype=np.float64),
            np.asarray(ann.description, dtype=object), "annotations" if len(ann) else "")


def _discontinuities(raw, in_path: Path) -> np.ndarray:
    """Times (s, the /continuous clock) of BrainVision "New Segment" markers after the first
    sample: the recording paused and resumed there, so the samples either side are adjacent in
    the file but not in time. Each is written to /intervals/discontinuities (start == end) and
    the data modules cut their blocks there; a warning names the times."""
    ann = raw.annotations
    first, dt = float(raw.first_time), 1.0 / float(raw.info["sfreq"])
    t = np.asarray([o for o, d in zip(ann.onset, ann.description) if is_new_segment(d)], dtype=np.float64)
    t = np.unique(t[t > first + 0.5 * dt])
    if t.size:
        shown = ", ".join(f"{x:.3f}" for x in t[:10]) + (f" and {t.size - 10} more" if t.size > 10 else "")
        warnings.warn(f"{in_path}: {t.size} 'New Segment' marker(s) after the first sample, at t = {shown} s: the "
                      f"recording paused and resumed there, so the samples either side are not contiguous in time. "
                      f"Written to /intervals/{DISCONTINUITIES}; neurofm's windows and segments never span one "
                      f"(each piece is used on its own)", stacklevel=3)
    return t


class _RecordClock:
    """An EDF+D file's data records on two clocks: ``real`` (s from the header's start time, each
    record's time-keeping TAL) and the sample clock MNE reads them on (``k * record_s``, back to
    back), with the file's own annotations on the real clock."""

    def __init__(self, real: np.ndarray, record_s: float, tol: float, annotations):
        self.real, self.record_s, self.tol = real, record_s, tol
        self.annotations = annotations  # (onset s real clock, duration s, text) of the file's TALs

    def joins(self) -> np.ndarray:
        """Indices k of the records that start later than the previous one ends (a pause before k)."""
        return np.flatnonzero(np.diff(self.real) > self.record_s + self.tol) + 1

    def to_samples(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Real-clock times -> ``(sample-clock times, inside)``; ``inside`` False for a time in a pause
        (or before the first record)."""
        t = np.asarray(t, dtype=np.float64)
        k = np.searchsorted(self.real, t + self.tol, side="right") - 1
        kk = np.clip(k, 0, self.real.size - 1)
        into = t - self.real[kk]
        inside = (k >= 0) & (into < self.record_s + self.tol)
        return kk * self.record_s + np.clip(into, 0.0, None), inside


_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15(\d+(?:\.\d*)?))?\x14(.*?)\x00", re.S)


def _edf_plus_d(in_path: Path, raw) -> _RecordClock | None:
    """The record clock of an EDF+D / BDF+D (discontinuous) file, else None.

    MNE (1.13) reads an EDF+D file's records back to back and places its annotations on their
    real-clock onsets, so after a pause every annotation lands the pause's length late (and those
    past the end are dropped): events labelled with the wrong brain signal. The header's reserved
    field says ``EDF+D``; each record's first TAL in the ``EDF Annotations`` signal gives its start.
    """
    if in_path.suffix.lower() not in (".edf", ".bdf"):
        return None
    with open(in_path, "rb") as f:
        head = f.read(256)
        if head[192:197].upper() not in (b"EDF+D", b"BDF+D"):
            return None
        fix = "export the recording again as EDF+C, or as one file per continuous piece"
        try:
            n_rec, record_s, ns = int(head[236:244]), float(head[244:252]), int(head[252:256])
            labels = [f.read(16).decode("latin-1").strip() for _ in range(ns)]
            f.seek(256 + ns * 216)
            n_samp = [int(f.read(8)) for _ in range(ns)]
        except ValueError as e:
            raise ConvertError(in_path, "EDF header", f"EDF+D header unreadable ({e})", fix) from None
        if "EDF Annotations" not in labels or record_s <= 0:
            raise ConvertError(in_path, "EDF Annotations", "an EDF+D file without an 'EDF Annotations' signal "
                               "(or with 0 s records) does not say when each record starts", fix)
        width = 3 if in_path.suffix.lower() == ".bdf" else 2
        a = labels.index("EDF Annotations")
        rec_bytes, a0, a1 = sum(n_samp) * width, sum(n_samp[:a]) * width, sum(n_samp[: a + 1]) * width
    data = np.memmap(in_path, dtype=np.uint8, mode="r", offset=256 * (ns + 1), shape=(n_rec, rec_bytes))
    real = np.empty(n_rec)
    annotations = []
    for k in range(n_rec):
        tals = _TAL.findall(bytes(data[k, a0:a1]))
        if not tals:
            raise ConvertError(in_path, "EDF Annotations", f"data record {k} has no time-keeping annotation "
                               "(EDF+D: the start of every record)", fix)
        real[k] = float(tals[0][0])
        for onset, dur, texts in tals:
            for text in texts.split(b"\x14"):
                if text:
                    annotations.append((float(onset), float(dur or 0.0), text.decode("utf-8", "replace")))
    del data
    tol = 0.5 / float(raw.info["sfreq"])
    if abs(raw.n_times - n_rec * record_s * float(raw.info["sfreq"])) > 0.5:
        return None  # this MNE did not read the records back to back (it handles the pauses itself)
    if np.any(np.diff(real) < record_s - tol):
        raise ConvertError(in_path, "EDF Annotations", "data records overlap in time or go back (record starts "
                           f"{real[:5].tolist()} ... with {record_s:g} s records)", fix)
    return _RecordClock(real - real[0], record_s, tol, annotations)


#: Header fields MNE reads from a recording's patient identification (EDF/BDF, BrainVision, FIF).
PATIENT_FIELDS = ("his_id", "first_name", "middle_name", "last_name", "birthday")


def _warn_patient_fields(in_path: Path, info: dict) -> None:
    """A clinical export's header names the patient (a hospital code, a name, a birth date). None of
    it is copied into the session file, whose attributes travel into model cards and pretrained
    folders that labs publish; the subject is the BIDS ``sub-`` label or none. Say so, naming the
    fields (never their values). EDF+ writes ``X`` for a field it does not know (anonymised)."""
    found = [k for k in PATIENT_FIELDS if str(info.get(k) or "").strip() not in ("", "X")]
    if found:
        warnings.warn(f"{in_path}: the header identifies the patient ({', '.join(found)}); neurofm copies none of "
                      f"it into the session file (its attributes go into model cards and pretrained folders). Check "
                      f"that the file name, which the card lists as the data's source, does not identify the "
                      f"patient either, and anonymise the export before sharing it", stacklevel=3)


def _onto_sample_clock(clock: _RecordClock, raw, side, onset, duration, label, breaks, in_path: Path):
    """Mark an EDF+D file's pauses in /intervals/discontinuities and move its events from the
    real clock onto the sample clock /continuous is written on; events in a pause are dropped."""
    first = float(raw.first_time)
    joins = clock.joins()
    if side.get("events") is None:  # the file's own annotations: every one, on the real clock
        t0 = clock.real[0]
        real_onset = np.asarray([x[0] for x in clock.annotations], dtype=np.float64) - t0
        duration = np.asarray([x[1] for x in clock.annotations], dtype=np.float64)
        label = np.asarray([x[2] for x in clock.annotations], dtype=object)
    else:  # a BIDS events.tsv: onsets are time since the first sample, on the real clock too
        real_onset = np.asarray(onset, dtype=np.float64) - first
    t, inside = clock.to_samples(real_onset)
    if not joins.size:
        return onset, duration, label, breaks, np.zeros(0)
    at = joins * clock.record_s + first
    pauses = clock.real[joins] - clock.real[joins - 1] - clock.record_s
    lost = [f"{lab!r} at {o:.3f} s" for o, lab, ok in zip(real_onset, label, inside) if not ok]
    shown = ", ".join(f"{x:.3f} s ({p:g} s pause)" for x, p in zip(at[:10], pauses[:10]))
    warnings.warn(f"{in_path}: EDF+D (discontinuous): the recording pauses {joins.size} time(s), at t = {shown} "
                  f"on the sample clock; MNE reads the records back to back, and so does /continuous. Written to "
                  f"/intervals/{DISCONTINUITIES} (no window or segment spans one); the events are moved from "
                  f"the real clock onto the sample clock (onset minus the pauses before it)"
                  + (f"; {len(lost)} event(s) inside a pause dropped: {', '.join(lost[:5])}"
                     + (f" and {len(lost) - 5} more" if len(lost) > 5 else "") if lost else ""), stacklevel=3)
    return (t[inside] + first, np.asarray(duration)[inside], np.asarray(label, dtype=object)[inside],
            np.union1d(breaks, at), at)


def _write_continuous(w: SessionWriter, raw, names, table, in_path: Path, nan_policy: str) -> None:
    """Stream raw data into /continuous; voltage channels in microvolts, others as MNE gives them.

    Per channel, the extremes and how many samples sit on them are counted on the way: a channel
    holding one value throughout (disconnected, or zeroed by the system) is marked bad with a
    warning; neural channels that sit on their own extreme for over 1% of the samples, in runs of
    three or more equal samples (an amplifier or ADC rail: a continuous signal, even a pure sine,
    passes its extreme instead of staying there), are named.
    """
    from mne.io.constants import FIFF

    n_ch, n = len(names), raw.n_times
    to_uv = np.asarray([1e6 if ch["unit"] == FIFF.FIFF_UNIT_V else 1.0 for ch in raw.info["chs"]])  # (C,)
    rows = max(1, BLOCK_VALUES // max(n_ch, 1))
    lo, hi = np.full(n_ch, np.inf), np.full(n_ch, -np.inf)
    n_lo, n_hi = np.zeros(n_ch, np.int64), np.zeros(n_ch, np.int64)
    for i0 in progress(range(0, n, rows), f"converting {in_path.name}", unit="blocks"):
        block = raw.get_data(start=i0, stop=min(n, i0 + rows), verbose="error")  # (C, T) SI units
        block = (block.T * to_uv).astype(np.float32)  # (T, C)
        if i0 == 0:  # channels that are no voltage stay in their own unit, named beside the µV
            own = {names[i]: _file_unit(raw, i) for i in np.flatnonzero(to_uv == 1.0)}
            w.add_continuous(block, sampling_rate=float(raw.info["sfreq"]), unit="uV", t_start=float(raw.first_time),
                             nan_policy=nan_policy, channel_names=names, channel_units=own)
        else:
            w.append_continuous(block)
        with np.errstate(invalid="ignore"):
            for ext, cnt, pick, better in ((lo, n_lo, np.nanmin, np.less), (hi, n_hi, np.nanmax, np.greater)):
                b = pick(np.where(np.isfinite(block), block, np.nan), axis=0) if block.size else ext
                on = block == b  # (T, C); a rail holds: count the samples with the two before on it too
                at = (on[2:] & on[1:-1] & on[:-2]).sum(axis=0)
                new, same = better(b, ext), b == ext
                cnt[new], cnt[same] = at[new], cnt[same] + at[same]
                ext[new] = b[new]
    neural = ~non_neural(table["types"])
    flat = neural & (lo == hi)
    bad = np.asarray(table["bad"], dtype=bool) | flat
    if flat.any():
        which = [names[i] for i in np.flatnonzero(flat)]
        warnings.warn(f"{in_path}: /channels/bad: {flat.sum()} channel(s) hold one value throughout "
                      f"({', '.join(which[:10])}{' ...' if len(which) > 10 else ''} = {lo[flat][0]:g} uV): "
                      f"disconnected or zeroed, so marked bad (the model and the baselines leave them out)",
                      stacklevel=3)
    rail = neural & ~flat & (np.maximum(n_lo, n_hi) > 0.01 * n)
    if rail.any():
        shown = ", ".join(f"{names[i]} {100 * (n_lo[i] + n_hi[i]) / n:.0f}% at {lo[i]:g} or {hi[i]:g}"
                          for i in np.flatnonzero(rail)[:10])
        warnings.warn(f"{in_path}: {rail.sum()} channel(s) sit on their own extreme value, 3 or more samples in a row, for over 1% of the samples "
                      f"({shown}): clipped at the amplifier's or converter's range, whose segments carry no signal "
                      f"there. Kept; to leave one out, give a channels.tsv with status 'bad' for it (CLI --channels)",
                      stacklevel=3)
    w.add_channels(names, x=table["x"], y=table["y"], z=table["z"], regions=table["regions"],
                   bad=bad, coordinate_space=table["coordinate_space"], types=table["types"])


# -- channels that record behaviour --------------------------------------------------------------

#: Voltage units MNE scales to volts on reading, and their size in volts.
_VOLTS = {"v": 1.0, "mv": 1e-3, "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "nv": 1e-9}


def select_behavior_channels(names: Sequence[str], specs, source) -> list[tuple[int, str]]:
    """``(channel index, as_name)`` for each behaviour channel spec; a name matching no channel
    (exactly, else ignoring case and spaces) is a :class:`ConvertError` listing the channels."""
    pairs = parse_renames(specs, "--behavior-channel", "channels")  # "FORCE", "EMG_R=emg_right"
    return _channels_named(names, pairs, source, "--behavior-channel", "NAME or NAME=as_name")


def _channels_named(names: Sequence[str], pairs: list[tuple[str, str]], source, option: str,
                    form: str) -> list[tuple[int, str]]:
    """``(channel index, second)`` for each ``(name, second)`` of ``option``: a name matches a
    channel exactly, else ignoring case, spaces and a clinical system's prefix; one matching no
    channel, or a channel named twice, is a :class:`ConvertError` listing the channels."""
    rows = _match([c for c, _ in pairs], list(names))
    missing = [c for (c, _), r in zip(pairs, rows) if r < 0]
    if missing:
        shown = ", ".join(map(str, names[:60])) + (f" ... (+{len(names) - 60} more)" if len(names) > 60 else "")
        raise ConvertError(source, option, f"no channel named {', '.join(map(repr, missing))}; "
                           f"the {len(names)} channels are: {shown}", f"give one of these names ({form})")
    if len(set(rows.tolist())) < len(rows):
        raise ConvertError(source, option, "names the same channel twice", "give each channel once")
    return [(int(r), second) for r, (_, second) in zip(rows, pairs)]


def select_trigger_channels(names: Sequence[str], specs, source) -> list[tuple[int, str]]:
    """``(channel index, label)`` for each ``"NAME[=label]"`` of ``--trigger-channel`` (label
    default: NAME as given); channels are found as :func:`select_behavior_channels` finds them
    (``DC01`` is ``POL DC01``). A name matching no channel, or one given twice, is a
    :class:`ConvertError`."""
    pairs = [tuple(x.split("=", 1)) if "=" in x else (x, x) for x in (str(v).strip() for v in specs or ())]
    for name, lab in pairs:
        if not name.strip() or not lab.strip():
            raise ConvertError(source, "--trigger-channel", f"{name}={lab}: empty name or label",
                               "give NAME or NAME=label")
    pairs = [(n.strip(), lab.strip()) for n, lab in pairs]
    return _channels_named(names, pairs, source, "--trigger-channel", "NAME or NAME=label")


def trigger_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(rise, fall, code)`` of a digital stim channel that carries event codes (MNE's FIF
    ``STI 014``, a stim line whose value is the condition: 1, 2, 4...), else None. Such a channel
    holds whole numbers, sits exactly on its baseline (its median) for most samples, and steps to
    two or more levels; read with :func:`trigger_pulses`' half-way threshold, every code under
    half the largest would be lost. An event starts wherever the value changes to a level other
    than the baseline (a code that follows another without returning to the baseline is a new
    event, as ``mne.find_events`` reads it); one already on at the first sample has no onset
    and is left out. A channel with one level, or an analogue line (noise), gives None."""
    x = np.asarray(values, dtype=np.float64)
    if not x.size or not np.isfinite(x).all():
        return None
    r = np.round(x)
    if np.max(np.abs(x - r)) > 1e-3:
        return None
    base = float(np.median(r))
    off = r != base
    if off.mean() > 0.5 or np.unique(r[off]).size < 2:
        return None
    change = np.flatnonzero(np.diff(r) != 0) + 1
    ends = np.append(change, len(r))
    keep = off[change]
    return change[keep], ends[1:][keep], r[change[keep]].astype(np.int64)


def trigger_pulses(values: np.ndarray, rate: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rise, fall)`` sample indices of the pulses of a trigger channel: the baseline is its
    median, a pulse is where it lies past half-way from there to its extreme (upwards or, for
    an active-low line, downwards); two pulses closer than 2 ms are one (a noisy edge). A pulse
    already on at the first sample has no onset and is left out. A channel whose extreme is
    within 10 robust standard deviations of its baseline has no pulses: a ``ValueError`` naming
    ``what``."""
    x = np.asarray(values, dtype=np.float64)
    base = float(np.median(x))
    up, down = float(x.max()) - base, base - float(x.min())
    sign = 1.0 if up >= down else -1.0
    height = max(up, down)
    noise = 1.4826 * float(np.median(np.abs(x - base)))
    if not np.isfinite(height) or height <= 10 * noise or height == 0:
        raise ValueError(f"{what}: no trigger pulses: its largest excursion from the baseline ({height:.4g}) is "
                         f"within 10 robust standard deviations of it ({10 * noise:.4g})")
    on = sign * (x - base) > height / 2
    d = np.diff(on.astype(np.int8))
    rise, fall = np.flatnonzero(d == 1) + 1, np.flatnonzero(d == -1) + 1
    if on[0]:
        fall = fall[1:]
    if on[-1]:
        fall = np.append(fall, len(x))
    gap = max(1, int(round(0.002 * rate)))
    if rise.size > 1:  # join pulses split by a noisy edge
        new = np.concatenate([[True], rise[1:] - fall[:-1] > gap])
        rise, fall = rise[new], fall[np.append(new[1:], True)]
    return rise, fall


def _channels_tsv_units(channels_tsv, names: Sequence[str]) -> dict[str, str]:
    """``{channel: unit}`` of a BIDS channels.tsv ``units`` column for ``names`` (matched as the
    channels are; ``n/a`` and missing rows left out)."""
    if channels_tsv is None or not names:
        return {}
    t = read_tsv(channels_tsv)
    if "name" not in t or "units" not in t:
        return {}
    rows = _match(list(names), t["name"])
    cells = [t["units"][r].strip() if r >= 0 else "" for r in rows]
    return {n: u for n, u in zip(names, cells) if u.lower() not in _NA}


def _channel_in_own_unit(raw, i: int, tsv_unit: str = "", channels_tsv=None) -> tuple[np.ndarray, str]:
    """Channel ``i`` as ``(values (T,) float32, unit)``: in the unit the file records it in
    (MNE reads µV/mV channels as volts: they are scaled back), unit ``""`` when the file has none.

    ``tsv_unit``: the channel's BIDS channels.tsv ``units`` (a grip force in ``mN``), which names
    the unit where the file has none or a voltage placeholder (BrainVision writers label every
    channel µV); where both are voltages the values are rescaled to it."""
    values, unit = _file_unit_values(raw, i)
    return _in_tsv_unit(values, unit, tsv_unit, raw.ch_names[i], channels_tsv, "the recording")


def _in_tsv_unit(values: np.ndarray, unit: str, tsv_unit: str, name: str, channels_tsv,
                 stored_by: str | None) -> tuple[np.ndarray, str]:
    """``(values, unit)`` named by a channels.tsv unit (rescaled when both are voltages). A
    non-voltage channels.tsv unit where ``stored_by`` states a voltage is warned about (no
    ``stored_by``: the stored unit is a blanket label, /continuous's, and says nothing)."""
    if not tsv_unit or tsv_unit == unit:
        return values, unit
    file_v, tsv_v = _VOLTS.get(unit.lower()), _VOLTS.get(tsv_unit.lower())
    if file_v is not None and tsv_v is not None:
        return (values * (file_v / tsv_v)).astype(np.float32), tsv_unit
    if unit and stored_by:  # e.g. the recording says µV, the channels.tsv mN: the numbers as stored
        warnings.warn(f"{channels_tsv}: units: {name} is in {tsv_unit!r} by the channels.tsv but {unit!r} by "
                      f"{stored_by}; /behavior keeps the values as stored, with unit {tsv_unit!r} (fix the "
                      f"channels.tsv if that is wrong)", stacklevel=4)
    return values, tsv_unit


def _file_unit(raw, i: int) -> str:
    """The unit of channel ``i`` as :func:`_file_unit_values` gives its values (``""`` unknown)."""
    from mne.io.constants import FIFF

    orig = str((getattr(raw, "_orig_units", None) or {}).get(raw.ch_names[i], "") or "")
    if raw.info["chs"][i]["unit"] == FIFF.FIFF_UNIT_V and not orig:
        orig = "V"
    return "" if orig.strip().lower() in _NA else orig.strip()


def _file_unit_values(raw, i: int) -> tuple[np.ndarray, str]:
    orig = str((getattr(raw, "_orig_units", None) or {}).get(raw.ch_names[i], "") or "")
    data = raw.get_data(picks=[i], verbose="error")[0]  # (T,)
    from mne.io.constants import FIFF

    if raw.info["chs"][i]["unit"] == FIFF.FIFF_UNIT_V and orig.strip().lower() in _VOLTS:
        data = data / _VOLTS[orig.strip().lower()]
    elif raw.info["chs"][i]["unit"] == FIFF.FIFF_UNIT_V and not orig:
        orig = "V"  # FIF and other files without original units: MNE's SI volts
    unit = "" if orig.strip().lower() in _NA else orig.strip()
    return data.astype(np.float32), unit


def move_channels_to_behavior(in_path: str | os.PathLike, out_path: str | os.PathLike,
                              behavior_channels: Sequence[str] | Mapping[str, str], *, overwrite: bool = True,
                              rectify: bool = False) -> Path:
    """Move channels of an existing session file's /continuous to /behavior; returns ``out_path``.

    The same as ``convert_ieeg(..., behavior_channels=...)`` for a file converted already
    (any session with /continuous: iEEG, NWB LFP): each channel becomes ``/behavior/<as_name>``
    (timestamps from the sampling clock, values in /continuous's unit, attr ``unit``; the units
    of the BIDS channels.tsv the session was converted with, attr ``channels_file``, where it
    still exists and gives one) and is
    removed from /continuous and /channels. Everything else is copied as it is. Written to a
    temporary file and renamed: ``in_path`` is never modified (``out_path`` may equal it).
    ``rectify``: store them as ``|x|`` (``convert_ieeg``'s ``rectify_behavior``).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.exists() and not overwrite and out_path.resolve() != in_path.resolve():
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (CLI: leave out --no-overwrite) to replace it")
    with Session(in_path) as s:
        if "continuous" not in s.h5:
            raise ConvertError(in_path, "/continuous", "this session has no continuous data to take channels from",
                               "--behavior-channel moves channels of /continuous")
        names = s.channels().names if "channels" in s.h5 else [f"#{i}" for i in range(s.n_channels)]
        moves = select_behavior_channels(names, behavior_channels, in_path)
        taken = [i for i, _ in moves]
        for _, as_name in moves:
            if as_name in s.behavior_names:
                raise ConvertError(in_path, f"/behavior/{as_name}", "exists already",
                                   "give the channel another name with NAME=as_name")
        rate, t0, unit, n = s.sampling_rate, s.continuous_t_start, str(s.h5["continuous"].attrs.get("unit", "")), \
            s.n_samples
        # channels the converter kept in their own unit (no voltage: an audio envelope read as µV before)
        own_units = json.loads(str(s.h5["continuous"].attrs.get("channel_units", "") or "{}"))
        # the BIDS channels.tsv the session was converted with names the moved channels' units
        tsv = str(s.attrs.get("channels_file", "") or "")
        tsv_units = _channels_tsv_units(tsv, [names[i] for i in taken]) if tsv and Path(tsv).is_file() else {}
    keep = np.setdiff1d(np.arange(len(names)), taken)
    if not keep.size:
        raise ConvertError(in_path, "--behavior-channel", f"would move all {len(names)} channels to /behavior",
                           "leave at least one channel in /continuous")
    in_place = out_path.resolve() == in_path.resolve()
    with atomic_output(out_path, overwrite=overwrite or in_place) as tmp:  # temp beside it, umask, no race
        # a new file, not an edited copy: HDF5 does not give back the space of deleted datasets
        with h5py.File(in_path, "r") as src, h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            for key in src:
                if key not in ("continuous", "channels"):
                    src.copy(src[key], dst, name=key)
            old = src["continuous/data"]
            cont = dst.create_group("continuous")
            cont.attrs.update(dict(src["continuous"].attrs))
            new = cont.create_dataset("data", shape=(n, len(keep)), maxshape=(None, len(keep)), dtype=np.float32,
                                      chunks=(old.chunks[0], len(keep)) if old.chunks else None,
                                      compression=old.compression, compression_opts=old.compression_opts,
                                      shuffle=old.shuffle)
            moved = np.empty((n, len(taken)), dtype=np.float32)
            rows = max(1, BLOCK_VALUES // max(len(names), 1))
            for i0 in range(0, n, rows):
                block = old[i0:i0 + rows]  # (rows, C)
                new[i0:i0 + rows] = block[:, keep]
                moved[i0:i0 + rows] = block[:, taken]
            for key in [k for k in src["continuous"] if k != "data"]:
                src.copy(src[f"continuous/{key}"], cont, name=key)
            if "channels" in src:
                g_in, g = src["channels"], dst.create_group("channels")
                g.attrs.update(dict(g_in.attrs))

                def subset(name, obj):
                    if isinstance(obj, h5py.Group):
                        g.require_group(name).attrs.update(dict(obj.attrs))
                    elif obj.shape and obj.shape[0] == len(names):  # one row per channel
                        g.create_dataset(name, data=obj[()][keep], dtype=obj.dtype)
                        g[name].attrs.update(dict(obj.attrs))
                    else:
                        g_in.copy(obj, g, name=name)

                g_in.visititems(subset)
            times = t0 + np.arange(n) / rate
            for j, (i, as_name) in enumerate(moves):
                # a voltage unit there is /continuous's µV already (the converter scaled volt channels);
                # another one (mN) names a channel /continuous's blanket unit says nothing true of
                named = tsv_units.get(names[i], "")
                if names[i] in own_units:  # not scaled to µV: its own unit, which a channels.tsv may name
                    values, b_unit = _in_tsv_unit(moved[:, j], own_units[names[i]], named, names[i], tsv,
                                                  "the recording")
                else:
                    values, b_unit = _in_tsv_unit(moved[:, j], unit, "" if named.lower() in _VOLTS else named,
                                                  names[i], tsv, None)
                b = dst.require_group("behavior").create_group(as_name)
                b.create_dataset("timestamps", data=times, compression="gzip", compression_opts=4, shuffle=True)
                b.create_dataset("values", data=np.abs(values) if rectify else values, compression="gzip",
                                 compression_opts=4, shuffle=True)
                b.attrs.update(unit=b_unit, source_channel=names[i], rectified=bool(rectify))
        with Session(tmp):  # validates the new file before it replaces anything
            pass
    return out_path
