#!/usr/bin/env python
"""The mixture start's fit against its EM iterations and its sample of the codes, on one run's fixed
codes and generator: fit seconds, then the domain protocol (5,000 samples against the test split).

    python scripts/mixture_fit_study.py RUN 200,20000 20,20000 10,20000 5,20000   # ITERS,CODES ...

Prints one Markdown row per setting: EM iterations (at most), codes fitted, fit seconds, FD,
precision, recall, KL. RUN is a GLANN run directory whose checkpoints/glo.pt holds the codes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _variants import emit, load_fixed_run

from glann.evaluate.suite import evaluate
from glann.nets import MixturePrior
from glann.sampler import Sampler


class _CappedPrior(MixturePrior):
    """MixturePrior whose EM stops after `iters` iterations (the package's cap is MIXTURE_EM_ITERS)."""

    def __init__(self, components: int, nz: int, iters: int):
        super().__init__(components, nz)
        self.iters = iters

    def _em(self, rows: int, seed: int, max_iter: int = 0):
        return super()._em(rows, seed, max_iter=self.iters)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("settings", nargs="+", help="ITERS,CODES: EM iterations at most, codes fitted")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--out", help="append the table (Markdown) to this file")
    args = p.parse_args()
    fixed = load_fixed_run(Path(args.run), args.num_samples)
    sampler = Sampler(fixed.generator, None, fixed.cfg, "cpu")
    nz = fixed.codes.shape[1]
    lines = [f"\nMixture fits to the codes of `{args.run}` (50 components, full covariance, seed 0)", "",
             "| EM iterations (cap) | codes fitted | fit s | FD | precision | recall | KL |", "|---|---|---|---|---|---|---|"]
    for spec in args.settings:
        iters, codes = (int(x) for x in spec.split(","))
        prior = _CappedPrior(50, nz, iters)
        t0 = time.perf_counter()
        prior.fit(fixed.codes, seed=0, max_codes=codes)
        fit = time.perf_counter() - t0
        z = prior(torch.randn(args.num_samples, nz + 1, generator=torch.Generator().manual_seed(31)))
        m = evaluate(sampler.decode(z).cpu(), fixed.reference, "domain", classifier=fixed.classifier,
                     num_samples=args.num_samples)["metrics"]
        lines.append(f"| {iters} | {codes} | {fit:.1f} | {m['fd']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} "
                     f"| {m['mode_kl']:.4f} |")
        print(lines[-1], flush=True)
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
