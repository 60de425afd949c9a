#!/usr/bin/env python
"""The mixture start's fit against its EM iterations, its sample of the codes and its number of
components, on one run's fixed codes and generator: fit seconds, then the domain protocol (5,000
samples against the test split).

    python scripts/mixture_fit_study.py RUN 200,20000 20,20000 10,20000 5,20000   # ITERS,CODES ...
    python scripts/mixture_fit_study.py RUN 10,20000,50 10,60000,200              # ITERS,CODES,COMPONENTS
    python scripts/mixture_fit_study.py RUN 10,20000 10,60000 --fit-seeds 0 1 2   # each setting at 3 fit seeds
    python scripts/mixture_fit_study.py RUN 10,20000 --fit-seeds 0 1 2 3 --holdout 5000  # + imle.keep_best's score
    python scripts/mixture_fit_study.py RUN 10,20000 --fit-seeds 0 1 2 3 --ensemble 2   # + fits pooled in pairs

Prints one Markdown row per setting: EM iterations (at most), codes fitted, components asked for
(50 unless given) and fitted (at most one per 4 nz codes, as MixturePrior.fit caps them), fit
seconds, FD, precision, recall, KL; with several --fit-seeds one row per seed (another sample of the
codes and another k-means start), then the mean. --holdout H: H random codes are set aside before
the fits, and each fit is also scored as imle.keep_best scores a mapper (the Fréchet distance in code
space between HOLDOUT_SAMPLES of its samples and those codes: CodeFDCheck). Every row draws the
same noise and is scored against the same test images, so rows differ only by the fit. RUN is a
GLANN run directory whose checkpoints/glo.pt holds the codes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _variants import emit, load_fixed_run

from glann.evaluate.training import CodeFDCheck
from glann.imle import HOLDOUT_SAMPLES
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
    p.add_argument("settings", nargs="+",
                   help="ITERS,CODES[,COMPONENTS]: EM iterations at most, codes fitted, components (default 50)")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--fit-seeds", type=int, nargs="+", default=[0], help="fit each setting at these seeds")
    p.add_argument("--holdout", type=int, default=0, metavar="H",
                   help="set H random codes aside before fitting and score each fit on them (imle.keep_best's score)")
    p.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also score the fits pooled K at a time (consecutive fit seeds): an equal-weight mixture "
                        "of the K mixtures, sample j drawn from fit j mod K on the same noise")
    p.add_argument("--out", help="append the table (Markdown) to this file")
    args = p.parse_args()
    settings = []
    for spec in args.settings:  # all of them checked before minutes of loading and fitting
        parts = spec.split(",")
        if len(parts) not in (2, 3) or not all(x.strip().isdigit() and int(x) > 0 for x in parts):
            p.error(f"setting '{spec}' is not ITERS,CODES or ITERS,CODES,COMPONENTS of positive whole numbers "
                    f"(e.g. 10,20000,50)")
        settings.append((*map(int, parts), 50)[:3])
    if args.ensemble and not 1 < args.ensemble <= len(args.fit_seeds):
        p.error(f"--ensemble {args.ensemble}: it pools K fits, so K must be 2 or more and --fit-seeds give at least K "
                f"(got {len(args.fit_seeds)})")
    if not (Path(args.run) / "checkpoints" / "glo.pt").is_file():
        p.error(f"{args.run} holds no GLO codes (checkpoints/glo.pt); pass a GLANN run directory")
    fixed = load_fixed_run(Path(args.run), args.num_samples)
    sampler = Sampler(fixed.generator, None, fixed.cfg, "cpu")
    nz = fixed.codes.shape[1]
    codes, held = fixed.codes, None
    if args.holdout:
        if not 0 < args.holdout < len(codes) // 2:
            p.error(f"--holdout {args.holdout}: set aside fewer than half of the {len(codes)} codes")
        order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(3))
        # imle.keep_best's own score (its noise, its sphere), with a fit in place of the mapper
        held = CodeFDCheck(codes[order[:args.holdout]], fixed.cfg, HOLDOUT_SAMPLES, torch.device("cpu"))
        codes = codes[order[args.holdout:]]
    seeds = " ".join(map(str, args.fit_seeds))
    lines = [f"\nMixture fits to the codes of `{args.run}` (full covariance, fit seeds {seeds})", "",
             "| EM iterations (cap) | codes fitted | components (fitted) | fit seed | fit s | held-out code FD "
             "| FD | precision | recall | KL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for iters, max_codes, components in settings:
        rows, drawn, fitted = [], [], min(max_codes, len(codes))
        for seed in args.fit_seeds:
            prior = _CappedPrior(components, nz, iters)
            t0 = time.perf_counter()
            prior.fit(codes, seed=seed, max_codes=max_codes)
            fit = time.perf_counter() - t0
            code_fd = float("nan") if held is None else held(prior)
            z = prior(torch.randn(args.num_samples, nz + 1, generator=torch.Generator().manual_seed(31)))
            drawn.append(z)
            m = fixed.score(sampler.decode(z).cpu())
            rows.append([fit, code_fd, m["fd"], m["precision"], m["recall"], m["mode_kl"]])
            lines.append(_row(iters, fitted, f"{components} ({prior.fitted_components})", str(seed), rows[-1]))
            print(lines[-1], flush=True)
        if len(rows) > 1:
            mean = [sum(col) / len(col) for col in zip(*rows)]
            lines.append(_row(iters, fitted, str(components), "mean", mean))
            print(lines[-1], flush=True)
        k = args.ensemble
        for g in range(len(drawn) // k if k > 1 else 0):
            pick = torch.arange(args.num_samples) % k  # sample j from fit j mod k of this group
            z = torch.stack(drawn[g * k:(g + 1) * k])[pick, torch.arange(args.num_samples)]
            m = fixed.score(sampler.decode(z).cpu())
            group = "+".join(map(str, args.fit_seeds[g * k:(g + 1) * k]))
            lines.append(_row(iters, fitted, f"{k} x {components}", f"pooled {group}",
                              [float("nan"), float("nan"), m["fd"], m["precision"], m["recall"], m["mode_kl"]]))
            print(lines[-1], flush=True)
    return emit(lines, args.out)


def _row(iters: int, codes: int, components: str, seed: str, values: list[float]) -> str:
    fit, code_fd, fd, precision, recall, kl = values
    cells = [f"{fit:.1f}" if fit == fit else "", f"{code_fd:.5f}" if code_fd == code_fd else ""]  # nan: not measured
    return (f"| {iters} | {codes} | {components} | {seed} | {cells[0]} | {cells[1]} | {fd:.2f} | {precision:.3f} "
            f"| {recall:.3f} | {kl:.4f} |")


if __name__ == "__main__":
    raise SystemExit(main())
