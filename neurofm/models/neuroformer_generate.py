"""Neuroformer generation: sampling, batched KV-cache decoding and the free-running scheduler.

:func:`generate` (also :meth:`Neuroformer.generate <neurofm.models.neuroformer.Neuroformer.generate>`)
samples the spikes of a batch of windows, one token at a time, every window of the batch in
step, with the model's KV caches (:meth:`~neurofm.models.neuroformer.Neuroformer.init_decode`,
``decode_step``). Free-running mode chains windows that follow one another and decodes the
chains in waves, one window per chain per wave, building each window's previous window from
the spikes generated before it with the tokenizer's own :func:`neurofm.tokens.window_sequences`.

The model module holds the network (config, modules, forward, loss, the cached forward);
this one holds what turns logits into spikes (litgpt keeps generation beside the model the
same way). It imports the model only for type hints: the model imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from neurofm.tokens import EOS, N_SPECIAL, PAD, SOS, real_length, unpack_spikes, window_sequences

if TYPE_CHECKING:  # pragma: no cover
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

__all__ = ["generate", "sample_windows", "free_running", "GeneratedSpikes"]


@torch.inference_mode()  # like no_grad, minus autograd's version counting on every op
def generate(
    model: "Neuroformer",
    batch: Mapping[str, Any],
    *,
    mode: str = "teacher_forced",
    temperature_id: float = 1.0,
    temperature_dt: float = 1.0,
    top_k_id: int | None = None,
    top_p_id: float | None = 0.95,
    top_k_dt: int | None = None,
    top_p_dt: float | None = 0.95,
    max_spikes: int | None = None,
    stop_at_eos: bool = True,
    use_cache: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    seed_prev: bool = True,
) -> "GeneratedSpikes":
    """Sample the spikes of the batch's current windows, one token at a time.

    Each window starts from SOS; the next ID and dt are drawn from their heads
    (temperature, then top-k, then top-p; only units and EOS can be drawn as IDs and only
    offsets inside the current window as dts) until EOS or the block is full (the block's
    last slot is EOS). All windows of a batch decode together with KV caches.

    Args:
        batch: needs ``interval`` (B,) window END times (s); context keys as in training
            (``id_prev``/``dt_prev``/``mask_prev``, ``stimulus``, ``behavior_seq``...).
            ``session`` (B,) separates recordings in free-running mode.
        mode: ``"teacher_forced"``: each window reads the batch's true previous window.
            ``"free_running"``: windows that follow one another (same session, interval
            one ``window.curr`` apart) form a chain; the previous window of every window
            after the first of its chain is built from the spikes this call generated
            for the windows before it -- never from the batch's ``id_prev``. Chains decode
            in parallel, one window per chain per step.
        seed_prev: free-running only: the first window of a chain reads its true previous
            window as the initial condition (``False``: starts from an empty past).
        max_spikes: cap per window (default ``block_size.id - 2``).
        stop_at_eos: ``False`` ignores EOS until ``max_spikes`` (fixed-length benchmarks).
        use_cache: KV cache (``False`` reruns the full prefix for every token: slow,
            for comparison).
        seed / generator: random source; a fixed seed gives the same spikes.

    Returns:
        :class:`GeneratedSpikes` with one entry per window, in the batch's order.

    A packed batch (:func:`~neurofm.data.datasets.pack_spikes`) is unpacked first: the
    windows decode side by side, one position per step.
    """
    batch = unpack_spikes(batch, model.config.pad_dt)
    if mode not in ("teacher_forced", "free_running"):
        raise ValueError(f"mode must be 'teacher_forced' or 'free_running', got {mode!r}")
    if generator is None:
        generator = torch.Generator(device=model.pos_emb.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    c = model.config
    max_spikes = c.block_size.id - 2 if max_spikes is None else min(max_spikes, c.block_size.id - 2)
    sampling = dict(temperature_id=temperature_id, temperature_dt=temperature_dt, top_k_id=top_k_id,
                    top_p_id=top_p_id, top_k_dt=top_k_dt, top_p_dt=top_p_dt, max_len=max_spikes + 2,
                    stop_at_eos=stop_at_eos, use_cache=use_cache, generator=generator)
    was_training = model.training
    model.eval()
    try:
        interval = _as_numpy(batch["interval"]).astype(np.float64)
        b = len(interval)
        session = _as_numpy(batch["session"]).astype(np.int64) if "session" in batch else np.zeros(b, np.int64)
        if mode == "teacher_forced":
            ids, dts, lengths = sample_windows(model, batch, **sampling)
            return GeneratedSpikes.from_tokens(ids, dts, lengths, interval, session, c)
        return free_running(model, batch, interval, session, seed_prev, sampling)
    finally:
        model.train(was_training)

def sample_windows(model: "Neuroformer", batch: Mapping[str, Any], *, temperature_id: float, temperature_dt: float,
                    top_k_id: int | None, top_p_id: float | None, top_k_dt: int | None, top_p_dt: float | None,
                    max_len: int, stop_at_eos: bool, use_cache: bool,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Decode every window of ``batch`` at once. Returns ``id``, ``dt`` (B, max_len) token
    sequences ``[SOS, spikes, EOS, PAD...]`` and the number of spikes per window (B,)."""
    c = model.config
    device = model.pos_emb.device
    b = len(batch["interval"])
    src = model.encode_sources(batch)
    ids = torch.full((b, max_len), PAD, dtype=torch.long, device=device)
    dts = torch.full((b, max_len), c.pad_dt, dtype=torch.long, device=device)
    ids[:, 0], dts[:, 0] = SOS, 0
    # Sampling constraints as additive logit biases: IDs are units or EOS; dts are offsets
    # inside the current window.
    id_bias = torch.zeros(c.id_vocab_size, device=device)
    id_bias[[PAD, SOS]] = -math.inf
    if not stop_at_eos:
        id_bias[EOS] = -math.inf
    dt_bias = torch.full((c.dt_vocab_size,), -math.inf, device=device)
    dt_bias[:c.dt_max_curr + 1] = 0.0
    # Per step: the model, one uniform draw per sampled head and window, two column writes.
    # A window that emitted EOS keeps decoding (its later samples are never seen by the
    # other windows, and are replaced by PAD below), so the loop carries no per-window
    # bookkeeping; with stop_at_eos it stops once every window has an EOS.
    eos_id = torch.full((b,), EOS, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device) if stop_at_eos else None
    state = model.init_decode(src, max_len) if use_cache else None
    for pos in range(max_len - 1):
        if use_cache:
            lid, ldt = model.decode_step(state, ids[:, pos:pos + 1], dts[:, pos:pos + 1])
        else:
            lid, ldt = _full_logits(model, ids[:, :pos + 1], dts[:, :pos + 1], src)
        lid, ldt = lid[:, -1], ldt[:, -1]  # (B, V_id), (B, V_dt)
        if lid.dtype != torch.float32:  # sample in fp32 (bf16 autocast logits)
            lid, ldt = lid.float(), ldt.float()
        last = pos + 2 == max_len  # the last slot of the block is EOS
        # one call draws the uniforms of both heads, in the order two calls would: ID, dt
        n_draws = int(temperature_id > 0 and not last) + int(temperature_dt > 0)
        u = torch.rand(n_draws, b, 1, generator=generator, device=device) if n_draws else None
        nid = eos_id if last else _sample(lid + id_bias, temperature_id, top_k_id, top_p_id,
                                           u=u[0] if temperature_id > 0 else None)
        ndt = _sample(ldt + dt_bias, temperature_dt, top_k_dt, top_p_dt, u=u[-1] if temperature_dt > 0 else None)
        ids[:, pos + 1] = nid
        dts[:, pos + 1] = ndt
        if done is not None:
            done |= nid == EOS
            if bool(done.all()):
                break
    return ids, dts, _close_windows(ids, dts, c)

def free_running(model: "Neuroformer", batch: Mapping[str, Any], interval: np.ndarray, session: np.ndarray,
                  seed_prev: bool, sampling: dict) -> "GeneratedSpikes":
    c = model.config
    b = len(interval)
    curr, prev, dt = c.window.curr, c.window.prev, c.window.dt
    # Chains: a window follows the one of its session that ends window.curr earlier.
    order = np.lexsort((interval, session))
    parent = np.full(b, -1)
    for i, j in zip(order[:-1], order[1:]):
        if session[i] == session[j] and abs(interval[j] - interval[i] - curr) < dt / 2:
            parent[j] = i
    root, depth = np.arange(b), np.zeros(b, dtype=np.int64)
    for j in order:  # parents come first in this order
        if parent[j] >= 0:
            root[j], depth[j] = root[parent[j]], depth[parent[j]] + 1
    uses_prev = len(model.history_blocks) > 0
    no_spikes = (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    history: dict[int, tuple[Tensor, Tensor]] = {}  # chain root -> spike times (s), ID tokens
    results: list[tuple[Tensor, Tensor]] = [no_spikes] * b  # per window: ID tokens, dt offsets
    for wave in range(int(depth.max()) + 1 if b else 0):
        idx = np.flatnonzero(depth == wave)
        sub = _select_rows(batch, idx, exclude=("id_prev", "dt_prev", "mask_prev"))
        if uses_prev:
            if wave == 0:  # initial condition of each chain: its true past, or nothing
                seeded = seed_prev and "id_prev" in batch
                for i in idx:
                    history[int(i)] = _decode_prev_spikes(batch, int(i), interval[i], c) if seeded else no_spikes
            prev_windows = [_prev_window(*history[int(root[i])], interval[i], c) for i in idx]
            width = max(max(real_length(w["mask"][None]) for w in prev_windows), 1)
            for key in ("id", "dt", "mask"):
                sub[f"{key}_prev"] = torch.stack([w[key][:width] for w in prev_windows]).to(model.pos_emb.device)
        ids, dts, lengths = sample_windows(model, sub, **sampling)
        for row, i in enumerate(idx):
            n = int(lengths[row])
            toks, offs = ids[row, 1:n + 1].cpu(), dts[row, 1:n + 1].cpu()
            results[i] = (toks, offs)
            if uses_prev:
                old_t, old_tok = history[int(root[i])]
                keep = old_t >= interval[i] - prev - 1e-9  # spikes the next window can still see
                new_t = _spike_times(offs, interval[i] - curr, c)
                history[int(root[i])] = (torch.cat([old_t[keep], new_t]), torch.cat([old_tok[keep], toks]))
    return GeneratedSpikes(
        interval=interval, session=session,
        times=[_spike_times(offs, interval[i] - curr, c).numpy() for i, (_, offs) in enumerate(results)],
        tokens=[r[0].numpy() for r in results],
        dt=[r[1].numpy() for r in results],
        window=c.window.curr,
    )


def _full_logits(model: "Neuroformer", ids: Tensor, dts: Tensor, src: Any) -> tuple[Tensor, Tensor]:
    """Logits of the last position from a full (uncached) pass over the prefix."""
    x = model._embed(ids, dts, model.pos_emb[:, :ids.shape[1]], model.temp_emb)
    _, h = model._run_stack(x, src, None)
    h = model.ln_f(h[:, -1:])
    return model.head_id(h), model.head_dt(h)


# --------------------------------------------------------------------------------------------
# Sampling and window bookkeeping
# --------------------------------------------------------------------------------------------
def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None = None, *, u: Tensor | None = None) -> Tensor:
    """Draw one index per row of ``logits`` (B, V): temperature, then top-k, then top-p
    (nucleus: the fewest most likely tokens whose mass reaches ``top_p``). ``temperature <= 0``
    is greedy. Sampling is by inverse CDF on one uniform per row (cheaper than
    ``torch.multinomial`` per decoding step): ``u`` (B, 1) in [0, 1), or drawn from
    ``generator``."""
    if temperature <= 0:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    v = logits.shape[-1]
    order = None
    if top_k is not None and 0 < top_k < v:
        logits, order = torch.topk(logits, top_k, dim=-1)  # sorted, descending
    elif top_p is not None and top_p < 1.0:
        logits, order = _sort_descending(logits)
    probs = logits.softmax(-1)  # (B, V')
    if top_p is not None and top_p < 1.0:
        # keep a token while the tokens before it hold less than top_p (the first always stays)
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    cdf = probs.cumsum(-1)
    # u strictly below the total mass, so the first cdf entry above u is a step of the cdf: a
    # token with non-zero probability (masked tokens are flat stretches and can never be hit)
    if u is None:
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device)
    j = torch.searchsorted(cdf, u * (cdf[:, -1:] * (1 - 1e-6)), right=True)
    return (order.gather(-1, j) if order is not None else j).squeeze(-1)


def _sort_descending(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(x, -1, descending=True)`` for the sampler's (B, V) logits.

    On CPU, torch's sort of the ID logits of many windows costs ~8 us per 200-wide row on the
    2-core benchmark machine (1 ms per decoding step for 128 windows, more than the model);
    NumPy's vectorised argsort gives the same order (ties aside, which draw with equal
    probability either way) in a quarter of that. Small inputs stay with torch (fewer calls).
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.shape[-1] < 32 or x.numel() < 2048:
        return torch.sort(x, dim=-1, descending=True)
    order = torch.from_numpy(np.argsort(-x.detach().numpy(), axis=-1))
    return x.gather(-1, order), order


def _close_windows(ids: Tensor, dts: Tensor, config: NeuroformerConfig) -> Tensor:
    """End each decoded window of ``ids``, ``dts`` (B, L) at its first EOS (every window has
    one), in place: that slot's dt becomes ``EOS_dt``, every later slot PAD. Returns the number
    of spikes per window (B,)."""
    body_id, body_dt = ids[:, 1:], dts[:, 1:]  # (B, L-1) views: the slots after SOS
    eos = body_id == EOS
    lengths = eos.long().argmax(1)  # the first EOS: spikes before it
    slot = torch.arange(body_id.shape[1], device=ids.device)
    after = slot > lengths[:, None]
    body_id.masked_fill_(after, PAD)
    body_dt.masked_fill_(after, config.pad_dt)
    body_dt.masked_fill_(slot == lengths[:, None], config.eos_dt)
    return lengths


def _spike_times(dts: Tensor, window_start: float, config: NeuroformerConfig) -> Tensor:
    """dt offsets -> spike times (s, float64) inside ``[window_start, window_start + curr)``.

    Offset ``k`` stands for a spike within half a bin of ``start + k*dt``; the last offset
    (``round(curr/dt)``) is placed a quarter bin before the window's end, so the time stays in
    its window and re-tokenises to the same offset.
    """
    c = config
    t = window_start + dts.double() * c.window.dt
    return t.clamp(max=window_start + c.window.curr - c.window.dt / 4)


def _prev_window(times: Tensor, tokens: Tensor, interval: float, config: NeuroformerConfig) -> dict[str, Any]:
    """Previous-window tokens of the window ending at ``interval``, from spike times (s) and ID
    tokens: the spikes in ``[interval - curr - prev, interval - curr)``, dt measured from that
    window's start."""
    c = config
    start = interval - c.window.curr - c.window.prev
    order = np.argsort(times.numpy(), kind="stable")  # generated spikes come in sampled order
    block = c.block_size.prev_id
    ids, dts, _ = window_sequences(times.numpy()[order], tokens.numpy()[order], np.array([start]),
                                   np.array([start + c.window.prev]), block, c.window.dt, c.dt_max)
    ids, dts = torch.from_numpy(ids[0, :block]), torch.from_numpy(dts[0, :block])
    return {"id": ids, "dt": dts, "mask": ids != PAD}


def _decode_prev_spikes(batch: Mapping[str, Any], i: int, interval: float,
                        config: NeuroformerConfig) -> tuple[Tensor, Tensor]:
    """Spike times and tokens of window ``i``'s true previous window (free-running seed)."""
    c = config
    ids, dts = batch["id_prev"][i].cpu(), batch["dt_prev"][i].cpu()
    real = ids >= N_SPECIAL
    start = interval - c.window.curr - c.window.prev
    t = start + dts[real].double() * c.window.dt
    return t.clamp(max=start + c.window.prev - c.window.dt / 4), ids[real].long()


def _select_rows(batch: Mapping[str, Any], idx: np.ndarray, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Rows ``idx`` of every tensor in a (possibly nested) batch dict."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in exclude:
            continue
        if isinstance(value, Mapping):
            out[key] = _select_rows(value, idx)
        elif isinstance(value, Tensor):
            out[key] = value[torch.as_tensor(idx, device=value.device)]
        elif isinstance(value, np.ndarray):
            out[key] = value[idx]
        else:
            out[key] = value
    return out


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


@dataclass
class GeneratedSpikes:
    """Spikes sampled by :meth:`Neuroformer.generate`, one entry per window (batch order).

    ``times[w]`` (s, float64) and ``tokens[w]`` (ID tokens, ``unit = token - 3``) in generated
    order; ``dt[w]`` the dt offsets; ``interval`` (W,) window END times; ``session`` (W,).
    """

    interval: np.ndarray
    session: np.ndarray
    times: list[np.ndarray]
    tokens: list[np.ndarray]
    dt: list[np.ndarray]
    window: float

    @classmethod
    def from_tokens(cls, ids: Tensor, dts: Tensor, lengths: Tensor, interval: np.ndarray, session: np.ndarray,
                    config: NeuroformerConfig) -> "GeneratedSpikes":
        ids, dts, lengths = ids.cpu(), dts.cpu(), lengths.cpu()
        toks, offs, times = [], [], []
        for w in range(ids.shape[0]):
            n = int(lengths[w])
            toks.append(ids[w, 1:n + 1].numpy())
            offs.append(dts[w, 1:n + 1].numpy())
            times.append(_spike_times(dts[w, 1:n + 1], float(interval[w]) - config.window.curr, config).numpy())
        return cls(interval=interval, session=session, times=times, tokens=toks, dt=offs, window=config.window.curr)

    @property
    def unit_index(self) -> list[np.ndarray]:
        """Per window, index of each spike's unit in the model's unit list."""
        return [t - N_SPECIAL for t in self.tokens]

    def __len__(self) -> int:
        return len(self.tokens)

    def spikes(self, session: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All spikes (of one session), sorted by time: ``times`` (n,) s and ``unit_index`` (n,)."""
        sel = [w for w in range(len(self)) if session is None or self.session[w] == session]
        if not sel:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        t = np.concatenate([self.times[w] for w in sel])
        u = np.concatenate([self.tokens[w] - N_SPECIAL for w in sel]).astype(np.int64)
        order = np.argsort(t, kind="stable")
        return t[order], u[order]

    def span(self, session: int | None = None) -> tuple[float, float]:
        """``(t_start, t_end)`` (s) covered by the windows (of one session); ``(0, 0)`` if none."""
        sel = [w for w in range(len(self)) if session is None or self.session[w] == session]
        if not sel:
            return 0.0, 0.0
        return float(min(self.interval[w] for w in sel)) - self.window, float(max(self.interval[w] for w in sel))
