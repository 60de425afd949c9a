#!/usr/bin/env python
"""Run scripts/bench.py for an earlier commit and for the working tree in one go, and print each
measurement of both with the ratio (this / earlier), so that a change's speed-up is measured on
the same machine in the same sitting.

    python scripts/bench_vs.py HEAD~1 --out benchmarks/bench_cpu_vs_prev.md [-- --quick]

The earlier commit is checked out into a temporary git worktree and imported from there
(PYTHONPATH first); arguments after `--` go to both bench.py runs.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?x?$")


def run_bench(tree: Path, out: Path, extra: list[str]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    check = subprocess.run([sys.executable, "-c", "import glann; print(glann.__file__)"], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not check.startswith(str(tree)):
        raise SystemExit(f"bench_vs: {tree} would import glann from {check}; is glann installed non-editable?")
    print(f"--- bench.py in {tree}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(tree / "scripts" / "bench.py"), "--out", str(out), *extra],
                   env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return parse_table(out.read_text())


def parse_table(text: str) -> dict[str, str]:
    """{measurement: value} from bench.py's Markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] not in ("measurement", "---") and not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = cells[1]
    return rows


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the earlier commit, e.g. HEAD~1")
    p.add_argument("--out", type=Path, help="also write the comparison to this Markdown file")
    args = p.parse_args(argv)
    sha = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / f"glann-{sha}"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            before = run_bench(tree, Path(tmp) / "before.md", extra)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        after_md = Path(tmp) / "after.md"
        after = run_bench(ROOT, after_md, extra)
        machine = next((line for line in after_md.read_text().splitlines() if line.startswith("Machine:")), "")
    now = f"{head}{' + uncommitted changes' if dirty else ''}"
    lines = [f"# bench.py: {sha} vs {now}", "", machine, "",
             f"Command: `python scripts/bench_vs.py {args.rev}" + (" -- " + " ".join(extra) if extra else "") + "`", "",
             f"| measurement | {sha} | {now} | ratio |", "| --- | ---: | ---: | ---: |"]
    for name, value in after.items():
        old = before.get(name)
        ratio = ""
        if old and NUMBER.match(old) and NUMBER.match(value) and float(old.rstrip("x")) != 0:
            ratio = f"{float(value.rstrip('x')) / float(old.rstrip('x')):.2f}"
        lines.append(f"| {name} | {old or '(not measured)'} | {value} | {ratio} |")
    lines += ["", "Ratios are this / earlier; for times (s) below 1 is faster, for rates above 1 is faster."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
