#!/usr/bin/env python
"""Ablation of issue 12's levers at equal wall-clock: GLANN at its defaults, then each lever turned
back to the paper's reference setting one at a time, the reference configuration (every lever off)
and the DCGAN baseline, all with the same `max_seconds`, one seed, full Fashion-MNIST, one run after
another. Each run is scored by the domain protocol (5,000 samples against the test split).

    python scripts/bench_ablation.py --seconds 300 --out benchmarks/ablation_cpu

Runs go to runs/ablation/<method>_<variant>; a finished, scored run is kept, so an interrupted
ablation goes on where it stopped (`--only NAME` runs some rows). One run at a time: they must not
share the CPU. The table's last column gives each row's FD over the defaults' FD from this run.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from bench_sensitivity import run_one
from race_table import stage_epochs


GLANN, REFERENCE, DCGAN = "configs/fashion_mnist.yaml", "configs/fashion_mnist_reference.yaml", "configs/gan_fashion_mnist.yaml"
# (row, method, config, overrides, what the row turns off or changes)
ROWS = (
    ("defaults", "glann", GLANN, [], "glann's defaults (configs/fashion_mnist.yaml)"),
    ("dcgan", "dcgan", DCGAN, [], "the DCGAN baseline (configs/gan_fashion_mnist.yaml)"),
    ("reference", "glann", REFERENCE, [], "the paper's schedule, every lever off (configs/fashion_mnist_reference.yaml)"),
    ("random_init", "glann", GLANN, ["glo.init=random"], "codes start random, not from a PCA of the images"),
    ("gaussian_start", "glann", GLANN, ["model.mapper_prior=gaussian", "imle.budget_epochs=25"],
     "IMLE starts from N(0, I) noise, not the mixture (with the 25 planned epochs it had then)"),
    ("raw_mapper", "glann", GLANN, ["imle.sphere=false"], "IMLE matches the mapper's raw outputs, not on the sphere"),
    ("imle_lr", "glann", GLANN, ["imle.lr=0.001"], "IMLE's learning rate at the reference 0.001, not 0.01"),
    ("shared_code_steps", "glann", GLANN, ["glo.code_steps=shared"], "SparseAdam's shared step count for the codes"),
    ("generator_lr", "glann", GLANN, ["glo.lr_generator=0.001"], "the generator's learning rate at the reference 0.001"),
    ("step_schedule", "glann", GLANN, ["glo.schedule=step", "imle.schedule=step"], "halving every 20/50 epochs, not cosine to the budget"),
    ("spp2", "glann", GLANN, ["imle.samples_per_point=2"], "2 pool samples per code (the reference), not 1"),
    ("fixed_split", "glann", GLANN, ["glo.max_seconds={glo75}"], "GLO gets a fixed 75% of the budget, not the probe's rule"),
    ("no_imle", "glann", GLANN, ["imle.epochs=0"], "GLO + the mixture, no IMLE step (not a lever: the mixture alone)"),
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="training budget per run (max_seconds)")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--root", default="runs/ablation")
    p.add_argument("--only", action="append", choices=[r[0] for r in ROWS], help="run these rows only")
    p.add_argument("--out", help="write OUT.md")
    args = p.parse_args()
    root = Path(args.root)
    done = []
    for name, method, config, over, what in ROWS:
        if args.only and name not in args.only:
            continue
        over = [o.format(glo75=f"{0.75 * args.seconds:g}") for o in over]
        m = run_one(method, name, over, args.seconds, root, args.num_samples, config=config)
        done.append((name, over, what, m, stage_epochs(root / f"{method}_{name}")))
        print(f"{name}: FD {m['fd']:.2f}", flush=True)
    base = next((m["fd"] for name, _, _, m, _ in done if name == "defaults"), None)
    lines = [f"# Ablation at {args.seconds:g} s per run ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, seed 0, full Fashion-MNIST, domain FD of {args.num_samples} "
             f"samples vs the test split)", "",
             f"Command: `python scripts/bench_ablation.py --seconds {args.seconds:g}`", "",
             "| row | what changes | overrides | stages: epochs | FD | precision | recall | classes | KL | FD / defaults |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, over, what, m, epochs in done:
        ratio = f"{m['fd'] / base:.2f}" if base else ""
        lines.append(f"| {name} | {what} | {' '.join(over) or '(none)'} | {epochs} | {m['fd']:.2f} | {m['precision']:.3f} "
                     f"| {m['recall']:.3f} | {m['classes_covered']} | {m['mode_kl']:.4f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
