#!/usr/bin/env python
"""How well a GLANN run's IMLE mapper fits its GLO codes, in the latent space.

IMLE pulls, for every data code, its nearest mapped sample towards it (data -> sample); nothing
pulls a mapped sample that is no code's nearest. So it is worth measuring both directions:
data -> sample (recall: every code has a sample near it) and sample -> data (precision: every
sample lies near some code). For 2-D mixture runs (ring8, grid25) it also gives the share of
generated points within 3 std of a mode for samples by their distance to the nearest code, and
for GLO codes with Gaussian noise added: how far from a code the generator stays precise.

    python scripts/latent_fit.py runs/ring8 [--samples 5000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from glann import Sampler
from glann.config import MIXTURES
from glann.data import mixture_spec
from glann.nets import sphere
from glann.checkpoints import load_checkpoint


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished GLANN run directory")
    p.add_argument("--samples", type=int, default=5000, help="mapped samples and codes compared (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run = Path(args.run)
    s = Sampler.from_pretrained(run, device="cpu")
    if s.mapper is None:
        sys.exit(f"{run} is a GAN run: it has no mapper and no codes")
    codes = sphere(load_checkpoint(run / "checkpoints" / "glo.pt")["codes"]["weight"].float())
    g = torch.Generator().manual_seed(args.seed)
    codes = codes[torch.randperm(len(codes), generator=g)[: args.samples]]
    z = s.latents(args.samples, seed=args.seed)  # T(e) on the sphere, as the sampler feeds G
    data_to_sample = torch.cdist(codes, z).min(1).values
    sample_to_data = torch.cdist(z, codes).min(1).values
    q = torch.tensor([0.25, 0.5, 0.75])
    print(f"run {run} ({s.cfg.data.source}), {args.samples} codes and mapped samples, nz {s.generator.nz}")
    print("| direction | distance quartiles (unit sphere) |\n| --- | --- |")
    for name, d in [("data -> nearest sample (IMLE's objective)", data_to_sample),
                    ("sample -> nearest data code", sample_to_data)]:
        print(f"| {name} | {', '.join(f'{v:.3f}' for v in d.quantile(q).tolist())} |")
    if s.cfg.data.source in MIXTURES:
        centres, std = mixture_spec(s.cfg.data.source)

        def hq(x: torch.Tensor) -> float:
            return (torch.cdist(x, centres).min(1).values < 3 * std).float().mean().item()

        x = s.decode(z)
        print("\n| points | high-quality share (within 3 std of a mode) |\n| --- | ---: |")
        print(f"| G(data codes) | {hq(s.decode(codes)):.3f} |")
        print(f"| G(mapped samples), all | {hq(x):.3f} |")
        for qq, t in zip(q.tolist(), sample_to_data.quantile(q).tolist()):
            print(f"| G(mapped samples) within {t:.3f} of a code (quartile {qq:g}) | {hq(x[sample_to_data <= t]):.3f} |")
        for eps in (0.01, 0.03, 0.1):
            noisy = sphere(codes + eps * torch.randn(codes.shape, generator=g))
            print(f"| G(data codes + N(0, {eps}^2) noise) | {hq(s.decode(noisy)):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
