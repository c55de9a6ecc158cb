"""The ``neurofm`` console script.

Each subcommand is a thin layer over a library function, so everything it does can also be
done from Python. Heavy imports (torch, pynwb, mne) happen inside the handlers, which keeps
``neurofm --help`` fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_convert(args: argparse.Namespace) -> int:
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        # converter warnings already name the file and the field: print them as plain notes
        print(f"neurofm convert: warning: {message}", file=sys.stderr)

    common = dict(session_id=args.session_id, nan_policy=args.nan, overwrite=not args.no_overwrite,
                  coordinate_unit=args.coordinate_unit)
    with warnings.catch_warnings():
        warnings.showwarning = show
        if args.format == "nwb":
            from neurofm.data.nwb import convert_nwb

            if args.electrodes or args.channels:
                raise ValueError("--electrodes / --channels are for iEEG recordings; an NWB file carries its own "
                                 "electrodes table")
            series = args.electrical_series
            out = convert_nwb(args.input, args.output, electrical_series=False if series == "none" else series,
                              **common)
        else:
            from neurofm.data.ieeg import convert_ieeg

            if args.electrical_series:
                raise ValueError("--electrical-series is for NWB files")
            out = convert_ieeg(args.input, args.output, electrodes=args.electrodes, channels_tsv=args.channels,
                               **common)
    print(f"wrote {out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from neurofm.data.session import Session

    with Session(args.file) as s:
        if args.json:
            print(json.dumps(s.summary(), indent=2, default=str))
        else:
            print(s.describe())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from neurofm.data import synthetic

    if args.kind == "spikes":
        out = synthetic.simulate_spikes(args.output, n_units=args.n_units, duration=args.duration, seed=args.seed,
                                        dt=args.dt, stimulus=args.stimulus, session_id=args.session_id)
    else:
        out = synthetic.simulate_ieeg(args.output, n_channels=args.n_channels, duration=args.duration,
                                      sampling_rate=args.sampling_rate, seed=args.seed, n_regions=args.n_regions,
                                      line_noise=args.line_noise or None, session_id=args.session_id)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neurofm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a recording (NWB, or EDF/BrainVision/FIF/BIDS iEEG) to a session file")
    c.add_argument("format", choices=["nwb", "ieeg"])
    c.add_argument("input", help="NWB file, or anything MNE reads (a BIDS-iEEG file picks up its sidecars)")
    c.add_argument("output", help="session file to write (.h5)")
    c.add_argument("--electrodes", help="BIDS-style electrodes.tsv (name, x, y, z, atlas label columns); iEEG only "
                                        "(default: the *_electrodes.tsv found beside the recording)")
    c.add_argument("--channels", help="BIDS channels.tsv (type, status); iEEG only (default: found beside the recording)")
    c.add_argument("--electrical-series", help="NWB only: the ElectricalSeries to convert when there are several, "
                                               "or 'none' for spikes only")
    c.add_argument("--coordinate-unit", help="unit of electrode x, y, z when the input does not say (m, mm, um)")
    c.add_argument("--session-id", help="defaults to the input file's stem")
    c.add_argument("--nan", choices=["raise", "mark-bad"], default="raise",
                   help="NaN/inf in continuous data: stop with an error (default) or zero them and mark the channel bad")
    c.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output file")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="summarise a session file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable summary (kinds, n_units, n_spikes, "
                                                       "duration_s, behavior, n_channels, sampling_rate, atlases, ...)")
    i.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("simulate", help="write a synthetic session with known ground truth")
    s.add_argument("kind", choices=["spikes", "ieeg"])
    s.add_argument("output")
    s.add_argument("--seed", type=int, default=0)
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
    s.set_defaults(func=_cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "nan", None) == "mark-bad":
        args.nan = "mark_bad"
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, ValueError, KeyError, ImportError) as e:
        # Errors from neurofm name the file, the field and the fix: show them without a traceback.
        print(f"neurofm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
