"""Rerun the README's commands and rewrite the output blocks they show.

    python tools/readme.py            # rewrite every output block of README.md (not the slow ones)
    python tools/readme.py --slow     # ... the slow ones too (training runs)
    python tools/readme.py --check    # change nothing; exit 1 and print a diff if a block is stale

Markers (HTML comments, invisible on GitHub) say what to run:

    <!-- readme: output -->           the next fenced block is the output of the code block just
                                      above it (```bash: a shell script; ```python: a script)
    <!-- readme: output slow -->      the same, rerun only with --slow
    <!-- readme: run -->              run the next code block (setup for later blocks), show nothing

All marked blocks run in order, in one fresh folder whose sibling ``../shared`` is the
repository's ``../shared`` (the sample recordings), so commands read as they do from the
repository root and every file they write stays out of the repository. ``neurofm`` and
``python`` there are this interpreter with this repository's ``neurofm`` (``PYTHONPATH``).
Output is stdout and stderr together, as a terminal shows them; trailing spaces are dropped;
warnings of Python blocks read ``UserWarning: message`` (no file paths of this machine).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!--\s*readme:\s*(output|run)\b([^>]*)-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
RUNNABLE = ("bash", "sh", "python")
#: Python blocks show a warning as ``Category: message``: what a user reads, without the file
#: path and source line Python adds (this machine's paths, the sandbox's script name).
WARNING_FORMAT = ("import warnings; warnings.formatwarning = lambda message, category, *_a, **_k: "
                  "f'{category.__name__}: {message}\\n'\n")


@dataclass
class Block:
    lang: str
    start: int  # index of the opening fence line
    end: int  # index of the closing fence line
    mark: str | None  # "output" / "run" / None
    slow: bool

    def text(self, lines: list[str]) -> str:
        return "".join(lines[self.start + 1:self.end])


def parse(lines: list[str], where: str) -> list[Block]:
    blocks, i, mark, slow = [], 0, None, False
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            mark, slow = m.group(1), "slow" in m.group(2).split()
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            j = i + 1
            while j < len(lines) and lines[j].rstrip("\n") != "```":
                j += 1
            if j == len(lines):
                raise SystemExit(f"{where}:{i + 1}: code block never closed")
            blocks.append(Block(f.group(1), i, j, mark, slow))
            mark, slow, i = None, False, j + 1
            continue
        if lines[i].strip() and mark is not None:
            raise SystemExit(f"{where}:{i + 1}: a `readme: {mark}` marker must come right before a fenced block")
        i += 1
    return blocks


def plan(blocks: list[Block], where: str) -> list[tuple[Block, Block | None]]:
    """(code block to run, output block to rewrite or None), in README order."""
    steps = []
    for k, b in enumerate(blocks):
        if b.mark == "output":
            code = blocks[k - 1] if k else None
            if code is None or code.lang not in RUNNABLE:
                raise SystemExit(f"{where}:{b.start + 1}: an output block must follow a bash or python block")
            if steps and steps[-1][0] is code:
                steps.pop()  # it was marked `run` too
            code.slow = code.slow or b.slow
            steps.append((code, b))
        elif b.mark == "run":
            if b.lang not in RUNNABLE:
                raise SystemExit(f"{where}:{b.start + 1}: `readme: run` marks a {b.lang or 'plain'} block")
            steps.append((b, None))
    return steps


def _sandbox(tmp: Path) -> tuple[Path, dict]:
    """A working folder with ../shared and the neurofm / python commands of this checkout."""
    work, bin_dir = tmp / "repo", tmp / "bin"
    work.mkdir()
    bin_dir.mkdir()
    shared = (ROOT / ".." / "shared").resolve()
    if shared.is_dir():
        (tmp / "shared").symlink_to(shared)
    for name in ("train.py",):
        (work / name).symlink_to(ROOT / name)
    for name, body in (("neurofm", f'exec "{sys.executable}" -m neurofm.cli "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               COLUMNS="100", HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               MPLBACKEND="Agg", TQDM_DISABLE="1")
    return work, env


def run_block(code: str, lang: str, work: Path, env: dict, where: str, timeout: float) -> str:
    if lang == "python":
        script = work.parent / "block.py"
        script.write_text(WARNING_FORMAT + code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-c", code]
    done = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    out = "\n".join(line.rstrip() for line in done.stdout.splitlines()).strip("\n")
    if done.returncode != 0:
        raise SystemExit(f"{where}: the block exited with status {done.returncode}:\n{code}\n--- output ---\n{out}")
    return out + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("readme", nargs="?", default=str(ROOT / "README.md"), help="the file to refresh")
    ap.add_argument("--check", action="store_true", help="compare only: exit 1 with a diff if an output is stale")
    ap.add_argument("--slow", action="store_true", help="also the blocks marked slow (training runs)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per block")
    args = ap.parse_args(argv)

    path = Path(args.readme)
    lines = path.read_text().splitlines(keepends=True)
    steps = plan(parse(lines, str(path)), str(path))
    new: dict[int, str] = {}  # output block start -> its new text
    with tempfile.TemporaryDirectory(prefix="neurofm-readme-") as tmp:
        work, env = _sandbox(Path(tmp))
        for code, out in steps:
            if code.slow and not args.slow:
                continue
            where = f"{path}:{code.start + 1}"
            print(f"{where}: running the {code.lang} block", file=sys.stderr)
            text = run_block(code.text(lines), code.lang, work, env, where, args.timeout)
            if out is not None:
                new[out.start] = text
    stale = []
    result: list[str] = []
    blocks = {b.start: b for b in parse(lines, str(path))}
    i = 0
    while i < len(lines):
        if i in new:
            b = blocks[i]
            old = b.text(lines)
            if old != new[i]:
                stale.append((b, old, new[i]))
            result += [lines[i], new[i], lines[b.end]]
            i = b.end + 1
        else:
            result.append(lines[i])
            i += 1
    for b, old, fresh in stale:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), fresh.splitlines(True),
                                                   f"{path}:{b.start + 2} (shown)", "(output now)"))
    if args.check:
        if stale:
            print(f"{len(stale)} of {len(new)} output blocks of {path} are stale: refresh them with "
                  f"`python tools/readme.py{' --slow' if args.slow else ''}`", file=sys.stderr)
            return 1
        print(f"{len(new)} output blocks of {path} are current", file=sys.stderr)
        return 0
    if stale:
        tmp_path = path.with_name(f".{path.name}.tmp")
        tmp_path.write_text("".join(result))
        os.replace(tmp_path, path)
    print(f"{path}: {len(stale)} of {len(new)} output blocks rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
