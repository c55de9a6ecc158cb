"""neurofm: pretrained foundation models of neural recordings (Neuroformer for spikes, BaRISTA
for intracranial EEG), from your lab's files to decoded behaviour.

Each subcommand is a thin layer over a library function, so everything it does can also be
done from Python. Heavy imports (torch, pynwb, mne) happen inside the handlers, which keeps
``neurofm --help`` fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from pathlib import Path

from neurofm import __version__, log_to_stderr, plain_warnings

# Every other neurofm import is inside the command that needs it, on purpose: `neurofm --help`
# then loads no torch or Lightning (0.1 s, against seconds for the recipes' imports).

#: neurofm.data.session.EVENT_LABEL_RULE, written out: importing it would cost `--help` seconds
#: (tests/data/test_ieeg_convert.py checks the two agree).
_EVENT_LABEL_RULE = ("BrainVision markers are labelled by their description, without the marker type MNE puts "
                     "before it: 'Comment/grip' -> 'grip', 'Stimulus/S  1' -> 'S1', 'Response/R 12' -> 'R12'; "
                     "New Segment, SyncStatus, DC Correction, Impedance and Time 0 markers (the recording's "
                     "bookkeeping) are left out; other labels are kept as written, without leading or trailing "
                     "spaces")

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")  # key=value, key.sub=value, key[0]=value


def _cmd_convert(args: argparse.Namespace) -> int:
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        # converter warnings already name the file and the field: print them as plain notes
        print(f"neurofm convert: warning: {message}", file=sys.stderr)

    common = dict(session_id=args.session_id, nan_policy=args.nan, overwrite=not args.no_overwrite,
                  coordinate_unit=args.coordinate_unit, license=args.license)
    # --rectify alone: the --behavior-channel channels, as they are moved; --rectify NAME: a behaviour
    # the conversion writes (a BIDS physio column, an NWB series), rectified once it is written
    channels_rectified = any(x is True or x == "" for x in args.rectify or [])  # "": bare (main's rewrite)
    args.rectify_names = [x for x in args.rectify or [] if x is not True and x != ""]
    if channels_rectified and not args.behavior_channel:
        raise ValueError("--rectify alone rectifies the --behavior-channel channels: give --behavior-channel "
                         "NAME[=as_name] too, or name the behaviour to rectify (a BIDS physio column, an NWB "
                         "behaviour): --rectify NAME")
    if args.angle_unit and not args.angle:
        raise ValueError("--angle-unit is the unit of the --angle behaviours: give --angle NAME too")
    with warnings.catch_warnings():
        warnings.showwarning = show
        if args.format == "session":
            from neurofm.data.ieeg import move_channels_to_behavior

            if args.trigger_channel:
                raise ValueError("--trigger-channel reads the recording itself: convert it again with `neurofm "
                                 "convert ieeg RECORDING OUT.h5 --trigger-channel NAME=label`")
            if (not args.behavior_channel and not args.angle and not args.speed_from and not args.velocity_from
                    and not args.rectify_names):
                raise ValueError("convert session IN.h5 OUT.h5 moves channels to /behavior (--behavior-channel "
                                 "NAME[=as_name]), adds an angle's cosine and sine (--angle NAME[=as_name]), a "
                                 "cumulative distance's speed (--speed-from NAME[=as_name]) or a position's signed "
                                 "velocity (--velocity-from NAME[=as_name]), or rectifies a behaviour (--rectify "
                                 "NAME); give one (each repeatable)")
            if args.behavior_channel:
                def convert(out_path, overwrite=True, **_):  # a session file keeps its own id, licence, ...
                    return move_channels_to_behavior(args.input, out_path, args.behavior_channel,
                                                     overwrite=overwrite, rectify=channels_rectified)
            else:
                convert = None  # the session file as it is, the behaviours derived from it added
        elif args.format == "nwb":
            from neurofm.data.nwb import convert_nwb

            if args.trigger_channel:
                raise ValueError("--trigger-channel is for iEEG recordings (EDF, BrainVision, ...); NWB events come "
                                 "from its trials / epochs tables")
            if args.behavior_channel:
                raise ValueError("--behavior-channel is for iEEG recordings and session files; NWB "
                                 "behaviour comes "
                                 "from processing modules (or convert, then `neurofm convert session IN.h5 OUT.h5 "
                                 "--behavior-channel NAME`)")
            if args.electrodes or args.channels:
                raise ValueError("--electrodes / --channels are for iEEG recordings; an NWB file carries its own "
                                 "electrodes table")
            series = args.electrical_series

            def convert(out_path, **kw):
                return convert_nwb(args.input, out_path, electrical_series=False if series == "none" else series,
                                   keep_noise_units=args.keep_noise_units, **kw)
        else:
            from neurofm.data.ieeg import convert_ieeg

            if args.electrical_series or args.keep_noise_units:
                raise ValueError("--electrical-series / --keep-noise-units are for NWB files")

            def convert(out_path, **kw):
                return convert_ieeg(args.input, out_path, electrodes=args.electrodes, channels_tsv=args.channels,
                                    behavior_channels=args.behavior_channel or (), rectify_behavior=channels_rectified,
                                    trigger_channels=args.trigger_channel or (), **kw)
        out = (_convert_then_derive(convert, args, common)
               if args.angle or args.speed_from or args.velocity_from or args.rectify_names
               else convert(args.output, **common))
    print(f"wrote {out}")
    return 0


def _convert_then_derive(convert, args: argparse.Namespace, common: dict) -> Path:
    """``convert`` the input (None: a session file as it is), then rectify each ``--rectify NAME``
    (:func:`~neurofm.data.session.rectify_behaviors`), add each ``--angle``'s cosine and sine
    (:func:`~neurofm.data.session.add_cos_sin`), each ``--speed-from``'s speed
    (:func:`~neurofm.data.session.add_speed`) and each ``--velocity-from``'s velocity
    (:func:`~neurofm.data.session.add_velocity`), all in a temporary file beside the output: the
    output appears only when every step worked (a behaviour the recording lacks leaves no
    converted file behind, and none without what was asked for)."""
    from neurofm.atomic import atomic_output
    from neurofm.data.session import (ConvertError, SessionFormatError, add_cos_sin, add_speed, add_velocity,
                                      rectify_behaviors)

    in_place = Path(args.output).resolve() == Path(args.input).resolve()
    if in_place and args.format != "session":  # the converter would see the temporary file, not the input
        raise ConvertError(args.input, "out_path", "is the input file itself", "write the session to another path")
    with atomic_output(args.output, overwrite=common["overwrite"] or in_place) as tmp:  # a session edited in place
        source = args.input if convert is None else convert(tmp, **{**common, "overwrite": True})
        try:
            if args.rectify_names:
                source = rectify_behaviors(source, tmp, args.rectify_names)
            if args.angle:
                source = add_cos_sin(source, tmp, args.angle, unit=args.angle_unit)
            if args.speed_from:
                source = add_speed(source, tmp, args.speed_from)
            if args.velocity_from:
                add_velocity(source, tmp, args.velocity_from)
        except SessionFormatError as e:  # about the converted recording: name it, not the temporary file
            if Path(e.file) != Path(tmp):
                raise
            raise ConvertError(args.input, e.field, f"{e.problem} (in the session converted from it)", e.fix) from None
    return Path(args.output)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from neurofm import jsonio
    from neurofm.data.session import Session

    summaries, ieeg_files = [], []
    for path in args.file:
        with Session(path) as s:
            summary = s.summary()
            windows = None
            if summary["n_spikes"]:
                try:
                    windows = _spike_window_stats(args, s)
                except ValueError as e:  # e.g. a recording too short for the default split
                    windows = {"error": str(e)}
            ieeg = _ieeg_stats(s) if s.n_samples and s.sampling_rate else None
            if ieeg is not None:
                ieeg_files.append(s.path)
            if windows is not None:
                summary["spikes_per_window"] = windows
            if ieeg is not None:
                summary["ieeg"] = ieeg
            summaries.append(summary)
            if not args.json:
                print(s.describe())
                if windows is not None:
                    print(_describe_windows(windows))
                if ieeg is not None:
                    print(_describe_ieeg(ieeg))
    # several recordings (runs, sessions) pretrain together: what that costs, not one file's share
    together = _barista_pretraining(ieeg_files) if len(ieeg_files) > 1 else None
    if args.json:
        print(jsonio.dumps(summaries[0] if len(summaries) == 1 else
                           {"sessions": summaries, **({"pretraining_together": together} if together else {})},
                           default=str))
    elif together:
        print(f"all {len(ieeg_files)} iEEG files together (data.sessions='[{','.join(str(f) for f in ieeg_files)}]'):")
        print("\n".join(_describe_barista_pretraining(together)))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from neurofm.data.session import Session, SessionFormatError

    failed = 0
    for path in args.files:
        try:
            with Session(path) as s:
                s.validate()
                print(f"{path}: ok ({s.n_units:,} units, {s.n_spikes:,} spikes, {s.duration:.3f} s)"
                      if "spikes" in s.kinds else f"{path}: ok ({s.duration:.3f} s)")
        except (SessionFormatError, OSError) as e:
            print(f"neurofm validate: error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _spike_window_stats(args: argparse.Namespace, session) -> dict:
    """Spikes per current / previous window over the training block (the default split, or the
    file's /intervals/train), with the block sizes the data would choose (neurofm inspect)."""
    from neurofm.data.tokenizer import block_size_for, window_count_percentiles
    from neurofm.recipes.neuroformer import (RunConfig, demo_window_hint, suggest_window, test_block_motion,
                                             test_block_variation, split_window_counts)

    import dataclasses

    from neurofm.experiment import load_config

    cfg = RunConfig()
    cfg.data.sessions = [str(session.path)]
    # the windows the README's pretraining (neuroformer/demo) trains with when none are given:
    # RunConfig's 50 / 50 ms under-counted the demo's 150 ms previous window (prev_id 75 shown,
    # 202 chosen by the run, on a 72-unit 740 spikes/s recording) and so its cost
    demo = load_config(PRETRAIN_CONFIG).model.window
    w = cfg.model.window = dataclasses.replace(demo)
    if args.window_curr is not None:
        w.curr = args.window_curr
    if args.window_prev is not None:
        w.prev = args.window_prev
    curr, prev = split_window_counts(cfg)
    hint = suggest_window(float(curr.mean()), w) if len(curr) else None
    dense = demo_window_hint(float(curr.mean()), w, demo) if len(curr) else None
    motion = test_block_motion(cfg, session)
    return {"window_curr_s": w.curr, "window_prev_s": w.prev, "n_train_windows": int(len(curr)),
            "curr": window_count_percentiles(curr), "prev": window_count_percentiles(prev),
            "auto_block_size": {"id": block_size_for(curr), "prev_id": block_size_for(prev)} if len(curr) else None,
            "suggested_window_s": {"curr": hint[0], "prev": hint[1]} if hint else None,
            "dense_demo_window_s": {"curr": dense[0], "prev": dense[1], "mean_spikes": dense[2]} if dense else None,
            "test_block": motion,
            "test_block_variation": test_block_variation(cfg, session,
                                                         skip=(motion["moving_behavior"],) if motion else ()),
            "pretraining": _pretraining_estimate(session, w) if len(curr) else None}


#: the config the README's pretraining command (`python train.py demo ...`) starts from
PRETRAIN_CONFIG = "demo"


def _pretraining_estimate(session, window) -> dict:
    """:func:`neurofm.recipes.neuroformer.pretraining_estimate` of the README's pretraining
    command on this file with these windows (``neuroformer/demo``, spikes only)."""
    from neurofm.config import ConfigError
    from neurofm.experiment import load_config
    from neurofm.recipes.neuroformer import pretraining_estimate

    cfg = load_config(PRETRAIN_CONFIG, ["data.behavior=[]", "model.behavior=[]"])
    cfg.data.sessions = [str(session.path)]
    cfg.model.window.curr, cfg.model.window.prev = window.curr, window.prev
    try:
        return {"config": f"neuroformer/{PRETRAIN_CONFIG}", **pretraining_estimate(cfg)}
    except (ConfigError, ValueError) as e:
        return {"error": str(e)}


#: the config the README's BaRISTA pretraining command (`python train.py barista/demo ...`) starts from
BARISTA_PRETRAIN_CONFIG = "barista/demo"


def _ieeg_stats(session) -> dict:
    """The notch a BaRISTA run would take for this file (its mains and where that comes from) and
    what the README's BaRISTA pretraining command costs on it (``neurofm inspect``)."""
    from neurofm.data.segmenter import MAINS_PEAK_RATIO, recording_mains, session_mains_peaks

    hz, source = recording_mains(session)
    out: dict = {"mains": {"hz": hz, "source": source}}
    if not hz:  # what was measured, so that a mild peak under the threshold is seen, not read as none
        out["mains"].update(peaks={f"{f:g}": round(r, 2) for f, r in session_mains_peaks(session).items()},
                            peak_ratio_needed=MAINS_PEAK_RATIO)
    out["pretraining"] = _barista_pretraining([session.path])
    return out


def _barista_pretraining(paths) -> dict:
    """What the README's BaRISTA pretraining command costs on these session files together
    (:func:`neurofm.recipes.barista.pretraining_estimate`), with ``model.encode_scale=coords`` when
    none of them has atlas labels."""
    from neurofm.config import ConfigError
    from neurofm.experiment import load_config
    from neurofm.data.session import Session
    from neurofm.recipes.barista import pretraining_estimate

    cfg = load_config(BARISTA_PRETRAIN_CONFIG)
    cfg.data.sessions, cfg.data.events = [str(p) for p in paths], ""
    regions = False
    for path in paths:
        with Session(path) as s:
            try:
                regions = regions or bool(s.channels().regions)
            except KeyError:
                pass
    overrides = []
    if cfg.model.encode_scale == "parcel" and not regions:  # the demo's scale needs atlas labels (README)
        cfg.model.encode_scale = "coords"
        overrides.append("model.encode_scale=coords")
    try:
        return {"config": BARISTA_PRETRAIN_CONFIG, "overrides": overrides, **pretraining_estimate(cfg)}
    except (ConfigError, ValueError) as e:
        return {"error": str(e)}


def _peaks_text(m: dict) -> str:
    """`` of 4x the power beside it: 50 Hz 1.0x, 60 Hz 3.0x`` (the measured mains peaks)."""
    if not m.get("peaks"):
        return ""
    return (f" of {m['peak_ratio_needed']:g}x the power beside it: "
            + ", ".join(f"{f} Hz {r:.1f}x" for f, r in m["peaks"].items()))


def _describe_ieeg(w: dict) -> str:
    m = w["mains"]
    lines = [f"  mains      {m['hz']:g} Hz ({m['source']}): BaRISTA runs notch it (and its harmonics) unless "
             f"data.line_noise is set" if m["hz"] else
             "  mains      none stated or found (no 50 / 60 Hz peak" + _peaks_text(m) + "): no notch unless "
             "data.line_noise is set"]
    return "\n".join(lines + _describe_barista_pretraining(w["pretraining"]))


def _describe_barista_pretraining(p: dict) -> list[str]:
    if "error" in p:
        return [f"  pretraining - ({p['error']})"]
    s = p["segment"]
    seg = (f"segments of {s['n_patches']} x {s['patch_len']} samples at {s['sampling_rate']:g} Hz "
           f"({s['n_patches'] * s['patch_len'] / s['sampling_rate']:g} s)")
    config = " ".join([p["config"], *p["overrides"]])
    return _describe_pretraining({**p, "config": config}, seg)


def _describe_windows(w: dict) -> str:
    def row(p: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in p.items()) if p else "-"

    if "error" in w:
        return f"  windows    - ({w['error']})"

    lines = [f"  windows    spikes per window over the {w['n_train_windows']:,} training windows (default split or "
             f"/intervals/train; --window-curr/--window-prev to change):",
             f"             current  {w['window_curr_s'] * 1e3:g} ms: {row(w['curr'])}",
             f"             previous {w['window_prev_s'] * 1e3:g} ms: {row(w['prev'])}"]
    if w["auto_block_size"]:
        b = w["auto_block_size"]
        lines.append(f"             block sizes chosen from these (<= 0.5% of spikes dropped): id {b['id']}, "
                     f"prev_id {b['prev_id']}")
    if w["suggested_window_s"]:
        sw = w["suggested_window_s"]
        lines.append(f"             mostly empty windows: try model.window.curr={sw['curr']:g} "
                     f"model.window.prev={sw['prev']:g}")
    if w.get("dense_demo_window_s"):
        d = w["dense_demo_window_s"]
        lines.append(f"             dense: about {d['mean_spikes']:.3g} spikes per {d['curr'] * 1e3:g} ms window at this "
                     f"rate; README step 2 keeps the demo's {d['curr'] * 1e3:g} / {d['prev'] * 1e3:g} ms windows for "
                     f"such a recording (leave model.window.* out; `neurofm inspect FILE` without --window-curr / "
                     f"--window-prev shows their block sizes and cost)")
    if w.get("test_block"):
        lines += _describe_test_block(w["test_block"])
    for v in w.get("test_block_variation", []):
        lines += _describe_test_variation(v)
    if w.get("pretraining"):
        lines += _describe_pretraining(w["pretraining"])
    return "\n".join(lines)


def _describe_test_variation(v: dict) -> list[str]:
    """``neurofm inspect``: a behaviour that finetune (every window scored) would refuse or warn
    about in this test block, and an angle's unit."""
    from neurofm.recipes.neuroformer import VARIANCE_REFUSE, VARIANCE_WARN

    lines = []
    if v["refused"] or v["variance_ratio"] < VARIANCE_WARN:
        what = (f"{v['n_test_windows']:,} test windows (finetune refuses under {v['min_scored_windows']})"
                if v["n_test_windows"] < v["min_scored_windows"] else
                f"its variance over the {v['n_test_windows']:,} test windows is {v['variance_ratio']:.2%} of the "
                f"training block's (finetune {f'refuses under {VARIANCE_REFUSE:.0%}' if v['refused'] else f'warns under {VARIANCE_WARN:.0%}'})")
        lines.append(f"  test block {v['name']}: {what}: hold out a block where it varies with "
                     f"`neurofm split FILE --train A:B --valid C:D --test E:F` (seconds)")
    if v["angle"]:
        lines.append(f"  angle      {v['name']} is in {v['unit']}: the regression head, ridge and R2 read it as a line "
                     f"(359 and 1 degree far apart); decode its cosine and sine: `neurofm convert session FILE OUT.h5 "
                     f"--angle {v['name']}` adds /behavior/{v['name']}_cos_sin")
    return lines


def _describe_pretraining(p: dict, unit: str | None = None) -> list[str]:
    """``neurofm inspect``: what the README's pretraining command will cost on this file, and,
    when that is long, the settings that shorten it. ``unit``: what one training example is
    (default: a spike window padded to the block sizes). With the parts that come on top of
    training (``validation``, ``evaluation``, spikes: ``generation``) a second line gives them
    and the total, which is what LONG judges."""
    if "error" in p:
        return [f"  pretraining - ({p['error']})"]
    est, per_step = p["estimate_s"], p["seconds_per_step"]
    if not p["measured_steps"]:
        return [f"  pretraining {p['config']}: {p['steps']:,} steps; too few training batches to time one"]
    length = f"{p['config_epochs']} epochs x {p['steps_per_epoch']:,} batches of {p['batch_size']}"
    if p["max_steps"] > 0 and p["steps"] < p["config_epochs"] * p["steps_per_epoch"]:
        length = f"trainer.max_steps of {length}"
    if unit is None:
        b = p["block_size"]
        unit = f"each window padded to id {b['id']} + prev_id {b['prev_id']} tokens"
    lines = [f"  pretraining {p['config']} with these {'windows (README step 2)' if 'block_size' in p else 'settings'}:"
             f" {p['steps']:,} steps ({length}), {unit}; "
             f"{per_step * 1e3:.0f} ms per step measured here ({p['threads']} CPU thread"
             f"{'s' if p['threads'] > 1 else ''}, {p['measured_steps']} steps): about {_minutes(est)}"
             + (" of training" if "validation" in p else "")]
    v, e, g = p.get("validation"), p.get("evaluation"), p.get("generation")
    total, per_epoch, fixed = est, p["steps_per_epoch"] * per_step, 0.0
    if v is not None:  # the parts after training, each timed on the file (recipes' after_training_estimate)
        total = p["total_s"]
        per_epoch += v["batches"] * v["seconds_per_batch"]  # validated once an epoch (the default cadence)
        fixed = e["seconds"] + (g["seconds"] if g else 0.0)
        read = (f"{e['train_batches']:,} batches of training-window counts" if "train_batches" in e else
                f"{e['token_power_batches']:,} token-power batches")
        parts = [f"validation {v['passes']:,} x {v['batches']:,} batches about {_minutes(v['seconds'])}",
                 f"evaluation ({e['test_batches']:,} test batches, {read}) about {_minutes(e['seconds'])}"]
        if g and g["windows"]:
            parts.append(f"generation ({g['windows']:,} test windows x {g['draws']} draws, "
                         f"{g['seconds_per_batch']:.2f} s a batch) about {_minutes(g['seconds'])}")
        lines.append(f"  pretraining then: {', '.join(parts)}: about {_minutes(total)} in all")
    if total > p["long_s"]:  # on the last line: `grep -v "^  pretraining"` leaves every line out
        fit = int((p["long_s"] - fixed) // per_epoch)
        epochs = (f"trainer.max_epochs={fit} (about {_minutes(fit * per_epoch + fixed)})"
                  if 1 <= fit < p["config_epochs"] else "")
        if fit < 1:  # one epoch alone is over the budget (a long recording): stop within the first
            steps = max(1, int((p["long_s"] - fixed) // per_step))
            epochs = (f"trainer.max_steps={steps} (about {_minutes(steps * per_step + fixed)}: {steps:,} of the "
                      f"{p['steps_per_epoch']:,} batches of one epoch)")
        shorter = ("shorter windows (model.window.curr / prev: --window-curr / --window-prev here show the "
                   "block sizes they give; a step's cost grows with id + prev_id)" if "block_size" in p else
                   "a smaller model (model.d_model, model.n_layers)")
        if g and g["seconds"] > 0.25 * total and g["batches"] > 1:  # generation a large part: fewer windows
            k = max(1, int(0.1 * p["long_s"] // (g["draws"] * g["seconds_per_batch"])))  # batches in a tenth
            if k < g["batches"]:
                shorter += (f", or fewer generated windows (eval.generate_windows={k * p['batch_size']}: generation "
                            f"about {_minutes(k * g['draws'] * g['seconds_per_batch'])})")
        lines[-1] += f". LONG (over {_minutes(p['long_s'])}): " + (f"{epochs}, or " if epochs else "") + shorter
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _describe_test_block(t: dict) -> list[str]:
    """``neurofm inspect``: how much of the test block fine-tuning on this file would score."""
    share = lambda k: t[f"n_{k}_moving"] / t[f"n_{k}_windows"] if t[f"n_{k}_windows"] else 0.0  # noqa: E731
    lines = [f"  test block ({t['source']}): {t['n_test_moving']:,} of {t['n_test_windows']:,} windows moving "
             f"({share('test'):.0%}; training block {share('train'):.0%}): those are the windows finetune and "
             f"evaluate score {t['moving_behavior']} on (speed > {t['moving_threshold']:.3g} {t['unit']}/s, "
             f"smoothing sigma {t['speed_smooth_s']:g} s)"]
    # a task that rests between movements (reaching: ~half the windows) is not "mostly rest"
    # unless its test block moves much less than the training block does
    if (share("test") < 0.5 and share("test") < 0.5 * share("train")) or t["n_test_moving"] < t["min_scored_windows"]:
        refused = (f"; under {t['min_scored_windows']} scored windows finetune refuses to train"
                   if t["n_test_moving"] < t["min_scored_windows"] else "")
        lines.append(f"             mostly rest{refused}: hold out a block where the animal moves with "
                     f"`neurofm split FILE --train A:B --valid C:D --test E:F` (seconds)")
    if t.get("off_range"):
        lines.append(f"             {t['off_range']}")
    return lines


def _cmd_simulate(args: argparse.Namespace) -> int:
    from neurofm.data import synthetic

    if args.kind == "spikes":
        out = synthetic.simulate_spikes(args.output, n_units=args.n_units, duration=args.duration, seed=args.seed,
                                        dt=args.dt, stimulus=args.stimulus, session_id=args.session_id)
    elif args.subjects:  # several subjects sampling shared regions: OUTPUT is a folder
        paths = synthetic.simulate_ieeg_subjects(args.output, args.subjects, duration=args.duration,
                                                 sampling_rate=args.sampling_rate, seed=args.seed,
                                                 line_noise=args.line_noise or None,
                                                 behavior=args.behavior or None)
        out = ", ".join(str(p) for p in paths) + f" (hold out {paths[-1].name}: its parcels all occur in the others)"
    else:
        out = synthetic.simulate_ieeg(args.output, n_channels=args.n_channels, duration=args.duration,
                                      sampling_rate=args.sampling_rate, seed=args.seed, n_regions=args.n_regions,
                                      line_noise=args.line_noise or None, session_id=args.session_id)
    print(f"wrote {out}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    import warnings

    from neurofm.data.session import set_intervals

    blocks = {}
    for name in ("train", "valid", "test"):
        for text in getattr(args, name) or []:
            try:
                start, end = (float(x) for x in text.split(":"))
            except ValueError:
                raise ValueError(f"--{name} {text!r}: give blocks as START:END in seconds, e.g. 4400:5000") from None
            blocks.setdefault(name, []).append((start, end))
    if set(blocks) != {"train", "valid", "test"}:
        raise ValueError("give at least one --train, --valid and --test block (START:END seconds)")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        set_intervals(args.file, blocks, overwrite=args.overwrite)
    for note in notes:  # the edges clipped to the recording: they name the file and the block
        print(f"neurofm split: note: {note.message}", file=sys.stderr)
    print(f"wrote /intervals/train|valid|test to {args.file}; data modules now split by them")
    return 0


# -- training, fine-tuning, export --------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from neurofm.experiment import main as train_main

    return train_main(args.args, prog="neurofm train")


def _cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from neurofm.config import to_dict
    from neurofm.experiment import CONFIG_DIR, config_path, resolve_config, shipped_configs

    if args.action == "list":  # each shipped config with the first line of its header comment
        for name in shipped_configs():
            first = config_path(name).read_text().splitlines()[0]
            print(f"{name:<22} {first.lstrip('# ').split(': `')[0] if first.startswith('#') else ''}")
        return 0
    if args.config is None:
        raise ValueError("config show: give a CONFIG (a YAML file or a shipped name: "
                         f"{', '.join(shipped_configs())})")
    config, overrides = args.config, list(args.overrides)
    if "=" in config:  # only overrides: of the default config, as `neurofm train` reads them
        config, overrides = None, [config, *overrides]
    path = config_path(config)
    shown = path.relative_to(CONFIG_DIR).with_suffix("").as_posix() + " (shipped)" if CONFIG_DIR in path.parents \
        else str(path)
    print(f"# {shown}" + (f" + {' '.join(overrides)}" if overrides else ""))
    print(OmegaConf.to_yaml(OmegaConf.create(to_dict(resolve_config(config, overrides)))), end="")
    return 0


def _split_overrides(args: argparse.Namespace, options: tuple[str, ...] = ("data", "behavior")) -> None:
    """``key=value`` tokens swallowed by a many-valued option (``--behavior position
    trainer.max_epochs=1``) are overrides: move them to ``args.overrides``. Paths and names
    never look like ``dotted.key=...``."""
    moved = []
    for name in options:
        values = getattr(args, name, None) or []
        keep = [v for v in values if not _OVERRIDE.match(v)]
        moved += [v for v in values if _OVERRIDE.match(v)]
        setattr(args, name, keep)
    args.overrides = moved + list(args.overrides or [])
    bad = [o for o in args.overrides if not _OVERRIDE.match(o)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a key=value override (e.g. trainer.max_epochs=5); session files go "
                         f"after --data, behaviour names after --behavior")
    if not args.data:
        raise ValueError("--data: give at least one session file (.h5)")


def _recipe_options(fn, family: str, **options) -> dict:
    """The options set on the command line (not None / False) that ``fn`` (a recipe's
    ``finetune_config``) takes; one it does not take is an error naming the flag."""
    import inspect

    params = inspect.signature(fn).parameters
    out = {}
    for name, value in options.items():
        if value is None or value is False:
            continue
        if name not in params:
            raise ValueError(f"--{name.replace('_', '-')}: not available for {family} models")
        out[name] = value
    return out


def _cmd_finetune(args: argparse.Namespace) -> int:
    from neurofm.experiment import family_of, print_result, print_summary, recipe_for, run, run_folds

    _split_overrides(args)
    family = family_of(args.pretrained)
    recipe = recipe_for(family)
    extra = _recipe_options(recipe.finetune_config, family, from_scratch=args.from_scratch,
                            score_when=args.score_when)
    cfg = recipe.finetune_config(args.pretrained, args.data, task=args.task, behavior=args.behavior,
                                 events=args.events, label_fraction=args.label_fraction, run_dir=args.run_dir,
                                 freeze_backbone=args.freeze_backbone, overrides=args.overrides, **extra)
    if not args.folds:
        print_result(run(cfg))
        return 0
    result = run_folds(cfg, args.folds)
    print(f"\n{(result.run_dir / 'decode_report.md').read_text()}")
    print(f"cross-validation: {result.run_dir} (fine-tuned models: {result.run_dir}/fold-*/pretrained)")
    print_summary(result.metrics, result.run_dir, ())
    return 0


def _evaluate_dir(pretrained: str, data: list[str]) -> str:
    """``runs/evaluate-<model>-<data files>``: the model is its run's folder name for a fine-tuned
    ``RUN/pretrained`` (the folder's own name otherwise); the data files by name, joined with ``+``
    (from four on: the first, how many more and a hash of them all), so evaluating another model or
    another set of recordings never overwrites an earlier evaluation."""
    import hashlib
    from pathlib import Path

    folder = Path(pretrained.rstrip("/"))
    model = folder.parent.name if folder.name == "pretrained" and folder.parent.name else folder.name
    if not data:
        return f"runs/evaluate-{model}"
    stems = [Path(d).stem for d in data]
    if len(stems) > 3:
        digest = hashlib.sha1("\n".join(str(Path(d).resolve()) for d in data).encode()).hexdigest()[:8]
        stems = [stems[0], f"{len(stems) - 1}more-{digest}"]
    return f"runs/evaluate-{model}-{'+'.join(stems)}"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neurofm import jsonio
    from neurofm.experiment import evaluate_pretrained, family_of, print_summary, recipe_for

    _split_overrides(args)
    out = Path(args.out or _evaluate_dir(args.pretrained, args.data))
    family = family_of(args.pretrained)
    recipe = recipe_for(family)
    overrides = list(args.overrides)
    label_fraction = args.label_fraction
    if label_fraction is None:
        # ridge on window counts fits the labelled windows the model was fine-tuned with
        labels = getattr(recipe, "finetuned_labels", lambda _: None)(args.pretrained)
        label_fraction = labels["label_fraction"] if labels else 1.0
        if labels:
            overrides = [f"seed={labels['seed']}", f"data.label_chunk_s={labels['label_chunk_s']}", *overrides]
            print(f"neurofm evaluate: baselines fit the fine-tuning run's labels: {label_fraction:.0%} of the "
                  f"training windows (seed {labels['seed']}, from {labels['config']}); --label-fraction to change",
                  file=sys.stderr)
    extra = _recipe_options(recipe.finetune_config, family, score_when=args.score_when)
    metrics = evaluate_pretrained(args.pretrained, args.data, task=args.task, behavior=args.behavior,
                                  events=args.events, out_dir=out, overrides=overrides,
                                  label_fraction=label_fraction, **extra)
    if not args.json:  # the summary finetune prints
        print_summary(metrics, out)
        return 0
    shown = {k: metrics[k] for k in ("metrics", "baselines", "protocol", "null_reasons") if k in metrics}
    print(jsonio.dumps(shown))
    # with --json stdout stays one JSON document; the files written are reported on stderr
    for path in [out / "metrics.json", *(sorted((out / "plots").glob("*.png")) if (out / "plots").is_dir() else [])]:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from neurofm.experiment import export_checkpoint

    print(f"wrote {export_checkpoint(args.checkpoint, args.output, family=args.family)}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from neurofm.cards import write_card

    print(f"wrote {write_card(args.run_dir, args.out, repo_id=args.repo_id)}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from neurofm.recipes.neuroformer import generate_session

    out = generate_session(args.pretrained, args.data, args.output, mode=args.mode, start=args.start,
                           seconds=args.seconds, top_p=args.top_p, seed=args.seed, plot=not args.no_plot)
    print(f"wrote {out}")
    png = Path(out).with_suffix(".png")
    if not args.no_plot and png.exists():
        print(f"wrote {png} (recorded vs generated raster)")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default in its help, unless the help
    already says it or there is none to show (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == [] or default == argparse.SUPPRESS
                or action.option_strings == [] and action.nargs in ("*", "+", argparse.REMAINDER)):
            return text
        return f"{text} (default: %(default)s)"


EPILOG = """examples:
  neurofm simulate spikes sim.h5 --n-units 50 --duration 120
  neurofm convert nwb my_recording.nwb my_recording.h5 && neurofm inspect my_recording.h5
  neurofm train                             # the Neuroformer CPU demo -> runs/neuroformer-demo
  neurofm train barista/demo trainer.max_epochs=2
  neurofm config show demo model.n_embd=128
  neurofm finetune --pretrained runs/neuroformer-demo/pretrained --data my_recording.h5 --behavior position

`neurofm COMMAND --help` describes each command. Docs: README.md of the neurofm repository."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neurofm", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                epilog=EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"neurofm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kw) -> argparse.ArgumentParser:  # a subcommand: its help as description, defaults shown
        kw.setdefault("description", kw.get("help"))
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kw)

    c = add("convert", help="convert a recording (NWB, or EDF/BrainVision/FIF/BIDS iEEG) to a session file")
    c.add_argument("format", choices=["nwb", "ieeg", "session"],
                   help="nwb: NWB 2 file (pynwb); ieeg: anything MNE reads; session: an existing session file, "
                        "to move --behavior-channel channels to /behavior or add an --angle's cosine and sine")
    c.add_argument("input", help="NWB file, or anything MNE reads (a BIDS-iEEG file picks up its sidecars), or a "
                                 "session file (format session)")
    c.add_argument("output", help="session file to write (.h5)")
    c.add_argument("--electrodes", help="BIDS-style electrodes.tsv (name, x, y, z, atlas label columns); iEEG only "
                                        "(default: the *_electrodes.tsv found beside the recording)")
    c.add_argument("--channels", help="BIDS channels.tsv (type, status); iEEG only (default: found beside the recording)")
    c.add_argument("--electrical-series", help="NWB only: the ElectricalSeries to convert when there are several, "
                                               "or 'none' for spikes only")
    c.add_argument("--keep-noise-units", action="store_true",
                   help="NWB only: keep units a curation column (quality, KSLabel, phy's group...) labels 'noise' "
                        "(default: left out, with a warning counting them and their spikes; 'mua' units are kept)")
    c.add_argument("--coordinate-unit", choices=["m", "cm", "mm", "um"],
                   help="unit of electrode x, y, z (overrides the input's own; default: what the input says, else "
                        "inferred with a warning)")
    c.add_argument("--behavior-channel", action="append", metavar="NAME[=as_name]",
                   help="iEEG / session: a channel that records behaviour (grip force, a joystick...) becomes "
                        "/behavior/<as_name> (default: its name) and leaves /continuous (repeatable); its unit: a "
                        "BIDS channels.tsv's 'units', else the recording's. Without it such a channel stays in "
                        "/continuous typed non-neural (the convert warning lists them) and the model leaves it out")
    c.add_argument("--trigger-channel", action="append", metavar="NAME[=label]",
                   help="iEEG: a channel carrying trigger pulses (a clinical system's DC input fed TTL, a TRIG line): "
                        "each pulse's rising edge becomes an event of /events/annotations labelled label (default: "
                        "NAME), beside the file's own annotations (repeatable: one label per channel, e.g. --trigger-"
                        "channel DC01=face --trigger-channel DC02=house); a digital stim channel whose value is the event "
                        "code (a FIF's STI 014) gives each code its own label, label_CODE (STI_1, STI_2); the "
                        "channel stays in /continuous typed stim")
    c.add_argument("--rectify", action="append", nargs="?", const=True, metavar="NAME",
                   help="store behaviours full-wave rectified (|x|, attr rectified), so the mean over a segment, what "
                        "BaRISTA regresses, is the mean absolute amplitude: the envelope of a raw EMG, accelerometer "
                        "or microphone channel, a joystick's deflection, whose own segment mean is noise around 0. "
                        "Bare: the --behavior-channel channels; --rectify NAME (repeatable): /behavior/NAME, e.g. a "
                        "BIDS physio column, an NWB behaviour or a session file's behaviour")
    c.add_argument("--angle", action="append", metavar="NAME[=as_name]",
                   help="an angle behaviour (head direction, ...) gets its cosine and sine as the 2-column "
                        "/behavior/<as_name> (default NAME_cos_sin; repeatable): a target, ridge and R2 then see 359 "
                        "and 1 degree as neighbours. Radians or degrees from its unit attr (or --angle-unit)")
    c.add_argument("--angle-unit", choices=["rad", "deg"], help="with --angle: the angles' unit, when the file's "
                                                                "unit attr does not say")
    c.add_argument("--speed-from", action="append", metavar="NAME[=as_name]",
                   help="a cumulative distance (a head-fixed animal's wheel: an NWB rotary encoder's ticks x "
                        "conversion, in metres) gets its speed |d/dt| as /behavior/<as_name> (default speed, which "
                        "the moving rule then reads as the measured speed; repeatable)")
    c.add_argument("--velocity-from", action="append", metavar="NAME[=as_name]",
                   help="a position (a hand's x, y from a manipulandum, in a length unit) gets its signed velocity "
                        "d/dt per column as /behavior/<as_name> (default NAME_velocity, in NAME's unit per second): "
                        "the target of a motor-cortex velocity decoder, `finetune --behavior NAME_velocity` "
                        "(repeatable)")
    c.add_argument("--session-id", help="defaults to the input file's stem")
    c.epilog = textwrap.fill(("iEEG events: annotations (or a BIDS events.tsv, which wins) go to /events/annotations, "
                              "one label each (`neurofm finetune --task classify --events annotations`); "
                              + _EVENT_LABEL_RULE + ".").replace("S  1", "S\x00\x001"), width=100).replace("\x00", " ")
    c.add_argument("--license", help="the data's licence as an SPDX id (e.g. CC-BY-4.0), kept in the session file "
                                     "for model cards (default: a BIDS dataset's License, else none)")
    c.add_argument("--nan", choices=["raise", "mark-bad"], default="raise",
                   help="NaN/inf in continuous data: stop with an error (default) or zero them and mark the channel bad")
    c.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    c.set_defaults(func=_cmd_convert)

    i = add("inspect", help="summarise session files")
    i.add_argument("file", nargs="+", help="session file(s) (.h5); several iEEG files (the runs you pretrain on "
                                           "together) also get the pretraining estimate for all of them together")
    i.add_argument("--json", action="store_true", help="machine-readable summary (kinds, n_units, n_spikes, "
                                                       "duration_s, behavior, n_channels, sampling_rate, atlases, ...)")
    i.add_argument("--window-curr", type=float, help="spike files: current window (s) for the spikes-per-window "
                                                     "percentiles (default: neuroformer/demo's, the README's "
                                                     "pretraining config)")
    i.add_argument("--window-prev", type=float, help="spike files: previous window (s) (default: neuroformer/demo's)")
    i.set_defaults(func=_cmd_inspect)

    v = add("validate", help="check session files' contents (times sorted and finite, unit indices in range, "
                             "spike index, timestamps, shapes) before training")
    v.add_argument("files", nargs="+", help="session files (.h5)")
    v.set_defaults(func=_cmd_validate)

    s = add("simulate", help="write a synthetic session with known ground truth")
    s.add_argument("kind", choices=["spikes", "ieeg"], help="spiking network or sEEG")
    s.add_argument("output", help="session file to write (.h5)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same arguments, same file)")
    s.add_argument("--duration", type=float, default=600.0, help="seconds")
    s.add_argument("--n-units", type=int, default=100, help="spikes only")
    s.add_argument("--n-channels", type=int, default=64, help="ieeg only")
    s.add_argument("--sampling-rate", type=float, default=512.0, help="ieeg only, Hz")
    s.add_argument("--session-id", help="defaults to synthetic-<kind>-seed<seed>")
    s.add_argument("--dt", type=float, default=0.001, help="spikes only: simulation step, s")
    s.add_argument("--stimulus", action="store_true",
                   help="spikes only: add 20 Hz 16x16 drifting gratings that drive orientation-tuned units")
    s.add_argument("--n-regions", type=int, default=8, help="ieeg only: brain regions with their own source (2-16)")
    s.add_argument("--line-noise", type=float, default=60.0, help="ieeg only: mains frequency in Hz, 0 for none")
    s.add_argument("--subjects", type=int, default=0,
                   help="ieeg only: write this many subjects (OUTPUT is then a folder of sub-01.h5 ...), each with its "
                        "own electrode layout and coordinate space sampling shared regions, 30 contacts each; the "
                        "last one can be held out")
    s.add_argument("--behavior", default="grip_force",
                   help="ieeg --subjects only: name of the continuous behaviour driven by sensorimotor high gamma "
                        "('' for none)")
    s.set_defaults(func=_cmd_simulate)

    sp = add("split", help="fix the train / valid / test time blocks of a session file",
                        description="Writes /intervals/train|valid|test; TimeBlockSplit then uses them instead of "
                                    "its fractions (e.g. to hold out a block of running, not the final rest).")
    sp.add_argument("file", help="session file (.h5) to write the blocks into")
    for name in ("train", "valid", "test"):
        sp.add_argument(f"--{name}", action="append", metavar="START:END", help="block in seconds (repeatable)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing /intervals/train|valid|test")
    sp.set_defaults(func=_cmd_split)

    # `neurofm train ...` hands its arguments, --help included, to neurofm.experiment.main
    # (the same as `python train.py`), whose help lists configs, override syntax and examples.
    t = add("train", help="train as a config says (same as `python train.py`)", add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER, help="[CONFIG] [key=value ...]; --help for more")
    t.set_defaults(func=_cmd_train)

    cf = add("config", help="print the resolved config a `neurofm train` command would run, or list "
                                       "the shipped configs",
                        epilog="examples:\n  neurofm config list\n  neurofm config show demo\n"
                               "  neurofm config show barista/paper model.encode_scale=lobe\n"
                               "  neurofm config show my_config.yaml trainer.max_epochs=3")
    cf.add_argument("action", choices=["show", "list"], help="show: print CONFIG resolved as YAML; list: the shipped configs")
    cf.add_argument("config", nargs="?", help="a YAML file or a shipped config name (see `neurofm config list`)")
    cf.add_argument("overrides", nargs="*", help="key=value overrides, as for `neurofm train`")
    cf.set_defaults(func=_cmd_config)

    def finetune_args(p, required_out: bool = False):
        p.add_argument("--pretrained", required=True, help="pretrained folder (or Hub repo id)")
        p.add_argument("--data", nargs="+", required=True, help="session files (.h5) of the new recording(s)")
        p.add_argument("--task", default="decode", choices=["decode", "classify", "regress", "reconstruct"],
                       help="decode behaviour (Neuroformer); classify events / regress behaviour / reconstruct "
                            "channels (BaRISTA; left out, --events means classify and --behavior regress)")
        p.add_argument("--behavior", nargs="*", default=[], help="behaviour variables to decode / regress (evaluate "
                                                                 "of a fine-tuned folder: default, the run's own)")
        p.add_argument("--events", help="BaRISTA classify: /events/<name> whose labels are the classes (evaluate of "
                                        "a fine-tuned folder: default, the run's own). `convert ieeg` writes a "
                                        "recording's annotations (or BIDS events.tsv) to /events/annotations, "
                                        "one label each; " + _EVENT_LABEL_RULE)
        p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. trainer.max_epochs=5), "
                                                    "anywhere on the line (also after --data / --behavior)")
        p.add_argument("--score-when", choices=["auto", "moving", "all"],
                       help="Neuroformer: behaviour windows scored, in the test block and the validation block that "
                            "selects the model: 'moving' = every 50 ms bin of the window has the speed of the "
                            "smoothed position (sigma eval.speed_smooth_s, 0 = from the position's jitter; tracking "
                            "jitter and glitches are not movement) above "
                            "eval.moving_threshold (the behaviour's units per second; default from the data: 0.2 x "
                            "the training blocks' 95th-percentile speed); 'all'; 'auto' (default) = moving when "
                            "decoding eval.moving_behavior (position), else all")

    f = add("finetune", help="fine-tune a pretrained model on new recordings")
    finetune_args(f)
    f.add_argument("--label-fraction", type=float, default=1.0,
                   help="fraction of training windows (spikes) or segments (iEEG: classify / regress) with labels "
                        "(few-shot), in contiguous chunks (data.label_chunk_s, 10 s)")
    f.add_argument("--freeze-backbone", action="store_true", help="train the heads (and new unit rows) only")
    f.add_argument("--from-scratch", action="store_true",
                   help="the same model shape and recipe from random init (the pretrained-vs-scratch control; the "
                        "label draw depends only on seed and --label-fraction, so both arms see the same labels)")
    f.add_argument("--folds", type=int, metavar="K",
                   help="blocked K-fold cross-validation: K fine-tunes (RUN/fold-1 ... fold-K), each testing one "
                        "1/K of the recording (validation: data.split.valid right after it; training: the rest), "
                        "and one decode report over every fold's test block: each window / segment scored once, "
                        "K times the test data of one split, for a short recording (the plain split's test block "
                        "is data.split.test, 10-20%%)")
    f.add_argument("--run-dir", help="default runs/finetune-<first data file>")
    f.set_defaults(func=_cmd_finetune)

    e = add("evaluate", help="evaluate a pretrained or fine-tuned model on held-out data",
            description="A fine-tuned folder (RUN/pretrained beside RUN/config.yaml) is scored on the test block of "
                        "its fine-tuning run's split (data.split.* to change); the linear probe reads the evaluated "
                        "model's own frozen encoder, and the report says so.")
    finetune_args(e)
    e.add_argument("--out", "--run-dir", dest="out",
                   help="folder for metrics.json and plots (default runs/evaluate-<model>-<data files>, the "
                   "files joined by +; the model is RUN for a fine-tuned RUN/pretrained); --run-dir, as finetune names it, "
                   "is the same option")
    e.add_argument("--json", action="store_true",
                   help="print metrics, baselines and protocol as one JSON document (the full record is "
                        "OUT/metrics.json either way) instead of the summary finetune prints")
    e.add_argument("--label-fraction", type=float,
                   help="labelled training windows / segments the baselines fit, as in finetune (default: the "
                        "fine-tuning run's, from RUN/config.yaml beside the pretrained folder, else 1.0)")
    e.set_defaults(func=_cmd_evaluate)

    x = add("export", help="Lightning checkpoint -> from_pretrained folder (config.json + model.safetensors)")
    x.add_argument("checkpoint", help="a .ckpt of a neurofm run (e.g. RUN_DIR/checkpoints/best.ckpt)")
    x.add_argument("output", help="folder to write")
    x.add_argument("--family", choices=["neuroformer", "barista"],
                   help="default: read from the run's config.yaml next to the checkpoints folder")
    x.set_defaults(func=_cmd_export)

    k = add("card", help="write the model card of a run from its metrics.json")
    k.add_argument("run_dir", help="run folder with metrics.json and config.yaml")
    k.add_argument("--out", help="default RUN_DIR/pretrained/README.md")
    k.add_argument("--repo-id", help="Hub repo id the card's usage snippet loads (e.g. my-lab/neuroformer-v1)")
    k.set_defaults(func=_cmd_card)

    g = add("generate", help="generate spikes with a pretrained Neuroformer and write them as a session file")
    g.add_argument("pretrained", help="pretrained Neuroformer folder (or Hub repo id)")
    g.add_argument("data", help="session file whose windows (and previous windows) condition the generation")
    g.add_argument("output", help="session file of generated spikes (.h5)")
    g.add_argument("--mode", default="teacher_forced", choices=["teacher_forced", "free_running"],
                   help="previous window: the recorded one, or the model's own previous window")
    g.add_argument("--start", type=float, help="first window start, s (default: the recording's start)")
    g.add_argument("--seconds", type=float, default=10.0, help="how much to generate, s")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling for ID and dt tokens")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--no-plot", action="store_true", help="skip the recorded-vs-generated raster PNG")
    g.set_defaults(func=_cmd_generate)
    return p


def _bare_rectify_before_paths(argv: list[str]) -> list[str]:
    """``convert ieeg --rectify in.edf out.h5``: ``--rectify`` takes an optional NAME, so argparse
    read the input path as the behaviour's name and then said ``output`` was missing. A word after
    ``--rectify`` that is an existing path or a session file (``.h5``) is no behaviour name: the flag
    is bare there (``--rectify=``, an empty NAME, which :func:`_cmd_convert` reads as bare)."""
    out = list(argv)
    for i, word in enumerate(argv[:-1]):
        following = argv[i + 1]
        if word == "--rectify" and not following.startswith("-") and (
                following.lower().endswith(".h5") or Path(following).exists()):
            out[i] = "--rectify="
    return out


def main(argv: list[str] | None = None) -> int:
    from neurofm.threads import set_wait_policy

    set_wait_policy()  # before any handler imports torch (neurofm.threads)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after `train` (--help too) is train.py's
        log_to_stderr()
        with plain_warnings("neurofm train"):
            return _cmd_train(argparse.Namespace(args=argv[1:]))
    if argv[:1] == ["convert"]:
        argv = _bare_rectify_before_paths(argv)
    args = build_parser().parse_args(argv)
    log_to_stderr()
    if getattr(args, "nan", None) == "mark-bad":
        args.nan = "mark_bad"
    try:
        with plain_warnings(f"neurofm {args.command}"):
            return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, ValueError, KeyError, ImportError) as e:
        # Errors from neurofm name the file, the field and the fix: show them without a traceback.
        # One that names none of them is a bug to report: NEUROFM_TRACEBACK=1 shows where it came from.
        if os.environ.get("NEUROFM_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"neurofm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
