"""Synthetic recordings with known ground truth (DESIGN.md 2.3).

Two generators, both writing ordinary session files through
:class:`~neurofm.data.session.SessionWriter`, so every path a real recording takes (lazy
reads, tokenizers, splits, training) is exercised on data whose answer is known:

- :func:`simulate_spikes`: a recurrent Poisson GLM (discrete-time Hawkes) network with a
  sparse excitatory/inhibitory coupling matrix, driven by running speed, position on a 1-D
  track and, optionally, drifting gratings. Ground truth: the coupling matrix, tunings and
  baseline rates.
- :func:`simulate_ieeg`: depth-electrode (sEEG) recordings whose channels mix region-level
  sources (1/f background + a region-specific rhythm), with labelled events that evoke an
  ERP and a high-gamma burst in a subset of regions only. Ground truth: which region drives
  each channel and which regions respond.

Both are deterministic in ``seed``: the same arguments give the same file content. Every
random stream has its own generator spawned from ``seed``, so the output does not depend on
how the simulation is chunked internally.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
from scipy import signal
from scipy.ndimage import gaussian_filter1d

from neurofm.data.session import SessionWriter

__all__ = ["simulate_spikes", "simulate_ieeg", "simulate_ieeg_subjects", "IEEG_REGIONS", "IEEG_BEHAVIOR_REGIONS"]


def _params_attr(**params) -> str:
    """Generator parameters as one JSON string (HDF5 attrs cannot hold dicts)."""
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}, sort_keys=True)


def _check_positive(name: str, value: float) -> None:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


# --------------------------------------------------------------------------------------------
# spiking network
# --------------------------------------------------------------------------------------------


def _running_speed(rng: np.random.Generator, n: int, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Speed (cm/s, >= 0) at ``fs`` Hz alternating rest and run epochs, and the run epochs.

    Rest lasts 4-15 s, runs 5-15 s; each run has its own cruising speed (15-45 cm/s) with
    slow fluctuations. The on/off profile is smoothed (Gaussian, 0.4 s) so the animal
    accelerates and stops smoothly, as a tracked animal does.
    """
    boxcar = np.zeros(n)
    epochs = []
    t, running = float(rng.uniform(1.0, 4.0)), True  # start with a short rest
    while t < n / fs:
        length = rng.uniform(5.0, 15.0) if running else rng.uniform(4.0, 15.0)
        if running:
            i0, i1 = int(t * fs), min(int((t + length) * fs), n)
            boxcar[i0:i1] = rng.uniform(15.0, 45.0)
            epochs.append((i0 / fs, i1 / fs))
        t += length
        running = not running
    # slow multiplicative fluctuation (OU-like, 1 s time constant, +-20%)
    a = np.exp(-1.0 / fs)
    wobble = signal.lfilter([np.sqrt(1 - a * a)], [1, -a], rng.standard_normal(n))
    speed = boxcar * np.clip(1.0 + 0.2 * wobble, 0.3, None)
    speed = gaussian_filter1d(speed, sigma=0.4 * fs, mode="constant")
    return np.clip(speed, 0.0, None), np.asarray(epochs, dtype=np.float64).reshape(-1, 2)


def _track_position(speed: np.ndarray, fs: float, track_length: float) -> np.ndarray:
    """Position (cm) on a track of ``track_length``: the animal turns around at both ends."""
    distance = np.concatenate([[0.0], np.cumsum(speed[:-1]) / fs])
    folded = np.mod(distance, 2 * track_length)
    return track_length - np.abs(folded - track_length)


def _gratings(rng: np.random.Generator, n_frames: int, frame_rate: float, size: int,
              n_orientations: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drifting sinusoidal gratings: ``frames (F, size, size) uint8``, orientation (F,) rad
    (NaN on blank frames) and contrast (F,).

    Orientation is held for blocks of 0.5-1.5 s; 20% of blocks are blank (mid-grey). The
    grating drifts perpendicular to its bars at 2 Hz with 0.125 cycles/pixel.
    """
    orientation = np.full(n_frames, np.nan)
    f = 0
    while f < n_frames:
        block = max(1, int(round(rng.uniform(0.5, 1.5) * frame_rate)))
        if rng.random() >= 0.2:
            orientation[f:f + block] = np.pi * rng.integers(n_orientations) / n_orientations
        f += block
    contrast = np.where(np.isnan(orientation), 0.0, 1.0)
    theta = np.nan_to_num(orientation)[:, None, None]  # (F, 1, 1)
    yy, xx = np.mgrid[0:size, 0:size]
    t = (np.arange(n_frames) / frame_rate)[:, None, None]
    phase = 2 * np.pi * (0.125 * (xx * np.cos(theta) + yy * np.sin(theta)) - 2.0 * t)
    frames = 127.5 + 127.5 * contrast[:, None, None] * np.cos(phase)  # (F, H, W)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8), orientation, contrast


def _connectivity(rng: np.random.Generator, n_units: int, connection_prob: float, frac_inhibitory: float,
                  self_inhibition: float) -> tuple[np.ndarray, np.ndarray]:
    """Sparse Dale's-law coupling ``W (N, N)``: ``W[i, j]`` is the effect of j on i.

    Excitatory weights are log-normal (median 0.5), inhibitory ones negative log-normal
    (median 1.0); the diagonal holds ``-self_inhibition`` (relative refractoriness).
    """
    inhibitory = np.zeros(n_units, dtype=bool)
    inhibitory[rng.permutation(n_units)[: int(round(frac_inhibitory * n_units))]] = True
    mask = rng.random((n_units, n_units)) < connection_prob
    np.fill_diagonal(mask, False)
    magnitude = np.where(inhibitory[None, :], rng.lognormal(np.log(1.0), 0.4, (n_units, n_units)),
                         rng.lognormal(np.log(0.5), 0.4, (n_units, n_units)))
    W = np.where(mask, np.where(inhibitory[None, :], -magnitude, magnitude), 0.0)
    np.fill_diagonal(W, -self_inhibition)
    return W, inhibitory


def _stabilise(W: np.ndarray, peak_rate: np.ndarray, tau: float, target: float) -> np.ndarray:
    """Scale the excitatory weights down until the network cannot run away.

    Linearising the exponential link at each unit's peak rate, one spike of j adds about
    ``peak_rate[i] * tau * (exp(W[i, j]) - 1)`` spikes to i (a branching ratio). Counting
    excitation only (inhibition can only help), the spectral radius of that matrix is kept
    at or below ``target`` < 1, so the excitatory cascade dies out even at peak drive.
    """
    W = W.copy()
    exc = W > 0
    np.fill_diagonal(exc, False)
    for _ in range(100):
        gain = peak_rate[:, None] * tau * np.where(exc, np.expm1(W), 0.0)
        if np.max(np.abs(np.linalg.eigvals(gain))) <= target:
            break
        W[exc] *= 0.95
    return W


def simulate_spikes(
    out_path: str | os.PathLike,
    *,
    n_units: int = 100,
    duration: float = 600.0,
    seed: int = 0,
    dt: float = 0.001,
    stimulus: bool = False,
    connection_prob: float = 0.1,
    frac_inhibitory: float = 0.2,
    coupling_tau: float = 0.010,
    self_inhibition: float = 2.0,
    stability: float = 0.8,
    max_rate: float = 200.0,
    track_length: float = 200.0,
    behavior_rate: float = 100.0,
    frame_rate: float = 20.0,
    frame_size: int = 16,
    stimulus_latency: float = 0.05,
    session_id: str | None = None,
) -> Path:
    """Simulate a recurrent spiking network with known connectivity and write a session file.

    The model is a discrete-time Poisson GLM (a nonlinear Hawkes process) on a ``dt`` grid.
    Unit ``i`` spikes in step ``t`` with probability ``1 - exp(-lambda_i(t) * dt)`` (at most
    one spike per step), where

    ``log lambda_i(t) = log baseline_rate[i] + speed_tuning[i] * speed(t)
    + place_gain[i] * exp(-(position(t) - place_center[i])^2 / (2 place_width[i]^2)) * speed/(speed + 5)
    + orientation_gain[i] * contrast(t - latency) * exp(2 (cos 2(theta(t - latency) - pref[i]) - 1))
    + sum_j W[i, j] * h_j(t)``

    and ``h_j(t) = sum over j's earlier spikes s of exp(-(t - s - dt) / coupling_tau)``: a
    spike of ``j`` in step ``k`` changes ``i``'s log-rate by ``W[i, j]`` from step ``k + 1``,
    decaying with ``coupling_tau``. ``lambda`` is capped at ``max_rate`` Hz. Spike times are
    placed uniformly inside their step.

    Parameters
    ----------
    out_path
        Session file to write (``.h5``).
    n_units, duration, dt
        Network size, recording length (s) and simulation step (s).
    seed
        Everything random derives from it; the same arguments give the same file content.
    stimulus
        Add ``frame_size`` x ``frame_size`` drifting gratings at ``frame_rate`` Hz (``/stimulus/gratings``) that drive
        orientation-tuned units (60% of them) after ``stimulus_latency`` s.
    connection_prob, frac_inhibitory, coupling_tau, self_inhibition
        Sparse random ``W``: each off-diagonal pair connected with ``connection_prob``;
        columns of inhibitory units negative (Dale's law); diagonal ``-self_inhibition``.
    stability
        Bound on the excitatory branching ratio (see :func:`_stabilise`); below 1 the
        network is stable at peak drive.
    track_length, behavior_rate
        Length of the 1-D track (cm) and sampling rate (Hz) of ``/behavior/speed`` (cm/s)
        and ``/behavior/position`` (cm).

    Returns
    -------
    Path of the written file. Its ``/ground_truth`` group holds ``connectivity`` (N, N)
    with ``connectivity[i, j]`` = effect of unit ``j`` on unit ``i`` (row = target,
    column = source; diagonal = self-history), ``baseline_rate`` (N,) Hz, ``speed_tuning``
    (N,) log-rate per cm/s, ``place_center``/``place_width`` (cm) and ``place_gain``,
    ``inhibitory`` (N,) bool, and with a stimulus ``preferred_orientation`` (rad),
    ``orientation_gain``, ``stimulus_orientation`` (F,) rad (NaN = blank). Root attrs
    ``generator`` and ``generator_params`` (JSON) record how the file was made;
    ``/intervals/running`` holds the run epochs.
    """
    for name, value in (("duration", duration), ("dt", dt), ("coupling_tau", coupling_tau),
                        ("behavior_rate", behavior_rate), ("max_rate", max_rate)):
        _check_positive(name, value)
    if n_units < 2:
        raise ValueError(f"n_units must be at least 2, got {n_units}")
    if not 0 < stability < 1:
        raise ValueError(f"stability must be in (0, 1) for a stable network, got {stability}")
    params = dict(n_units=n_units, duration=duration, seed=seed, dt=dt, stimulus=stimulus,
                  connection_prob=connection_prob, frac_inhibitory=frac_inhibitory,
                  coupling_tau=coupling_tau, self_inhibition=self_inhibition, stability=stability,
                  max_rate=max_rate, track_length=track_length, behavior_rate=behavior_rate,
                  frame_rate=frame_rate, frame_size=frame_size, stimulus_latency=stimulus_latency)
    rng_net, rng_beh, rng_stim, rng_spk, rng_jit = (np.random.default_rng(s)
                                                   for s in np.random.SeedSequence(seed).spawn(5))
    N = n_units

    # -- units: baselines and tunings --------------------------------------------------------
    W, inhibitory = _connectivity(rng_net, N, connection_prob, frac_inhibitory, self_inhibition)
    baseline_rate = rng_net.lognormal(np.log(4.0), 0.5, N) * np.where(inhibitory, 2.0, 1.0)  # Hz
    speed_tuning = rng_net.normal(0.01, 0.012, N)  # log-rate per cm/s
    is_place = rng_net.random(N) < 0.4
    place_center = rng_net.uniform(0.0, track_length, N)
    place_width = rng_net.uniform(0.05, 0.15, N) * track_length
    place_gain = np.where(is_place, rng_net.uniform(0.8, 2.0, N), 0.0)
    is_tuned = rng_net.random(N) < 0.6
    preferred_orientation = rng_net.uniform(0.0, np.pi, N)
    orientation_gain = np.where(is_tuned, rng_net.uniform(0.5, 1.5, N), 0.0) if stimulus else np.zeros(N)
    peak_rate = baseline_rate * np.exp(np.clip(speed_tuning, 0, None) * 45.0 + place_gain + orientation_gain)
    W = _stabilise(W, np.minimum(peak_rate, max_rate), coupling_tau, stability)

    # -- behaviour (and stimulus) on their own clocks -----------------------------------------
    n_beh = int(np.floor(duration * behavior_rate)) + 1
    beh_t = np.arange(n_beh) / behavior_rate
    speed, run_epochs = _running_speed(rng_beh, n_beh, behavior_rate)
    position = _track_position(speed, behavior_rate, track_length)
    if stimulus:
        n_frames = int(np.floor(duration * frame_rate))
        frames, stim_orientation, stim_contrast = _gratings(rng_stim, n_frames, frame_rate, frame_size)
        # per frame and unit: the stimulus term of the log-rate, (F, N)
        stim_drive = orientation_gain[None, :] * stim_contrast[:, None] * np.exp(
            2.0 * (np.cos(2.0 * (np.nan_to_num(stim_orientation)[:, None] - preferred_orientation[None, :])) - 1.0))

    # -- simulate, one chunk of steps at a time ----------------------------------------------
    n_steps = int(round(duration / dt))
    decay = np.exp(-dt / coupling_tau)
    W_by_source = np.ascontiguousarray(W.T)  # row j: j's effect on every unit
    log_base = np.log(baseline_rate)
    log_max = np.log(max_rate)
    u = np.zeros(N)  # recurrent input sum_j W[i, j] h_j(t)
    spike_steps, spike_units = [], []
    chunk = max(1, int(round(10.0 / dt)))
    for k0 in range(0, n_steps, chunk):
        k1 = min(n_steps, k0 + chunk)
        t = np.arange(k0, k1) * dt  # (Tc,)
        s_t = np.interp(t, beh_t, speed)
        x_t = np.interp(t, beh_t, position)
        in_field = np.exp(-0.5 * ((x_t[:, None] - place_center[None, :]) / place_width[None, :]) ** 2)  # (Tc, N)
        drive = (log_base[None, :] + s_t[:, None] * speed_tuning[None, :]
                 + place_gain[None, :] * in_field * (s_t / (s_t + 5.0))[:, None])  # (Tc, N) log-rate
        if stimulus:
            frame = np.floor((t - stimulus_latency) * frame_rate).astype(np.int64)
            valid = (frame >= 0) & (frame < n_frames)
            drive[valid] += stim_drive[frame[valid]]
        # A spike happens when lambda * dt exceeds an Exp(1) draw E: with the rate capped at
        # max_rate, that is u > log(E / dt) - drive whenever log(E / dt) < log(max_rate).
        log_e = np.log(rng_spk.standard_exponential((k1 - k0, N)) / dt)
        threshold = np.where(log_e < log_max, log_e - np.minimum(drive, log_max), np.inf)  # (Tc, N)
        fired = np.zeros((k1 - k0, N), dtype=bool)
        for k in range(k1 - k0):  # the recurrence: the one loop over time, O(N) work per step
            s = fired[k]
            np.greater(u, threshold[k], out=s)
            u *= decay
            idx = s.nonzero()[0]
            if idx.size:
                u += W_by_source[idx].sum(axis=0)
        steps, units = np.nonzero(fired)  # sorted by step, then unit
        spike_steps.append(steps + k0)
        spike_units.append(units)
    steps = np.concatenate(spike_steps)
    units = np.concatenate(spike_units).astype(np.int32)
    times = (steps + rng_jit.random(steps.size)) * dt
    order = np.argsort(times, kind="stable")
    times, units = times[order], units[order]

    # -- write -----------------------------------------------------------------------------
    session_id = session_id or f"synthetic-spikes-seed{seed}"
    with SessionWriter(out_path, session_id=session_id, subject_id=f"synthetic-network-seed{seed}",
                       species="simulated", lab="neurofm", source="simulate_spikes",
                       generator="neurofm.data.synthetic.simulate_spikes", generator_params=_params_attr(**params),
                       seed=seed) as w:
        w.add_units([f"unit{i:04d}" for i in range(N)], cell_type=np.where(inhibitory, "inhibitory", "excitatory"))
        w.add_spikes(times, units, t_start=0.0, t_end=n_steps * dt)
        w.add_behavior("speed", beh_t, speed.astype(np.float32))
        w.add_behavior("position", beh_t, position.astype(np.float32))
        w.add_intervals("running", run_epochs[:, 0], run_epochs[:, 1])
        if stimulus:
            w.add_stimulus("gratings", np.arange(n_frames) / frame_rate, frames)
        gt = "ground_truth/"
        w.add_array(gt + "connectivity", W, convention="W[i, j] = effect of unit j's spikes on unit i's log-rate "
                    "(row = target, column = source; diagonal = self-history)",
                    kernel="W[i, j] * exp(-(lag - dt) / coupling_tau) for lag >= dt", coupling_tau=coupling_tau, dt=dt)
        w.add_array(gt + "baseline_rate", baseline_rate, unit="Hz")
        w.add_array(gt + "speed_tuning", speed_tuning, unit="log-rate per cm/s")
        w.add_array(gt + "place_center", place_center, unit="cm")
        w.add_array(gt + "place_width", place_width, unit="cm")
        w.add_array(gt + "place_gain", place_gain, unit="log-rate at the field centre while running")
        w.add_array(gt + "inhibitory", inhibitory)
        if stimulus:
            w.add_array(gt + "preferred_orientation", preferred_orientation, unit="rad")
            w.add_array(gt + "orientation_gain", orientation_gain, unit="log-rate at the preferred orientation")
            w.add_array(gt + "stimulus_orientation", stim_orientation, unit="rad (NaN = blank frame)")
        return w.close()


# --------------------------------------------------------------------------------------------
# intracranial EEG
# --------------------------------------------------------------------------------------------

# (Destrieux label, Desikan-Killiany label, approx. MNI centroid (mm), rhythm (Hz), responds to speech)
# Labels are the FreeSurfer aparc.a2009s+aseg and aparc+aseg names; subcortical structures carry
# the same aseg name in both atlases. Responsive and non-responsive regions alternate so any
# n_regions >= 2 has both kinds.
IEEG_REGIONS: tuple[tuple[str, str, tuple[float, float, float], float, bool], ...] = (
    ("ctx_lh_G_temp_sup-Lateral", "ctx-lh-superiortemporal", (-58.0, -18.0, 4.0), 8.0, True),
    ("Left-Hippocampus", "Left-Hippocampus", (-28.0, -22.0, -12.0), 6.0, False),
    ("ctx_lh_G_temporal_middle", "ctx-lh-middletemporal", (-60.0, -32.0, -8.0), 10.0, True),
    ("ctx_lh_S_front_sup", "ctx-lh-superiorfrontal", (-24.0, 28.0, 48.0), 18.0, False),
    ("ctx_lh_G_front_inf-Triangul", "ctx-lh-parstriangularis", (-48.0, 30.0, 6.0), 15.0, True),
    ("Left-Amygdala", "Left-Amygdala", (-22.0, -4.0, -18.0), 5.0, False),
    ("ctx_rh_G_temporal_middle", "ctx-rh-middletemporal", (60.0, -28.0, -8.0), 9.0, False),
    ("ctx_rh_G_front_middle", "ctx-rh-rostralmiddlefrontal", (36.0, 40.0, 22.0), 20.0, False),
    ("ctx_lh_G_pariet_inf-Supramar", "ctx-lh-supramarginal", (-54.0, -40.0, 30.0), 11.0, True),
    ("ctx_lh_G_precentral", "ctx-lh-precentral", (-38.0, -14.0, 52.0), 22.0, False),
    ("Right-Hippocampus", "Right-Hippocampus", (28.0, -22.0, -12.0), 7.0, False),
    ("ctx_lh_G_oc-temp_lat-fusifor", "ctx-lh-fusiform", (-38.0, -50.0, -18.0), 12.0, False),
    ("ctx_rh_G_insular_short", "ctx-rh-insula", (36.0, 8.0, 4.0), 13.0, False),
    ("ctx_rh_G_cingul-Post-dorsal", "ctx-rh-posteriorcingulate", (6.0, -20.0, 38.0), 16.0, False),
    ("ctx_lh_G_postcentral", "ctx-lh-postcentral", (-44.0, -28.0, 52.0), 20.0, False),
    ("ctx_rh_G_front_inf-Opercular", "ctx-rh-parsopercularis", (50.0, 14.0, 14.0), 14.0, False),
)
#: regions whose high gamma a simulated continuous behaviour drives (sensorimotor, like grip force)
IEEG_BEHAVIOR_REGIONS = ("ctx_lh_G_precentral", "ctx_lh_G_postcentral")
_BACKGROUND_TAUS = (0.004, 0.016, 0.064, 0.256, 1.024)  # s; equal-variance AR(1)s sum to ~1/f


def _ar2_variance(a1: float, a2: float) -> float:
    """Stationary variance of ``x[n] = a1 x[n-1] + a2 x[n-2] + e[n]`` with unit-variance ``e``."""
    return (1 - a2) / ((1 + a2) * ((1 - a2) ** 2 - a1 ** 2))


def _bandlimited(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float) -> np.ndarray:
    """Unit-variance Gaussian noise with its spectrum confined to ``[lo, hi]`` Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / fs)
    spec[(f < lo) | (f > hi)] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def _shafts(rng: np.random.Generator, n_channels: int, n_regions: int, contacts_per_shaft: int,
            spacing: float = 3.5, regions=None, placement_sd: float = 2.0):
    """Depth shafts, one per target region in turn, contacts numbered from the deep tip.

    Returns names (C,), xyz (C, 3) mm, the target region of each contact (C,), and its tissue
    class (C,): 0 grey matter of the target region, 1 white matter, 2 outside the brain
    (label ``Unknown``). The first 12-20 mm of a shaft lie in the target; the rest is white
    matter, and the outermost contact of some shafts is outside. ``regions`` (indices into
    :data:`IEEG_REGIONS`) are the targets in turn (default: the first ``n_regions``); each tip
    lies ``placement_sd`` mm (per axis) from the region's centroid.
    """
    n_shafts = int(np.ceil(n_channels / contacts_per_shaft))
    letters = {"L": 0, "R": 0}
    names, xyz, region, tissue = [], [], [], []
    for s in range(n_shafts):
        r = s % n_regions if regions is None else int(regions[s % len(regions)])
        centre = np.asarray(IEEG_REGIONS[r][2])
        side = "L" if centre[0] < 0 else "R"
        letter = letters[side]
        letters[side] += 1
        prefix = side + ("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[letter % 26]) + ("'" * (letter // 26))
        tip = centre + rng.normal(0.0, placement_sd, 3)
        direction = np.array([1.0 if side == "R" else -1.0, rng.normal(0, 0.3), rng.normal(0.2, 0.3)])
        direction /= np.linalg.norm(direction)
        grey_depth = rng.uniform(12.0, 20.0)
        n_here = min(contacts_per_shaft, n_channels - len(names))
        outside_last = rng.random() < 0.5
        for k in range(n_here):
            names.append(f"{prefix}{k + 1}")
            xyz.append(tip + direction * spacing * k)
            region.append(r)
            d = spacing * k
            tissue.append(0 if d < grey_depth else (2 if (outside_last and k == contacts_per_shaft - 1) else 1))
    return names, np.asarray(xyz), np.asarray(region), np.asarray(tissue)


def simulate_ieeg(
    out_path: str | os.PathLike,
    *,
    n_channels: int = 64,
    duration: float = 600.0,
    sampling_rate: float = 512.0,
    seed: int = 0,
    n_regions: int = 8,
    line_noise: float | None = 60.0,
    contacts_per_shaft: int = 8,
    event_interval: tuple[float, float] = (2.0, 4.0),
    response_amplitude: float = 1.0,
    chunk_duration: float = 10.0,
    session_id: str | None = None,
    regions=None,
    placement_sd: float = 2.0,
    coordinate_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    behavior: str | None = None,
    behavior_regions: tuple[str, ...] = (),
    behavior_rate: float = 100.0,
    subject_id: str | None = None,
) -> Path:
    """Simulate a stereo-EEG session with region-structured sources and labelled events.

    Each region ``r`` has a latent source ``s_r(t)``: a 1/f background (five equal-variance
    AR(1) processes with time constants 4 ms ... 1 s) plus a region-specific rhythm (an AR(2)
    resonator at the region's frequency, 2 Hz wide). Channels sit on depth shafts (``LA1``,
    ``LA2``, ... numbered from the deep tip), each shaft aimed at one region; a channel is

    ``x_c(t) = 50 uV * (gain_c * s_{region(c)}(t) + sum_r leak_cr s_r(t) + 0.3 noise_c(t)) + line noise``

    with ``gain_c`` 1.0 in grey matter, 0.35 in white matter, 0.1 outside the brain, and
    volume-conduction leak ``leak_cr = 0.2 exp(-distance / 20 mm)`` from every other region.

    Events ``/events/word_onset`` come every ``event_interval`` s (uniform) with labels
    ``speech`` or ``nonspeech`` (equal odds) and 0.5 s duration. A ``speech`` event adds, in
    the *responsive* regions only, an ERP (a negative peak at 100 ms, a positive one at 250
    ms) and a high-gamma (70-150 Hz) burst peaking near 150 ms, each scaled per event and
    region by a log-normal factor (trial-to-trial variability) and by ``response_amplitude``.
    ``nonspeech`` events evoke nothing, so telling them apart needs the right channels.

    Parameters
    ----------
    out_path
        Session file to write (``.h5``).
    n_channels, n_regions, contacts_per_shaft
        Layout: ``ceil(n_channels / contacts_per_shaft)`` shafts aimed at the first
        ``n_regions`` regions of :data:`IEEG_REGIONS` in turn (2 <= n_regions <= 16).
    duration, sampling_rate
        Length (s) and rate (Hz). Data are generated and appended ``chunk_duration`` s at a
        time, so memory does not grow with ``duration``; the result does not depend on the
        chunking.
    seed
        Everything random derives from it; the same arguments give the same file content.
    line_noise
        Mains frequency (50 or 60 Hz), added with its harmonics below Nyquist on every channel
        with a channel-specific amplitude and phase; ``None`` for none.
    regions, placement_sd, coordinate_offset
        Another subject's layout: the shafts aim at ``regions`` (indices into the first
        ``n_regions`` rows of :data:`IEEG_REGIONS`, in turn; default all of them), each tip
        ``placement_sd`` mm per axis from the region's centroid, and the coordinates are
        written in the subject's own space, shifted by ``coordinate_offset`` mm (the sources,
        their mixing and the atlas labels are those of the shared template).
    behavior, behavior_regions, behavior_rate
        A continuous behaviour ``/behavior/<behavior>`` (e.g. ``grip_force``, in mN, sampled at
        ``behavior_rate`` Hz): a latent drive ``d(t) = softplus(1.5 u(t) - 0.5)`` of a
        unit-variance Ornstein-Uhlenbeck ``u`` (1.5 s time constant) sets the amplitude of a
        high-gamma (70-150 Hz) carrier added to the sources of ``behavior_regions``
        (Destrieux names; default :data:`IEEG_BEHAVIOR_REGIONS`), and the recorded behaviour
        is ``200 + 1000 d(t)`` mN. Decoding it needs those regions' high-gamma power.
    subject_id
        The file's ``subject_id`` (default ``synthetic-subject-seed<seed>``).

    Returns
    -------
    Path of the written file. ``/channels`` holds names, coordinates (mm, simulated MNI
    space) and labels in ``region/destrieux`` and ``region/desikan-killiany`` (region label
    in grey matter, ``Left-/Right-Cerebral-White-Matter``, or ``Unknown``). ``/ground_truth``
    holds ``channel_region`` (C,) index of the region whose source dominates each channel,
    ``mixing`` (C, R) gains, ``responsive_regions`` (indices), ``region_destrieux`` and
    ``region_desikan`` (R,) names, ``region_frequency`` (R,) Hz, and ``event_response_scale``
    (events, R) the amplitude factor each event had in each region (0 where none).
    """
    for name, value in (("duration", duration), ("sampling_rate", sampling_rate),
                        ("chunk_duration", chunk_duration), ("response_amplitude", response_amplitude)):
        _check_positive(name, value)
    if not 2 <= n_regions <= len(IEEG_REGIONS):
        raise ValueError(f"n_regions must be in [2, {len(IEEG_REGIONS)}] (the built-in region table), got {n_regions}")
    if n_channels < 1 or contacts_per_shaft < 1:
        raise ValueError(f"n_channels and contacts_per_shaft must be positive, got {n_channels}, {contacts_per_shaft}")
    if line_noise is not None:
        _check_positive("line_noise", line_noise)
    if not 0 < event_interval[0] <= event_interval[1]:
        raise ValueError(f"event_interval must be (min, max) seconds with 0 < min <= max, got {event_interval}")
    if regions is not None:
        regions = [int(r) for r in regions]
        if not regions or min(regions) < 0 or max(regions) >= n_regions:
            raise ValueError(f"regions must be indices in [0, {n_regions}) (n_regions), got {regions}")
    behavior_regions = tuple(behavior_regions) or IEEG_BEHAVIOR_REGIONS
    beh_idx = np.asarray([r for r in range(n_regions) if IEEG_REGIONS[r][0] in behavior_regions], dtype=np.int64)
    if behavior and beh_idx.size == 0:
        raise ValueError(f"behavior={behavior!r}: none of behavior_regions {list(behavior_regions)} is among the "
                         f"first n_regions={n_regions} regions of IEEG_REGIONS; raise n_regions to "
                         f"{len(IEEG_REGIONS)} or name other regions")
    if behavior:
        _check_positive("behavior_rate", behavior_rate)
    params = dict(n_channels=n_channels, duration=duration, sampling_rate=sampling_rate, seed=seed,
                  n_regions=n_regions, line_noise=line_noise, contacts_per_shaft=contacts_per_shaft,
                  event_interval=tuple(event_interval), response_amplitude=response_amplitude)
    if regions is not None or behavior or placement_sd != 2.0 or any(coordinate_offset):
        params.update(regions=regions, placement_sd=placement_sd, coordinate_offset=list(coordinate_offset),
                      behavior=behavior, behavior_regions=[IEEG_REGIONS[r][0] for r in beh_idx] if behavior else [])
    # one more stream (the behaviour's) after the original ones: spawned children do not depend
    # on how many are spawned, so files without a behaviour are unchanged
    streams = np.random.SeedSequence(seed).spawn(5 + len(_BACKGROUND_TAUS) + 1)
    rng_layout, rng_events, rng_osc, rng_noise, rng_line = (np.random.default_rng(s) for s in streams[:5])
    rng_bg = [np.random.default_rng(s) for s in streams[5:5 + len(_BACKGROUND_TAUS)]]
    rng_beh = np.random.default_rng(streams[-1])
    fs, R = float(sampling_rate), n_regions
    table = IEEG_REGIONS[:R]

    # -- layout and mixing -------------------------------------------------------------------
    names, xyz, shaft_region, tissue = _shafts(rng_layout, n_channels, R, contacts_per_shaft, regions=regions,
                                               placement_sd=placement_sd)
    C = len(names)
    centroids = np.asarray([row[2] for row in table])  # (R, 3)
    distance = np.linalg.norm(xyz[:, None, :] - centroids[None, :, :], axis=-1)  # (C, R)
    mixing = 0.2 * np.exp(-distance / 20.0)
    mixing[np.arange(C), shaft_region] = np.array([1.0, 0.35, 0.1])[tissue]
    channel_region = np.argmax(mixing, axis=1)
    hemi = np.where(xyz[:, 0] < 0, "Left", "Right")
    destrieux = np.where(tissue == 0, [table[r][0] for r in shaft_region],
                         np.where(tissue == 1, np.char.add(hemi.astype(str), "-Cerebral-White-Matter"), "Unknown"))
    desikan = np.where(tissue == 0, [table[r][1] for r in shaft_region], destrieux)
    responsive = np.flatnonzero([row[4] for row in table])
    freqs = np.asarray([row[3] for row in table])
    line_amp = rng_layout.uniform(0.2, 0.6, C) if line_noise else np.zeros(C)
    line_phase = rng_layout.uniform(0, 2 * np.pi, C)
    harmonics = (line_noise * np.arange(1, 1 + int((fs / 2 - 1) // line_noise))) if line_noise else np.zeros(0)

    # -- events and their responses (short, so precomputed) ------------------------------------
    onsets = []
    t = 2.0 + rng_events.uniform(*event_interval) - event_interval[0]
    while t < duration - 2.0:
        onsets.append(t)
        t += rng_events.uniform(*event_interval)
    onsets = np.asarray(onsets)
    is_speech = rng_events.random(onsets.size) < 0.5
    n_resp = int(round(0.8 * fs))
    lag = np.arange(n_resp) / fs
    erp = -np.exp(-0.5 * ((lag - 0.10) / 0.03) ** 2) + 0.6 * np.exp(-0.5 * ((lag - 0.25) / 0.06) ** 2)
    envelope = (lag / 0.15) ** 2 * np.exp(2 * (1 - lag / 0.15))  # peaks at 1 at 150 ms
    hg_hi = min(150.0, 0.45 * fs)
    hg_lo = min(70.0, 0.5 * hg_hi)
    scale = np.zeros((onsets.size, R))
    scale[np.ix_(is_speech, responsive)] = response_amplitude * rng_events.lognormal(
        0.0, 0.5, (int(is_speech.sum()), responsive.size))
    responses = {}  # event index -> (n_resp, R) added to the sources
    for e in np.flatnonzero(is_speech):
        resp = np.zeros((n_resp, R))
        for r in responsive:
            hg = _bandlimited(rng_events, n_resp, fs, hg_lo, hg_hi) * envelope
            resp[:, r] = scale[e, r] * (1.2 * erp + 0.4 * hg)
        responses[e] = resp
    onset_idx = np.round(onsets * fs).astype(np.int64)

    # -- sources: filters carried across chunks -----------------------------------------------
    bg_a = [np.exp(-1.0 / (fs * tau)) for tau in _BACKGROUND_TAUS]
    bg_state = [np.zeros((1, R)) for _ in _BACKGROUND_TAUS]
    omega = 2 * np.pi * freqs / fs
    radius = np.exp(-np.pi * 2.0 / fs)
    osc_a1, osc_a2 = 2 * radius * np.cos(omega), -radius ** 2
    osc_gain = rng_layout.uniform(0.8, 1.2, R) / np.sqrt([_ar2_variance(a1, osc_a2) for a1 in osc_a1])
    osc_state = [np.zeros(2) for _ in range(R)]

    # -- behaviour: an OU latent sets the high-gamma amplitude of the behaviour regions ------------
    beh_a = np.exp(-1.0 / (fs * 1.5))
    beh_state = np.zeros(1)
    hg_sos = signal.butter(4, [hg_lo, hg_hi], btype="bandpass", fs=fs, output="sos")
    hg_state = np.zeros((hg_sos.shape[0], 2, max(1, beh_idx.size)))
    hg_norm = np.sqrt(2 * (hg_hi - hg_lo) / fs)  # white noise through the band keeps this share of its sd
    beh_step = max(1, int(round(fs / behavior_rate))) if behavior else 1
    beh_t, beh_v = [], []

    n_total = int(round(duration * fs))
    n_chunk = max(1, int(round(chunk_duration * fs)))
    session_id = session_id or f"synthetic-ieeg-seed{seed}"
    with SessionWriter(out_path, session_id=session_id, subject_id=subject_id or f"synthetic-subject-seed{seed}",
                       species="simulated", lab="neurofm", source="simulate_ieeg",
                       generator="neurofm.data.synthetic.simulate_ieeg", generator_params=_params_attr(**params),
                       seed=seed) as w:
        shown = xyz + np.asarray(coordinate_offset, dtype=np.float64)[None, :]  # the subject's own space
        w.add_channels(names, x=shown[:, 0], y=shown[:, 1], z=shown[:, 2],
                       regions={"destrieux": destrieux, "desikan-killiany": desikan},
                       coordinate_space="MNI152 (simulated)")
        for i0 in range(0, n_total, n_chunk):
            i1 = min(n_total, i0 + n_chunk)
            n = i1 - i0
            src = np.zeros((n, R))
            for k, (a, rng) in enumerate(zip(bg_a, rng_bg)):
                y, bg_state[k] = signal.lfilter([np.sqrt((1 - a * a) / len(bg_a))], [1, -a],
                                                rng.standard_normal((n, R)), axis=0, zi=bg_state[k])
                src += y
            drive = rng_osc.standard_normal((n, R))
            for r in range(R):
                y, osc_state[r] = signal.lfilter([osc_gain[r]], [1, -osc_a1[r], -osc_a2], drive[:, r], zi=osc_state[r])
                src[:, r] += y
            hit = np.flatnonzero((onset_idx < i1) & (onset_idx + n_resp > i0) & is_speech)
            for e in hit:  # add each overlapping response's slice
                a0, a1 = max(i0, onset_idx[e]), min(i1, onset_idx[e] + n_resp)
                src[a0 - i0:a1 - i0] += responses[e][a0 - onset_idx[e]:a1 - onset_idx[e]]
            if behavior:
                u, beh_state = signal.lfilter([np.sqrt(1 - beh_a * beh_a)], [1, -beh_a], rng_beh.standard_normal(n),
                                              zi=beh_state)
                drive = np.logaddexp(0.0, 1.5 * u - 0.5)  # softplus, (n,)
                carrier, hg_state = signal.sosfilt(hg_sos, rng_beh.standard_normal((n, beh_idx.size)), axis=0,
                                                   zi=hg_state)
                src[:, beh_idx] += 0.8 * drive[:, None] * carrier / hg_norm
                keep = np.flatnonzero((i0 + np.arange(n)) % beh_step == 0)
                beh_t.append((i0 + keep) / fs)
                beh_v.append(200.0 + 1000.0 * drive[keep])
            x = src @ mixing.T + 0.3 * rng_noise.standard_normal((n, C))  # (n, C)
            if harmonics.size:
                tt = (i0 + np.arange(n)) / fs
                for h, f0 in enumerate(harmonics):
                    x += (line_amp / (h + 1))[None, :] * np.sin(2 * np.pi * f0 * tt[:, None] + line_phase[None, :])
            x = (50.0 * x).astype(np.float32)
            if i0 == 0:
                w.add_continuous(x, sampling_rate=fs, unit="uV", channel_names=names)
            else:
                w.append_continuous(x)
        w.add_events("word_onset", onsets, np.full(onsets.size, 0.5), np.where(is_speech, "speech", "nonspeech"))
        gt = "ground_truth/"
        if behavior:
            w.add_behavior(behavior, np.concatenate(beh_t), np.concatenate(beh_v).astype(np.float32), unit="mN",
                           description="200 + 1000 * softplus(1.5 u - 0.5) of an OU latent u that sets the "
                                       "high-gamma amplitude of the behaviour regions")
            w.add_array(gt + "behavior_regions", beh_idx,
                        description="regions (index into region_destrieux) whose high gamma the behaviour drives")
        if any(coordinate_offset):
            w.add_array(gt + "coordinate_offset", np.asarray(coordinate_offset, dtype=np.float64), unit="mm",
                        description="the subject's coordinate space minus the template's (channels are shifted)")
        w.add_array(gt + "channel_region", channel_region.astype(np.int64),
                    description="index (into region_destrieux) of the region whose source dominates each channel")
        w.add_array(gt + "mixing", mixing, description="x_c = 50 uV * (sum_r mixing[c, r] s_r + noise)")
        w.add_array(gt + "responsive_regions", responsive.astype(np.int64),
                    description="regions where speech events evoke an ERP and a high-gamma burst")
        w.add_array(gt + "region_destrieux", np.asarray([row[0] for row in table], dtype=h5py.string_dtype()))
        w.add_array(gt + "region_desikan", np.asarray([row[1] for row in table], dtype=h5py.string_dtype()))
        w.add_array(gt + "region_frequency", freqs, unit="Hz")
        w.add_array(gt + "event_response_scale", scale,
                    description="per word_onset event and region: amplitude of the evoked response (0 = none)")
        return w.close()



def simulate_ieeg_subjects(
    out_dir: str | os.PathLike,
    n_subjects: int = 4,
    *,
    n_channels: int = 30,
    contacts_per_shaft: int = 5,
    duration: float | tuple[float, ...] = 600.0,
    sampling_rate: float = 256.0,
    seed: int = 0,
    line_noise: float | None = 60.0,
    behavior: str | None = "grip_force",
    placement_sd: float = 6.0,
    offset_mm: float = 15.0,
    prefix: str = "sub",
) -> list[Path]:
    """Several simulated sEEG subjects whose different layouts sample one shared set of regions.

    All subjects share the 16 regions of :data:`IEEG_REGIONS` (the same sources' dynamics,
    the same speech-responsive regions, the same behaviour regions, the same atlas labels),
    so parcels and lobes mean the same thing in every subject, while coordinates do not:
    each subject's shafts aim at its own subset of regions, its tips scatter
    ``placement_sd`` mm around the region centroids, and its coordinates are written in its
    own space, shifted by a uniform ``[-offset_mm, offset_mm]`` per axis (as native-space
    coordinates of different brains are). Each subject has
    ``ceil(n_channels / contacts_per_shaft)`` shafts: two aimed at speech-responsive regions,
    one at a behaviour region (:data:`IEEG_BEHAVIOR_REGIONS`; with ``behavior``), the rest
    at other regions drawn at random. The LAST subject draws its other regions only among
    those the earlier subjects sample, so it can be held out: a model pretrained on the
    others has seen every one of its parcels.

    Parameters
    ----------
    out_dir
        Folder for ``{prefix}-01.h5``, ``{prefix}-02.h5``, ...
    n_subjects
        Number of subjects (>= 2).
    duration
        Seconds per subject: one value for all, or one per subject (e.g. a short held-out one).
    n_channels, contacts_per_shaft, sampling_rate, line_noise, behavior
        As in :func:`simulate_ieeg` (``behavior=None``: events only).
    seed
        Everything derives from it; subject ``k`` is :func:`simulate_ieeg` with its own seed.

    Returns
    -------
    The written paths, in subject order. Each file's ``/ground_truth`` is that of
    :func:`simulate_ieeg` (plus ``coordinate_offset``).
    """
    if n_subjects < 2:
        raise ValueError(f"n_subjects must be >= 2 (one to hold out), got {n_subjects}")
    durations = (duration,) * n_subjects if np.isscalar(duration) else tuple(duration)
    if len(durations) != n_subjects:
        raise ValueError(f"duration: {len(durations)} values for {n_subjects} subjects; give one or one per subject")
    n_shafts = int(np.ceil(n_channels / contacts_per_shaft))
    need = 3 if behavior else 2
    if n_shafts < need:
        raise ValueError(f"n_channels={n_channels} with contacts_per_shaft={contacts_per_shaft} gives {n_shafts} "
                         f"shaft(s); each subject needs at least {need} (two speech-responsive regions"
                         f"{' and a behaviour region' if behavior else ''})")
    R = len(IEEG_REGIONS)
    responsive = [r for r in range(R) if IEEG_REGIONS[r][4]]
    beh = [r for r in range(R) if IEEG_REGIONS[r][0] in IEEG_BEHAVIOR_REGIONS]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))  # layouts; subjects' signals below
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    paths = []
    child = np.random.SeedSequence(seed).spawn(n_subjects)
    for k in range(n_subjects):
        chosen = list(rng.choice(responsive, 2, replace=False))
        if behavior:
            chosen.append(int(rng.choice(beh)))
        pool = [r for r in range(R) if r not in chosen and (k < n_subjects - 1 or r in seen)]
        n_other = min(n_shafts - len(chosen), len(pool))
        chosen += [int(r) for r in rng.choice(pool, n_other, replace=False)]
        order = [int(r) for r in rng.permutation(chosen)]
        seen.update(order)
        offset = tuple(float(v) for v in rng.uniform(-offset_mm, offset_mm, 3))
        sub_seed = int(child[k].generate_state(1)[0])
        paths.append(simulate_ieeg(
            out_dir / f"{prefix}-{k + 1:02d}.h5", n_channels=n_channels, duration=float(durations[k]),
            sampling_rate=sampling_rate, seed=sub_seed, n_regions=R, line_noise=line_noise,
            contacts_per_shaft=contacts_per_shaft, regions=order, placement_sd=placement_sd,
            coordinate_offset=offset, behavior=behavior, session_id=f"synthetic-ieeg-{prefix}-{k + 1:02d}-seed{seed}",
            subject_id=f"synthetic-{prefix}-{k + 1:02d}-seed{seed}"))
    return paths
