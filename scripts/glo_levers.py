#!/usr/bin/env python
"""GLO levers in a short setting: the reconstruction loss per epoch of train_glo for each variant,
one after another in one process (same data, same seed, same thread count).

    python scripts/glo_levers.py --limit 10000 --epochs 5 \
        "ref:glo.init=random;glo.code_steps=shared;glo.schedule=step;glo.lr_generator=0.001" \
        "pca:glo.init=pca;glo.code_steps=shared" "default:"

Each variant is NAME:key=value;key=value on top of configs/fashion_mnist.yaml (empty: its defaults).
A short setting (a subset, a few epochs) ranks levers quickly; check a winner at a real budget.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from _variants import emit, parse_variant

from glann.config import load_config
from glann.data import load_dataset
from glann.glo import train_glo

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+")
    p.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist.yaml"))
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--out", help="append the Markdown table to this file")
    args = p.parse_args()
    rows = []
    for spec in args.variants:
        name, overrides = parse_variant(spec)
        cfg = load_config(args.config, [f"data.limit={args.limit}", f"glo.epochs={args.epochs}", *overrides])
        data = load_dataset(cfg.data, torch.device("cpu"), seed=cfg.seed)
        t0 = time.perf_counter()
        r = train_glo(data, cfg)
        rows.append((name, " ".join(overrides), r.losses, time.perf_counter() - t0))
        print(name, [round(v, 4) for v in r.losses], flush=True)
    lines = [f"\n### GLO loss per epoch: {args.limit} images, {args.epochs} epochs "
             f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)\n",
             "| variant | overrides | loss per epoch | last vs first variant | seconds |", "|---|---|---|---|---|"]
    for name, over, losses, secs in rows:
        lines.append(f"| {name} | {over} | {', '.join(f'{v:.4f}' for v in losses)} | "
                     f"{losses[-1] / rows[0][2][-1]:.2f}x | {secs:.0f} |")
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
