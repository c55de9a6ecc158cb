"""Session file format: round trips, atomic writes, lazy windows, validation (DESIGN.md 2.1)."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from neurofm.data.session import (
    FORMAT_VERSION,
    Session,
    SessionFormatError,
    SessionWriter,
    channel_types_from_names,
    check_brain_coordinates,
    clean_labels,
    coordinate_scale,
    mm_per_unit,
)


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def write_full(path, *, spikes=True, continuous=True):
    """A session holding every group the format knows, plus an unknown one."""
    rng = np.random.default_rng(0)
    truth = {}
    with SessionWriter(path, session_id="s1", subject_id="m1", species="Mus musculus", lab="lab A",
                       source="unit-test", rig="r2") as w:
        if spikes:
            times = np.sort(rng.uniform(0.0, 10.0, 500))
            unit_index = rng.integers(0, 4, 500)
            w.add_units(["u0", "u1", "u2", "u3"], brain_region=["CA1", "CA1", "", "DG"], electrode=[0, 1, 2, 3],
                        waveform_mean=np.ones((4, 8, 2), dtype=np.float32))
            w.add_spikes(times, unit_index, t_start=0.0, t_end=10.0)
            truth.update(times=times, unit_index=unit_index)
        if continuous:
            data = rng.standard_normal((2000, 3)).astype(np.float32)  # 10 s at 200 Hz
            w.add_continuous(data[:1500], sampling_rate=200.0, unit="uV", t_start=0.0)
            w.append_continuous(data[1500:])
            w.add_channels(["A1", "A2", "B1"], x=[1.0, 2.0, np.nan], y=[3.0, 4.0, np.nan], z=[5.0, 6.0, np.nan],
                           regions={"destrieux": ["G_front_sup", "", "S_central"], "lobe": ["frontal", "", "parietal"]},
                           bad=[False, True, False], coordinate_space="ACPC", types=["seeg", "seeg", "ecg"])
            truth["data"] = data
        ts = np.linspace(0.0, 10.0, 101)
        w.add_behavior("position", ts, np.stack([ts, -ts], axis=1), unit="cm")
        w.add_behavior("speed", ts, np.abs(np.sin(ts)))
        w.add_stimulus("movie", np.arange(5) * 2.0, np.arange(5 * 4 * 6, dtype=np.uint8).reshape(5, 4, 6))
        w.add_events("words", [1.0, 2.5], [0.2, 0.3], ["cat", "dog"])
        w.add_intervals("trials", [0.0, 5.0], [4.0, 9.0], condition=["left", "right"], reward=[1.0, 0.0])
        w.add_array("my_lab/notes/gains", np.arange(3.0), origin="amplifier")
    return truth


@pytest.mark.parametrize("spikes,continuous", [(True, False), (False, True), (True, True)])
def test_round_trip_every_group(tmp_path, spikes, continuous):
    path = tmp_path / "s.h5"
    truth = write_full(path, spikes=spikes, continuous=continuous)
    assert temp_files(tmp_path) == []
    with Session(path) as s:
        assert s.session_id == "s1" and s.subject_id == "m1"
        assert s.attrs["species"] == "Mus musculus" and s.attrs["rig"] == "r2"
        assert s.kinds == [k for k, on in (("spikes", spikes), ("continuous", continuous)) if on]
        assert (s.t_start, s.t_end) == (0.0, 10.0)
        if spikes:
            t, u = s.spikes()
            np.testing.assert_array_equal(t, truth["times"])
            np.testing.assert_array_equal(u, truth["unit_index"])
            table = s.unit_table()
            assert table["id"].tolist() == ["u0", "u1", "u2", "u3"]
            assert table["brain_region"].tolist() == ["CA1", "CA1", "", "DG"]
            assert table["waveform_mean"].shape == (4, 8, 2)
        else:
            with pytest.raises(SessionFormatError, match="no spikes"):
                s.spikes(0, 1)
        if continuous:
            np.testing.assert_array_equal(s.continuous(), truth["data"])
            assert s.sampling_rate == 200.0 and s.n_channels == 3
            ch = s.channels()
            assert ch.names == ["A1", "A2", "B1"]
            np.testing.assert_array_equal(ch.xyz[:2], [[1, 3, 5], [2, 4, 6]])
            assert np.isnan(ch.xyz[2]).all()
            assert ch.regions["destrieux"].tolist() == ["G_front_sup", "", "S_central"]
            assert ch.regions["lobe"].tolist() == ["frontal", "", "parietal"]
            assert ch.bad.tolist() == [False, True, False]
            assert ch.types.tolist() == ["seeg", "seeg", "ecg"]
            assert ch.coordinate_space == "ACPC"
        else:
            with pytest.raises(SessionFormatError, match="no continuous"):
                s.continuous(0, 1)
        ts, pos = s.behavior("position")
        assert pos.shape == (101, 2) and np.allclose(pos[:, 1], -ts)
        assert s.h5["behavior/position"].attrs["unit"] == "cm"
        ts, speed = s.behavior("speed", 2.0, 3.0)
        assert ts[0] >= 2.0 and ts[-1] < 3.0 and speed.shape == (10,)
        ft, frames = s.stimulus("movie", 1.0, 5.0)
        np.testing.assert_array_equal(ft, [2.0, 4.0])
        assert frames.shape == (2, 4, 6) and frames[0, 0, 0] == 24
        ev = s.events("words")
        assert ev["label"].tolist() == ["cat", "dog"] and ev["duration"].tolist() == [0.2, 0.3]
        tr = s.intervals("trials")
        assert tr["condition"].tolist() == ["left", "right"] and tr["end"].tolist() == [4.0, 9.0]
        # unknown groups are kept and listed, never an error
        assert s.extra_groups == ["my_lab"]
        np.testing.assert_array_equal(s.h5["my_lab/notes/gains"][()], np.arange(3.0))
        assert s.h5["my_lab/notes/gains"].attrs["origin"] == "amplifier"


def test_summary_and_describe(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path)
    with Session(path) as s:
        summary = s.summary()
        text = s.describe()
    json.dumps(summary)  # plain JSON types only
    assert summary["kinds"] == ["spikes", "continuous"]
    assert summary["n_units"] == 4 and summary["n_spikes"] == 500
    assert summary["duration_s"] == 10.0 and summary["sampling_rate"] == 200.0 and summary["n_channels"] == 3
    assert summary["atlases"] == ["destrieux", "lobe"] and summary["n_bad_channels"] == 1
    assert summary["behavior"] == ["position", "speed"] and summary["behavior_shapes"]["position"] == [101, 2]
    assert summary["events"] == ["words"] and summary["intervals"] == ["trials"]
    assert summary["session_id"] == "s1" and summary["extra_groups"] == ["my_lab"]
    assert summary["channel_types"] == {"ecg": 1, "seeg": 2}
    for piece in ("session s1", "4 units, 500 spikes", "3 channels x 2,000 samples at 200 Hz", "destrieux, lobe",
                  "position (101 x 2)", "words (2; labels cat 1, dog 1)", "trials (2)", "my_lab"):
        assert piece in text, piece


def test_crash_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with SessionWriter(path, session_id="s") as w:
            w.add_units(["a"])
            w.add_spikes([0.1, 0.2], [0, 0])
            raise RuntimeError("boom")
    assert not path.exists() and temp_files(tmp_path) == []
    # a failed rewrite leaves the previous file untouched
    write_full(path, continuous=False)
    before = path.read_bytes()
    with pytest.raises(SessionFormatError):
        with SessionWriter(path, session_id="s") as w:
            w.add_behavior("x", [0.0, 1.0, 1.0], [1, 2, 3])
    assert path.read_bytes() == before and temp_files(tmp_path) == []
    with pytest.raises(FileExistsError, match="overwrite"):
        SessionWriter(path, session_id="s", overwrite=False)
    assert temp_files(tmp_path) == []


def test_writer_dropped_without_close_removes_temp(tmp_path):
    w = SessionWriter(tmp_path / "s.h5", session_id="s")
    assert len(temp_files(tmp_path)) == 1
    del w
    assert temp_files(tmp_path) == [] and not (tmp_path / "s.h5").exists()


class ReadLog:
    """Records the selection of every h5py Dataset read, per dataset name."""

    def __init__(self, monkeypatch):
        self.reads: dict[str, list] = {}
        original = h5py.Dataset.__getitem__

        def getitem(dset, sel, *args, **kwargs):
            self.reads.setdefault(dset.name, []).append(sel)
            return original(dset, sel, *args, **kwargs)

        monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)

    def chunks(self, dset: h5py.Dataset, name: str) -> set[int]:
        """Chunk indices (along axis 0) touched by the recorded reads of ``name``."""
        rows = dset.chunks[0]
        touched = set()
        for sel in self.reads.get(name, []):
            sel = sel[0] if isinstance(sel, tuple) and sel else sel
            if isinstance(sel, slice):
                start, stop, _ = sel.indices(dset.shape[0])
                if stop > start:
                    touched.update(range(start // rows, (stop - 1) // rows + 1))
            elif isinstance(sel, (int, np.integer)):
                touched.add(int(sel) // rows)
            else:  # () or Ellipsis: the whole dataset
                touched.update(range(int(np.ceil(dset.shape[0] / rows))))
        return touched


def test_spike_window_reads_only_its_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    n = 1_000_000  # 10,000 s at 100 spikes/s: 16 chunks of 65,536 spikes
    times = np.sort(rng.uniform(0.0, 10_000.0, n))
    unit_index = rng.integers(0, 50, n)
    path = tmp_path / "big.h5"
    with SessionWriter(path, session_id="big") as w:
        w.add_units([f"u{i}" for i in range(50)])
        w.add_spikes(times, unit_index, t_start=0.0, t_end=10_000.0)
    with Session(path) as s:
        n_chunks = int(np.ceil(n / s.h5["spikes/times"].chunks[0]))
        assert n_chunks >= 15
        log = ReadLog(monkeypatch)
        t, u = s.spikes(5_000.3, 5_001.3)
        for name in ("/spikes/times", "/spikes/unit_index"):
            touched = log.chunks(s.h5[name], name)
            assert 1 <= len(touched) <= 2, (name, touched, log.reads[name])
        # the recorder sees a full read as every chunk (guards the guard)
        s.spikes()
        assert len(log.chunks(s.h5["/spikes/times"], "/spikes/times")) == n_chunks
        i0, i1 = np.searchsorted(times, [5_000.3, 5_001.3])
        np.testing.assert_array_equal(t, times[i0:i1])
        np.testing.assert_array_equal(u, unit_index[i0:i1])


def test_spike_windows_match_brute_force(tmp_path):
    rng = np.random.default_rng(2)
    # spikes placed exactly on index bucket edges, duplicates, and a recording not starting at 0
    times = np.sort(np.concatenate([rng.uniform(100.0, 160.0, 3000), np.arange(100.0, 160.0, 1.0), [130.0] * 5]))
    unit_index = rng.integers(0, 3, times.size)
    path = tmp_path / "s.h5"
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b", "c"])
        w.add_spikes(times, unit_index, t_start=100.0, t_end=160.0)
    edges = np.concatenate([rng.uniform(90.0, 170.0, 60), np.arange(99.0, 162.0, 1.0), [130.0, 130.0 + 1e-12]])
    with Session(path) as s:
        for t0 in edges:
            for t1 in (t0, t0 + 0.05, t0 + 1.0, t0 + 7.3, np.nextafter(t0, -np.inf)):
                got, _ = s.spikes(t0, t1)
                want = times[(times >= t0) & (times < t1)]
                np.testing.assert_array_equal(got, want, err_msg=f"[{t0}, {t1})")
        np.testing.assert_array_equal(s.spikes(None, 120.0)[0], times[times < 120.0])
        np.testing.assert_array_equal(s.spikes(150.0, None)[0], times[times >= 150.0])


def test_continuous_window_reads_only_its_chunks(tmp_path, monkeypatch):
    n_t, n_ch, sr = 60_000, 64, 1000.0  # 60 s, ~30 chunks of 2,048 rows
    data = (np.arange(n_t, dtype=np.float32)[:, None] + np.arange(n_ch, dtype=np.float32) / 100)
    path = tmp_path / "cont.h5"
    with SessionWriter(path, session_id="c") as w:
        w.add_continuous(data, sampling_rate=sr, t_start=2.0)
    with Session(path) as s:
        dset = s.h5["continuous/data"]
        assert np.ceil(n_t / dset.chunks[0]) >= 20
        log = ReadLog(monkeypatch)
        x = s.continuous(32.0, 32.5)  # rows 30,000..30,499
        assert 1 <= len(log.chunks(dset, "/continuous/data")) <= 2
        np.testing.assert_array_equal(x, data[30_000:30_500])
        assert s.continuous(-5.0, 2.01).shape == (10, n_ch)  # clipped at the recording start
        assert s.continuous(61.9, 70.0).shape == (100, n_ch)  # and at its end
        assert s.continuous(80.0, 90.0).shape == (0, n_ch)


def test_unsorted_spikes_are_sorted_with_warning(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.warns(UserWarning, match="not sorted"):
        with SessionWriter(path, session_id="s") as w:
            w.add_units(["a", "b"])
            w.add_spikes([0.3, 0.1, 0.2], [0, 1, 0])
    with Session(path) as s:
        t, u = s.spikes()
    assert t.tolist() == [0.1, 0.2, 0.3] and u.tolist() == [1, 0, 0]


def test_behavior_timestamps_must_increase(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(SessionFormatError) as err:
        with SessionWriter(path, session_id="s") as w:
            w.add_behavior("speed", [0.0, 0.2, 0.1], [1.0, 2.0, 3.0])
    msg = str(err.value)
    assert str(path) in msg and "/behavior/speed/timestamps" in msg and "sort the samples" in msg
    assert not path.exists() and temp_files(tmp_path) == []


def test_nan_in_continuous_names_channel_and_time(tmp_path):
    data = np.zeros((1000, 3), dtype=np.float32)
    data[500, 1] = np.nan
    data[700:710, 2] = np.inf
    path = tmp_path / "s.h5"
    with pytest.raises(SessionFormatError) as err:
        with SessionWriter(path, session_id="s") as w:
            w.add_continuous(data, sampling_rate=100.0, channel_names=["a", "b", "c"])
    msg = str(err.value)
    assert "channel b" in msg and "t = 5.0000 s" in msg and "mark_bad" in msg and "/continuous/data" in msg
    assert not path.exists() and temp_files(tmp_path) == []
    with SessionWriter(path, session_id="s") as w:
        w.add_continuous(data[:600], sampling_rate=100.0, nan_policy="mark_bad")
        w.add_channels(["a", "b", "c"])
        w.append_continuous(data[600:])
    with Session(path) as s:
        assert s.channels().bad.tolist() == [False, True, True]
        x = s.continuous()
    assert np.isfinite(x).all() and x[500, 1] == 0 and x[705, 2] == 0


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path, continuous=False)
    with h5py.File(path, "a") as f:
        f.attrs["neurofm_format"] = FORMAT_VERSION + 1
    with pytest.raises(SessionFormatError) as err:
        Session(path)
    msg = str(err.value)
    assert str(path) in msg and "neurofm_format" in msg and "newer" in msg and "pip install -U neurofm" in msg


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SessionFormatError) as err:
        Session(cut)
    assert str(cut) in str(err.value) and "truncated" in str(err.value) and "write it again" in str(err.value)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SessionFormatError, match="neurofm_format.*neurofm convert"):
        Session(foreign)
    with pytest.raises(FileNotFoundError, match="neurofm convert"):
        Session(tmp_path / "missing.h5")


def test_damaged_structure_is_reported(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path)
    with h5py.File(path, "a") as f:
        del f["behavior/speed/values"]
        f["behavior/speed/values"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(SessionFormatError, match=r"/behavior/speed/values: 3 samples for 101 timestamps"):
        Session(path)


def test_check_window(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path, continuous=False)
    with Session(path) as s:
        s.check_window(0.0, 10.0)
        with pytest.raises(SessionFormatError) as err:
            s.check_window(0.0, 12.5)
        msg = str(err.value)
        assert str(path) in msg and "window" in msg and "12.500 s is longer than the recording (10.000 s" in msg
        assert "at most 10.000 s" in msg
        with pytest.raises(SessionFormatError, match="empty"):
            s.check_window(3.0, 3.0)


def test_input_validation_names_field(tmp_path):
    with SessionWriter(tmp_path / "s.h5", session_id="s") as w:
        with pytest.raises(SessionFormatError, match="/units/id.*not unique"):
            w.add_units(["a", "a"])
        with pytest.raises(SessionFormatError, match="/spikes.*add_units"):
            w.add_spikes([0.1], [0])
        w.add_units(["a", "b"])
        with pytest.raises(SessionFormatError, match=r"/spikes/unit_index.*\[0, 2\)"):
            w.add_spikes([0.1], [2])
        with pytest.raises(SessionFormatError, match="/spikes/times.*NaN"):
            w.add_spikes([np.nan], [0])
        with pytest.raises(SessionFormatError, match="add_continuous"):
            w.append_continuous(np.zeros((2, 2)))
        with pytest.raises(SessionFormatError, match="/intervals/t.*end >= start"):
            w.add_intervals("t", [1.0], [0.5])
        w.add_events("e", [1.0])
        with pytest.raises(SessionFormatError, match="/events/e.*twice"):
            w.add_events("e", [2.0])


def test_session_pickles_for_workers(tmp_path):
    path = tmp_path / "s.h5"
    write_full(path)
    with Session(path) as s:
        s.behavior("speed", 0, 1)
        clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(clone.spikes(1.0, 2.0)[0], Session(path).spikes(1.0, 2.0)[0])
    clone.close()


def test_label_and_unit_helpers():
    assert clean_labels(["n/a", "Unknown", None, float("nan"), " ctx_lh_X ", b"Left-Hippocampus"]).tolist() == [
        "", "", "", "", "ctx_lh_X", "Left-Hippocampus"]
    assert mm_per_unit("m") == 1000.0 and mm_per_unit("um") == 1e-3 and mm_per_unit("pixels") is None


def test_channel_types_from_names():
    names = ["DC01", "dc-2", "EKG1", "ECG", "POL DC03", "EEG EKG2", "STI 014", "TRIG", "Markers", "EMG1", "EOG L",
             "RESP", "SpO2", "REF", "DCA1", "EMGA", "LA1", "L'3", "RH 03", "Cz", "STIR1"]
    assert channel_types_from_names(names).tolist() == [
        "misc", "misc", "ecg", "ecg", "misc", "ecg", "stim", "stim", "stim", "emg", "eog",
        "resp", "bio", "ref", "", "", "", "", "", "", ""]


def test_behaviour_and_sensor_names_are_typed_non_neural():
    """A lab's grip force, movement trace, accelerometer or microphone recorded as an EDF channel
    (typed eeg by MNE), or a BrainAmp AUX1/AUX2 input (a joystick, a photo sensor), was fed to the
    model as brain signal; anterior-cingulate shafts ACC1..
    and names that only start with the letters (MOVA1, MICA2) stay neural."""
    said = {"GRIP": "misc", "GRIP_FORCE": "misc", "FORCE": "misc", "MOV_RIGHT": "misc", "mov_left": "misc",
            "ACC_X": "misc", "ACC_R_X_D2_TM": "misc", "ACCZ": "misc", "ACCEL1": "misc", "GYRO_Y": "misc",
            "EYE_X": "misc", "EYEGAZE": "misc", "AUDIO": "misc", "MIC": "misc", "ANALOG_R_ROTA_CH": "misc",
            "AUX1": "misc", "AUX_2": "misc", "TRIG2": "stim", "STIM": "stim", "PHOTODIODE": "stim", "PHOTO": "stim", "RESP2": "resp", "BREATH": "resp",
            "PULSE": "bio", "SpO2": "bio", "HEOG": "eog", "REF": "ref", "GND": "ref"}
    neural = ["ACC1", "ACC 2", "ACC_3", "MOVA1", "MICA2", "FORCEPS1", "ECOG_R_01", "LFP_R_01", "EYEBROW1", "GRIPPER",
              "AUXA1"]
    assert dict(zip(said, channel_types_from_names(list(said)))) == said
    assert channel_types_from_names(neural).tolist() == [""] * len(neural)


def test_channel_types_from_real_world_names():
    """Names from clinical EDF/BrainVision exports. Body leads with a side after the lead (EKGL,
    EKGR: Nihon Kohden / Natus), glued or separated, and leads named after a label ("Chin EMG")
    are non-neural; names that only CONTAIN the letters after a side or structure prefix
    (sEEG shafts LEKG.., LEC.., REMG..), grid contacts E1/E2 and shafts DCA, EMGA stay neural."""
    said = {"EKGL": "ecg", "EKGR": "ecg", "ekgl": "ecg", "ECGR1": "ecg", "ECG1": "ecg", "ECG L": "ecg",
            "EKG-L": "ecg", "EKG+": "ecg", "ECG2-ECG1": "ecg", "POL EKGR": "ecg", "EEG EKGL-Ref": "ecg",
            "X1-EKG": "ecg", "EMG_L": "emg", "EMGL": "emg", "EMG RT": "emg", "Chin EMG": "emg", "Rt EMG": "emg",
            "EOGR": "eog", "EOGLEFT": "eog", "EOG-R": "eog", "TRIGGER": "stim", "DC04": "misc", "Pleth": "bio"}
    neural = ["LEKG1", "LEKG", "LEC1", "REMG3", "LEMG1", "EKGLA1", "EMGA2", "E1", "E2", "DCA1", "REFL1", "RH 03",
              "L'3", "Fp1", "STG4", "ST1", "LOF10"]
    assert dict(zip(said, channel_types_from_names(list(said)))) == said
    assert channel_types_from_names(neural).tolist() == [""] * len(neural)


def test_coordinate_unit_helpers(recwarn):
    assert coordinate_scale("cm", "rec.edf") == 10.0 and coordinate_scale("microns", "rec.edf") == 1e-3
    with pytest.raises(SessionFormatError, match=r"^rec.edf: coordinate_unit: 'px' is not a length unit.*m, cm, mm"):
        coordinate_scale("px", "rec.edf")
    xyz = np.array([[10.0, -20, 30], [np.nan] * 3])
    assert not check_brain_coordinates(xyz, 1.0, "e.tsv", "x, y, z")  # a head in mm: fine
    assert check_brain_coordinates(xyz * 1e3, 1.0, "e.tsv", "x, y, z")  # microns read as mm
    assert check_brain_coordinates(xyz * 1e3, 1e3, "e.tsv", "x, y, z")  # mm read as metres
    um, m = (str(w.message) for w in recwarn)
    assert um.startswith("e.tsv: x, y, z: 1 of 1 known electrode positions lie more than 300 mm") and "'um'" in um
    assert "read as m" in m and "in mm 30 mm" in m and "--coordinate-unit cm|mm" in m
