"""Spatial vocabulary: lobe table, coordinate bins, parcel indices, warnings, serialisation."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from neurofm.atlas import (
    LOBES, N_COORD_BINS, SpatialVocab, coords_to_bins, homologue, is_unknown_label, label_to_lobe, lobe_table,
)
from neurofm.data.session import Channels

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def channels(labels, xyz=None, atlas="destrieux", extra=None):
    n = len(labels)
    xyz = np.zeros((n, 3)) if xyz is None else np.asarray(xyz, dtype=float)
    regions = {atlas: np.asarray(labels, dtype=object)}
    regions.update(extra or {})
    return Channels(names=[f"c{i}" for i in range(n)], xyz=xyz, regions=regions, bad=np.zeros(n, bool),
                    coordinate_space="MNI")


def test_lobe_table_has_21_rows_and_covers_both_atlases():
    assert len(LOBES) == 21 and LOBES[0] == "unknown" and len(set(LOBES)) == 21
    table = lobe_table()
    atlases = {}
    text = (Path(__file__).resolve().parents[2] / "neurofm" / "data" / "tables" / "lobes.tsv").read_text()
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        atlases.setdefault(row["atlas"], set()).add(row["region"])
    assert len(atlases["destrieux"]) == 74  # every aparc.a2009s cortical label
    assert len(atlases["desikan"]) == 34  # every aparc cortical label
    assert len(table) == 74 + 34 + 8


@pytest.mark.parametrize("label, lobe", [
    ("ctx_lh_G_front_sup", "lh_frontal"),
    ("ctx_rh_S_temporal_sup", "rh_temporal"),
    ("ctx_lh_G_cuneus", "lh_occipital"),
    ("ctx_rh_G_pariet_inf-Angular", "rh_parietal"),
    ("ctx_lh_S_circular_insula_sup", "lh_insula"),
    ("ctx_rh_G_cingul-Post-dorsal", "rh_limbic"),
    ("ctx-lh-superiorfrontal", "lh_frontal"),
    ("ctx-rh-middletemporal", "rh_temporal"),
    ("ctx-lh-isthmuscingulate", "lh_limbic"),
    ("ctx-rh-insula", "rh_insula"),
    ("Left-Hippocampus", "lh_hippocampus"),
    ("Right-Amygdala", "rh_amygdala"),
    ("Left-Thalamus-Proper", "lh_thalamus"),
    ("Right-Putamen", "rh_basal_ganglia"),
    ("lh_frontal", "lh_frontal"),
])
def test_label_to_lobe(label, lobe):
    assert LOBES[label_to_lobe(label)] == lobe


@pytest.mark.parametrize("label", ["", "n/a", "Unknown", "Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter",
                                   "CC_Anterior", "ctx-lh-unknown", "wm_lh_G_front_sup", "Left-Lateral-Ventricle",
                                   None, float("nan")])
def test_uninformative_labels_map_to_unknown(label):
    assert label_to_lobe(label) == 0


def test_hemisphere_from_x_when_label_has_none():
    assert LOBES[label_to_lobe("superiortemporal", x_mm=-40.0)] == "lh_temporal"
    assert LOBES[label_to_lobe("superiortemporal", x_mm=40.0)] == "rh_temporal"
    assert label_to_lobe("superiortemporal") == 0  # no hemisphere, no coordinate
    assert is_unknown_label("Left-Cerebral-White-Matter") and not is_unknown_label("ctx_lh_G_front_sup")


def test_coordinate_bins_are_1mm_centred_on_zero_and_clamped():
    xyz = np.array([[0.0, -100.0, 99.9], [0.5, -0.5, 12.3], [150.0, -250.0, 0.0], [np.nan, 1.0, 1.0]])
    bins, n_clamped = coords_to_bins(xyz)
    assert bins.dtype == np.int64
    assert bins[0].tolist() == [100, 0, 199]
    assert bins[1].tolist() == [100, 99, 112]
    assert bins[2].tolist() == [199, 0, 100]  # clamped to the edge bins
    assert bins[3].tolist() == [-1, -1, -1]  # any NaN axis -> unknown on all three
    assert n_clamped == 1
    assert N_COORD_BINS == 200


def test_vocab_encode_indices_and_unknowns():
    labels = ["ctx_lh_G_front_sup", "Unknown", "ctx_rh_S_temporal_sup", "Left-Cerebral-White-Matter",
              "ctx_lh_G_front_sup", "Left-Hippocampus"]
    xyz = [[-20, 40, 50], [np.nan] * 3, [50, -10, 0], [-30, 0, 20], [-21, 41, 51], [-28, -22, -12]]
    ch = channels(labels, xyz)
    vocab = SpatialVocab.from_channels([ch])
    assert vocab.parcels == sorted(["ctx_lh_G_front_sup", "ctx_rh_S_temporal_sup", "Left-Hippocampus"])
    assert vocab.n_parcels == 4 and vocab.n_lobes == 21
    with pytest.warns(UserWarning, match="2 without destrieux parcel"):
        enc = vocab.encode(ch)
    assert set(enc) == {"coords", "parcel", "lobe"}
    assert enc["coords"].shape == (6, 3) and enc["coords"].dtype == np.int64
    assert enc["parcel"].dtype == np.int64 and enc["lobe"].dtype == np.int64
    p = enc["parcel"]
    assert p[1] == 0 and p[3] == 0 and p[0] == p[4] and p[0] != p[2] and p[0] > 0
    assert [vocab.parcels[i - 1] for i in p[[0, 2, 5]]] == [labels[0], labels[2], labels[5]]
    assert [LOBES[i] for i in enc["lobe"]] == ["lh_frontal", "unknown", "rh_temporal", "unknown", "lh_frontal",
                                               "lh_hippocampus"]
    assert enc["coords"][1].tolist() == [-1, -1, -1]
    assert enc["coords"][0].tolist() == [80, 140, 150]


@pytest.mark.filterwarnings("ignore:SpatialVocab. of")
def test_unseen_labels_warn_and_extend_keeps_indices():
    vocab = SpatialVocab.from_channels(channels(["ctx_lh_G_front_sup", "ctx_lh_G_cuneus"]))
    new = channels(["ctx_lh_G_cuneus", "ctx_rh_G_insular_short"])
    with pytest.warns(UserWarning, match="not in the vocabulary"):
        assert vocab.encode(new)["parcel"].tolist() == [1, 0]  # sorted: cuneus < front_sup
    bigger = vocab.extend(new)
    assert bigger.parcels[:2] == vocab.parcels and bigger.parcels[2] == "ctx_rh_G_insular_short"
    assert bigger.encode(new)["parcel"].tolist() == [1, 3]


@pytest.mark.parametrize("label, twin", [
    ("ctx_rh_G_front_sup", "ctx_lh_G_front_sup"), ("ctx-lh-insula", "ctx-rh-insula"),
    ("Right-Hippocampus", "Left-Hippocampus"), ("left_amygdala", "right_amygdala"), ("RH.G_cuneus", "LH.G_cuneus"),
    ("G_front_sup", None), ("Brain-Stem", None),
])
def test_homologue_swaps_the_hemisphere_in_the_labels_own_spelling(label, twin):
    assert homologue(label) == twin


def test_a_label_seen_only_in_the_other_hemisphere_takes_its_homologues_row():
    """A right-hemisphere implant on a model pretrained on left-hemisphere ones: the unseen
    ctx_rh_* labels took the unknown row (white matter's); their homologue's row is a better prior.
    A label known itself keeps its own row, and one with no homologue stays unknown."""
    vocab = SpatialVocab.from_channels(channels(["ctx_lh_G_front_sup", "ctx_lh_G_cuneus", "Right-Amygdala"]))
    new = channels(["ctx_rh_G_cuneus", "Right-Amygdala", "ctx_rh_G_insular_short", "Left-Amygdala", "n/a"])
    with pytest.warns(UserWarning) as rec:
        got = vocab.encode(new)["parcel"].tolist()
    cuneus, front, amyg = (vocab.parcel_index(x)[0] for x in ("ctx_lh_G_cuneus", "ctx_lh_G_front_sup",
                                                               "Right-Amygdala"))
    assert got == [cuneus, amyg, 0, amyg, 0] and 0 not in (cuneus, front, amyg)
    assert vocab.parcel_index("ctx_rh_G_cuneus") == (cuneus, "ctx_lh_G_cuneus")
    text = " ".join(str(w.message) for w in rec)
    assert "2 destrieux labels are not in the vocabulary but their other hemisphere's are" in text
    assert "ctx_rh_G_cuneus -> ctx_lh_G_cuneus" in text and "(['ctx_rh_G_insular_short'])" in text


def test_error_only_when_no_channel_is_known():
    vocab = SpatialVocab(["ctx_lh_G_front_sup"])
    nothing = channels(["Unknown", "n/a"], xyz=np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="none of the 2 channels"):
        vocab.encode(nothing)
    with pytest.raises(ValueError, match="parcel"):
        vocab.encode(channels(["Unknown", "n/a"]), scale="parcel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = vocab.encode(channels(["Unknown", "n/a"]), scale="coords")  # coordinates known: fine
    assert (out["coords"] >= 0).all()


def test_lobe_falls_back_to_another_atlas_column():
    ch = channels(["Unknown", "ctx_lh_G_front_sup"], extra={"desikan": np.array(["ctx-rh-insula", ""], dtype=object)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lobe = SpatialVocab.from_channels(ch).encode(ch)["lobe"]
    assert [LOBES[i] for i in lobe] == ["rh_insula", "lh_frontal"]


def test_desikan_vocab_and_aliases():
    ch = channels(["ctx-lh-superiorfrontal", "ctx-rh-precuneus"], atlas="desikan-killiany")
    vocab = SpatialVocab.from_channels(ch, atlas="desikan")
    assert vocab.parcels == ["ctx-lh-superiorfrontal", "ctx-rh-precuneus"]
    enc = vocab.encode(ch)
    assert enc["parcel"].tolist() == [1, 2]
    assert [LOBES[i] for i in enc["lobe"]] == ["lh_frontal", "rh_parietal"]


def test_to_dict_round_trip_is_json():
    vocab = SpatialVocab(["ctx_lh_G_front_sup", "Left-Amygdala"], atlas="destrieux")
    d = json.loads(json.dumps(vocab.to_dict()))
    again = SpatialVocab.from_dict(d)
    assert again == vocab and again.parcels == vocab.parcels
    bad = dict(d, lobes=d["lobes"][:-1])
    with pytest.raises(ValueError, match="lobe table"):
        SpatialVocab.from_dict(bad)
    with pytest.raises(ValueError, match="duplicates"):
        SpatialVocab(["a", "a"])
    with pytest.raises(ValueError, match="unknown"):
        SpatialVocab(["Unknown"])


def test_real_seeg_electrodes_file():
    folder = DATA / "ieeg"
    if not folder.exists():
        pytest.skip(f"shared data folder {folder} is absent")
    rows = list(csv.DictReader((folder / "sample_seeg_electrodes.tsv").read_text().splitlines(), delimiter="\t"))

    def num(v):
        return float("nan") if v in ("n/a", "") else float(v)

    xyz = np.array([[num(r["x"]), num(r["y"]), num(r["z"])] for r in rows])
    ch = Channels(names=[r["name"] for r in rows], xyz=xyz,
                  regions={"destriuex": np.array([r["destriuex"] for r in rows], dtype=object),
                           "desikan-killiany": np.array([r["desikan-killiany"] for r in rows], dtype=object)},
                  bad=np.zeros(len(rows), bool), coordinate_space="mri")
    vocab = SpatialVocab.from_channels(ch)  # finds the misspelt "destriuex" column
    assert "ctx_lh_G_front_sup" in vocab.parcels and "Unknown" not in vocab.parcels
    assert not any("White-Matter" in p for p in vocab.parcels)
    with pytest.warns(UserWarning, match="without coordinates"):
        enc = vocab.encode(ch)
    names = [r["name"] for r in rows]
    lobes = {n: LOBES[i] for n, i in zip(names, enc["lobe"])}
    assert lobes["L'2"] == "rh_frontal" and lobes["L'4"] == "lh_frontal" and lobes["L'1"] == "unknown"
    n_na = sum(r["x"] == "n/a" for r in rows)
    assert int((enc["coords"] < 0).all(1).sum()) == n_na > 0
    known = enc["coords"][enc["coords"][:, 0] >= 0]
    assert known.min() >= 0 and known.max() < 200
    # the two atlases agree on the lobe wherever both label a channel
    dk = SpatialVocab.from_channels(ch, atlas="desikan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc_dk = dk.encode(ch)
    both = (enc["parcel"] > 0) & (enc_dk["parcel"] > 0)
    assert both.sum() > 10 and (enc["lobe"][both] == enc_dk["lobe"][both]).all()
