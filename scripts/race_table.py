#!/usr/bin/env python
"""The race's table and plot: evaluated runs of `glann compare` (eval.json, domain features) ->
one Markdown table (every run, and the mean per method and budget) and one PNG of domain FD
against the training budget.

    python scripts/race_table.py runs/race_300 runs/race_600 runs/race_1800 --out benchmarks/race_cpu

Each directory holds <method>_s<seed>/ runs; their eval.json must hold a `domain` entry
(`glann compare` writes one; else `glann evaluate RUN --features domain --num-samples 5000`).
The prose a reader needs (who won, by how much) is printed from these numbers, not written by hand.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from glann.checkpoints import checkpoint_file, load_checkpoint
from glann.config import STAGES
from glann.evaluate.metrics import metric_columns

# Markdown cells: a | inside a label (KL(gen || data)) would end its cell
COLS = [(k, label.replace("|", "\\|"), better) for k, label, better in
        metric_columns(("fd", "precision", "recall", "classes_covered", "mode_kl"))]


def stage_epochs(run: Path) -> str:
    """'glo 5 (423 s), imle 12 (180 s)': each stage's epochs and training seconds, from its checkpoint."""
    out = []
    for stage in STAGES:
        f = checkpoint_file(run, stage)
        if f.is_file():
            ck = load_checkpoint(f, mmap=True)
            out.append(f"{stage} {int(ck['epoch']) + 1} ({float(ck['extra'].get('seconds', torch.tensor(0.0))):.0f} s)")
    return ", ".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", help="write OUT.md and OUT.png")
    args = p.parse_args()
    rows = []
    for d in map(Path, args.dirs):
        for run in sorted(x for x in d.iterdir() if (x / "eval.json").is_file()):
            ev = json.loads((run / "eval.json").read_text()).get("domain")
            if ev is None:
                continue
            cfg = (run / "config.yaml").read_text()
            budget = next((float(line.split(":")[1]) for line in cfg.splitlines() if line.startswith("max_seconds:")
                           and line.split(":")[1].strip() not in ("null", "")), None)
            method, seed = run.name.rsplit("_s", 1)
            rows.append(dict(method=method, seed=int(seed), budget=budget, run=run, m=ev["metrics"],
                             b=ev.get("baselines", {}), epochs=stage_epochs(run)))
    if not rows:
        raise SystemExit("no evaluated runs (eval.json with a domain entry) under " + ", ".join(args.dirs))
    lines = ["| budget (s) | method | seed | stages: epochs (training s) | " + " | ".join(c[1] for c in COLS) + " |",
             "|---|---|---|---|" + "---|" * len(COLS)]
    for r in sorted(rows, key=lambda r: (r["budget"] or 0, r["method"], r["seed"])):
        vals = [str(r["m"][k]) if k == "classes_covered" else f"{r['m'][k]:.4g}" for k, _, _ in COLS]
        lines.append(f"| {r['budget'] or '-':g} | {r['method']} | {r['seed']} | {r['epochs']} | " + " | ".join(vals) + " |")
        for name in ("reconstructions", "mixture", "gaussian"):
            if name in r["b"]:
                vals = [str(r["b"][name][k]) if k == "classes_covered" else f"{r['b'][name][k]:.4g}" for k, _, _ in COLS]
                lines.append(f"| | ↳ {name} on these codes | | | " + " | ".join(vals) + " |")
    # Means per budget and method, and what they say.
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["budget"], r["method"]), []).append(r)
    lines += ["", "| budget (s) | method | seeds | " + " | ".join(c[1] for c in COLS) + " |",
              "|---|---|---|" + "---|" * len(COLS)]
    means = {}
    for (budget, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        mean = {k: statistics.fmean(float(r["m"][k]) for r in rs) for k, _, _ in COLS}
        means[(budget, method)] = mean
        lines.append(f"| {budget or '-':g} | {method} | {len(rs)} | " + " | ".join(f"{mean[k]:.4g}" for k, _, _ in COLS) + " |")
    lines.append("")
    for budget in sorted({b for b, _ in means}, key=lambda b: b or 0):
        here = {m: v for (b, m), v in means.items() if b == budget}
        if "glann" in here and "dcgan" in here:
            g, d = here["glann"], here["dcgan"]
            verdicts = []
            for k, label, better in COLS:
                ahead = "even" if g[k] == d[k] else "GLANN ahead" if (g[k] < d[k]) == (better == "lower") else "DCGAN ahead"
                verdicts.append(f"{label} {g[k]:.4g} vs {d[k]:.4g} ({ahead})")
            lines.append(f"- At {budget:g} s, GLANN against DCGAN (means over seeds): " + "; ".join(verdicts)
                         + f". FD ratio GLANN / DCGAN: {g['fd'] / d['fd']:.2f}.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for method in sorted({r["method"] for r in rows}):
            rs = sorted((r for r in rows if r["method"] == method and r["budget"]), key=lambda r: r["budget"])
            dots = ax.scatter([r["budget"] for r in rs], [r["m"]["fd"] for r in rs], label=f"{method} (each seed)", s=25)
            pts = sorted((b, v["fd"]) for (b, m), v in means.items() if m == method and b)
            if pts:  # the mean over seeds, in the dots' colour
                ax.plot(*zip(*pts), linestyle="-", alpha=0.6, color=dots.get_facecolor()[0])
        ax.set_xscale("log")
        ax.set_xlabel("training budget (seconds, log scale)")
        ax.set_ylabel("domain FD, 5,000 vs test (lower is better)")
        ax.set_title("Fashion-MNIST on a 2-core CPU: quality at equal training time")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out + ".png", dpi=120)
        Path(args.out + "_table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
