"""`neurofm convert` and `neurofm inspect` (the I/O half of the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurofm.cli import main
from neurofm.data.session import FORMAT_VERSION, Session, SessionWriter

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real recordings not available)")
REPO = Path(__file__).resolve().parents[1]

JSON_KEYS = {"kinds", "n_units", "n_spikes", "duration_s", "behavior", "n_channels", "sampling_rate", "atlases",
             "events", "intervals", "session_id"}


def write_session(path: Path) -> Path:
    with SessionWriter(path, session_id="demo", subject_id="m1") as w:
        w.add_units(["a", "b"])
        w.add_spikes([0.5, 1.0, 2.5], [0, 1, 0], t_start=0.0, t_end=4.0)
        w.add_continuous(np.zeros((400, 2), dtype=np.float32), sampling_rate=100.0)
        w.add_channels(["c1", "c2"], x=[1, 2], y=[0, 0], z=[0, 0], regions={"desikan": ["ctx-lh-insula", ""]})
        w.add_behavior("speed", np.linspace(0, 4, 9), np.arange(9.0))
        w.add_events("cues", [1.0, 2.0], label=["left", "right"])
        w.add_intervals("trials", [0.0, 2.0], [1.5, 3.5])
    return path


def write_brainvision(base: Path, data_uv: np.ndarray, names, sfreq=100.0) -> Path:
    base.with_suffix(".eeg").write_bytes(np.asarray(data_uv, dtype="<f4").tobytes())
    channels = "\n".join(f"Ch{i + 1}={n},,1,µV" for i, n in enumerate(names))
    base.with_suffix(".vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={base.name}.eeg\nMarkerFile={base.name}.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
        f"NumberOfChannels={len(names)}\nSamplingInterval={1e6 / sfreq:g}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n"
        f"[Channel Infos]\n{channels}\n", encoding="utf-8")
    base.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={base.name}.eeg\n\n[Marker Infos]\nMk1=New Segment,,1,1,0,20200101000000000000\n"
        "Mk2=Comment,cue,51,1,0\n", encoding="utf-8")
    return base.with_suffix(".vhdr")


def test_inspect_json_and_text(tmp_path, capsys):
    path = write_session(tmp_path / "s.h5")
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert JSON_KEYS <= set(summary)
    assert summary["kinds"] == ["spikes", "continuous"] and summary["n_units"] == 2 and summary["n_spikes"] == 3
    assert summary["duration_s"] == 4.0 and summary["sampling_rate"] == 100.0 and summary["n_channels"] == 2
    assert summary["atlases"] == ["desikan"] and summary["behavior"] == ["speed"]
    assert summary["events"] == ["cues"] and summary["intervals"] == ["trials"] and summary["session_id"] == "demo"
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "session demo" in text and "2 units, 3 spikes" in text and "atlases: desikan" in text


def test_inspect_bad_files(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.h5")]) == 2
    assert "none.h5: no such session file" in capsys.readouterr().err
    path = write_session(tmp_path / "s.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:3000])
    assert main(["inspect", str(cut)]) == 2
    err = capsys.readouterr().err
    assert f"{cut}: /: cannot be opened as HDF5" in err and "write it again" in err
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs["neurofm_format"] = FORMAT_VERSION + 1
    assert main(["inspect", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "neurofm_format" in err and "newer" in err and "pip install -U neurofm" in err


def test_convert_ieeg_with_nan_option(tmp_path, capsys):
    data = np.random.default_rng(0).normal(1.0, 5.0, (300, 3)).astype(np.float32)  # a constant channel is marked bad
    data[120, 1] = np.nan
    vhdr = write_brainvision(tmp_path / "rec", data, ["L1", "L2", "L3"])
    (tmp_path / "rec_electrodes.tsv").write_text("name\tx\ty\tz\taal\nL1\t1\t2\t3\tPrecentral_L\nL2\t4\t5\t6\tn/a\n")
    out = tmp_path / "s.h5"
    assert main(["convert", "ieeg", str(vhdr), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(vhdr) in err and "channel L2 at t = 1.2000 s" in err and "--nan mark-bad" in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    assert main(["convert", "ieeg", str(vhdr), str(out), "--nan", "mark-bad", "--session-id", "p1",
                 "--coordinate-unit", "mm"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "1 of 3 neural channels have no electrode row" in captured.err  # converter warnings shown as notes
    with Session(out) as s:
        assert s.session_id == "p1" and s.channels().bad.tolist() == [False, True, False]
        assert s.channels().regions["aal"].tolist() == ["Precentral_L", "", ""]
    assert main(["convert", "ieeg", str(vhdr), str(out), "--nan", "mark-bad", "--no-overwrite"]) == 2
    assert "exists" in capsys.readouterr().err


def test_convert_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["convert", "nwb", str(tmp_path / "missing.nwb"), str(out)]) == 2
    assert "missing.nwb: no such NWB file" in capsys.readouterr().err
    bogus = tmp_path / "bogus.nwb"
    bogus.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert main(["convert", "nwb", str(bogus), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bogus}: /: cannot be opened as NWB" in err and "truncated" in err
    vhdr = write_brainvision(tmp_path / "rec", np.zeros((100, 2), dtype=np.float32), ["A", "B"])
    tsv = tmp_path / "wrong_electrodes.tsv"
    tsv.write_text("name\tx\ty\tz\nQ1\t1\t2\t3\n")
    assert main(["convert", "ieeg", str(vhdr), str(out), "--electrodes", str(tsv)]) == 2
    err = capsys.readouterr().err
    assert str(tsv) in err and str(vhdr) in err and "['Q1']" in err and "['A', 'B']" in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_convert_coordinate_unit_is_a_choice(tmp_path, capsys):
    """An unknown unit used to be accepted and written as unknown positions for every channel."""
    vhdr = write_brainvision(tmp_path / "rec", np.zeros((100, 2), dtype=np.float32), ["A1", "A2"])
    out = tmp_path / "s.h5"
    with pytest.raises(SystemExit) as done:
        main(["convert", "ieeg", str(vhdr), str(out), "--coordinate-unit", "furlong"])
    assert done.value.code == 2
    assert "--coordinate-unit: invalid choice: 'furlong'" in capsys.readouterr().err
    assert not out.exists()


def test_linear_track_bench_prints_convert_warnings_whole(tmp_path, monkeypatch, capsys):
    """bench/linear_track.py cut converter warnings at 160 characters ("(first at sample )")."""
    import importlib.util
    import warnings

    spec = importlib.util.spec_from_file_location("bench_linear_track", REPO / "bench" / "linear_track.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    message = ("linear-track.nwb: processing/behavior/Position/position/timestamps: 1 sample(s) repeat the previous "
               "timestamp (first at sample 57123, t = 5348.2 s); kept the first of each")

    class Stop(Exception):
        pass

    def convert(src, out):
        warnings.warn(message)
        return out

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(bench, "convert_nwb", convert)
    monkeypatch.setattr(bench, "decoding_setup", stop)
    nwb = tmp_path / "x.nwb"
    nwb.write_bytes(b"")
    with pytest.raises(Stop):
        bench.main(["--nwb", str(nwb), "--quick"])
    assert f"(convert warning: {message})" in capsys.readouterr().out


@needs_shared
def test_linear_track_through_the_console_script(tmp_path):
    """The installed entry point, end to end, on the real NWB recording."""
    out = tmp_path / "lt.h5"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    cmd = [sys.executable, "-c", "import sys; from neurofm.cli import main; sys.exit(main(sys.argv[1:]))"]
    done = subprocess.run(cmd + ["convert", "nwb", str(SHARED / "spikes" / "linear-track.nwb"), str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "repeat the previous timestamp" in done.stderr  # the one duplicated camera stamp, reported
    done = subprocess.run(cmd + ["inspect", str(out), "--json"], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    summary = json.loads(done.stdout)
    assert summary["n_units"] == 31 and summary["n_spikes"] == 28_829 and summary["behavior"] == ["position"]
    assert summary["kinds"] == ["spikes"] and summary["session_id"] == "linear-track"
    assert summary["duration_s"] > 1968.0


@needs_shared
def test_sample_seeg_inspect(tmp_path, capsys):
    out = tmp_path / "seeg.h5"
    ieeg = SHARED / "ieeg"
    assert main(["convert", "ieeg", str(ieeg / "sample_seeg.edf"), str(out), "--electrodes",
                 str(ieeg / "sample_seeg_electrodes.tsv")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_channels"] == 98 and summary["sampling_rate"] == 1000.0 and summary["duration_s"] == 20.0
    assert set(summary["atlases"]) == {"destriuex", "desikan-killiany"}
    assert summary["events"] == ["annotations"] and summary["n_events"] == {"annotations": 3}
    # the classes `finetune --task classify --events annotations` would learn, most frequent first
    assert summary["event_labels"] == {"annotations": {"test annotation": 2, "test mark": 1}}
    assert main(["inspect", str(out)]) == 0
    assert "  events     annotations (3; labels test annotation 2, test mark 1)\n" in capsys.readouterr().out


def test_split_writes_intervals_used_by_time_block_split(tmp_path):
    import numpy as np

    from neurofm.cli import main
    from neurofm.data.session import Session, SessionFormatError, SessionWriter
    from neurofm.data.splits import TimeBlockSplit

    path = tmp_path / "s.h5"
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b"])
        w.add_spikes(np.linspace(0.5, 99.5, 200), np.arange(200) % 2, t_start=0.0, t_end=100.0)
    assert main(["split", str(path), "--train", "0:40", "--train", "60:100", "--valid", "41:45",
                 "--test", "46:59"]) == 0
    with Session(path) as s:
        assert s.intervals("train")["start"].tolist() == [0.0, 60.0]
        blocks = TimeBlockSplit()(s)
    assert blocks["test"].pairs() == [(46.0, 59.0)]
    # existing blocks are kept unless --overwrite; a block outside the recording is refused
    assert main(["split", str(path), "--train", "0:40", "--valid", "41:45", "--test", "46:59"]) == 2
    with pytest.raises(SessionFormatError, match="inside the recording"):
        from neurofm.data.session import set_intervals

        set_intervals(path, {"test": [(90.0, 120.0)]}, overwrite=True)
    with Session(path) as s:  # the failed call left the file as it was
        assert s.intervals("test")["end"].tolist() == [59.0]


def test_split_refuses_blocks_that_overlap(tmp_path, capsys):
    """`neurofm split FILE --train 0:500 --valid 490:560 --test 565:690` was written ("data modules
    now split by them") and only the next run's data setup refused it. Overlapping blocks, across
    splits or within one, and a block that overlaps a split the file keeps, are now refused by
    split itself, naming the file, the blocks and the fix, and the file is left as it was."""
    from neurofm.data.session import SessionFormatError, set_intervals

    path = tmp_path / "s.h5"
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b"])
        w.add_spikes(np.linspace(0.5, 99.5, 200), np.arange(200) % 2, t_start=0.0, t_end=100.0)
    assert main(["split", str(path), "--train", "0:50", "--valid", "48:60", "--test", "65:100"]) == 2
    err = capsys.readouterr().err
    assert (f"neurofm split: error: {path}: /intervals: split blocks 'train' and 'valid' overlap in time (a window "
            f"could then be in both) (give blocks that do not overlap, with a gap between splits") in err
    assert main(["split", str(path), "--train", "0:30", "--train", "20:50", "--valid", "55:60", "--test", "65:100"]) == 2
    assert "/intervals/train: blocks [0.0, 30.0) and [20.0, 50.0) overlap (give blocks that do not overlap" in \
        capsys.readouterr().err
    with Session(path) as s:
        assert "train" not in s.interval_names  # nothing written
    assert main(["split", str(path), "--train", "0:50", "--valid", "55:60", "--test", "65:100"]) == 0
    with pytest.raises(SessionFormatError, match="split blocks 'valid' and 'test' overlap"):
        set_intervals(path, {"test": [(58.0, 100.0)]}, overwrite=True)  # against the file's own valid block
    with Session(path) as s:
        assert s.intervals("test")["start"].tolist() == [65.0]


def test_convert_session_angle_errors_and_degrees(tmp_path, capsys):
    """`convert session --angle`: degrees from the unit attr (or --angle-unit), NaN kept, and
    errors that name the field and the fix, writing nothing."""
    src = tmp_path / "hd.h5"
    ts = np.arange(0.0, 10.0, 0.02)
    deg = np.mod(ts * 40.0, 360.0)
    deg[5] = np.nan  # tracking lost
    with SessionWriter(src, session_id="hd") as w:
        w.add_units(["a", "b"])
        w.add_spikes(np.array([1.0, 2.0, 3.0]), np.array([0, 1, 0]), t_start=0.0, t_end=10.0)
        w.add_behavior("hd", ts, deg, unit="degrees")
        w.add_behavior("hd_nounit", ts, deg)
    out = tmp_path / "out.h5"
    assert main(["convert", "session", str(src), str(out), "--angle", "hd=hd_cs"]) == 0
    with Session(out) as s:
        _, cs = s.behavior("hd_cs")
        assert s.h5["behavior/hd_cs"].attrs["transform"] == "cosine and sine of /behavior/hd (degrees)"
    expect = np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], 1)
    np.testing.assert_allclose(cs, expect, atol=1e-6)
    assert np.isnan(cs[5]).all()
    capsys.readouterr()
    bad = tmp_path / "bad.h5"
    assert main(["convert", "session", str(src), str(bad), "--angle", "hd_nounit"]) == 2
    err = capsys.readouterr().err
    assert "hd.h5: /behavior/hd_nounit attrs unit: no unit: not an angle unit" in err and "--angle-unit" in err
    assert main(["convert", "session", str(src), str(bad), "--angle", "speed"]) == 2
    assert "/behavior/speed: missing" in capsys.readouterr().err and not bad.exists()
    assert main(["convert", "session", str(src), str(bad), "--angle", "hd=a/b"]) == 2  # no nested group
    assert "--angle hd=a/b: give NAME or NAME=as_name, as_name without '/'" in capsys.readouterr().err
    assert main(["convert", "session", str(src), str(bad), "--angle", "hd_nounit", "--angle-unit", "deg"]) == 0
    with Session(bad) as s:
        np.testing.assert_allclose(s.behavior("hd_nounit_cos_sin")[1], expect, atol=1e-6)
    # --angle and --speed-from in one command: a step that fails leaves no output (the angle was
    # written before the speed failed); a session file edited in place, --no-overwrite or not
    assert main(["convert", "session", str(src), str(tmp_path / "two.h5"), "--angle", "hd", "--speed-from",
                 "hd_nounit"]) == 2
    assert "/behavior/hd_nounit attrs unit" in capsys.readouterr().err and not (tmp_path / "two.h5").exists()
    assert main(["convert", "session", str(bad), str(bad), "--angle", "hd", "--no-overwrite"]) == 0
    with Session(bad) as s:
        assert {"hd_nounit_cos_sin", "hd_cos_sin"} <= set(s.behavior_names)


def test_convert_nwb_angle_while_converting(tmp_path, capsys):
    """`convert nwb --angle` adds the cosine and sine in the same command (it was ignored without
    a word: only `convert session` read it); an angle the file lacks writes nothing at all."""
    pynwb = pytest.importorskip("pynwb")
    import datetime

    from pynwb.behavior import CompassDirection, Position, SpatialSeries

    nwb = pynwb.NWBFile(session_description="hd", identifier="hd",
                        session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    for t in (0.5, 1.5, 2.5):
        nwb.add_unit(spike_times=[t, t + 0.2])
    ts = np.arange(0.0, 4.0, 0.02)
    deg = np.mod(ts * 90.0, 360.0)
    module = nwb.create_processing_module("behavior", "behaviour")
    module.add(CompassDirection(spatial_series=SpatialSeries(name="head_direction", data=deg, timestamps=ts,
                                                             reference_frame="room", unit="degrees")))
    module.add(Position(spatial_series=SpatialSeries(name="position", data=np.stack([ts, ts], 1), timestamps=ts,
                                                     reference_frame="room", unit="m")))
    src = tmp_path / "hd.nwb"
    with pynwb.NWBHDF5IO(str(src), "w") as io:
        io.write(nwb)
    out = tmp_path / "hd.h5"
    assert main(["convert", "nwb", str(src), str(out), "--angle", "head_direction"]) == 0
    with Session(out) as s:
        assert "head_direction" in s.behavior_names  # the angle itself stays
        np.testing.assert_allclose(s.behavior("head_direction_cos_sin")[1],
                                   np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], 1), atol=1e-6)
    capsys.readouterr()
    bad = tmp_path / "bad.h5"
    assert main(["convert", "nwb", str(src), str(bad), "--angle", "position"]) == 2
    assert "/behavior/position" in capsys.readouterr().err
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hd.h5", "hd.nwb"]
    assert main(["convert", "nwb", str(src), str(bad), "--angle-unit", "deg"]) == 2
    assert "give --angle NAME too" in capsys.readouterr().err
    # the NWB itself as the output: refused, as without --angle (the temporary file hid it from the
    # converter, which would have replaced the recording by its session file)
    before = src.read_bytes()
    assert main(["convert", "nwb", str(src), str(src), "--angle", "head_direction"]) == 2
    assert "is the input file itself" in capsys.readouterr().err and src.read_bytes() == before


def test_split_clips_block_edges_just_outside_the_recording(tmp_path, capsys):
    """A recording spans its first to last sample: an open field whose video clock's first frame
    came 1.4 ms in spans 0.0014 .. 1799.99 s, and `neurofm split FILE --train 0:1065 ...` was
    refused (the user's 0 is the recording's start). An edge under a second outside is clipped to
    the recording, with a note; one farther out (another clock, a typo) is still refused."""
    path = tmp_path / "s.h5"
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b"])
        w.add_spikes(np.linspace(0.0014, 99.99, 200), np.arange(200) % 2)  # spans first..last spike
    assert main(["split", str(path), "--train", "0:40", "--valid", "41:45", "--test", "46:100"]) == 0
    err = capsys.readouterr().err
    assert "neurofm split: note: " in err and "/intervals/train: block edges [0.0] are outside the recording [0.001, 99.990] s" in err
    assert "/intervals/test" in err and "clipped to it" in err
    with Session(path) as s:
        assert s.intervals("train")["start"].tolist() == [0.0014]
        assert s.intervals("test")["end"].tolist() == [99.99]
    assert main(["split", str(path), "--train", "0:40", "--valid", "41:45", "--test", "46:102",
                 "--overwrite"]) == 2
    assert "must have end > start inside the recording" in capsys.readouterr().err


def test_inspect_rate_outside_bad_segments_and_units_with_few_spikes(tmp_path, capsys):
    """A 360-unit recording with a 10 min acquisition pause showed 1,862 spikes/s summed (the pause
    counted as recording; 2,483 outside it), and units with 0 or under 20 spikes were never named."""
    from neurofm.data.session import BAD_SEGMENTS

    path = tmp_path / "p.h5"
    rng = np.random.default_rng(0)
    t = np.sort(np.r_[rng.uniform(0, 40, 4000), rng.uniform(60, 100, 4000)])
    u = rng.integers(0, 3, t.size)
    t, u = np.r_[t, 1.0, 2.0], np.r_[u, 3, 3]  # unit d: 2 spikes; unit e: none
    order = np.argsort(t, kind="stable")
    with SessionWriter(path, session_id="p") as w:
        w.add_units(["a", "b", "c", "d", "e"])
        w.add_spikes(t[order], u[order], t_start=0.0, t_end=100.0)
        w.add_intervals(BAD_SEGMENTS, [40.0, 45.0], [60.0, 50.0])  # overlapping spans count once
    assert main(["inspect", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bad_segments_s"] == 20.0 and s["spike_rate_hz"] == pytest.approx(8002 / 80.0)
    assert s["units_under_20_spikes"] == {"e": 0, "d": 2}
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "100.03 spikes/s summed (outside the 20.0 s of /intervals/bad_segments)" in text
    assert "  units      2 with fewer than 20 spikes (e 0, d 2)" in text
