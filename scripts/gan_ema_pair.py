"""Export the trained generator of a GAN run with `gan.ema` next to it, so both can be scored.

A run trained with `gan.ema=D` exports the moving average of its generator; training itself is
the same as without it, so the trained generator in its checkpoint *is* the plain run's. This
writes that one as a sampleable run `RUN_trained` (its config says gan.ema=0), which gives a paired
comparison of the average against no average at no extra training:

    python scripts/gan_ema_pair.py runs/s36/dcgan_ema_s0
    python scripts/eval_seeds.py runs/s36/dcgan_ema_s0 runs/s36/dcgan_ema_s0_trained --seeds 0 1 2 3 4 --out ...
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from glann import Sampler
from glann.checkpoints import checkpoint_file, load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished GAN run trained with gan.ema > 0")
    ap.add_argument("--force", action="store_true", help="replace an existing RUN_trained")
    args = ap.parse_args()
    averaged = Sampler.from_pretrained(args.run, device="cpu")
    if averaged.cfg.method != "gan" or not averaged.cfg.gan.ema:
        raise SystemExit(f"{args.run} is not a GAN run with gan.ema > 0: nothing to pair")
    G = averaged.generator
    G.load_state_dict(load_checkpoint(checkpoint_file(args.run, "gan"), map_location="cpu")["generator"])
    cfg = dataclasses.replace(averaged.cfg, gan=dataclasses.replace(averaged.cfg.gan, ema=0.0))
    out = args.run.with_name(args.run.name + "_trained")
    if out.exists():
        if not args.force:
            raise SystemExit(f"{out} exists; pass --force to replace it")
        shutil.rmtree(out)
    Sampler(G, None, cfg).save_pretrained(out)
    print(f"wrote {out}: the trained generator of {args.run} (the export there is its moving average)")


if __name__ == "__main__":
    main()
