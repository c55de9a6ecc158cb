"""Spatial vocabulary: electrode metadata -> category indices at BaRISTA's three spatial scales.

BaRISTA (DESIGN.md 4) adds to every token an embedding of *where* its channel is, looked up
at one of three scales, and masks whole categories at one of the same scales:

* ``coords`` -- the channel's position, binned per axis into 1-mm bins over 200 mm centred
  on 0 (``bin = floor(v_mm + 100)``, so bin 100 holds ``[0, 1) mm``). Positions outside
  ``[-100, 100) mm`` are **clamped** to the edge bins (0 or 199) and counted in a warning; a
  channel with any NaN coordinate gets ``-1`` on all three axes (unknown: zero embedding).
* ``parcel`` -- the channel's atlas label (Destrieux or Desikan-Killiany), indexed into a
  vocabulary built from the training sessions; index 0 = unknown.
* ``lobe`` -- a coarse region derived from the atlas label by ``tables/lobes.tsv``: six
  cortical lobes (frontal, parietal, temporal, occipital, insula, limbic = cingulate) and four
  subcortical groups (hippocampus, amygdala, thalamus, basal ganglia), each per hemisphere:
  20 categories + unknown = 21 rows (:data:`LOBES`).

White matter, corpus callosum, "Unknown", "n/a" and empty labels are unknown (index 0) at
the parcel and lobe scales; structures outside the lobe table (ventricles, cerebellum,
brainstem) keep their own parcel but have lobe 0. Channels unknown at a scale get a zero
spatial embedding there; :meth:`SpatialVocab.encode` counts them in a warning and raises only
when no channel of the session is known. The vocabulary is stored with a model
(:meth:`SpatialVocab.to_dict`) so that a new subject's labels map to the same rows the model
was trained with.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Sequence

import numpy as np

N_COORD_BINS = 200  # 1-mm bins
COORD_ORIGIN_MM = -100.0  # lower edge of bin 0; the range is centred on 0 mm

LOBE_CLASSES = ("frontal", "parietal", "temporal", "occipital", "insula", "limbic",
                "hippocampus", "amygdala", "thalamus", "basal_ganglia")
#: Lobe categories in table order; index 0 is unknown.
LOBES: tuple[str, ...] = ("unknown",) + tuple(f"{h}_{c}" for h in ("lh", "rh") for c in LOBE_CLASSES)

SCALES = ("coords", "parcel", "lobe")

# Column names under /channels/region/ that hold each atlas (lower-case; the sample BIDS file
# spells Destrieux "destriuex").
ATLAS_ALIASES: dict[str, tuple[str, ...]] = {
    "destrieux": ("destrieux", "destriuex", "aparc.a2009s", "a2009s", "aparc_a2009s"),
    "desikan": ("desikan", "desikan-killiany", "desikan_killiany", "desikankilliany", "aparc", "dk"),
}

_UNKNOWN_WORDS = {"", "n/a", "na", "nan", "none", "null", "unknown", "medial_wall", "?", "-"}
_WHITE_MATTER = re.compile(r"(white[-_ ]?matter|^wm[-_]|^cc[-_]|corpus[-_ ]?callosum|corpuscallosum"
                           r"|wm[-_]hypointensities)", re.IGNORECASE)
_CORTEX_PREFIX = re.compile(r"^ctx[-_.]?(lh|rh)[-_.](.+)$", re.IGNORECASE)
_HEMI_PREFIX = re.compile(r"^(lh|rh)[-_.](.+)$", re.IGNORECASE)
_ASEG_PREFIX = re.compile(r"^(left|right)[-_](.+)$", re.IGNORECASE)


def is_unknown_label(label: Any) -> bool:
    """True for labels that say nothing about location: empty, n/a, Unknown, white matter."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return True
    s = str(label).strip()
    low = s.lower()
    if low in _UNKNOWN_WORDS or low.endswith(("-unknown", "_unknown", "medial_wall")):
        return True
    return bool(_WHITE_MATTER.search(s))


@lru_cache(maxsize=1)
def lobe_table() -> dict[str, str]:
    """``region name (lower-case, no hemisphere) -> lobe class`` from ``tables/lobes.tsv``."""
    text = resources.files("neurofm").joinpath("data/tables/lobes.tsv").read_text()
    table: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        region, lobe = row["region"].strip().lower(), row["lobe"].strip()
        if lobe not in LOBE_CLASSES:
            raise ValueError(f"neurofm/data/tables/lobes.tsv: lobe {lobe!r} of region {row['region']!r} "
                             f"is not one of {LOBE_CLASSES}")
        if table.get(region, lobe) != lobe:
            raise ValueError(f"neurofm/data/tables/lobes.tsv: region {row['region']!r} maps to two lobes")
        table[region] = lobe
    return table


def split_hemisphere(label: str) -> tuple[str | None, str]:
    """``'ctx_lh_G_front_sup' -> ('lh', 'G_front_sup')``; ``'Left-Hippocampus' -> ('lh', 'Hippocampus')``.

    Labels without a hemisphere prefix return ``(None, label)``.
    """
    s = str(label).strip()
    for pattern in (_CORTEX_PREFIX, _HEMI_PREFIX):
        m = pattern.match(s)
        if m:
            return m.group(1).lower(), m.group(2)
    m = _ASEG_PREFIX.match(s)
    if m:
        return ("lh" if m.group(1).lower() == "left" else "rh"), m.group(2)
    return None, s


_OTHER_SIDE = {"lh": "rh", "rh": "lh", "left": "right", "right": "left"}


def homologue(label: Any) -> str | None:
    """The same region in the other hemisphere, written the same way: ``'ctx_rh_G_front_sup' ->
    'ctx_lh_G_front_sup'``, ``'Right-Hippocampus' -> 'Left-Hippocampus'``; None for a label
    without a hemisphere."""
    s = str(label).strip()
    for pattern in (_CORTEX_PREFIX, _HEMI_PREFIX, _ASEG_PREFIX):
        m = pattern.match(s)
        if m:
            side = m.group(1)
            other = _OTHER_SIDE[side.lower()]
            other = other.upper() if side.isupper() else other.capitalize() if side[0].isupper() else other
            return s[:m.start(1)] + other + s[m.end(1):]
    return None


def label_to_lobe(label: Any, x_mm: float = float("nan")) -> int:
    """Index into :data:`LOBES` of a Destrieux / Desikan-Killiany / aseg label (0 = unknown).

    A label without a hemisphere prefix takes its hemisphere from the sign of ``x_mm``
    (negative = left, RAS convention) when known, else it is unknown. Labels that already
    name a lobe (``lh_frontal``, ``Left temporal``, ``frontal``) are accepted too.
    """
    if is_unknown_label(label):
        return 0
    s = str(label).strip()
    direct = re.sub(r"[\s\-]+", "_", s.lower()).replace("left_", "lh_").replace("right_", "rh_")
    if direct in LOBES:
        return LOBES.index(direct)
    hemi, region = split_hemisphere(s)
    lobe = lobe_table().get(region.lower())
    if lobe is None and direct in LOBE_CLASSES:
        lobe = direct
    if lobe is None:
        return 0
    if hemi is None:
        if not np.isfinite(x_mm):
            return 0
        hemi = "lh" if x_mm < 0 else "rh"
    return LOBES.index(f"{hemi}_{lobe}")


def find_atlas_column(regions: dict[str, Any], atlas: str) -> str | None:
    """Name of the column in ``regions`` that holds ``atlas`` (aliases, case-insensitive)."""
    aliases = ATLAS_ALIASES.get(atlas.lower(), (atlas.lower(),))
    for key in regions:
        if key.lower() in aliases:
            return key
    return None


def coords_to_bins(xyz: np.ndarray) -> tuple[np.ndarray, int]:
    """``(C, 3)`` mm -> ``(C, 3)`` int64 bins in ``[0, 200)``, -1 where unknown; and the number
    of channels clamped into an edge bin."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    known = np.isfinite(xyz).all(axis=1)
    raw = np.floor(np.where(known[:, None], xyz, 0.0) - COORD_ORIGIN_MM)
    clamped = known & ((raw < 0) | (raw >= N_COORD_BINS)).any(axis=1)
    bins = np.clip(raw, 0, N_COORD_BINS - 1).astype(np.int64)
    bins[~known] = -1
    return bins, int(clamped.sum())


def _as_list(channels) -> list:
    return list(channels) if isinstance(channels, (list, tuple)) else [channels]


def _describe(names: Sequence[str], idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(names[i]) for i in idx[:limit])
    return shown + (", ..." if len(idx) > limit else "")


@dataclass
class SpatialVocab:
    """Category vocabularies for BaRISTA's spatial scales.

    Args:
        parcels: known atlas labels in table order; label ``parcels[i]`` gets index ``i + 1``
            (0 = unknown). Build it with :meth:`from_channels`; append a new subject's labels
            with :meth:`extend` (existing indices never move).
        atlas: which atlas column the parcel labels come from (``"destrieux"`` or
            ``"desikan"``; aliases in :data:`ATLAS_ALIASES`).
        spaces: the coordinate spaces (``/channels`` attr ``coordinate_space``, e.g.
            ``"MNI152NLin2009cAsym"``) of the sessions the vocabulary was built from, unknown ones
            left out: what a model's coordinate embedding learned positions in.

    ``encode(channels)`` gives the ``coords``, ``parcel`` and ``lobe`` entries of a BaRISTA
    batch (see the brief's batch contract) for one session's channels.
    """

    parcels: list[str] = field(default_factory=list)
    atlas: str = "destrieux"
    spaces: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.parcels = [str(p).strip() for p in self.parcels]
        self.spaces = sorted({str(x).strip() for x in self.spaces} - {""})
        if len(set(self.parcels)) != len(self.parcels):
            raise ValueError("SpatialVocab: parcels contain duplicates; each label must appear once")
        bad = [p for p in self.parcels if is_unknown_label(p)]
        if bad:
            raise ValueError(f"SpatialVocab: parcels {bad[:5]} are unknown/white-matter labels; "
                             "they map to index 0 and must not be listed")
        self._index = {p: i + 1 for i, p in enumerate(self.parcels)}

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_parcels(self) -> int:
        """Rows of the parcel table, unknown row included."""
        return len(self.parcels) + 1

    @property
    def n_lobes(self) -> int:
        """Rows of the lobe table (21: 20 lobes + unknown)."""
        return len(LOBES)

    @property
    def n_coord_bins(self) -> int:
        """Rows of each coordinate table (200 one-mm bins)."""
        return N_COORD_BINS

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_channels(cls, channels, atlas: str = "destrieux") -> "SpatialVocab":
        """Vocabulary of every known label of ``atlas`` in one or many sessions' channels.

        Labels are sorted so the same set of sessions always gives the same indices.
        """
        labels: set[str] = set()
        for ch in _as_list(channels):
            col = find_atlas_column(ch.regions, atlas)
            if col is None:
                continue
            labels.update(str(v).strip() for v in ch.regions[col] if not is_unknown_label(v))
        return cls(parcels=sorted(labels), atlas=atlas, spaces=coordinate_spaces(channels))

    def extend(self, channels) -> "SpatialVocab":
        """A new vocabulary with ``channels``' unseen labels appended (old indices unchanged)."""
        new = SpatialVocab.from_channels(channels, self.atlas).parcels
        return SpatialVocab(self.parcels + [p for p in new if p not in self._index], self.atlas, self.spaces)

    # -- encoding ------------------------------------------------------------------------------
    def parcel_index(self, label: Any) -> tuple[int, str | None]:
        """``label``'s row (0: unknown) and, when the label itself is not in the vocabulary but
        its other hemisphere's homologue is (a right-hemisphere subject of a model pretrained on
        left-hemisphere implants), that homologue, whose row it takes: the same region's
        embedding is a better prior than the unknown row white matter shares."""
        if is_unknown_label(label):
            return 0, None
        label = str(label).strip()
        if label in self._index:
            return self._index[label], None
        twin = homologue(label)
        return (self._index[twin], twin) if twin in self._index else (0, None)

    def encode(self, channels, scale: str | None = None) -> dict[str, np.ndarray]:
        """Category indices of one session's channels.

        Args:
            channels: a :class:`neurofm.data.session.Channels` (``names``, ``xyz`` (C, 3) mm,
                ``regions`` {atlas: (C,) str}).
            scale: the scale the model encodes with (``"coords"``, ``"parcel"``, ``"lobe"``).
                Channels unknown at that scale are counted in a warning, and a session where
                *no* channel is known at it is an error. ``None`` warns about every scale and
                errors only when no channel is known at any.

        Returns:
            ``{"coords": (C, 3) int64 in [0, 200) or -1, "parcel": (C,) int64 (0 unknown),
            "lobe": (C,) int64 (0 unknown)}``.
        """
        if scale is not None and scale not in SCALES:
            raise ValueError(f"SpatialVocab.encode: scale must be one of {SCALES}, got {scale!r}")
        names = list(channels.names)
        n = len(names)
        xyz = np.asarray(channels.xyz, dtype=np.float64).reshape(n, 3)
        coords, n_clamped = coords_to_bins(xyz)
        if n_clamped:
            warnings.warn(f"SpatialVocab: {n_clamped} of {n} channels lie outside [-100, 100) mm on some "
                          "axis and were clamped to the edge 1-mm bin (check the coordinate units are mm)",
                          stacklevel=2)

        parcel = np.zeros(n, dtype=np.int64)
        col = find_atlas_column(channels.regions, self.atlas)
        unseen: set[str] = set()
        borrowed: dict[str, str] = {}
        if col is not None:
            for i, label in enumerate(channels.regions[col]):
                parcel[i], twin = self.parcel_index(label)
                if twin is not None:
                    borrowed[str(label).strip()] = twin
                elif parcel[i] == 0 and not is_unknown_label(label):
                    unseen.add(str(label).strip())
        if borrowed:
            warnings.warn(f"SpatialVocab: {len(borrowed)} {self.atlas} labels are not in the vocabulary but their "
                          f"other hemisphere's are, whose rows they take ("
                          + ", ".join(f"{a} -> {b}" for a, b in sorted(borrowed.items())[:3]) + ")", stacklevel=2)
        if unseen:
            warnings.warn(f"SpatialVocab: {len(unseen)} {self.atlas} labels are not in the vocabulary "
                          f"({sorted(unseen)[:5]}) and map to 0 (unknown); extend the vocabulary with "
                          "vocab.extend(channels) before building the model to give them rows", stacklevel=2)

        lobe = self._lobes(channels, xyz, col)
        out = {"coords": coords, "parcel": parcel, "lobe": lobe}
        self._check_unknown(names, out, scale, atlas_found=col is not None)
        return out

    def _lobes(self, channels, xyz: np.ndarray, col: str | None) -> np.ndarray:
        """Lobe from the chosen atlas; where it gives none, from any other atlas column."""
        n = len(xyz)
        lobe = np.zeros(n, dtype=np.int64)
        keys = ([col] if col is not None else []) + [k for k in channels.regions if k != col]
        for key in keys:
            labels = channels.regions[key]
            todo = np.flatnonzero(lobe == 0)
            for i in todo:
                lobe[i] = label_to_lobe(labels[i], xyz[i, 0])
        return lobe

    def _check_unknown(self, names, out: dict[str, np.ndarray], scale: str | None, atlas_found: bool) -> None:
        n = len(names)
        unknown = {"coords": (out["coords"] < 0).any(axis=1), "parcel": out["parcel"] == 0,
                   "lobe": out["lobe"] == 0}
        what = {"coords": "coordinates", "parcel": f"{self.atlas} parcel", "lobe": "lobe"}
        scales = SCALES if scale is None else (scale,)
        if n and all(unknown[s].all() for s in scales):
            hint = "" if atlas_found else f" (no /channels/region/{self.atlas} column was found)"
            raise ValueError(
                f"SpatialVocab.encode: none of the {n} channels has a known "
                f"{' or '.join(what[s] for s in scales)}{hint}; add electrode coordinates (mm) or atlas "
                "labels to /channels, or choose another spatial scale (encode_scale)")
        parts = [f"{int(unknown[s].sum())} without {what[s]}" for s in scales if unknown[s].any()]
        if parts:
            s0 = next(s for s in scales if unknown[s].any())
            warnings.warn(f"SpatialVocab: of {n} channels, {', '.join(parts)}; they get index 0 / -1 (zero "
                          f"spatial embedding), e.g. {_describe(names, np.flatnonzero(unknown[s0]))}",
                          stacklevel=3)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in a model's config."""
        return {"parcels": list(self.parcels), "atlas": self.atlas, "lobes": list(LOBES),
                "n_coord_bins": N_COORD_BINS, "coord_origin_mm": COORD_ORIGIN_MM,
                "coordinate_spaces": list(self.spaces)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpatialVocab":
        lobes = d.get("lobes")
        if lobes is not None and list(lobes) != list(LOBES):
            raise ValueError("SpatialVocab.from_dict: the stored lobe table differs from this neurofm version's "
                             f"({len(lobes)} vs {len(LOBES)} rows); load the checkpoint with the neurofm "
                             "version that wrote it")
        binning = (d.get("n_coord_bins", N_COORD_BINS), d.get("coord_origin_mm", COORD_ORIGIN_MM))
        if binning != (N_COORD_BINS, COORD_ORIGIN_MM):
            raise ValueError("SpatialVocab.from_dict: the stored coordinate binning differs from 200 x 1 mm "
                             "centred on 0")
        return cls(parcels=list(d.get("parcels", [])), atlas=d.get("atlas", "destrieux"),
                   spaces=list(d.get("coordinate_spaces", [])))  # older folders: not recorded


def coordinate_spaces(channels) -> list[str]:
    """The known coordinate spaces of one or many sessions' channels (``"unknown"`` and empty
    ones left out), sorted."""
    out = {str(getattr(ch, "coordinate_space", "") or "").strip() for ch in _as_list(channels)}
    return sorted(x for x in out if x and x.lower() not in ("unknown", "n/a"))


def lobe_names(indices: Iterable[int]) -> list[str]:
    """Readable names of lobe indices (for plots and reports)."""
    return [LOBES[int(i)] for i in indices]
