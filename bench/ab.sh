#!/usr/bin/env bash
# Before/after speed of two revisions on this machine, interleaved (A B A B ...) so that a
# drifting load hits both alike. Each revision runs its OWN bench scripts from a detached
# worktree, so a refactor that moved an import is timed with the code it shipped with.
#
#   bench/ab.sh [BEFORE] [AFTER]        default: main HEAD
#   ROUNDS=3 bench/ab.sh main arch      more rounds, median per figure
#   THREADS=2 ...                       torch threads for both (default 2: the reference machine)
#
# What runs per revision and round (about 1-2 min in all on an idle 2-core machine):
#   python bench/neuroformer.py --quick --precision fp32 --skip-paper --threads $THREADS
#       small-model train step (tokens/s) + generation (windows/s, small and paper size)
#   python bench/barista.py --quick --channels 98 --threads $THREADS
#       paper-size pretraining step at 98 channels, batch 8 (tokens/s, peak RSS), latency
# Then every numeric figure present in both is printed as before / after / after:before (the
# median over rounds). Run it on a quiet machine (check `uptime`); the issue asks for every
# figure within 5%.
set -euo pipefail

BEFORE=${1:-main}
AFTER=${2:-HEAD}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python}

root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d /tmp/neurofm-ab.XXXXXX)
cleanup() {
    git -C "$root" worktree remove --force "$tmp/before" 2>/dev/null || true
    git -C "$root" worktree remove --force "$tmp/after" 2>/dev/null || true
}
trap cleanup EXIT

git -C "$root" worktree add --detach --quiet "$tmp/before" "$BEFORE"
git -C "$root" worktree add --detach --quiet "$tmp/after" "$AFTER"
mkdir -p "$tmp/out"
echo "before = $BEFORE ($(git -C "$root" rev-parse --short "$BEFORE")), after = $AFTER ($(git -C "$root" rev-parse --short "$AFTER")), $ROUNDS rounds, $THREADS threads; load: $(cut -d' ' -f1-3 /proc/loadavg)"

for round in $(seq 1 "$ROUNDS"); do
    for side in before after; do
        echo "round $round: $side"
        (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" OMP_NUM_THREADS="$THREADS" \
            "$PYTHON" bench/neuroformer.py --quick --precision fp32 --skip-paper --threads "$THREADS" \
            --json "$tmp/out/neuroformer-$side-$round.json" > "$tmp/out/neuroformer-$side-$round.log" 2>&1)
        (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" OMP_NUM_THREADS="$THREADS" \
            "$PYTHON" bench/barista.py --quick --channels 98 --threads "$THREADS" \
            --json "$tmp/out/barista-$side-$round.json" > "$tmp/out/barista-$side-$round.log" 2>&1)
    done
done

"$PYTHON" - "$tmp/out" "$ROUNDS" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])


def leaves(x, prefix=""):
    """Numeric leaves of a JSON tree as {dotted.path: value}."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{prefix}{k}.")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{prefix}{i}.")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield prefix[:-1], float(x)


for bench in ("neuroformer", "barista"):
    runs = {side: [dict(leaves(json.loads((out / f"{bench}-{side}-{r}.json").read_text())))
                   for r in range(1, rounds + 1)] for side in ("before", "after")}
    keys = [k for k in runs["before"][0] if all(k in run for side in runs.values() for run in side)
            and not k.startswith("reference") and "load" not in k]
    print(f"\n{bench}: median of {rounds} round(s)")
    print(f"{'figure':60s} {'before':>12s} {'after':>12s} {'after/before':>13s}")
    for k in keys:
        b = statistics.median(run[k] for run in runs["before"])
        a = statistics.median(run[k] for run in runs["after"])
        ratio = a / b if b else float("nan")
        print(f"{k:60s} {b:12.4g} {a:12.4g} {ratio:13.3f}")
EOF
echo "logs: $tmp/out (removed worktrees; the logs stay)"
