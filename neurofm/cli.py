"""The ``neurofm`` console script.

Each subcommand is a thin layer over a library function, so everything it does can also be
done from Python. Heavy imports (torch, pynwb, mne) happen inside the handlers, which keeps
``neurofm --help`` fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.format == "nwb":
        from neurofm.data.nwb import convert_nwb

        out = convert_nwb(args.input, args.output, session_id=args.session_id, nan_policy=args.nan)
    else:
        from neurofm.data.ieeg import convert_ieeg

        out = convert_ieeg(args.input, args.output, electrodes=args.electrodes, session_id=args.session_id,
                           nan_policy=args.nan)
    print(f"wrote {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from neurofm.data.session import Session

    with Session(args.file) as s:
        summary = s.summary()
        print(json.dumps(summary, indent=2) if args.json else s.describe())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from neurofm.data import synthetic

    if args.kind == "spikes":
        out = synthetic.simulate_spikes(args.output, n_units=args.n_units, duration=args.duration, seed=args.seed)
    else:
        out = synthetic.simulate_ieeg(args.output, n_channels=args.n_channels, duration=args.duration,
                                      sampling_rate=args.sampling_rate, seed=args.seed)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neurofm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a recording (NWB, or EDF/BrainVision/FIF/BIDS iEEG) to a session file")
    c.add_argument("format", choices=["nwb", "ieeg"])
    c.add_argument("input", help="NWB file, or anything MNE reads (a BIDS-iEEG file picks up its sidecars)")
    c.add_argument("output", help="session file to write (.h5)")
    c.add_argument("--electrodes", help="BIDS-style electrodes.tsv (name, x, y, z, atlas label columns); iEEG only")
    c.add_argument("--session-id", help="defaults to the input file's stem")
    c.add_argument("--nan", choices=["raise", "mark-bad"], default="raise",
                   help="NaN/inf in continuous data: stop with an error (default) or zero them and mark the channel bad")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="summarise a session file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable summary")
    i.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("simulate", help="write a synthetic session with known ground truth")
    s.add_argument("kind", choices=["spikes", "ieeg"])
    s.add_argument("output")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--duration", type=float, default=600.0, help="seconds")
    s.add_argument("--n-units", type=int, default=100, help="spikes only")
    s.add_argument("--n-channels", type=int, default=64, help="ieeg only")
    s.add_argument("--sampling-rate", type=float, default=512.0, help="ieeg only, Hz")
    s.set_defaults(func=_cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "nan", None) == "mark-bad":
        args.nan = "mark_bad"
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as e:
        # Errors from neurofm name the file, the field and the fix: show them without a traceback.
        print(f"neurofm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
