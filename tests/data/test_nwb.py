"""NWB -> session conversion (neurofm.data.nwb), on small pynwb-built files and the real
linear-track recording."""

from __future__ import annotations

import datetime
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")
from pynwb import NWBHDF5IO, NWBFile, TimeSeries  # noqa: E402
from pynwb.behavior import BehavioralTimeSeries, Position, SpatialSeries  # noqa: E402
from pynwb.ecephys import ElectricalSeries  # noqa: E402
from pynwb.file import Subject  # noqa: E402

import neurofm.data.nwb as nwb_mod  # noqa: E402
from neurofm.data.nwb import convert_nwb  # noqa: E402
from neurofm.data.session import ConvertError, Session, SessionWriter  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LINEAR_TRACK = SHARED / "spikes" / "linear-track.nwb"

SPIKES = [[1.10, 1.50, 1.90], [1.20, 1.30], []]  # per unit, seconds
SR = 1000.0


def make_nwb(path: Path, *, units=True, electrical=True, behaviour=True, intervals=True, spikes=SPIKES,
             es_data=None, es_timestamps=None, pos_timestamps=None) -> Path:
    """A small but complete NWB file: 4 electrodes, 3 units, 1 s of 4-channel voltage, position
    (SpatialSeries in Position, timestamps), speed (TimeSeries in BehavioralTimeSeries, rate),
    a bare TimeSeries, trials with a column, epochs with tags."""
    nwb = NWBFile(session_description="unit test", identifier="test-id",
                  session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), lab="Lab X",
                  subject=Subject(subject_id="mouse7", species="Mus musculus"))
    device = nwb.create_device("probe")
    group = nwb.create_electrode_group("tt0", description="tetrode", location="CA1", device=device)
    nwb.add_electrode_column("brain_region", "atlas region")
    for i, (loc, region) in enumerate([("CA1", "HPF"), ("CA1", "HPF"), ("n/a", "Unknown"), ("DG", "HPF")]):
        nwb.add_electrode(group=group, location=loc, brain_region=region, x=100.0 * i, y=2000.0, z=-50.0)
    if electrical:
        data = np.arange(1000 * 4, dtype=np.int16).reshape(1000, 4) % 97 if es_data is None else es_data
        region = nwb.create_electrode_table_region([0, 1, 2, 3], "all electrodes")
        timing = dict(timestamps=es_timestamps) if es_timestamps is not None else dict(starting_time=1.0, rate=SR)
        nwb.add_acquisition(ElectricalSeries(name="raw", data=data, electrodes=region, conversion=2e-6, **timing))
    if units:
        nwb.add_unit_column("tetrode", "tetrode number")
        for k, times in enumerate(spikes):
            nwb.add_unit(spike_times=times, tetrode=k, electrodes=[k, k + 1] if k < 3 else [k])
    if behaviour:
        module = nwb.create_processing_module("behavior", "behaviour")
        ts = np.linspace(1.0, 2.0, 61) if pos_timestamps is None else pos_timestamps
        position = Position()
        position.add_spatial_series(SpatialSeries(name="position", data=np.stack([ts * 10, ts * 20], axis=1),
                                                  timestamps=ts, reference_frame="arena", unit="cm"))
        module.add(position)
        bts = BehavioralTimeSeries()
        bts.add_timeseries(TimeSeries(name="speed", data=np.arange(30, dtype=np.int32), starting_time=1.0, rate=30.0,
                                      unit="cm/s", conversion=0.5))
        module.add(bts)
        module.add(TimeSeries(name="licks", data=np.ones(5), timestamps=np.linspace(1.1, 1.9, 5), unit="a.u."))
    if intervals:
        nwb.add_trial_column("side", "which side")
        nwb.add_trial(start_time=1.0, stop_time=1.4, side="left")
        nwb.add_trial(start_time=1.5, stop_time=1.9, side="right")
        nwb.add_epoch(start_time=1.0, stop_time=2.0, tags=["run", "light"])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def small_nwb(tmp_path_factory):
    return make_nwb(tmp_path_factory.mktemp("nwb") / "small.nwb")


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_small_file_everything(small_nwb, tmp_path):
    out = tmp_path / "s.h5"
    with pytest.warns(UserWarning, match="assumed microns"):
        assert convert_nwb(small_nwb, out) == out
    with Session(out) as s:
        a = s.attrs
        assert (a["session_id"], a["subject_id"], a["species"], a["lab"]) == ("small", "mouse7", "Mus musculus", "Lab X")
        assert a["source"] == str(small_nwb) and a["source_format"] == "nwb" and a["nwb_identifier"] == "test-id"
        assert s.kinds == ["spikes", "continuous"]
        # units and spikes
        table = s.unit_table()
        assert table["id"].tolist() == ["0", "1", "2"]
        assert table["tetrode"].tolist() == [0, 1, 2]
        assert table["electrodes"].tolist() == ["0;1", "1;2", "2;3"]
        assert table["electrode"].tolist() == [0, 1, 2]
        assert table["location"].tolist() == ["CA1", "CA1", ""]  # "n/a" -> unknown
        assert table["brain_region"].tolist() == ["HPF", "HPF", ""]
        t, u = s.spikes()
        assert t.tolist() == [1.10, 1.20, 1.30, 1.50, 1.90] and u.tolist() == [0, 1, 1, 0, 0]
        # continuous: int16 counts * conversion (V) -> uV, starting_time kept
        assert s.sampling_rate == SR and s.h5["continuous"].attrs["unit"] == "uV"
        expected = (np.arange(4000).reshape(1000, 4) % 97) * 2.0
        np.testing.assert_allclose(s.continuous(), expected, rtol=1e-6)
        np.testing.assert_allclose(s.continuous(1.1, 1.2), expected[100:200], rtol=1e-6)
        ch = s.channels()
        assert ch.names == ["tt0-0", "tt0-1", "tt0-2", "tt0-3"]
        np.testing.assert_allclose(ch.xyz[:, 0], [0.0, 0.1, 0.2, 0.3])  # microns -> mm
        np.testing.assert_allclose(ch.xyz[:, 1], 2.0)
        assert ch.regions["location"].tolist() == ["CA1", "CA1", "", "DG"]
        assert ch.regions["brain_region"].tolist() == ["HPF", "HPF", "", "HPF"]
        # behaviour: SpatialSeries in Position, TimeSeries in BehavioralTimeSeries, bare TimeSeries
        assert s.behavior_names == ["licks", "position", "speed"]
        ts, pos = s.behavior("position")
        assert pos.shape == (61, 2) and np.allclose(pos[:, 1], ts * 20, rtol=1e-6)
        assert s.h5["behavior/position"].attrs["unit"] == "cm"
        ts, speed = s.behavior("speed")
        np.testing.assert_allclose(ts, 1.0 + np.arange(30) / 30.0)
        np.testing.assert_allclose(speed, np.arange(30) * 0.5)  # conversion applied
        # intervals
        trials = s.intervals("trials")
        assert trials["start"].tolist() == [1.0, 1.5] and trials["side"].tolist() == ["left", "right"]
        assert s.intervals("epochs")["tags"].tolist() == ["run;light"]


def test_continuous_is_streamed_in_blocks(small_nwb, tmp_path, monkeypatch):
    reads = []
    original = nwb_mod._write_continuous

    class Recorder:  # every read of the voltage array goes through here
        def __init__(self, data):
            self.data, self.shape, self.dtype = data, data.shape, data.dtype

        def __getitem__(self, sel):
            reads.append(sel)
            return self.data[sel]

    class Series:  # the ElectricalSeries with its data behind the Recorder
        def __init__(self, es):
            self._es, self.data = es, Recorder(es.data)

        def __getattr__(self, name):
            return getattr(self._es, name)

    def spy(w, picked, *args, **kwargs):
        return original(w, (picked[0], Series(picked[1])), *args, **kwargs)

    monkeypatch.setattr(nwb_mod, "BLOCK_VALUES", 4 * 128)  # 128 rows a block
    monkeypatch.setattr(nwb_mod, "_write_continuous", spy)
    out = tmp_path / "s.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(small_nwb, out)
    assert len(reads) == 8 and all(isinstance(r, slice) and r.stop - r.start <= 128 for r in reads)
    with Session(out) as s:
        np.testing.assert_allclose(s.continuous(), (np.arange(4000).reshape(1000, 4) % 97) * 2.0, rtol=1e-6)


def test_timestamped_electrical_series_and_spikes_only_option(tmp_path):
    ts = 5.0 + np.arange(500) / 250.0 + 1e-5  # regular 250 Hz grid given as timestamps
    path = make_nwb(tmp_path / "ts.nwb", es_data=np.ones((500, 4), dtype=np.float32), es_timestamps=ts,
                    behaviour=False, intervals=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(path, tmp_path / "a.h5", coordinate_unit="mm")
        convert_nwb(path, tmp_path / "b.h5", electrical_series=False)
    with Session(tmp_path / "a.h5") as s:
        assert s.sampling_rate == pytest.approx(250.0)
        assert s.h5["continuous"].attrs["t_start"] == pytest.approx(5.00001)
        np.testing.assert_allclose(s.channels().xyz[:, 0], [0.0, 100.0, 200.0, 300.0])  # given as mm
    with Session(tmp_path / "b.h5") as s:
        assert s.kinds == ["spikes"]


def test_spikes_only_session_spans_trials_epochs_and_behaviour(tmp_path):
    """t_start/t_end used to be first..last spike (1.1..1.9 s) without the voltage traces."""
    path = make_nwb(tmp_path / "span.nwb", electrical=False, behaviour=False)  # trials 1.0.., epochs ..2.0
    convert_nwb(path, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        assert (s.t_start, s.t_end) == (1.0, 2.0)
        assert s.h5["spikes/index"].attrs["t_start"] == 1.0
        t, _ = s.spikes(1.0, 1.15)
        assert t.tolist() == [1.1]
    ts = np.linspace(0.5, 2.5, 61)  # behaviour wider than the intervals: it sets the span
    path = make_nwb(tmp_path / "wide.nwb", electrical=False, pos_timestamps=ts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(path, tmp_path / "w.h5")
    with Session(tmp_path / "w.h5") as s:
        assert (s.t_start, s.t_end) == (0.5, 2.5)


def test_coordinate_unit_not_a_length_names_the_file(small_nwb, tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_nwb(small_nwb, out, coordinate_unit="furlong")
    msg = str(err.value)
    assert msg.startswith(f"{small_nwb}: coordinate_unit: 'furlong' is not a length unit") and "m, cm, mm, um" in msg
    assert_nothing_written(out)


def test_coordinates_too_far_for_a_brain_warn(small_nwb, tmp_path):
    # electrodes x = 0..300, y = 2000, z = -50: microns (2 mm) fit a brain, millimetres (2 m) do not
    with pytest.warns(UserWarning) as record:
        convert_nwb(small_nwb, tmp_path / "s.h5", coordinate_unit="mm")
    text = " ".join(str(w.message) for w in record)
    assert f"{small_nwb}: electrodes x, y, z: 4 of 4 known electrode positions lie more than 300 mm" in text
    assert "coordinate_unit='um'" in text
    with pytest.warns(UserWarning) as record:
        convert_nwb(small_nwb, tmp_path / "t.h5")  # NWB's microns assumed: plausible
    assert not any("300 mm" in str(w.message) for w in record)


def test_unsorted_spike_times_are_sorted_with_warning(tmp_path):
    path = make_nwb(tmp_path / "u.nwb", spikes=[[1.5, 1.1, 1.9], [1.2, 1.3]], electrical=False, behaviour=False,
                    intervals=False)
    with pytest.warns(UserWarning, match=r"units/spike_times: spike times of 1 unit\(s\) were not sorted"):
        convert_nwb(path, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        t, u = s.spikes()
    assert t.tolist() == [1.1, 1.2, 1.3, 1.5, 1.9] and u.tolist() == [0, 1, 1, 0, 0]


def _sorter_export(path: Path, labels, spikes) -> Path:
    """A spike sorter's export: units with a Kilosort `KSLabel` and a phy `quality` column."""
    nwb = NWBFile(session_description="t", identifier="t",
                  session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    nwb.add_unit_column("KSLabel", "Kilosort label")
    nwb.add_unit_column("quality", "phy curation")
    for (ks, q), times in zip(labels, spikes):
        nwb.add_unit(spike_times=times, KSLabel=ks, quality=q)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_noise_units_left_out_by_default(tmp_path):
    """A Kilosort/phy export's noise clusters (here 'Noise' in phy's curation, 'good' by Kilosort)
    are artefacts: left out of the session by default, with a warning counting them and their
    spikes; mua units stay; --keep-noise-units keeps them; all-noise is an error naming the fix."""
    path = _sorter_export(tmp_path / "ks.nwb", [("good", "good"), ("mua", "mua"), ("good", " Noise"), ("mua", "mua")],
                          [[1.0, 2.0], [1.5], [1.1, 1.2, 1.3, 1.4], [2.5]])
    with pytest.warns(UserWarning, match=r"units/quality: left out 1 of 4 units labelled noise \(2\) and their 4 "
                                         r"spikes \(50\.0% of all\)"):
        convert_nwb(path, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        t, u = s.spikes()
        ids = s.unit_ids
    assert list(ids) == ["0", "1", "3"]
    assert t.tolist() == [1.0, 1.5, 2.0, 2.5] and u.tolist() == [0, 1, 0, 2]
    convert_nwb(path, tmp_path / "k.h5", keep_noise_units=True)
    with Session(tmp_path / "k.h5") as s:
        assert len(s.unit_ids) == 4
    bad = _sorter_export(tmp_path / "n.nwb", [("good", "noise")], [[1.0]])
    with pytest.raises(ConvertError, match=r"units/quality.*all 1 units noise.*--keep-noise-units"):
        convert_nwb(bad, tmp_path / "n.h5")


def test_duplicated_spikes_dropped_with_warning(tmp_path):
    """A sorter's double counts (one unit's spikes 0.1 ms apart) are one spike: the later is
    dropped, named in a warning; 1 ms apart is two spikes and stays."""
    path = _sorter_export(tmp_path / "d.nwb", [("good", "good"), ("good", "good")],
                          [[1.0, 1.0001, 1.5, 1.501], [1.00005, 2.0]])
    with pytest.warns(UserWarning, match=r"1 spikes of 1 unit\(s\) follow their unit's previous spike within 0\.3 ms "
                                         r"\(unit 0: 1 of 4 \(25\.0%\)\)"):
        convert_nwb(path, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        t, u = s.spikes()
    assert t.tolist() == [1.0, 1.00005, 1.5, 1.501, 2.0] and u.tolist() == [0, 1, 0, 0, 1]


def test_columns_named_like_an_index_and_partial_unit_observation(tmp_path):
    """A motor-cortex file's own `target_index` trial column and `shank_index` unit column are
    data (only `tags_index` beside `tags` is a ragged index): both are kept; they were dropped
    silently. Units whose `obs_intervals` cover part of the session are named in a warning
    (outside their intervals they have no spikes, read as silence), and every unit's observed
    span is kept as /units/obs_start, obs_end, obs_s."""
    nwb = NWBFile(session_description="t", identifier="t",
                  session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    nwb.add_unit_column("shank_index", "shank")
    spans = [[[100.0, 200.0]], [[100.0, 150.0]], [[100.0, 120.0], [180.0, 200.0]]]
    for k, iv in enumerate(spans):
        nwb.add_unit(spike_times=[iv[0][0] + 1.0 + k], obs_intervals=iv, shank_index=k % 2)
    nwb.add_trial_column("target_index", "which of 8 targets")
    nwb.add_trial(start_time=101.0, stop_time=102.0, target_index=3)
    nwb.add_trial(start_time=103.0, stop_time=104.0, target_index=7)
    nwb.add_epoch(start_time=100.0, stop_time=110.0, tags=["reach"])
    with NWBHDF5IO(str(tmp_path / "m1.nwb"), "w") as io:
        io.write(nwb)
    with pytest.warns(UserWarning, match=r"units/obs_intervals: 2 of 3 units were recorded for only part of the "
                                         r"100 s the units cover \(unit 1: 50 s \(100\.0-150\.0\), 2: 40 s "
                                         r"\(100\.0-200\.0\)\).*neurofm split"):
        convert_nwb(tmp_path / "m1.nwb", tmp_path / "m1.h5")
    with Session(tmp_path / "m1.h5") as s:
        assert s.intervals("trials")["target_index"].tolist() == [3, 7]
        assert s.intervals("epochs")["tags"].tolist() == ["reach"] and "tags_index" not in s.intervals("epochs")
        table = s.unit_table()
        assert table["shank_index"].tolist() == [0, 1, 0]
        assert table["obs_start"].tolist() == [100.0, 100.0, 100.0] and table["obs_end"].tolist() == [200.0, 150.0, 200.0]
        assert table["obs_s"].tolist() == [100.0, 50.0, 40.0]
        # the session spans what the units were observed for (100-200 s), not last spike or epoch (110 s)
        assert (s.t_start, s.t_end) == (100.0, 200.0)


def test_neither_units_nor_electrical_series(tmp_path):
    path = make_nwb(tmp_path / "empty.nwb", units=False, electrical=False)
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_nwb(path, out)
    msg = str(err.value)
    assert str(path) in msg and "units / acquisition ElectricalSeries" in msg and "add a units table" in msg
    assert_nothing_written(out)


def test_missing_and_truncated_input(small_nwb, tmp_path):
    out = tmp_path / "s.h5"
    with pytest.raises(FileNotFoundError, match="no-such.nwb: no such NWB file"):
        convert_nwb(tmp_path / "no-such.nwb", out)
    cut = tmp_path / "cut.nwb"
    cut.write_bytes(small_nwb.read_bytes()[: small_nwb.stat().st_size // 2])
    with pytest.raises(ConvertError) as err:
        convert_nwb(cut, out)
    msg = str(err.value)
    assert msg.startswith(f"{cut}: /:") and "truncated" in msg and "copy or export it again" in msg
    assert_nothing_written(out)


def test_nan_in_voltage(tmp_path):
    data = np.zeros((300, 4), dtype=np.float32)
    data[150, 2] = np.nan
    path = make_nwb(tmp_path / "nan.nwb", es_data=data, behaviour=False, intervals=False)
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(path, out)
    msg = str(err.value)
    assert str(path) in msg and "/continuous/data" in msg and "channel tt0-2" in msg and "t = 1.1500 s" in msg
    assert "--nan mark-bad" in msg
    assert_nothing_written(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(path, out, nan_policy="mark_bad")
    with Session(out) as s:
        assert s.channels().bad.tolist() == [False, False, True, False]
        assert np.isfinite(s.continuous()).all()


def test_behaviour_timestamps_going_back(tmp_path):
    ts = np.linspace(1.0, 2.0, 61)
    ts[30], ts[31] = ts[31], ts[30]
    path = make_nwb(tmp_path / "back.nwb", pos_timestamps=ts, electrical=False)
    out = tmp_path / "s.h5"
    with pytest.raises(ConvertError) as err:
        convert_nwb(path, out)
    msg = str(err.value)
    assert str(path) in msg and "processing/behavior/Position/position/timestamps" in msg
    assert "go back in time at sample 31" in msg and "sort the samples" in msg
    assert_nothing_written(out)


def test_repeated_behaviour_timestamps_are_dropped(tmp_path):
    ts = np.linspace(1.0, 2.0, 61)
    ts[31] = ts[30]
    path = make_nwb(tmp_path / "rep.nwb", pos_timestamps=ts, electrical=False)
    with pytest.warns(UserWarning, match=r"1 sample\(s\) repeat the previous timestamp"):
        convert_nwb(path, tmp_path / "s.h5")
    with Session(tmp_path / "s.h5") as s:
        t, v = s.behavior("position")
    assert t.size == 60 and np.all(np.diff(t) > 0) and v.shape == (60, 2)


def test_missing_pynwb_says_what_to_install(small_nwb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(ImportError, match=r"neurofm\[nwb\]"):
        convert_nwb(small_nwb, tmp_path / "s.h5")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real recordings not available)")
def test_linear_track(tmp_path):
    out = tmp_path / "lt.h5"
    with pytest.warns(UserWarning, match="repeat the previous timestamp"):
        convert_nwb(LINEAR_TRACK, out)
    with Session(out) as s:
        assert s.kinds == ["spikes"]
        assert s.n_units == 31 and s.n_spikes == 28_829
        t, u = s.spikes()
        assert t[0] == pytest.approx(4397.0, abs=0.05) and t[-1] == pytest.approx(6365.1, abs=0.05)
        assert np.all(np.diff(t) >= 0) and u.max() == 30
        assert "tetrode" in s.unit_table()
        assert s.behavior_names == ["position"]
        ts, xy = s.behavior("position")
        assert abs(ts.size - 118_965) <= 2 and xy.shape == (ts.size, 2)  # 1 repeated camera stamp dropped
        assert 0 < xy[:, 0].max() <= 640 and 0 < xy[:, 1].max() <= 480
        assert np.median(np.diff(ts)) == pytest.approx(1 / 60, rel=0.01)
        assert s.attrs["lab"].startswith("Kemere lab")


def test_recording_pause_and_invalid_times_are_kept_out_of_every_window(tmp_path):
    """A Neuropixels-like file with two acquisition epochs on one clock (a 100 s pause in which no
    unit fires) and an NWB invalid_times row: both become /intervals/bad_segments with a warning
    naming the span, and the default training split's windows (a SpikeWindowDataset, as pretraining
    reads them) neither lie in nor overlap either. Before, the pause was 100 s of empty windows
    trained on as silence (a 10 min pause was 31% of a 2-epoch session's pretraining windows),
    and invalid_times was copied to /intervals and read by nothing."""
    from neurofm.data.datasets import SpikeWindowDataset
    from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab

    rng = np.random.default_rng(0)
    nwb = NWBFile(session_description="t", identifier="t",
                  session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    epochs = [(0.0, 60.0), (160.0, 220.0)]
    for _ in range(20):  # 20 units at 5 Hz: 100 spikes/s summed
        nwb.add_unit(spike_times=np.sort(np.concatenate([rng.uniform(a, b, 300) for a, b in epochs])))
    for a, b in epochs:
        nwb.add_epoch(start_time=a, stop_time=b, tags=["acquisition"])
    nwb.add_invalid_time_interval(start_time=20.0, stop_time=25.0)
    with NWBHDF5IO(str(tmp_path / "npx.nwb"), "w") as io:
        io.write(nwb)
    with pytest.warns(UserWarning) as record:
        convert_nwb(tmp_path / "npx.nwb", tmp_path / "npx.h5")
    text = "\n".join(str(w.message) for w in record)
    assert "intervals/invalid_times: 1 span(s), 5.0 s in all" in text
    assert re.search(r"no unit fires for 10\d\.\d s in 1 span\(s\) \((59\.9|60\.0)-(160\.0|160\.1) s\).*recording pause", text)
    with Session(tmp_path / "npx.h5") as s:
        bad = s.intervals("bad_segments")
        assert bad["label"].tolist() == ["invalid_times", "recording pause"]
        assert bad["start"][0] == 20.0 and 59.0 < bad["start"][1] < 60.0 and 160.0 < bad["end"][1] < 161.0
        assert s.intervals("invalid_times")["start"].tolist() == [20.0]  # the file's own table is kept too
        tk = SpikeTokenizer(0.05, 0.15, 0.01, 16, 24, UnitVocab.from_sessions([s]))
        ds = SpikeWindowDataset([s], tk, "train")
        ends = np.array([ds.window(i)[1] for i in range(len(ds))])
        # every window reads [end - 0.2, end) (previous + current window): none inside or across a bad segment
        for a, b in zip(bad["start"], bad["end"]):
            assert not np.any((ends > a) & (ends - 0.2 < b))
        assert ends.max() > 160.0  # the training block goes on after the pause


def test_tracking_jumps_in_a_position_series_are_named(tmp_path):
    """Video tracking that locks onto a reflection for a frame or two puts the position hundreds
    of pixels away and back; every window holding such a frame trains and scores a shifted mean,
    and the smoothed speed reads it as movement. Convert names those samples (a jump away and
    back within 3 samples, over 10 x the series' 99th-percentile step); a fast but continuous run,
    NaN rows (tracking lost) and the series' own jitter are not jumps."""
    rng = np.random.default_rng(1)
    t = np.arange(0, 120, 1 / 30)
    pos = np.stack([300 + 200 * np.sin(t / 7), 240 + 150 * np.cos(t / 5)], axis=1) + rng.normal(0, 1.5, (len(t), 2))
    pos[1800:1830, 0] += np.linspace(0, 120, 30)  # a dash: 4 px per frame for a second, then stays
    pos[1830:, 0] += 120
    pos[900:930] = np.nan  # tracking lost for a second
    pos[600] = [620.0, 20.0]  # one frame on a reflection
    pos[2400:2402] = [[15.0, 470.0], [16.0, 468.0]]  # two frames
    nwb = NWBFile(session_description="t", identifier="t",
                  session_start_time=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    nwb.add_unit(spike_times=np.sort(rng.uniform(0, 120, 500)))
    module = nwb.create_processing_module("behavior", "tracking")
    position = Position()
    position.add_spatial_series(SpatialSeries(name="led", data=pos, timestamps=t, reference_frame="video",
                                              unit="pixels"))
    module.add(position)
    with NWBHDF5IO(str(tmp_path / "of.nwb"), "w") as io:
        io.write(nwb)
    assert nwb_mod.tracking_jumps(pos).tolist() == [600, 2400, 2401]
    with pytest.warns(UserWarning, match=r"processing/behavior/Position/led: 3 sample\(s\) jump away and back within 3 "
                                         r"samples .* \(first at t = 20\.000 s, 80\.000, 80\.033\): mis-tracking.*NaN"):
        convert_nwb(tmp_path / "of.nwb", tmp_path / "of.h5")
    clean = np.delete(pos, [600, 2400, 2401], axis=0)
    assert nwb_mod.tracking_jumps(clean).size == 0  # the dash, the NaN run and the jitter are not jumps


def test_acquisition_wheel_encoder_becomes_behaviour(tmp_path):
    """A head-fixed mouse's wheel is a rotary encoder in `acquisition`: cumulative integer ticks
    with `conversion` (ticks -> metres), `unit="m"`, as DANDI VR sessions store it. Conversion
    read behaviour from processing/ only, so the wheel vanished without a word; it is now
    /behavior/<name> in metres (ticks x conversion), beside processing's position, and the
    acquisition ElectricalSeries still goes to /continuous, not /behavior."""
    path = make_nwb(tmp_path / "vr.nwb", electrical=True)
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        conv = 2 * np.pi * 0.1 / 1024  # 10 cm wheel, 1024 ticks per turn
        nwb.add_acquisition(TimeSeries(name="wheel_position", data=np.arange(0, 600, 10, dtype=np.int64),
                                       unit="m", conversion=conv, starting_time=1.0, rate=60.0))
        io.write(nwb)
    out = tmp_path / "vr.h5"
    with pytest.warns(UserWarning):
        convert_nwb(path, out)
    with Session(out) as s:
        assert "wheel_position" in s.behavior_names and "position" in s.behavior_names
        assert "raw" not in s.behavior_names and s.kinds == ["spikes", "continuous"]
        t, v = s.behavior("wheel_position")
        np.testing.assert_allclose(np.ravel(v), np.arange(0, 600, 10) * conv)
        np.testing.assert_allclose(t, 1.0 + np.arange(60) / 60.0)
        assert s.behavior_unit("wheel_position") == "m"


def test_speed_from_a_wheel_encoder(tmp_path, capsys):
    """The wheel converted above is a distance; the speed a user decodes, and the moving rule
    reads as measured speed, is its derivative: `neurofm convert session IN OUT --speed-from
    wheel_position` writes /behavior/speed in m/s."""
    from neurofm import cli, evaluation as ev

    path = make_nwb(tmp_path / "vr.nwb", electrical=False)
    conv = 2 * np.pi * 0.1 / 1024
    ticks = np.floor(np.cumsum(np.full(60, 0.3 / 60.0)) / conv).astype(np.int64)  # 0.3 m/s for 1 s
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        nwb.add_acquisition(TimeSeries(name="wheel_position", data=ticks, unit="m", conversion=conv,
                                       starting_time=1.0, rate=60.0))
        io.write(nwb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_nwb(path, tmp_path / "vr.h5")
    # this file has a /behavior/speed already (the treadmill's): refused, naming the fix
    assert cli.main(["convert", "session", str(tmp_path / "vr.h5"), str(tmp_path / "vr_speed.h5"),
                     "--speed-from", "wheel_position"]) == 2
    assert "/behavior/speed: exists already" in capsys.readouterr().err
    assert cli.main(["convert", "session", str(tmp_path / "vr.h5"), str(tmp_path / "vr_speed.h5"),
                     "--speed-from", "wheel_position=wheel_speed"]) == 0
    with Session(tmp_path / "vr_speed.h5") as s:
        assert s.behavior_unit("wheel_speed") == "m/s"
        t, v = s.behavior("wheel_speed")
        assert abs(float(np.median(v)) - 0.3) < 0.02
    data = ev.session_position_data(tmp_path / "vr_speed.h5", ev.DecodingProtocol(speed_name="wheel_speed"))
    assert data.speed_measured and data.speed_source == "/behavior/wheel_speed"
    assert cli.main(["convert", "session", str(tmp_path / "vr.h5"), str(tmp_path / "x.h5"), "--speed-from",
                     "licks=lick_speed"]) == 2
    assert "/behavior/licks attrs unit: a.u.: not a length or angle unit" in capsys.readouterr().err
    # in one command while converting the NWB (it was read by `convert session` only)
    assert cli.main(["convert", "nwb", str(path), str(tmp_path / "one.h5"), "--speed-from",
                     "wheel_position=wheel_speed"]) == 0
    with Session(tmp_path / "one.h5") as s:
        np.testing.assert_allclose(s.behavior("wheel_speed")[1], v)


def test_a_long_high_rate_acquisition_series_is_stored_as_block_means(tmp_path, monkeypatch):
    """A 30 kHz sync / analog line kept in acquisition as a plain TimeSeries (100M+ samples an
    hour) was read whole into memory and written whole into /behavior, where nothing reads it
    finer than milliseconds. It is now read in blocks of rows and stored as block means at 1 kHz
    (20 kHz x 60 s here), said in a warning and in attrs; window means are kept, and a fast
    component averages out instead of aliasing as decimation would. A timestamped 20 kHz TTL line
    becomes its fraction high per ms; a 1.5 kHz series is kept as recorded."""
    import tracemalloc

    from neurofm.data.datasets import behavior_features

    rate, n = 20000.0, 1_200_000
    t = np.arange(n) / rate
    # a slow 2 Hz signal plus a 1 kHz one (a period is one block of 20 samples: picking every
    # 20th sample would read it as an offset of +0.5)
    analog = (np.sin(2 * np.pi * 2 * t) + 0.5 * np.cos(2 * np.pi * 1000 * t)).astype(np.float32)
    ttl_t = 3.0 + np.arange(20000) / rate
    ttl = (np.arange(20000) % 20) < 5  # high a quarter of each 1 ms cycle
    path = make_nwb(tmp_path / "sync.nwb", electrical=False, intervals=False)
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        nwb.add_acquisition(TimeSeries(name="analog", data=analog, unit="V", conversion=2.0, starting_time=0.5,
                                       rate=rate))
        nwb.add_acquisition(TimeSeries(name="ttl", data=ttl, unit="n/a", timestamps=ttl_t))
        nwb.add_acquisition(TimeSeries(name="lick", data=np.arange(1500.0), unit="V", starting_time=0.0,
                                       rate=1500.0))
        io.write(nwb)
    monkeypatch.setattr(nwb_mod, "BLOCK_VALUES", 1 << 15)  # 32,760 rows a read: 37 reads of the analog line
    out = tmp_path / "sync.h5"
    tracemalloc.start()
    with pytest.warns(UserWarning) as notes:
        convert_nwb(path, out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * 8 / 2  # never the whole line in float64 (9.6 MB), nor in float32
    text = "\n".join(str(w.message) for w in notes)
    assert ("acquisition/analog: sampled at 20000 Hz (1,200,000 samples): stored as the means of blocks of 20 "
            "samples, 1000 Hz (60,000 samples)") in text
    assert "acquisition/ttl: sampled at 20000 Hz (20,000 samples)" in text and "acquisition/lick" not in text
    with Session(out) as s:
        ts, v = s.behavior("analog")
        assert v.shape == (60000,) and s.behavior_unit("analog") == "V"
        np.testing.assert_allclose(ts[:2], 0.5 + np.array([9.5, 29.5]) / rate)
        np.testing.assert_allclose(v, 2.0 * analog.astype(np.float64).reshape(-1, 20).mean(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(v, 2.0 * np.sin(2 * np.pi * 2 * (ts - 0.5)), atol=1e-3)  # the 1 kHz part gone
        assert np.abs(2.0 * analog[::20] - 2.0 * np.sin(2 * np.pi * 2 * t[::20])).min() > 0.99  # decimation aliases
        a = s.h5["behavior/analog"].attrs
        assert a["source_rate_hz"] == rate and a["block_mean_samples"] == 20
        starts = np.array([1.0, 7.3, 42.125])  # window means (what a target reads) kept
        raw_mean = behavior_features(0.5 + t, 2.0 * analog, starts, starts + 0.05)["mean"]
        np.testing.assert_allclose(behavior_features(ts, v, starts, starts + 0.05)["mean"], raw_mean, atol=0.05)
        ts, v = s.behavior("ttl")
        assert v.shape == (1000,)
        np.testing.assert_allclose(v, 0.25)
        np.testing.assert_allclose(ts[0], ttl_t[:20].mean())
        assert s.behavior("lick")[1].shape == (1500,)


def test_velocity_from_a_hand_position(tmp_path, capsys):
    """A motor-cortex lab decodes the hand's signed velocity, which NWB files store only as the
    hand's position (a manipulandum's SpatialSeries): there was no way to derive it (`--speed-from`
    takes one column, and its |d/dt| loses the direction). `--velocity-from NAME` writes
    /behavior/NAME_velocity, d/dt per column in NAME's unit per second, and a window's mean of it
    is the displacement across the window over its length, even under sensor noise."""
    from neurofm import cli
    from neurofm.data.datasets import behavior_features

    path = make_nwb(tmp_path / "reach.nwb", electrical=False)  # position (x, y) = (10 t, 20 t) cm
    assert cli.main(["convert", "nwb", str(path), str(tmp_path / "one.h5"), "--velocity-from", "position"]) == 0
    with Session(tmp_path / "one.h5") as s:
        assert s.behavior_unit("position_velocity") == "cm/s"
        t, v = s.behavior("position_velocity")
        np.testing.assert_allclose(t, s.behavior("position")[0])
        np.testing.assert_allclose(v, np.tile([10.0, 20.0], (len(t), 1)), rtol=1e-5)
        assert s.h5["behavior/position_velocity"].attrs["source_behavior"] == "position"
    # a 1 kHz manipulandum with 0.05 mm noise: a 50 ms window's mean velocity is the true one to ~2 mm/s
    rng = np.random.default_rng(0)
    t = np.arange(0, 4, 1e-3)
    true_v = np.stack([0.2 * np.sin(2 * np.pi * t), 0.1 * np.cos(2 * np.pi * t)], axis=1)  # m/s
    pos = np.stack([0.2 * (1 - np.cos(2 * np.pi * t)), 0.1 * np.sin(2 * np.pi * t)], axis=1) / (2 * np.pi)
    with SessionWriter(tmp_path / "hand.h5", session_id="hand") as w:
        w.add_units(["u0"])
        w.add_spikes([0.5, 1.0], [0, 0], t_start=0.0, t_end=4.0)
        w.add_behavior("hand", t, pos + rng.normal(0, 5e-5, pos.shape), unit="meters")
        w.add_behavior("licks", t, np.ones(len(t)), unit="a.u.")
    assert cli.main(["convert", "session", str(tmp_path / "hand.h5"), str(tmp_path / "hand_v.h5"),
                     "--velocity-from", "hand=hand_vel"]) == 0
    ends = np.arange(0.1, 3.9, 0.05)
    with Session(tmp_path / "hand_v.h5") as s:
        assert s.behavior_unit("hand_vel") == "m/s" and "hand" in s.behavior_names
        got = behavior_features(*s.behavior("hand_vel"), ends - 0.05, ends)["mean"]
    want = np.stack([np.interp(ends - 0.025, t, true_v[:, d]) for d in range(2)], axis=1)
    assert np.abs(got - want).max() < 5e-3
    # no length unit, or a name taken: refused, naming the field, and nothing written
    assert cli.main(["convert", "session", str(tmp_path / "hand.h5"), str(tmp_path / "x.h5"),
                     "--velocity-from", "licks"]) == 2
    assert "/behavior/licks attrs unit: a.u.: not a length or angle unit" in capsys.readouterr().err
    assert cli.main(["convert", "session", str(tmp_path / "hand.h5"), str(tmp_path / "x.h5"),
                     "--velocity-from", "hand=licks"]) == 2
    assert "/behavior/licks: exists already" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()
    # --speed-from on a 2-D position names --velocity-from
    assert cli.main(["convert", "session", str(tmp_path / "hand.h5"), str(tmp_path / "x.h5"),
                     "--speed-from", "hand"]) == 2
    assert "--velocity-from hand" in capsys.readouterr().err
