#!/usr/bin/env python
"""Hyper-parameter sensitivity of GLANN and of the non-saturating DCGAN on Fashion-MNIST: each
method's learning rates at x0.3, x1 and x3 and its batch size at x0.5 and x2, one seed, the same
wall-clock budget per run, then the domain FD of each run (5,000 samples against the test split)
and the spread (max / min) of each method across its sweep.

    python scripts/bench_sensitivity.py --seconds 300 --out benchmarks/sensitivity_cpu

Runs go to runs/sensitivity/<method>_<variant>; a run that finished and was scored is kept, so an
interrupted sweep goes on where it stopped (a run stopped mid-training starts again: its budget
would otherwise be split across two sittings). One run at a time: they must not share the CPU.
Extra variants (e.g. the GAN with virtual batch norm) can be added with --extra NAME:METHOD:key=v;key=v.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from glann import load_config, train
from glann.checkpoints import MODEL_FILE
from glann.evaluate import evaluate_run
from glann.evaluate.suite import EVAL_FILE

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # config, its learning-rate keys, its batch-size keys
    "glann": ("configs/fashion_mnist.yaml", ("glo.lr_codes", "glo.lr_generator", "imle.lr"),
              ("glo.batch_size", "imle.batch_size")),
    "dcgan": ("configs/gan_fashion_mnist.yaml", ("gan.lr_generator", "gan.lr_discriminator"), ("gan.batch_size",)),
}
SWEEP = (("x1", 1.0, 1.0), ("lr_x0.3", 0.3, 1.0), ("lr_x3", 3.0, 1.0), ("batch_x0.5", 1.0, 0.5), ("batch_x2", 1.0, 2.0))


def _value(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def variants(extra: list[str]) -> list[tuple[str, str, list[str]]]:
    """(method, variant name, overrides) for the sweep, then the --extra ones."""
    out = []
    for method, (config, lrs, batches) in METHODS.items():
        base = load_config(ROOT / config)
        for name, lr_x, batch_x in SWEEP:
            over = [f"{k}={_value(base, k) * lr_x:g}" for k in lrs if lr_x != 1.0]
            over += [f"{k}={max(1, round(_value(base, k) * batch_x))}" for k in batches if batch_x != 1.0]
            out.append((method, name, over))
    for spec in extra:
        name, method, over = (spec.split(":", 2) + ["", ""])[:3]
        if method not in METHODS:
            raise SystemExit(f"--extra {spec}: give NAME:METHOD:key=v;key=v with METHOD one of {', '.join(METHODS)}")
        out.append((method, name, [o for o in over.split(";") if o]))
    return out


def run_one(method: str, name: str, overrides: list[str], seconds: float, root: Path, num_samples: int,
            config: str | None = None) -> dict:
    """Train `config` (METHODS[method]'s when None) with `overrides` for `seconds`, seed 0, into
    root/METHOD_NAME, score it by the domain protocol against the test split and return the metrics;
    a run already trained and scored is read back, one stopped before it was scored starts again."""
    run = root / f"{method}_{name}"
    scored = run / EVAL_FILE
    if (run / MODEL_FILE).is_file() and scored.is_file() and "domain" in json.loads(scored.read_text()):
        return json.loads(scored.read_text())["domain"]["metrics"]
    if run.exists():  # stopped before it was scored: its budget would span two sittings, so start again
        shutil.rmtree(run)
    config = config or METHODS[method][0]
    cfg = load_config(ROOT / config, [f"max_seconds={seconds:g}", "seed=0", f"out_dir={root}",
                                      f"name={method}_{name}", *overrides])
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    result = evaluate_run(run, features="domain", num_samples=num_samples, against="test", recon_images=0,
                          latent_baselines=False, device="cpu")
    (run / "sensitivity.json").write_text(json.dumps({"overrides": overrides, "train_wall": wall}))
    return result["metrics"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="training budget per run (max_seconds)")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--root", default="runs/sensitivity")
    p.add_argument("--only", choices=sorted(METHODS), help="sweep one method")
    p.add_argument("--extra", action="append", default=[], help="NAME:METHOD:key=v;key=v, scored beside the sweep")
    p.add_argument("--out", help="write OUT.md and OUT.png")
    args = p.parse_args()
    root = Path(args.root)
    rows = []
    for method, name, over in variants(args.extra):
        if args.only and method != args.only:
            continue
        m = run_one(method, name, over, args.seconds, root, args.num_samples)
        rows.append((method, name, over, m))
        print(f"{method} {name}: FD {m['fd']:.2f}", flush=True)
    swept = {name for name, _, _ in SWEEP}
    lines = [f"# Hyper-parameter sensitivity, {args.seconds:g} s per run ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, seed 0, full Fashion-MNIST, domain FD of {args.num_samples} "
             f"samples vs the test split)", "",
             "Command: `python scripts/bench_sensitivity.py --seconds "
             f"{args.seconds:g}" + "".join(f" --extra '{e}'" for e in args.extra) + "`", "",
             "| method | variant | overrides | FD | precision | recall | classes | KL |", "|---|---|---|---|---|---|---|---|"]
    for method, name, over, m in rows:
        lines.append(f"| {method} | {name} | {' '.join(over) or '(defaults)'} | {m['fd']:.2f} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} | {m['classes_covered']} | {m['mode_kl']:.4f} |")
    lines += ["", "| method | runs in the sweep | best FD | worst FD | spread (worst / best) |", "|---|---|---|---|---|"]
    spreads = {}
    for method in METHODS:
        fds = [m["fd"] for meth, name, _, m in rows if meth == method and name in swept]
        if fds:
            spreads[method] = max(fds) / min(fds)
            lines.append(f"| {method} | {len(fds)} | {min(fds):.2f} | {max(fds):.2f} | {spreads[method]:.2f}x |")
    if len(spreads) == 2:
        (a, sa), (b, sb) = sorted(spreads.items(), key=lambda kv: kv[1])
        lines += ["", f"In this sweep {a}'s FD varied less than {b}'s: its worst run was {sa:.2f}x its best, "
                      f"against {sb:.2f}x for {b} (one seed per run: a single run's noise is part of the spread)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text + "\n")
        _plot(rows, Path(args.out).with_suffix(".png"))
    return 0


def _plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _, _ in SWEEP]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, method in enumerate(METHODS):
        fd = {name: m["fd"] for meth, name, _, m in rows if meth == method}
        xs = [j + (i - 0.5) * 0.35 for j, n in enumerate(names) if n in fd]
        ax.bar(xs, [fd[n] for n in names if n in fd], width=0.35, label=method)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("domain FD (lower is better)")
    ax.set_title("Sensitivity to learning rate and batch size, equal wall-clock per run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
