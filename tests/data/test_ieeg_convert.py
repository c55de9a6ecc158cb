"""iEEG -> session conversion (neurofm.data.ieeg): EDF / BrainVision / FIF written in the
test, a BIDS-iEEG dataset in tmp_path, and the real sample_seeg recording."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

mne = pytest.importorskip("mne")

import neurofm.data.ieeg as ieeg  # noqa: E402
from neurofm.data.ieeg import convert_ieeg, find_sidecars  # noqa: E402
from neurofm.data.session import ConvertError, Session  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SEEG = SHARED / "ieeg" / "sample_seeg.edf"
SEEG_ELECTRODES = SHARED / "ieeg" / "sample_seeg_electrodes.tsv"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real recordings not available)")

NAMES = ["A1", "A2", "B1", "B2"]
SR = 200.0


def signal(n_t=800, n_ch=4) -> np.ndarray:
    """(T, C) microvolts, distinct per channel."""
    t = np.arange(n_t) / SR
    return (np.sin(2 * np.pi * 3 * t)[:, None] * 50 + np.arange(n_ch) * 10).astype(np.float32)


def write_brainvision(base: Path, data_uv: np.ndarray, names, sfreq=SR, markers=()) -> Path:
    """A BrainVision recording (.vhdr/.vmrk/.eeg, float32 multiplexed), written by hand."""
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".eeg").write_bytes(np.asarray(data_uv, dtype="<f4").tobytes())
    channels = "\n".join(f"Ch{i + 1}={n},,1,µV" for i, n in enumerate(names))
    base.with_suffix(".vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={base.name}.eeg\nMarkerFile={base.name}.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
        f"NumberOfChannels={len(names)}\nSamplingInterval={1e6 / sfreq:g}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n"
        f"[Channel Infos]\n{channels}\n", encoding="utf-8")
    marks = "".join(f"Mk{i + 2}=Comment,{desc},{int(round(onset * sfreq)) + 1},1,0\n" for i, (onset, desc) in enumerate(markers))
    base.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={base.name}.eeg\n\n[Marker Infos]\nMk1=New Segment,,1,1,0,20200101000000000000\n{marks}", encoding="utf-8")
    return base.with_suffix(".vhdr")


def write_edf(path: Path, data_uv: np.ndarray, names, sfreq=SR, record_s=1.0, patient="X X X X") -> Path:
    """A plain EDF (16-bit, one-second records), written by hand: (T, C) microvolts; ``patient``:
    the header's patient identification (EDF+: code, sex, birth date, name; X = unknown)."""
    n_t, n_ch = data_uv.shape
    per_record = int(sfreq * record_s)
    n_rec = n_t // per_record
    pmin, pmax, dmin, dmax = -3276.8, 3276.7, -32768, 32767
    digital = np.round((data_uv[: n_rec * per_record] - pmin) / (pmax - pmin) * (dmax - dmin) + dmin).astype("<i2")

    def field(values, width):
        return "".join(f"{v:<{width}}"[:width] for v in values)

    header = (f"{'0':<8}{patient:<80}{'Startdate 01-JAN-2020 X X X':<80}{'01.01.20':<8}{'00.00.00':<8}"
              f"{256 * (n_ch + 1):<8}{'':<44}{n_rec:<8}{record_s:<8g}{n_ch:<4}")
    header += (field(names, 16) + field(["electrode"] * n_ch, 80) + field(["uV"] * n_ch, 8)
               + field([pmin] * n_ch, 8) + field([pmax] * n_ch, 8) + field([dmin] * n_ch, 8) + field([dmax] * n_ch, 8)
               + field([""] * n_ch, 80) + field([per_record] * n_ch, 8) + field([""] * n_ch, 32))
    records = digital.reshape(n_rec, per_record, n_ch).transpose(0, 2, 1)  # (records, C, samples)
    path.write_bytes(header.encode("ascii") + records.tobytes())
    return path


def write_tsv(path: Path, header, rows) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


ELECTRODE_HEADER = ["name", "x", "y", "z", "size", "hemisphere", "destrieux", "desikan-killiany"]


def electrode_rows(scale=1.0):
    return [["A1", 10 * scale, 20 * scale, 30 * scale, "n/a", "L", "ctx_lh_G_front_sup", "ctx-lh-superiorfrontal"],
            ["A2", 11 * scale, 21 * scale, 31 * scale, "n/a", "L", "Unknown", "n/a"],
            ["B1", -5 * scale, 2 * scale, 3 * scale, "n/a", "R", "Left-Hippocampus", "Left-Hippocampus"],
            ["B2", "n/a", "n/a", "n/a", "n/a", "R", "n/a", "Unknown"]]


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory):
    """sub-01/ses-01/ieeg via mne-bids' write_raw_bids (BrainVision copied as is), then the
    electrodes/coordsystem sidecars (metres, ACPC, two atlas columns) and a bad channel by hand."""
    mne_bids = pytest.importorskip("mne_bids")
    tmp = tmp_path_factory.mktemp("bids")
    vhdr = write_brainvision(tmp / "src" / "rec", signal(), NAMES, markers=[(0.5, "cue"), (2.0, "go")])
    raw = mne.io.read_raw_brainvision(vhdr, verbose="error")
    raw.set_channel_types({n: "seeg" for n in NAMES}, verbose="error")
    raw.info["line_freq"] = 50.0  # a European lab: the sidecar's PowerLineFrequency
    root = tmp / "ds"
    bp = mne_bids.BIDSPath(subject="01", session="01", task="rest", run="01", datatype="ieeg", root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne_bids.write_raw_bids(raw, bp, overwrite=True, verbose="error")
    folder = root / "sub-01" / "ses-01" / "ieeg"
    write_tsv(folder / "sub-01_ses-01_space-ACPC_electrodes.tsv", ELECTRODE_HEADER, electrode_rows(scale=1e-3))
    (folder / "sub-01_ses-01_space-ACPC_coordsystem.json").write_text(
        json.dumps({"iEEGCoordinateSystem": "ACPC", "iEEGCoordinateUnits": "m"}))
    channels = folder / "sub-01_ses-01_task-rest_run-01_channels.tsv"
    lines = channels.read_text().splitlines()
    col = lines[0].split("\t").index("status")
    for i, line in enumerate(lines):
        cells = line.split("\t")
        if cells[0] == "B1":
            cells[col] = "bad"
            lines[i] = "\t".join(cells)
    channels.write_text("\n".join(lines) + "\n")
    return folder / "sub-01_ses-01_task-rest_run-01_ieeg.vhdr"


def check_bids_session(out: Path):
    with Session(out) as s:
        assert s.session_id == "sub-01_ses-01_task-rest_run-01" and s.subject_id == "01"
        assert s.sampling_rate == SR and s.n_samples == 800
        np.testing.assert_allclose(s.continuous(), signal(), atol=1e-3)
        ch = s.channels()
        assert ch.names == NAMES and ch.coordinate_space == "ACPC"
        np.testing.assert_allclose(ch.xyz[:3], [[10, 20, 30], [11, 21, 31], [-5, 2, 3]])  # metres -> mm
        assert np.isnan(ch.xyz[3]).all()
        assert ch.regions["destrieux"].tolist() == ["ctx_lh_G_front_sup", "", "Left-Hippocampus", ""]
        assert ch.regions["desikan-killiany"].tolist() == ["ctx-lh-superiorfrontal", "", "Left-Hippocampus", ""]
        assert "hemisphere" not in ch.regions and "size" not in ch.regions  # BIDS standard columns
        assert ch.bad.tolist() == [False, False, True, False]  # channels.tsv status == bad
        assert ch.types.tolist() == ["seeg"] * 4
        ev = s.events("annotations")
        assert ev["label"].tolist() == ["cue", "go"] and np.allclose(ev["onset"], [0.5, 2.0])
        assert s.attrs["events_source"].endswith("_events.tsv")
        assert s.attrs["mains_frequency"] == 50.0  # BaRISTA runs notch here (data.line_noise unset)
        assert s.attrs["mains_frequency_source"] == "PowerLineFrequency in sub-01_ses-01_task-rest_run-01_ieeg.json"


def test_bids_sidecars_found_with_mne_bids(bids_root, tmp_path):
    side = find_sidecars(bids_root)
    assert side["electrodes"].name == "sub-01_ses-01_space-ACPC_electrodes.tsv"
    assert side["coordsystem"].name == "sub-01_ses-01_space-ACPC_coordsystem.json"
    assert side["channels"].name == "sub-01_ses-01_task-rest_run-01_channels.tsv"
    out = tmp_path / "s.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything matched, unit known: no warning at all
        convert_ieeg(bids_root, out)
    check_bids_session(out)


def test_bids_path_object_and_no_mne_bids(bids_root, tmp_path, monkeypatch):
    mne_bids = pytest.importorskip("mne_bids")
    bp = mne_bids.get_bids_path_from_fname(bids_root)
    convert_ieeg(bp, tmp_path / "a.h5")
    check_bids_session(tmp_path / "a.h5")
    # without mne-bids, the sidecars are found by BIDS naming alone: the same files
    with_mne_bids = find_sidecars(bids_root)
    monkeypatch.setattr(ieeg, "_mne_bids", lambda: None)
    side = find_sidecars(bids_root)
    assert {k: Path(v).resolve() for k, v in side.items()} == {k: Path(v).resolve() for k, v in with_mne_bids.items()}
    assert side["electrodes"].name == "sub-01_ses-01_space-ACPC_electrodes.tsv"
    assert side["channels"].name == "sub-01_ses-01_task-rest_run-01_channels.tsv"
    assert side["events"].name == "sub-01_ses-01_task-rest_run-01_events.tsv"
    convert_ieeg(bids_root, tmp_path / "b.h5")
    check_bids_session(tmp_path / "b.h5")


def test_electrodes_matching_no_channel(tmp_path):
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    tsv = write_tsv(tmp_path / "other_electrodes.tsv", ["name", "x", "y", "z"], [["LA1", 1, 2, 3], ["LA2", 1, 2, 4]])
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_ieeg(vhdr, out, electrodes=tsv)
    msg = str(err.value)
    assert msg.startswith(f"{tsv}: name:") and str(vhdr) in msg
    assert "'LA1'" in msg and "'A1'" in msg and "--electrodes" in msg
    assert_nothing_written(out)


def test_a_non_neural_channel_without_an_electrode_row_is_not_reported(tmp_path):
    """A new lab's BIDS subject with EKG, TRIG and REF leads among its data channels: convert
    said "3 of N channels have no electrode row (their coordinates and labels are unknown)",
    though such leads have no electrode by nature and stay out of the model."""
    names = NAMES + ["EKG1", "TRIG"]
    vhdr = write_brainvision(tmp_path / "rec", signal(n_ch=len(names)), names)
    write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        convert_ieeg(vhdr, tmp_path / "s.h5")
    assert not [w for w in record if "electrode row" in str(w.message)], [str(w.message) for w in record]
    with Session(tmp_path / "s.h5") as s:
        assert s.channels().types.tolist()[-2:] == ["ecg", "stim"]


def test_partial_match_keeps_and_counts(tmp_path):
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    rows = electrode_rows()[:2] + [["Z9", 1, 1, 1, "n/a", "L", "x", "y"], ["Z10", 1, 1, 1, "n/a", "L", "x", "y"]]
    tsv = write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, rows)
    out = tmp_path / "s.h5"
    with pytest.warns(UserWarning) as record:
        convert_ieeg(vhdr, out)  # found beside the recording by name
    text = " ".join(str(w.message) for w in record)
    assert f"{tsv}: 2 of 4 electrodes match no channel" in text and "['Z9', 'Z10']" in text
    assert "2 of 4 neural channels have no electrode row" in text and "['B1', 'B2']" in text
    assert "reads them as brain signal" in text and "typing them MISC or marking them status bad" in text
    assert "assumed millimetres" in text
    with Session(out) as s:
        ch = s.channels()
        np.testing.assert_allclose(ch.xyz[:2], [[10, 20, 30], [11, 21, 31]])
        assert np.isnan(ch.xyz[2:]).all() and ch.regions["destrieux"].tolist() == ["ctx_lh_G_front_sup", "", "", ""]
        assert s.attrs["electrodes_file"] == str(tsv)


def test_metre_coordinates_without_coordsystem_are_inferred(tmp_path):
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    tsv = write_tsv(tmp_path / "coords.tsv", ELECTRODE_HEADER, electrode_rows(scale=1e-3))
    with pytest.warns(UserWarning, match=r"largest \|coordinate\| is 0.031, so assumed metres"):
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tsv)
    with Session(tmp_path / "s.h5") as s:
        np.testing.assert_allclose(s.channels().xyz[0], [10, 20, 30])
    convert_ieeg(vhdr, tmp_path / "t.h5", electrodes=tsv, coordinate_unit="cm")  # said explicitly: no guess
    with Session(tmp_path / "t.h5") as s:
        np.testing.assert_allclose(s.channels().xyz[0], [0.1, 0.2, 0.3])


def test_unknown_coordinate_unit_is_an_error_naming_the_file(tmp_path):
    """It used to warn and write unknown (NaN) positions for every channel."""
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    tsv = write_tsv(tmp_path / "coords.tsv", ELECTRODE_HEADER, electrode_rows())
    out = tmp_path / "s.h5"
    for unit in ("furlong", "pixels"):
        with pytest.raises(ConvertError) as err:
            convert_ieeg(vhdr, out, electrodes=tsv, coordinate_unit=unit)
        msg = str(err.value)
        assert msg.startswith(f"{vhdr}: coordinate_unit: '{unit}' is not a length unit") and "m, cm, mm, um" in msg
        assert_nothing_written(out)


def test_coordinates_too_far_for_a_brain_warn_with_the_unit_that_fits(tmp_path):
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    tsv = write_tsv(tmp_path / "coords.tsv", ELECTRODE_HEADER, electrode_rows(scale=1e3))  # microns
    with pytest.warns(UserWarning) as record:  # magnitude >= 1: guessed millimetres, 31000 mm is no brain
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tsv)
    text = " ".join(str(w.message) for w in record)
    assert f"{tsv}: x, y, z: 3 of 3 known electrode positions lie more than 300 mm from the origin" in text
    assert "largest |coordinate| 31000 mm, read as mm" in text and "coordinate_unit='um'" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told the unit: plausible, no warning at all
        convert_ieeg(vhdr, tmp_path / "t.h5", electrodes=tsv, coordinate_unit="um")
    with Session(tmp_path / "t.h5") as s:
        np.testing.assert_allclose(s.channels().xyz[0], [10, 20, 30])


def test_edf_non_neural_channels_typed_by_name_and_left_out_by_the_segmenter(tmp_path):
    """EDF has no channel types (MNE says "eeg" for all): EKG/DC/TRIG inputs used to pass as
    neural, and DC01/DC02 even became Laplacian neighbours on a shaft "DC"."""
    from neurofm.data.segmenter import IEEGSegmenter

    names = ["A1", "A2", "A3", "EKG1", "DC01", "DC02", "TRIG"]
    edf = write_edf(tmp_path / "rec.edf", signal(n_t=600, n_ch=len(names)), names)
    with pytest.warns(UserWarning, match=r"rec.edf: /channels/type: 4 of 7 channels typed eeg by the file are named "
                                         r"like non-neural inputs, so typed by their names \(ecg: EKG1 \(1\); "
                                         r"misc: DC01, DC02 \(2\); stim: TRIG \(1\)\)"):
        convert_ieeg(edf, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
        assert s.n_channels == 7  # kept in the file, typed
        assert ch.types.tolist() == ["eeg", "eeg", "eeg", "ecg", "misc", "misc", "stim"]
    plan = IEEGSegmenter(laplacian=True).channel_plan(ch)
    assert plan.channels.names == ["A1", "A2", "A3"]
    assert plan.dropped["non-neural type"] == ["EKG1", "DC01", "DC02", "TRIG"]
    assert (plan.reference[:, 3:] == 0).all()  # never a neighbour
    # a channels.tsv has the last word: its types are kept, even for a name like DC01
    tsv = write_tsv(tmp_path / "rec_channels.tsv", ["name", "type", "status"],
                    [[n, "seeg" if n != "EKG1" else "ecg", "good"] for n in names])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "t.h5", channels_tsv=tsv)
    assert [str(w.message) for w in caught] == [
        f"{edf}: /channels/type: 1 of 7 channels typed non-neural by channels.tsv (rec_channels.tsv) (ecg: EKG1 (1)); "
        f"the model leaves it out (kept in /continuous, typed): edit their type in {tsv} to change that. Body "
        f"signals (ecg: EKG1 (1)) are no behaviour: typed non-neural, they stay out of the model and need nothing; "
        f"only to decode one as a target, convert again with --behavior-channel NAME"]  # an EKG is no behaviour
    with Session(tmp_path / "t.h5") as s:
        assert s.channels().types.tolist() == ["seeg"] * 3 + ["ecg"] + ["seeg"] * 3


def test_a_dc_input_is_named_as_a_possible_trigger_line_too(tmp_path):
    """A new lab's EDF with annotations and a DC01 input fed TTL at each event: the warning offered
    DC01 only as a behaviour to decode (--behavior-channel); a DC / analog / AUX input carries a
    sensor or pulses alike, so it now names --trigger-channel for it as well (a GRIP channel: no)."""
    names = ["A1", "A2", "A3", "DC01", "GRIP"]
    edf = write_edf(tmp_path / "rec.edf", signal(n_t=600, n_ch=len(names)), names)
    write_tsv(tmp_path / "rec_events.tsv", ["onset", "duration", "trial_type"], [[1.0, 0.5, "go"], [3.0, 0.5, "go"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "s.h5")
    said = [str(w.message) for w in caught if "/channels/type" in str(w.message)]
    assert len(said) == 1 and "--behavior-channel NAME (behavior_channels=[NAME]); here: DC01, GRIP; DC01 is an " \
        "input (DC / analog / AUX) that may carry trigger pulses instead: then --trigger-channel NAME=label" in said[0]
    with Session(tmp_path / "s.h5") as s:
        assert s.events("annotations")["label"].tolist() == ["go", "go"]  # the file had events: no-events hint off
    assert "The recording has no events" not in said[0]
    # every channel offered is such an input: not listed twice
    names = ["A1", "A2", "DC01", "DC02"]
    edf = write_edf(tmp_path / "two.edf", signal(n_t=600, n_ch=len(names)), names)
    write_tsv(tmp_path / "two_events.tsv", ["onset", "duration", "trial_type"], [[1.0, 0.5, "go"]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "two.h5")
    said = [str(w.message) for w in caught if "/channels/type" in str(w.message)]
    assert said[0].endswith("here: DC01, DC02; these are inputs (DC / analog / AUX) that may carry trigger pulses "
                            "instead: then --trigger-channel NAME=label puts each pulse into /events/annotations "
                            "beside the file's events")


def test_nan_samples_raise_or_mark_bad(tmp_path):
    data = signal()
    data[300, 2] = np.nan
    vhdr = write_brainvision(tmp_path / "rec", data, NAMES)
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_ieeg(vhdr, out)
    msg = str(err.value)
    assert str(vhdr) in msg and "/continuous/data" in msg and "channel B1 at t = 1.5000 s" in msg
    assert "--nan mark-bad" in msg
    assert_nothing_written(out)
    convert_ieeg(vhdr, out, nan_policy="mark-bad")
    with Session(out) as s:
        assert s.channels().bad.tolist() == [False, False, True, False]
        x = s.continuous()
    assert np.isfinite(x).all() and x[300, 2] == 0.0


def test_edf_and_truncated_edf(tmp_path):
    data = signal(n_t=1000)
    edf = write_edf(tmp_path / "rec.edf", data, NAMES)
    convert_ieeg(edf, tmp_path / "ok.h5")
    with Session(tmp_path / "ok.h5") as s:
        assert s.n_samples == 1000 and s.duration == pytest.approx(5.0)
        np.testing.assert_allclose(s.continuous(), data, atol=0.1)  # 16-bit resolution 0.1 uV
        assert s.attrs["subject_id"] == ""  # the header's patient 'X' is EDF+'s "unknown", not a subject X
    # a clinical export names the patient in its header: none of it reaches the session file
    named = write_edf(tmp_path / "named.edf", data, NAMES, patient="MRN0012345 M 02-MAR-1970 Doe_John")
    with pytest.warns(UserWarning, match=r"identifies the patient \(his_id, .*last_name.*\); neurofm copies none"):
        convert_ieeg(named, tmp_path / "named.h5")
    with Session(tmp_path / "named.h5") as s:
        text = " ".join(str(v) for v in s.attrs.values())
    assert "MRN0012345" not in text and "Doe" not in text and "1970" not in text
    cut = tmp_path / "cut.edf"
    cut.write_bytes(edf.read_bytes()[: 256 * 5 + 2 * 4 * 200 * 3])  # 3 of 5 records
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_ieeg(cut, out)
    msg = str(err.value)
    assert msg.startswith(f"{cut}: EDF data records:") and "promises 5 records" in msg and "truncated" in msg
    assert_nothing_written(out)
    (tmp_path / "junk.edf").write_bytes(b"0" * 100)
    with pytest.raises(ConvertError, match="junk.edf: EDF header"):
        convert_ieeg(tmp_path / "junk.edf", out)
    assert_nothing_written(out)


def test_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.edf: no such recording"):
        convert_ieeg(tmp_path / "nope.edf", tmp_path / "s.h5")
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    with pytest.raises(FileNotFoundError, match="missing_electrodes.tsv: no such sidecar"):
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tmp_path / "missing_electrodes.tsv")
    assert_nothing_written(tmp_path / "s.h5")


def test_fif_montage_positions_and_bad_annotations(tmp_path):
    info = mne.create_info(NAMES, SR, "ecog")
    raw = mne.io.RawArray(signal().T.astype(np.float64) * 1e-6, info, verbose="error")
    positions = {n: np.array([0.01 * i, 0.02, 0.03]) for i, n in enumerate(NAMES)}  # metres
    raw.set_montage(mne.channels.make_dig_montage(ch_pos=positions, coord_frame="head"), verbose="error")
    raw.set_annotations(mne.Annotations([1.0, 2.0], [0.0, 0.5], ["word/cat", "BAD_motion"]))
    raw.info["bads"] = ["A2"]
    fif = tmp_path / "rec_raw.fif"
    raw.save(fif, verbose="error")
    convert_ieeg(fif, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
        np.testing.assert_allclose(ch.xyz[:, 0], [0, 10, 20, 30]) and np.testing.assert_allclose(ch.xyz[:, 2], 30)
        assert ch.coordinate_space == "head" and ch.bad.tolist() == [False, True, False, False]
        assert ch.types.tolist() == ["ecog"] * 4 and s.session_id == "rec"
        ev = s.events("annotations")
        assert ev["label"].tolist() == ["word/cat", "BAD_motion"]
        bad = s.intervals("bad_segments")
        assert bad["start"].tolist() == [2.0] and bad["end"].tolist() == [2.5]
        np.testing.assert_allclose(s.continuous(), signal(), atol=1e-3)


def test_missing_mne_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mne", None)
    with pytest.raises(ImportError, match=r"neurofm\[ieeg\]"):
        convert_ieeg(tmp_path / "x.edf", tmp_path / "s.h5")


@needs_shared
def test_sample_seeg(tmp_path):
    out = tmp_path / "seeg.h5"
    with pytest.warns(UserWarning) as record:
        convert_ieeg(SEEG, out, electrodes=SEEG_ELECTRODES)
    text = " ".join(str(w.message) for w in record)
    assert "3 of 101 electrodes match no channel" in text and "0 of 88 neural channels have no electrode row" in text
    assert "assumed millimetres" in text
    assert "10 of 98 channels typed eeg by the file are named like non-neural inputs" in text
    assert "more than 300 mm" not in text  # mm coordinates of a human head
    raw = mne.io.read_raw_edf(SEEG, verbose="error")
    with Session(out) as s:
        assert s.kinds == ["continuous"] and s.n_channels == 98
        assert s.sampling_rate == 1000.0 and s.duration == pytest.approx(20.0)
        np.testing.assert_allclose(s.continuous(5.0, 5.5), raw.get_data(start=5000, stop=5500).T * 1e6,
                                   rtol=1e-5, atol=1e-3)
        ev = s.events("annotations")
        assert len(ev["onset"]) == 3
        assert sorted(ev["label"].tolist()) == ["test annotation", "test annotation", "test mark"]
        ch = s.channels()
        assert ch.names == raw.ch_names
        types = dict(zip(ch.names, ch.types.tolist()))
        assert types["EKG1"] == types["EKG2"] == "ecg" and {types[f"DC0{i}"] for i in range(1, 9)} == {"misc"}
        assert sum(t == "eeg" for t in types.values()) == 88
        assert set(ch.regions) >= {"destriuex", "desikan-killiany"}
        # labels matched by name: compare with the TSV row of each channel
        rows = {r.split("\t")[0]: r.split("\t") for r in SEEG_ELECTRODES.read_text().splitlines()[1:]}
        for i, name in enumerate(ch.names):
            x = rows[name][1]
            if x == "n/a":
                assert np.isnan(ch.xyz[i]).all()
            else:
                np.testing.assert_allclose(ch.xyz[i], [float(v) for v in rows[name][1:4]], rtol=1e-6)
            label = rows[name][5]
            assert ch.regions["destriuex"][i] == ("" if label in ("n/a", "Unknown") else label)
        assert int(np.isfinite(ch.xyz).all(axis=1).sum()) == 88
        assert (ch.regions["destriuex"] != "").sum() > 40
    # the electrodes file beside the recording is found by name, without --electrodes
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        convert_ieeg(SEEG, tmp_path / "auto.h5")
    assert any("3 of 101 electrodes" in str(w.message) for w in record)
    with Session(tmp_path / "auto.h5") as s:
        assert s.attrs["electrodes_file"] == str(SEEG_ELECTRODES)


# -- behaviour recorded as a channel ------------------------------------------------------------


def _raw_with_force(n_t=1000, sfreq=SR):
    """A small recording: 3 sEEG contacts (volts), a grip-force channel (newtons, a ramp) and an
    EMG lead (volts)."""
    rng = np.random.default_rng(0)
    force = np.linspace(0.0, 5.0, n_t)  # N
    data = np.vstack([rng.normal(0, 20e-6, (3, n_t)), force[None], rng.normal(0, 50e-6, (1, n_t))])
    info = mne.create_info(["A1", "A2", "A3", "FORCE", "EMG_R"], sfreq, ["seeg"] * 3 + ["misc", "emg"])
    return mne.io.RawArray(data, info, verbose="error"), force


def _check_moved(out: Path, force: np.ndarray, force_unit: str, as_name="grip", n_t=1000):
    with Session(out) as s:
        assert s.channels().names == ["A1", "A2", "A3"] and s.n_channels == 3  # gone from /continuous, /channels
        assert sorted(s.behavior_names) == sorted([as_name, "EMG_R"])
        t, v = s.behavior(as_name)
        np.testing.assert_allclose(t, s.continuous_t_start + np.arange(n_t) / SR)  # the sampling clock
        np.testing.assert_allclose(v, force, atol=2e-3)  # in the channel's own unit
        assert s.h5[f"behavior/{as_name}"].attrs["unit"] == force_unit
        assert s.h5[f"behavior/{as_name}"].attrs["source_channel"] == "FORCE"
        _, emg = s.behavior("EMG_R")
        assert s.h5["behavior/EMG_R"].attrs["unit"] in ("µV", "uV") and 5 < emg.std() < 500  # volts -> µV


def test_behavior_channels_from_edf(tmp_path):
    pytest.importorskip("edfio")
    raw, force = _raw_with_force()
    edf = tmp_path / "rec.edf"
    mne.export.export_raw(edf, raw, fmt="edf", verbose="error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "s.h5", behavior_channels=["FORCE=grip", "EMG_R"])
    assert not [w for w in caught if "EMG_R" in str(w.message)]  # moved: not typed, not "left out" by the segmenter
    _check_moved(tmp_path / "s.h5", force, "")  # MNE writes misc channels to EDF without a unit
    # a missing name is an error listing the channels, and nothing is written
    with pytest.raises(ConvertError) as err:
        convert_ieeg(edf, tmp_path / "t.h5", behavior_channels=["GRIP"])
    msg = str(err.value)
    assert f"{edf}: --behavior-channel: no channel named 'GRIP'; the 5 channels are: A1, A2, A3, FORCE, EMG_R" in msg
    assert_nothing_written(tmp_path / "t.h5")


def test_behavior_channels_from_brainvision_and_from_a_session_file(tmp_path):
    pybv = pytest.importorskip("pybv")
    raw, force = _raw_with_force()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pybv: "BrainVision supports only µV" (MNE reads other units fine)
        pybv.write_brainvision(data=raw.get_data(), sfreq=SR, ch_names=raw.ch_names, fname_base="rec", folder_out=tmp_path,
                               unit=["µV", "µV", "µV", "N", "µV"], overwrite=True)  # volts written as µV
    vhdr = tmp_path / "rec.vhdr"
    convert_ieeg(vhdr, tmp_path / "s.h5", behavior_channels=["force=grip", "EMG_R"])  # case-insensitive match
    _check_moved(tmp_path / "s.h5", force, "N")

    # the same from a session file converted before: neurofm convert session IN OUT --behavior-channel
    from neurofm.cli import main

    convert_ieeg(vhdr, tmp_path / "all.h5")
    assert main(["convert", "session", str(tmp_path / "all.h5"), str(tmp_path / "moved.h5"),
                 "--behavior-channel", "FORCE=grip", "--behavior-channel", "EMG_R"]) == 0
    with Session(tmp_path / "moved.h5") as a, Session(tmp_path / "s.h5") as b:
        np.testing.assert_array_equal(a.continuous(), b.continuous())
        assert a.channels().types.tolist() == b.channels().types.tolist() == ["eeg"] * 3  # as BrainVision types them
        np.testing.assert_allclose(a.behavior("grip")[1], b.behavior("grip")[1])
        # /continuous kept it in N (no voltage: not scaled), and now says so: it was labelled 'uV'
        assert a.h5["behavior/grip"].attrs["unit"] == b.h5["behavior/grip"].attrs["unit"] == "N"
    with Session(tmp_path / "all.h5") as s, Session(tmp_path / "moved.h5") as a:
        assert s.n_channels == 5 and not s.behavior_names  # the input is never modified
        assert a.attrs == s.attrs and a.continuous_t_start == s.continuous_t_start  # the rest copied as it is
        assert a.h5["continuous"].attrs["sampling_rate"] == SR
    assert main(["convert", "session", str(tmp_path / "all.h5"), str(tmp_path / "x.h5"),
                 "--behavior-channel", "GRIP"]) == 2
    assert not (tmp_path / "x.h5").exists()


def test_behavior_channel_cli_errors(tmp_path, capsys):
    from neurofm.cli import main

    edf = write_edf(tmp_path / "rec.edf", signal(), NAMES)
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--behavior-channel", "Z9"]) == 2
    err = capsys.readouterr().err
    assert "no channel named 'Z9'; the 4 channels are: A1, A2, B1, B2" in err and "NAME=as_name" in err
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--behavior-channel", "A1=x",
                 "--behavior-channel", "A2=x"]) == 2
    assert "two channels would become /behavior/x" in capsys.readouterr().err
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5")] + sum(
        (["--behavior-channel", n] for n in NAMES), [])) == 2
    assert "would move all 4 channels" in capsys.readouterr().err
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--rectify"]) == 2
    err = capsys.readouterr().err
    assert "--rectify alone rectifies the --behavior-channel channels: give --behavior-channel" in err
    assert "--rectify NAME" in err
    # --rectify: the channel's |x| (a raw EMG's envelope, whose segment mean BaRISTA can regress)
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--behavior-channel", "B2=emg",
                 "--rectify"]) == 0
    with Session(tmp_path / "s.h5") as s:
        np.testing.assert_allclose(s.behavior("emg")[1], np.abs(signal()[:, 3]), atol=0.1)  # EDF: 16 bit
        assert (s.behavior("emg")[1] >= 0).all() and (signal()[:, 3] < -1).any()
        assert s.h5["behavior/emg"].attrs["rectified"] and s.channels().names == NAMES[:3]
    # the bare flag before the positionals: argparse read the input path as a behaviour's name
    # and then said `output` was missing
    assert main(["convert", "ieeg", "--rectify", str(edf), str(tmp_path / "t.h5"), "--behavior-channel",
                 "B2=emg"]) == 0, capsys.readouterr().err
    with Session(tmp_path / "t.h5") as s:
        assert s.h5["behavior/emg"].attrs["rectified"]


def test_body_leads_named_like_edf_systems_name_them_are_typed_non_neural(tmp_path):
    """EKGL/EKGR (a side after the lead) stayed `eeg` and reached the model as brain signal."""
    names = ["LA1", "LA2", "EKGL", "EKGR", "ECG1", "EMG_L", "E1"]
    edf = write_edf(tmp_path / "rec.edf", signal(n_t=600, n_ch=len(names)), names)
    with pytest.warns(UserWarning, match=r"4 of 7 channels typed eeg .* \(ecg: EKGL, EKGR, ECG1 \(3\); emg: EMG_L"):
        convert_ieeg(edf, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        assert s.channels().types.tolist() == ["eeg", "eeg", "ecg", "ecg", "ecg", "emg", "eeg"]


def test_behavior_channels_from_bids_and_fif(bids_root, tmp_path):
    convert_ieeg(bids_root, tmp_path / "bids.h5", behavior_channels=["B2=grip"])
    with Session(tmp_path / "bids.h5") as s:
        ch = s.channels()
        assert ch.names == NAMES[:3] and ch.bad.tolist() == [False, False, True]  # sidecars still line up
        np.testing.assert_allclose(ch.xyz[:3], [[10, 20, 30], [11, 21, 31], [-5, 2, 3]])
        t, v = s.behavior("grip")
        np.testing.assert_allclose(v, signal()[:, 3], atol=1e-3)  # µV, as written
        assert s.h5["behavior/grip"].attrs["unit"] == "µV" and len(t) == 800
    raw, force = _raw_with_force()
    fif = tmp_path / "rec_raw.fif"
    raw.save(fif, verbose="error")
    convert_ieeg(fif, tmp_path / "fif.h5", behavior_channels=["FORCE=grip", "EMG_R"])
    with Session(tmp_path / "fif.h5") as s:
        assert s.channels().names == ["A1", "A2", "A3"]
        np.testing.assert_allclose(s.behavior("grip")[1], force, rtol=1e-6)


def test_behaviour_sensors_recorded_as_edf_channels_are_left_out_and_named(tmp_path, capsys):
    """Issue 11: a grip-force / movement / trigger input in an EDF (typed eeg: EDF has no types)
    reached the model as brain signal unless --behavior-channel named it. Typed by name now; the
    warning names every channel left out and, for the continuous ones, the --behavior-channel hint."""
    pytest.importorskip("edfio")
    from neurofm.cli import main
    from neurofm.data.segmenter import IEEGSegmenter

    names = ["ECOG1", "ECOG2", "ECOG3", "GRIP", "MOV_RIGHT", "ACC_X", "TRIG"]
    rng = np.random.default_rng(0)
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (len(names), 1000)), mne.create_info(names, SR, "eeg"), verbose="error")
    edf = tmp_path / "rec.edf"
    mne.export.export_raw(edf, raw, fmt="edf", verbose="error")
    with pytest.warns(UserWarning) as record:
        convert_ieeg(edf, tmp_path / "s.h5")
    text = " ".join(str(w.message) for w in record)
    assert ("4 of 7 channels typed eeg by the file are named like non-neural inputs, so typed by their names "
            "(misc: GRIP, MOV_RIGHT, ACC_X (3); stim: TRIG (1)); the model leaves these 4 out") in text
    assert ("To decode a behaviour recorded as a channel (force, movement, ...), convert again with "
            "--behavior-channel NAME (behavior_channels=[NAME]); here: GRIP, MOV_RIGHT, ACC_X. The recording has no "
            "events") in text  # no TRIG among the behaviours; the file has no events, so --trigger-channel is named
    assert text.endswith("convert again with --trigger-channel NAME=label (trigger_channels=[...]), which puts each "
                         "pulse into /events/annotations")
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
        assert ch.types.tolist() == ["eeg"] * 3 + ["misc"] * 3 + ["stim"]
    assert IEEGSegmenter().channel_plan(ch).channels.names == ["ECOG1", "ECOG2", "ECOG3"]
    # the CLI prints it; with the hint followed, MOV_RIGHT is a behaviour and no longer listed
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "t.h5"), "--behavior-channel", "MOV_RIGHT"]) == 0
    err = capsys.readouterr().err
    assert "neurofm convert: warning:" in err and "here: GRIP, ACC_X" in err and "MOV_RIGHT" not in err
    with Session(tmp_path / "t.h5") as s:
        assert s.behavior_names == ["MOV_RIGHT"] and "MOV_RIGHT" not in s.channels().names


def test_bids_channel_types_are_honoured_and_named(tmp_path):
    """Every BIDS non-neural channels.tsv type (MISC, TRIG, EMG, ECG, EOG, HEOG, PD, ...) keeps the
    channel out of the model, with the names listed; a type BIDS does not define is warned about."""
    from neurofm.data.segmenter import IEEGSegmenter

    names = ["C1", "C2", "C3", "C4", "X1", "X2", "X3", "X4", "X5", "X6", "X7"]
    tsv_types = ["ECOG", "SEEG", "DBS", "LFP", "MISC", "TRIG", "EMG", "ECG", "HEOG", "PD", "AUDIO"]
    edf = write_edf(tmp_path / "rec.edf", signal(n_t=600, n_ch=len(names)), names)
    tsv = write_tsv(tmp_path / "rec_channels.tsv", ["name", "type", "units", "status"],
                    [[n, t, "µV", "good"] for n, t in zip(names, tsv_types)])
    with pytest.warns(UserWarning) as record:
        convert_ieeg(edf, tmp_path / "s.h5")  # found beside the recording by name
    text = [str(w.message) for w in record]
    assert any(m.startswith(f"{tsv}: type: 'lfp' is not a BIDS channel type (channels C4); these are fed to the model "
                            f"as neural signal") for m in text)
    left_out = next(m for m in text if "/channels/type" in m)
    assert "7 of 11 channels typed non-neural by channels.tsv (rec_channels.tsv)" in left_out
    # body signals (EMG, ECG, HEOG) are named as such, no behaviour; the hint lists the others
    assert "Body signals (emg: X3 (1); ecg: X4 (1); heog: X5 (1)) are no behaviour" in left_out
    assert "here: X1, X6, X7. The recording has no events" in left_out  # not the trigger line X2
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
        assert ch.types.tolist() == [t.lower() for t in tsv_types]
    assert IEEGSegmenter().channel_plan(ch).channels.names == ["C1", "C2", "C3", "C4"]


def test_bids_units_of_a_behaviour_channel_are_carried(tmp_path):
    """Issue 11: a grip force moved to /behavior from a BIDS BrainVision session had unit "" (the
    .vhdr says n/a); the channels.tsv ``units`` names it, so reports say "mN". Where both are
    voltages the values are rescaled to the channels.tsv's unit."""
    mne_bids = pytest.importorskip("mne_bids")
    names = ["ECOG_R_01", "ECOG_R_02", "LFP_R_01", "MOV_RIGHT"]
    rng = np.random.default_rng(0)
    force = np.linspace(0.0, 3.0, 1000)
    data = np.vstack([rng.normal(0, 20e-6, (3, 1000)), force[None]])
    raw = mne.io.RawArray(data, mne.create_info(names, SR, ["ecog", "ecog", "dbs", "misc"]), verbose="error")
    bp = mne_bids.BIDSPath(subject="EL1", session="ecog", task="grip", run="1", datatype="ieeg", root=tmp_path / "ds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne_bids.write_raw_bids(raw, bp, format="BrainVision", allow_preload=True, overwrite=True, verbose="error")
    vhdr = bp.fpath.with_suffix(".vhdr") if bp.fpath.suffix != ".vhdr" else bp.fpath
    channels = next(vhdr.parent.glob("*_channels.tsv"))
    text = channels.read_text()
    assert "MOV_RIGHT\tMISC\tn/a" in text  # as mne-bids writes it: the lab fills in the unit
    channels.write_text(text.replace("MOV_RIGHT\tMISC\tn/a", "MOV_RIGHT\tMISC\tmN"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(vhdr, tmp_path / "s.h5", behavior_channels=["MOV_RIGHT"])
    assert not [w for w in caught if "MOV_RIGHT" in str(w.message)]  # nor "electrodes match no channel"
    with Session(tmp_path / "s.h5") as s:
        assert s.h5["behavior/MOV_RIGHT"].attrs["unit"] == "mN"
        np.testing.assert_allclose(s.behavior("MOV_RIGHT")[1], force, atol=1e-3)  # the numbers as stored
        assert s.channels().types.tolist() == ["ecog", "ecog", "dbs"]
    # the same from the session converted without --behavior-channel (convert session IN OUT)
    convert_ieeg(vhdr, tmp_path / "all.h5")
    ieeg.move_channels_to_behavior(tmp_path / "all.h5", tmp_path / "moved.h5", ["MOV_RIGHT"])
    with Session(tmp_path / "moved.h5") as s:
        assert s.h5["behavior/MOV_RIGHT"].attrs["unit"] == "mN"
        np.testing.assert_allclose(s.behavior("MOV_RIGHT")[1], force, atol=1e-3)
    # voltages: a channels.tsv in mV for a channel the recording stores in µV rescales the values
    vhdr2 = write_brainvision(tmp_path / "bv" / "rec", signal(), NAMES)
    tsv = write_tsv(tmp_path / "bv" / "rec_channels.tsv", ["name", "type", "units"],
                    [[n, "SEEG" if n != "B2" else "MISC", "µV" if n != "B2" else "mV"] for n in NAMES])
    convert_ieeg(vhdr2, tmp_path / "v.h5", behavior_channels=["B2=emg"], channels_tsv=tsv)
    with Session(tmp_path / "v.h5") as s:
        assert s.h5["behavior/emg"].attrs["unit"] == "mV"
        np.testing.assert_allclose(s.behavior("emg")[1], signal()[:, 3] / 1e3, atol=1e-6)


def test_brainvision_marker_labels_are_the_ones_a_user_recognises(tmp_path):
    """MNE names BrainVision markers 'Comment/<text>', 'Stimulus/S  1' and keeps mid-recording
    'New Segment/' markers: those names became /events/annotations labels, i.e. the classes of
    `finetune --task classify --events annotations`. Now the description is the label, and
    the recording's bookkeeping markers are no events."""
    from neurofm.cli import _EVENT_LABEL_RULE, build_parser
    from neurofm.data.session import EVENT_LABEL_RULE, event_labels

    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES, markers=[(0.5, "grip on"), (2.0, "rest")])
    vmrk = vhdr.with_suffix(".vmrk")
    vmrk.write_text(vmrk.read_text() + "Mk4=Stimulus,S  1,300,1,0\nMk5=Response,R 12,400,1,0\n"
                    "Mk6=New Segment,,500,1,0\nMk7=SyncStatus,Sync On,600,1,0\nMk8=Bad Interval,Bad Min-Max,700,10,0\n")
    assert "Comment/grip on" in mne.io.read_raw_brainvision(vhdr, verbose="error").annotations.description
    convert_ieeg(vhdr, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        ev = s.events("annotations")
        assert ev["label"].tolist() == ["grip on", "S1", "R12", "rest", "Bad Interval/Bad Min-Max"]
        np.testing.assert_allclose(ev["onset"], [0.5, 1.495, 1.995, 2.0, 3.495])
        assert s.intervals("bad_segments")["label"].tolist() == ["Bad Interval/Bad Min-Max"]
    # two kinds of marker that would share a name keep MNE's names; other labels are kept as written
    labels, keep = event_labels(["Comment/S1", "Stimulus/S  1", "Comment/go", "seizure onset", "New Segment/"])
    assert labels.tolist()[:4] == ["Comment/S1", "Stimulus/S  1", "go", "seizure onset"]
    assert keep.tolist() == [True, True, True, True, False]
    # an EDF annotation typed 'Face ' is the event 'Face' (a BIDS events.tsv's cells are read stripped);
    # it was a class of its own beside 'Face' from the same lab's BIDS copy of the file
    labels, keep = event_labels(["Face ", " house", "Face", "seizure  onset "])
    assert labels.tolist() == ["Face", "house", "Face", "seizure  onset"] and keep.all()
    # the rule is in the help of convert and of --events (written out in cli.py for a fast --help)
    assert _EVENT_LABEL_RULE == EVENT_LABEL_RULE
    helps = {name: sub.format_help() for name, sub in build_parser()._subparsers._group_actions[0].choices.items()}
    flat = {k: " ".join(v.split()) for k, v in helps.items()}
    rule = " ".join(EVENT_LABEL_RULE.split())
    assert rule in flat["convert"] and rule in flat["finetune"] and rule in flat["evaluate"]


def test_brainvision_new_segment_marks_a_gap_that_no_segment_spans(tmp_path):
    """A 'New Segment' marker after the first sample: the recording paused and resumed there.
    convert warns naming the time and writes /intervals/discontinuities; the data modules cut
    their blocks there, so no segment joins the samples either side (the default split, the
    default segment grid)."""
    from neurofm.data.datasets import IEEGSegmentDataset
    from neurofm.data.segmenter import IEEGSegmenter
    from neurofm.data.session import DISCONTINUITIES

    vhdr = write_brainvision(tmp_path / "rec", signal(n_t=4000), NAMES)  # 20 s at 200 Hz
    vmrk = vhdr.with_suffix(".vmrk")
    vmrk.write_text(vmrk.read_text() + "Mk2=New Segment,,1501,1,0,20200101000100000000\n")  # sample 1500: t = 7.5 s
    tsv = write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    with pytest.warns(UserWarning, match=r"1 'New Segment' marker\(s\) after the first sample, at t = 7\.500 s"):
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tsv, coordinate_unit="mm")
    with Session(tmp_path / "s.h5") as s:
        gap = s.intervals(DISCONTINUITIES)
        np.testing.assert_allclose(gap["start"], [7.5]) and np.testing.assert_allclose(gap["end"], [7.5])
        assert "annotations" not in s.event_names  # bookkeeping, not an event
    ds = IEEGSegmentDataset([tmp_path / "s.h5"], IEEGSegmenter(segment_s=2.0, n_patches=10), split="train")
    starts = np.asarray([ds.index.locate(i)[1] for i in range(len(ds))])
    assert len(starts) and not np.any((starts < 7.5) & (starts + 2.0 > 7.5))  # none spans the gap
    assert np.any(starts < 7.5) and np.any(starts > 7.5)  # both pieces are used, each on its own
    # one marker at the first sample (every BrainVision file has it) is no gap
    convert_ieeg(write_brainvision(tmp_path / "one", signal(), NAMES), tmp_path / "one.h5")
    with Session(tmp_path / "one.h5") as s:
        assert DISCONTINUITIES not in s.interval_names


def test_a_model_fine_tuned_on_prefixed_labels_evaluates_on_the_file_converted_again():
    """Existing fine-tuned folders classify 'Comment/cue', 'Comment/go'; the same file converted
    again says 'cue', 'go': the same question, so evaluate loads the head; other labels refuse."""
    from types import SimpleNamespace

    import torch

    from neurofm.config import ConfigError
    from neurofm.recipes.barista import _load_finetuned_head

    def model(labels):
        return SimpleNamespace(config=SimpleNamespace(task="classification", label_names=labels),
                               hparams=SimpleNamespace(label_names=labels), head=torch.nn.Linear(3, 2),
                               band_power=None, waveform=None)  # a folder written before either read-out

    old, new = model(["Comment/cue", "Comment/go"]), model(["cue", "go"])
    _load_finetuned_head(new, old, "RUN/pretrained")
    assert torch.equal(new.head.weight, old.head.weight)
    with pytest.raises(ConfigError, match=r"classifies \['Comment/cue', 'Comment/go'\], but these events carry the "
                                          r"labels \['go', 'stop'\]"):
        _load_finetuned_head(model(["go", "stop"]), old, "RUN/pretrained")


def test_an_ekg_is_not_offered_as_a_behaviour(tmp_path):
    """The sample sEEG's EKG1/EKG2 were listed with the DC inputs under "To decode a continuous
    one (force, movement, ...) as a behaviour ... here: DC01, ..., EKG1, EKG2": an EKG is no
    behaviour. It is named as a body signal kept out of the model; the behaviour hint lists the
    DC inputs only."""
    names = ["A1", "A2", "A3", "EKG1", "EKG2", "DC01"]
    edf = write_edf(tmp_path / "rec.edf", signal(n_t=600, n_ch=len(names)), names)
    with pytest.warns(UserWarning) as record:
        convert_ieeg(edf, tmp_path / "s.h5")
    (text,) = [str(w.message) for w in record if "/channels/type" in str(w.message)]
    assert ("Body signals (ecg: EKG1, EKG2 (2)) are no behaviour: typed non-neural, they stay out of the model and "
            "need nothing; only to decode one as a target, convert again with --behavior-channel NAME") in text
    assert "(behavior_channels=[NAME]); here: DC01. The recording has no events" in text
    with Session(tmp_path / "s.h5") as s:
        assert s.channels().types.tolist() == ["eeg"] * 3 + ["ecg", "ecg", "misc"]


def test_a_bids_root_folder_names_its_recordings_and_the_loop_that_converts_them(bids_root, tmp_path):
    """`neurofm convert ieeg BIDS_ROOT out.h5` (a new lab's first try) used to reach MNE and come back
    as 'Unsupported file type ()' ... 'the file is truncated, damaged or not a format MNE reads'."""
    root = bids_root.parents[3]  # ds/ (sub-01/ses-01/ieeg/rec.vhdr)
    with pytest.raises(ConvertError) as e:
        convert_ieeg(root, tmp_path / "s.h5")
    msg = str(e.value)
    assert msg.startswith(f"{root}: input: is a folder holding 1 recording(s) "
                          "(sub-01/ses-01/ieeg/sub-01_ses-01_task-rest_run-01_ieeg.vhdr)"), msg
    assert "-name '*_ieeg.vhdr'" in msg and "neurofm convert ieeg" in msg and "damaged" not in msg
    assert_nothing_written(tmp_path / "s.h5")
    with pytest.raises(ConvertError, match="is a folder with no recording MNE reads in it"):
        convert_ieeg(tmp_path, tmp_path / "s.h5")
    # a recording MNE stores as a folder (CTF .ds) still goes to MNE
    (tmp_path / "rec.ds").mkdir()
    with pytest.raises(ConvertError, match="MNE cannot read it"):
        convert_ieeg(tmp_path / "rec.ds", tmp_path / "s.h5")


def test_segments_overlapping_a_bad_annotation_are_never_read(tmp_path):
    """A FIF with `BAD_movement` annotations (MNE's artefact convention): convert wrote
    /intervals/bad_segments and nothing read it, so the artefacts were trained on and scored.
    Now no segment of the default grid and split overlaps one (the other pieces are all used)."""
    from neurofm.data.datasets import IEEGSegmentDataset
    from neurofm.data.segmenter import IEEGSegmenter

    info = mne.create_info(NAMES, SR, "seeg")
    raw = mne.io.RawArray(signal(n_t=4000).T.astype(np.float64) * 1e-6, info, verbose="error")  # 20 s
    positions = {n: np.array([0.01 * i, 0.02, 0.03]) for i, n in enumerate(NAMES)}  # metres
    raw.set_montage(mne.channels.make_dig_montage(ch_pos=positions, coord_frame="head"), verbose="error")
    raw.set_annotations(mne.Annotations([3.0, 7.2, 9.0], [1.5, 1.0, 0.5], ["BAD_movement", "BAD_movement", "cue"]))
    raw.save(tmp_path / "rec_raw.fif", verbose="error")
    convert_ieeg(tmp_path / "rec_raw.fif", tmp_path / "s.h5")
    seg = IEEGSegmenter(segment_s=1.0, n_patches=5)
    ds = IEEGSegmentDataset([tmp_path / "s.h5"], seg, split="train")
    starts = np.asarray([ds.index.locate(i)[1] for i in range(len(ds))])
    for a, b in ((3.0, 4.5), (7.2, 8.2)):
        assert not np.any((starts < b) & (starts + 1.0 > a)), (a, b, starts)
    assert np.any(starts < 3.0) and np.any((starts >= 4.5) & (starts < 7.2)) and np.any(starts >= 8.2)
    whole = IEEGSegmentDataset([tmp_path / "s.h5"], seg, split=None)
    assert len(whole) == 20 - 2 - 2  # 20 one-second segments, less the 2 + 2 that touch a bad span


def write_edf_plus_d(path: Path, data_uv: np.ndarray, names, record_starts, annotations, sfreq=SR,
                     kind="EDF+D") -> Path:
    """An EDF+D file written by hand: one-second records starting at ``record_starts`` (s, the
    real clock; a jump is a pause), an ``EDF Annotations`` signal holding each record's
    time-keeping TAL and ``annotations`` ``[(onset s real clock, text), ...]``."""
    n_t, n_ch = data_uv.shape
    per_record, ann_samples = int(sfreq), 60
    n_rec = len(record_starts)
    assert n_t >= n_rec * per_record
    pmin, pmax, dmin, dmax = -3276.8, 3276.7, -32768, 32767
    digital = np.round((data_uv[: n_rec * per_record] - pmin) / (pmax - pmin) * (dmax - dmin) + dmin).astype("<i2")
    labels, ns = list(names) + ["EDF Annotations"], n_ch + 1

    def field(values, width):
        return "".join(f"{v:<{width}}"[:width] for v in values)

    header = (f"{'0':<8}{'X X X X':<80}{'Startdate 01-JAN-2020 X X X':<80}{'01.01.20':<8}{'00.00.00':<8}"
              f"{256 * (ns + 1):<8}{kind:<44}{n_rec:<8}{1:<8}{ns:<4}")
    header += (field(labels, 16) + field([""] * ns, 80) + field(["uV"] * n_ch + [""], 8)
               + field([pmin] * n_ch + [-1], 8) + field([pmax] * n_ch + [1], 8) + field([dmin] * ns, 8)
               + field([dmax] * ns, 8) + field([""] * ns, 80) + field([per_record] * n_ch + [ann_samples], 8)
               + field([""] * ns, 32))
    body = b""
    home = [next((k for k, st in enumerate(record_starts) if o < st + 1), n_rec - 1)  # a pause's: the next record
            for o, _ in annotations]
    for k, start in enumerate(record_starts):
        tal = f"+{start:g}\x14\x14\x00".encode()
        tal += b"".join(f"+{o:g}\x14{text}\x14\x00".encode() for (o, text), h in zip(annotations, home) if h == k)
        body += digital[k * per_record:(k + 1) * per_record].T.tobytes() + tal.ljust(2 * ann_samples, b"\x00")
    path.write_bytes(header.encode("ascii") + body)
    return path


def test_edf_plus_d_pause_is_a_discontinuity_and_events_stay_on_their_samples(tmp_path):
    """An EDF+D file whose recording paused for 30 s after 10 s: MNE reads the records back to
    back (the sample clock) but places annotations on the real clock, so every event after the
    pause would land 30 s late and those past the end would vanish. convert names the pause,
    writes /intervals/discontinuities there, and moves each event onto the sample its record
    holds (an event inside the pause is dropped, named); no default segment spans the pause."""
    from neurofm.data.datasets import IEEGSegmentDataset
    from neurofm.data.segmenter import IEEGSegmenter
    from neurofm.data.session import DISCONTINUITIES

    starts = list(range(10)) + [40 + k for k in range(10)]  # 20 one-second records, 30 s pause after 10 s
    ann = [(2.5, "tone"), (9.25, "picture"), (25.0, "lost"), (41.5, "tone"), (49.0, "Seizure onset")]
    edf = write_edf_plus_d(tmp_path / "rec.edf", signal(n_t=4000), NAMES, starts, ann)
    tsv = write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    with pytest.warns(UserWarning, match=r"EDF\+D \(discontinuous\).*1 time\(s\), at t = 10\.000 s \(30 s pause\)"
                                         r".*1 event\(s\) inside a pause dropped: 'lost' at 25\.000 s") as caught:
        convert_ieeg(edf, tmp_path / "s.h5", electrodes=tsv, coordinate_unit="mm")
    assert not [w for w in caught if "MNE dropped" in str(w.message)]  # MNE's drop is undone: not reported
    with Session(tmp_path / "s.h5") as s:
        ev = s.events("annotations")
        assert list(ev["label"]) == ["tone", "picture", "tone", "Seizure onset"]
        np.testing.assert_allclose(ev["onset"], [2.5, 9.25, 11.5, 19.0])  # the sample clock
        gap = s.intervals(DISCONTINUITIES)
        np.testing.assert_allclose(gap["start"], [10.0])
        assert list(gap["label"]) == ["EDF+D pause"]
    ds = IEEGSegmentDataset([tmp_path / "s.h5"], IEEGSegmenter(segment_s=3.0, n_patches=10), split="train")
    seg = np.asarray([ds.index.locate(i)[1] for i in range(len(ds))])
    assert len(seg) and not np.any((seg < 10.0) & (seg + 3.0 > 10.0))
    # a BIDS events.tsv beside it counts time since the first sample on the real clock too
    write_tsv(tmp_path / "rec_events.tsv", ["onset", "duration", "trial_type"], [[2.5, 0, "tone"], [41.5, 0, "tone"]])
    with pytest.warns(UserWarning, match=r"EDF\+D"):
        convert_ieeg(edf, tmp_path / "b.h5", electrodes=tsv, coordinate_unit="mm")
    with Session(tmp_path / "b.h5") as s:
        np.testing.assert_allclose(s.events("annotations")["onset"], [2.5, 11.5])
    # an EDF+C (or plain EDF) file is read as before: no discontinuity
    convert_ieeg(write_edf(tmp_path / "c.edf", signal(n_t=4000), NAMES), tmp_path / "c.h5")
    with Session(tmp_path / "c.h5") as s:
        assert DISCONTINUITIES not in s.interval_names


def test_a_flat_channel_is_marked_bad_and_a_clipped_one_is_named(tmp_path):
    """A disconnected contact (one value throughout) is marked bad with a warning naming it; a
    contact on the converter's rail for 30% of the samples is named with its share and the
    channels.tsv fix, and kept; a healthy channel is neither."""
    x = signal(n_t=2000) + np.random.default_rng(0).normal(0.0, 2.0, (2000, 4)).astype(np.float32)  # with noise, as recorded
    x[:, 1] = 0.0  # A2 disconnected
    x[:, 2] = np.clip(x[:, 2] * 40.0, -1000.0, 1000.0)  # B1: a sine of +-2000 uV clipped at +-1000 uV
    edf = write_edf(tmp_path / "rec.edf", x, NAMES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "s.h5")
    text = " ".join(str(m.message) for m in caught)
    assert re.search(r"/channels/bad: 1 channel\(s\) hold one value throughout \(A2 = ", text)
    assert re.search(r"1 channel\(s\) sit on their own extreme value, 3 or more samples in a row, for over 1% of the samples \(B1 \d+% at "
                     r"-1000 or 1000\).*channels\.tsv with status 'bad'", text)
    with Session(tmp_path / "s.h5") as s:
        assert s.channels().bad.tolist() == [False, True, False, False]


def test_bipolar_channels_sit_between_their_two_contacts(tmp_path):
    """A clinical bipolar montage ("A1-A2") with an electrodes.tsv of single contacts: each
    derivation is placed at the midpoint of its contacts (atlas label where both share it, else
    unknown), named in one warning; the contacts are not reported as matching no channel."""
    names = ["A1-A2", "A2-B1", "B1-B2", "A1"]
    tsv = write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    edf = write_edf(tmp_path / "rec.edf", signal(), names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_ieeg(edf, tmp_path / "s.h5", electrodes=tsv, coordinate_unit="mm")
    text = " ".join(str(m.message) for m in caught)
    assert "3 bipolar channel(s) (A1-A2, A2-B1, B1-B2) have no row of their own: each is placed at the midpoint" in text
    assert "match no channel" not in text and "have no electrode row" not in text
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
    np.testing.assert_allclose(ch.xyz[:2], [[10.5, 20.5, 30.5], [3.0, 11.5, 17.0]])
    assert np.isnan(ch.xyz[2]).all()  # B2's row has no position: B1-B2's stays unknown
    np.testing.assert_allclose(ch.xyz[3], [10, 20, 30])
    assert ch.regions["desikan-killiany"].tolist() == ["", "", "", "ctx-lh-superiorfrontal"]


def test_annotations_past_the_end_of_the_recording_are_named(tmp_path):
    """An EDF+C whose annotations run past its last sample (an export of part of a session): MNE
    drops them and said nothing (read at verbose 'error'); convert now warns with the count."""
    ann = [(2.5, "tone"), (30.0, "after the end"), (31.0, "after the end")]
    edf = write_edf_plus_d(tmp_path / "rec.edf", signal(n_t=2000), NAMES, list(range(10)), ann, kind="EDF+C")
    with pytest.warns(UserWarning, match=r"rec\.edf: annotations: MNE dropped 2 annotation\(s\) that fall outside the "
                                         r"recording's samples"):
        convert_ieeg(edf, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        assert list(s.events("annotations")["label"]) == ["tone"]


def test_metre_coordinates_read_as_millimetres_are_warned_about(tmp_path):
    """Electrode positions in metres with --coordinate-unit mm (or a coordsystem.json saying mm):
    every contact within 0.03 mm of the origin, all channels at one place, without a word."""
    tsv = write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows(scale=1e-3))
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    with pytest.warns(UserWarning, match=r"all 3 known electrode positions lie within 0\.031 mm of the origin .*"
                                         r"if they are in m, convert again with coordinate_unit='m'"):
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tsv, coordinate_unit="mm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_ieeg(vhdr, tmp_path / "m.h5", electrodes=tsv, coordinate_unit="m")  # the right unit: no warning


def test_clinical_system_prefixes_match_the_electrodes_table(tmp_path):
    """A Nihon Kohden / Natus export names its contacts "POL A1" and "EEG B1-Ref"; the clinic's
    electrode localisation says A1, B1. They are the same contacts: the CLI default finds each
    row, and --behavior-channel takes the bare name too."""
    from neurofm.cli import main

    names = ["POL A1", "POL A2", "EEG B1-Ref", "POL B2", "POL X1"]
    data = np.concatenate([signal(n_ch=4), 20 * np.cos(np.arange(800) / SR)[:, None]], axis=1).astype(np.float32)
    edf = write_edf(tmp_path / "EEG_0001.edf", data, names)
    write_tsv(tmp_path / "EEG_0001_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--behavior-channel", "X1=force"]) == 0
    with Session(tmp_path / "s.h5") as s:
        ch = s.channels()
        assert ch.names == names[:4]
        np.testing.assert_allclose(ch.xyz[:3], [[10, 20, 30], [11, 21, 31], [-5, 2, 3]])
        assert list(ch.regions["destrieux"][:3]) == ["ctx_lh_G_front_sup", "", "Left-Hippocampus"]
        assert s.behavior_names == ["force"]
    # two channels that both strip to A1 are ambiguous: neither takes the row
    assert list(ieeg._match(["POL A1", "EEG A1-Ref", "POL B1"], ["A1", "B1"])) == [-1, -1, 1]


def _ttl(n, onsets, level=3000.0, width_s=0.1, noise=5.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, noise, n)
    for o in onsets:
        x[int(round(o * SR)):int(round((o + width_s) * SR))] += level
    return x


def test_trigger_channel_pulses_become_events(tmp_path, capsys):
    """A clinical EDF whose events are only TTL pulses on DC inputs (no annotation): with the CLI's
    --trigger-channel each rising edge is an event labelled as asked, the channels are typed stim
    (left out by the segmenter), and a channel without pulses is an error naming it."""
    from neurofm.cli import main
    from neurofm.data import IEEGSegmenter

    n = 2000  # 10 s at 200 Hz
    face, house = [1.0, 4.0, 7.5], [2.5, 6.0]
    dc02 = -_ttl(n, house, seed=2)  # an active-low line: the pulses go down
    data = np.concatenate([signal(n_t=n, n_ch=3), _ttl(n, face)[:, None], dc02[:, None],
                           _ttl(n, [], seed=3)[:, None]], axis=1).astype(np.float32)
    edf = write_edf(tmp_path / "rec.edf", data, ["POL A1", "POL A2", "POL B1", "POL DC01", "POL DC02", "POL DC03"])
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "s.h5"), "--trigger-channel", "DC01=face",
                 "--trigger-channel", "DC02=house"]) == 0
    assert "--trigger-channel NAME=label" not in capsys.readouterr().err  # events given: no hint
    with Session(tmp_path / "s.h5") as s:
        ev = s.events("annotations")
        np.testing.assert_allclose(ev["onset"], sorted(face + house), atol=1 / SR)
        assert list(ev["label"]) == ["face", "house", "face", "house", "face"]
        np.testing.assert_allclose(ev["duration"], 0.1, atol=1 / SR)
        ch = s.channels()
        assert list(ch.types[3:5]) == ["stim", "stim"]
        plan = IEEGSegmenter(segment_s=1.0, n_patches=4).channel_plan(ch)
        assert [ch.names[i] for i in plan.keep] == ["POL A1", "POL A2", "POL B1"]
        assert "trigger channel POL DC01 (face)" in s.attrs["events_source"]
    # without the option the convert warning says how to get them
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "t.h5")]) == 0
    assert "--trigger-channel NAME=label" in capsys.readouterr().err
    assert main(["convert", "ieeg", str(edf), str(tmp_path / "u.h5"), "--trigger-channel", "DC03"]) == 2
    err = capsys.readouterr().err
    assert f"{edf}: --trigger-channel: channel 'POL DC03': no trigger pulses" in err
    assert_nothing_written(tmp_path / "u.h5")


def test_coded_stim_channel_gives_one_label_per_code(tmp_path, capsys):
    """A FIF whose events are codes on its stim channel (1 = intact, 2 = reversed sentences, as
    MNE's STI 014 carries them): --trigger-channel STI made every pulse one label and, thresholding
    half-way to the largest code, lost every code-1 pulse (35 of 66 sentences on the nui12 trial).
    Each code is now its own label, at its own onsets; a code that follows another without a
    return to the baseline is a new event; a noisy analogue line quantised to whole numbers is no
    coded channel."""
    import mne

    from neurofm.cli import main

    n = 2000  # 10 s at 200 Hz
    sti = np.zeros(n)
    onsets = {1: [1.0, 4.0, 7.5], 2: [2.5, 6.0]}
    for code, ts in onsets.items():
        for t in ts:
            sti[int(t * SR):int(t * SR) + 4] = code
    sti[int(8.5 * SR):int(8.5 * SR) + 4] = 1  # code 1 then, at once, code 2: two events
    sti[int(8.5 * SR) + 4:int(8.5 * SR) + 8] = 2
    info = mne.create_info(["A1", "A2", "STI"], SR, ["seeg", "seeg", "stim"])
    data = np.vstack([signal(n_t=n, n_ch=2).T.astype(np.float64) * 1e-6, sti[None]])
    fif = tmp_path / "rec_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(fif, verbose="error")
    assert main(["convert", "ieeg", str(fif), str(tmp_path / "s.h5"), "--trigger-channel", "STI"]) == 0
    err = capsys.readouterr().err
    assert "its pulses carry 2 event codes (1: 4 pulses, 2: 3 pulses)" in err and "STI_1, STI_2" in err
    with Session(tmp_path / "s.h5") as s:
        ev = s.events("annotations")
        np.testing.assert_allclose(ev["onset"], [1.0, 2.5, 4.0, 6.0, 7.5, 8.5, 8.52], atol=1 / SR)
        assert list(ev["label"]) == ["STI_1", "STI_2", "STI_1", "STI_2", "STI_1", "STI_1", "STI_2"]
        np.testing.assert_allclose(ev["duration"], 4 / SR, atol=1 / SR)
    assert ieeg.trigger_codes(np.round(_ttl(n, [1.0, 4.0]))) is None  # analogue noise in whole numbers
    assert ieeg.trigger_codes((sti > 0).astype(float)) is None  # one level: the TTL reading


def test_a_channel_in_its_own_unit_keeps_it_when_moved_from_a_session_file(tmp_path):
    """A BrainVision audio envelope with units n/a (nui12 trial): /continuous kept its values as
    the file gave them, not in µV, but `convert session --behavior-channel` labelled the behaviour
    with /continuous's blanket 'uV' (converting with --behavior-channel directly said ''). The
    converter now names such channels' units (/continuous attr channel_units), and both routes give
    the same values and unit for it; a voltage channel moved from the session file is µV as before."""
    import mne
    from mne.io.constants import FIFF

    n = 800
    env = np.abs(np.sin(np.arange(n) / 50.0)) * 1e-3  # an envelope, no voltage
    info = mne.create_info(["A1", "A2", "ENV", "EMG"], SR, ["seeg", "seeg", "misc", "emg"])
    data = np.vstack([signal(n_t=n, n_ch=2).T.astype(np.float64) * 1e-6, env[None], env[None] * 1e-3])
    raw = mne.io.RawArray(data, info, verbose="error")
    assert raw.info["chs"][2]["unit"] == FIFF.FIFF_UNIT_NONE  # MNE's misc: no unit (a BrainVision n/a too)
    fif = tmp_path / "rec_raw.fif"
    raw.save(fif, verbose="error")
    convert_ieeg(fif, tmp_path / "direct.h5", behavior_channels=["ENV", "EMG"])
    convert_ieeg(fif, tmp_path / "s.h5")
    ieeg.move_channels_to_behavior(tmp_path / "s.h5", tmp_path / "moved.h5", ["ENV", "EMG"])
    with Session(tmp_path / "direct.h5") as d, Session(tmp_path / "moved.h5") as m:
        assert m.h5["behavior/ENV"].attrs["unit"] == d.h5["behavior/ENV"].attrs["unit"] == ""  # was 'uV'
        np.testing.assert_allclose(m.behavior("ENV")[1], d.behavior("ENV")[1], rtol=1e-6)
        # a volt channel: the recording's V directly, µV from /continuous (as before), the same signal
        assert (m.h5["behavior/EMG"].attrs["unit"], d.h5["behavior/EMG"].attrs["unit"]) == ("uV", "V")
        np.testing.assert_allclose(m.behavior("EMG")[1], d.behavior("EMG")[1] * 1e6, rtol=1e-5)
        np.testing.assert_allclose(m.behavior("ENV")[1], env, rtol=1e-6)


def test_events_without_a_trial_type_are_no_class(tmp_path):
    """A BIDS events.tsv's pause / block markers have trial_type n/a: they are kept (label "") but
    an event-locked run's default classes are the named labels only, not a class "" ."""
    from neurofm.data import IEEGSegmenter, IEEGSegmentDataset

    vhdr = write_brainvision(tmp_path / "rec", signal(n_t=4000), NAMES)
    write_tsv(tmp_path / "rec_electrodes.tsv", ELECTRODE_HEADER, electrode_rows())
    write_tsv(tmp_path / "rec_events.tsv", ["onset", "duration", "trial_type", "value", "response_time"],
              [[2.0, 0, "face", 1, 0.5], [6.0, 0, "house", 2, "n/a"], [10.0, 0, "face", 1, 0.6],
               [14.0, 0, "house", 2, 0.7], [0.5, 0, "n/a", 99, "n/a"], [12.0, 0, "n/a", 98, "n/a"]])
    convert_ieeg(vhdr, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        assert sorted(s.events("annotations")["label"]) == ["", "", "face", "face", "house", "house"]
    ds = IEEGSegmentDataset([tmp_path / "s.h5"], IEEGSegmenter(segment_s=1.0, n_patches=4), None,
                            events="annotations", event_locked=True)
    assert ds.reader.label_map == {"face": 0, "house": 1}
    assert sorted(float(ds[i]["t0"]) for i in range(len(ds))) == [2.0, 6.0, 10.0, 14.0]


def _bids_with_physio(tmp_path, start=-0.25, rate=100.0, columns=("joystick_x", "joystick_y")):
    """A BIDS-named BrainVision recording with a joystick recorded by another device as BIDS physio."""
    folder = tmp_path / "sub-01" / "ieeg"
    vhdr = write_brainvision(folder / "sub-01_task-joy_ieeg", signal(), NAMES)
    n = int(4.25 * rate)
    joy = np.c_[np.sin(np.arange(n) / rate), np.cos(np.arange(n) / rate)]
    stem = folder / "sub-01_task-joy_recording-joystick_physio"
    import gzip
    with gzip.open(f"{stem}.tsv.gz", "wt") as f:
        f.write("".join("\t".join(f"{v:.5f}" for v in row) + "\n" for row in joy))
    meta = {"SamplingFrequency": rate, "StartTime": start, "Columns": list(columns),
            "joystick_x": {"Units": "deg"}}
    Path(f"{stem}.json").write_text(json.dumps(meta))
    return vhdr, joy, Path(f"{stem}.json")


def test_bids_physio_columns_become_behaviour_on_the_recordings_clock(tmp_path):
    """A joystick sampled by another device (BIDS *_physio.tsv.gz at 100 Hz, starting 0.25 s
    before the iEEG) was silently left out: no target to decode and no word."""
    vhdr, joy, side = _bids_with_physio(tmp_path)
    import gzip
    tsv = side.with_name(side.name.replace(".json", ".tsv.gz"))
    with gzip.open(tsv, "rt") as f:
        lines = f.read().splitlines()
    lines[5] = lines[5].split("\t")[0] + "\tn/a"  # a device's dropped sample
    with gzip.open(tsv, "wt") as f:
        f.write("\n".join(lines) + "\n")
    out = convert_ieeg(vhdr, tmp_path / "s.h5")
    with Session(out) as s:
        assert set(s.behavior_names) == {"joystick_x", "joystick_y"}
        ts, x = s.behavior("joystick_x")
        np.testing.assert_allclose(ts[:3], [-0.25, -0.24, -0.23])
        np.testing.assert_allclose(x, joy[:, 0], atol=1e-5)
        y = s.behavior("joystick_y")[1]
        assert np.isnan(y[5]) and np.isfinite(np.delete(y, 5)).all()
        assert s.behavior_unit("joystick_x") == "deg" and s.behavior_unit("joystick_y") == ""


def test_bids_physio_errors_name_the_file_and_field(tmp_path):
    vhdr, _, side = _bids_with_physio(tmp_path, columns=("joystick_x",))  # 2 columns in the TSV, 1 named
    with pytest.raises(ConvertError, match=r"_physio\.tsv\.gz: Columns: 2 columns in the file, 1 named"):
        convert_ieeg(vhdr, tmp_path / "s.h5")
    assert_nothing_written(tmp_path / "s.h5")
    side.write_text(json.dumps({"SamplingFrequency": 100.0}))
    with pytest.raises(ConvertError, match=r"_physio\.json: Columns: missing"):
        convert_ieeg(vhdr, tmp_path / "s.h5")
    vhdr, _, side = _bids_with_physio(tmp_path / "b")
    with pytest.raises(ConvertError, match=r"'joystick_x' is a /behavior name already"):
        convert_ieeg(vhdr, tmp_path / "t.h5", behavior_channels=["A1=joystick_x"])


def test_rectify_reaches_bids_physio_columns(tmp_path, capsys):
    """--rectify rectified --behavior-channel channels only: a joystick recorded as BIDS physio
    could not become a magnitude target without writing the file by hand. --rectify NAME now
    stores /behavior/NAME as |x| (attr rectified, as a rectified channel), converting or on a
    session file, and a name the file lacks is an error listing its behaviours."""
    from neurofm.cli import main

    vhdr, joy, _ = _bids_with_physio(tmp_path)
    out = tmp_path / "s.h5"
    assert main(["convert", "ieeg", str(vhdr), str(out), "--rectify", "joystick_x"]) == 0, capsys.readouterr().err
    with Session(out) as s:
        np.testing.assert_allclose(s.behavior("joystick_x")[1], np.abs(joy[:, 0]), atol=1e-5)
        assert (joy[:, 0] < -0.5).any()  # the fixture's joystick does go negative
        np.testing.assert_allclose(s.behavior("joystick_y")[1], joy[:, 1], atol=1e-5)  # not named: as recorded
        assert s.h5["behavior/joystick_x"].attrs["rectified"] and "rectified" not in s.h5["behavior/joystick_y"].attrs
        assert s.behavior_unit("joystick_x") == "deg"  # the column's Units kept
        assert s.channels().names == NAMES  # nothing left /continuous
    # a behaviour the file lacks: the error names it and lists those there; no output
    assert main(["convert", "ieeg", str(vhdr), str(tmp_path / "t.h5"), "--rectify", "joystick_z"]) == 2
    err = capsys.readouterr().err
    assert f"error: {vhdr}: /behavior/joystick_z: missing (in the session converted from it)" in err  # not the temp
    assert "['joystick_x', 'joystick_y']" in err
    assert_nothing_written(tmp_path / "t.h5")
    # a session file converted already, and a channel moved and rectified in the same command
    assert main(["convert", "session", str(out), str(tmp_path / "u.h5"), "--rectify", "joystick_y"]) == 0
    assert main(["convert", "ieeg", str(vhdr), str(tmp_path / "v.h5"), "--behavior-channel", "B2=emg",
                 "--rectify", "--rectify", "joystick_y"]) == 0
    with Session(tmp_path / "u.h5") as s, Session(tmp_path / "v.h5") as v:
        np.testing.assert_allclose(s.behavior("joystick_y")[1], np.abs(joy[:, 1]), atol=1e-5)
        assert s.h5["behavior/joystick_x"].attrs["rectified"]  # rectified before, still
        assert (v.behavior("emg")[1] >= 0).all() and v.h5["behavior/emg"].attrs["rectified"]
        assert (v.behavior("joystick_y")[1] >= 0).all() and (v.behavior("joystick_x")[1] < 0).any()


def test_electrodes_with_z_na_are_named_not_silently_unplaced(tmp_path):
    """A grid read off a photograph or schematic (x, y; z n/a) left every channel without a
    position and said nothing; BaRISTA then refused with 'add electrode coordinates'."""
    vhdr = write_brainvision(tmp_path / "rec", signal(), NAMES)
    rows = [[n, 10 + i, 20, "n/a"] for i, n in enumerate(NAMES)]
    tsv = write_tsv(tmp_path / "coords.tsv", ["name", "x", "y", "z"], rows)
    with pytest.warns(UserWarning, match=r"coords\.tsv: x, y, z: 4 of 4 electrodes have some coordinates but not "
                                         r"all \(e\.g\. A1: z n/a"):
        convert_ieeg(vhdr, tmp_path / "s.h5", electrodes=tsv, coordinate_unit="mm")
    with Session(tmp_path / "s.h5") as s:
        assert not np.isfinite(s.channels().xyz).all(axis=1).any()  # no channel placed


def test_a_long_conversion_says_how_far_it_is(tmp_path, monkeypatch, capsys):
    """Converting a 75-min 64-channel EDF printed nothing for about 2 min; a conversion that runs
    past PROGRESS_EVERY_S now prints its blocks done and the time left (and a short one nothing)."""
    import neurofm.data.ieeg as ieeg_mod

    edf = write_edf(tmp_path / "rec.edf", signal(n_t=4000), NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_ieeg(edf, tmp_path / "quiet.h5")
        assert "neurofm: converting" not in capsys.readouterr().err
        monkeypatch.setattr("neurofm.progress.PROGRESS_EVERY_S", 0.0)
        monkeypatch.setattr(ieeg_mod, "BLOCK_VALUES", 4 * 1000)  # 1000 samples of 4 channels a block
        convert_ieeg(edf, tmp_path / "s.h5")
    err = capsys.readouterr().err
    assert "neurofm: converting rec.edf: 1 of 4 blocks in" in err and "neurofm: converting rec.edf: done, 4 blocks" in err
    with Session(tmp_path / "s.h5") as a, Session(tmp_path / "quiet.h5") as b:
        np.testing.assert_array_equal(a.continuous(), b.continuous())
