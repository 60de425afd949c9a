#!/usr/bin/env python
"""Sampling temperature on one finished GLANN run: its trained mapper (and its mixture start alone)
fed noise scaled by T, scored by the domain protocol (5,000 samples against the test split).

    python scripts/temperature_study.py RUN 1.0 0.9 0.8 0.7 --out benchmarks/imle_study_cpu.md

With model.mapper_prior=mixture the mapper's noise is nz values coloured by a mixture component
and one that picks the component: T scales the nz values only (each component's spread, not the
components' shares); a plain mapper has all its noise scaled. T = 1 is how the run samples.
Prints one Markdown row per temperature and sampler: FD, precision, recall, density, coverage, KL.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _variants import emit, load_fixed_run

from glann.errors import GlannError
from glann.nets import sphere
from glann.sampler import Sampler


def tempered_noise(noise_dim: int, nz: int, mixture: bool, n: int, temperature: float, seed: int) -> torch.Tensor:
    """n rows of N(0, I) noise, the part that sets a point's place (with a mixture, not the component pick) times T."""
    e = torch.randn(n, noise_dim, generator=torch.Generator().manual_seed(seed))
    e[:, :nz if mixture else noise_dim] *= temperature
    return e


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("temperatures", nargs="+", type=float)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--out", help="append the table (Markdown) to this file")
    args = p.parse_args()
    if any(not 0 < t <= 2 for t in args.temperatures):
        p.error(f"temperatures must lie in (0, 2], got {args.temperatures}")
    if args.num_samples < 2:
        p.error(f"--num-samples must be at least 2, got {args.num_samples}")
    run = Path(args.run)
    if not (run / "model.safetensors").is_file() or not (run / "checkpoints" / "glo.pt").is_file():
        p.error(f"{run} is not a finished GLANN run (needs model.safetensors and checkpoints/glo.pt)")
    try:
        sampler = Sampler.from_pretrained(run, "cpu")
    except GlannError as exc:
        p.error(str(exc))
    mapper = sampler.mapper
    if mapper is None:
        p.error(f"{run} is not a GLANN run (no mapper); temperature applies to GLANN's sampler")
    if mapper.class_embed is not None:
        p.error(f"{run} is class-conditional (imle.conditional); this study takes unconditional runs")
    fixed = load_fixed_run(run, args.num_samples)  # the protocol's reference images and classifier
    mixture = mapper.prior is not None
    samplers = {"GLANN (mapper)": mapper}
    if mixture:
        samplers["mixture start alone"] = mapper.prior
    lines = [f"\nSampling temperature on `{run}` ({'mixture start' if mixture else 'plain mapper'}, noise seed 31)", "",
             "| sampler | T | FD | precision | recall | density | coverage | KL |", "|---|---|---|---|---|---|---|---|"]
    for name, f in samplers.items():
        for t in args.temperatures:
            e = tempered_noise(mapper.noise_dim, mapper.nz, mixture, args.num_samples, t, seed=31)
            with torch.no_grad():
                z = sphere(torch.cat([f(c) for c in e.split(4096)]))
            m = fixed.score(sampler.decode(z).cpu())
            lines.append(f"| {name} | {t:g} | {m['fd']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} "
                         f"| {m['density']:.3f} | {m['coverage']:.3f} | {m['mode_kl']:.4f} |")
            print(lines[-1], flush=True)
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
