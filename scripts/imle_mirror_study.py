#!/usr/bin/env python
"""Study prototype (not part of the package): IMLE objectives that should not contract a mapper
that already samples the codes' distribution, tried from the mixture start on one run's codes.

Plain IMLE pulls each code's nearest pool sample to the code. Even at a mapper that samples the
codes' own distribution this moves the samples (each goes to the mean of the codes that chose it:
a mean shift, inwards). The "mirror" terms subtract the same pull made by the mapper's own samples
(a second draw A, detached), so the expected step is zero exactly there:

    forward (wf):  codes pull their nearest pool sample b;  A-samples push their nearest b away
    reverse (wr):  every b is pulled to its nearest code and pushed from its nearest A-sample
    far (wq):      only the codes whose nearest sample lies above this quantile of distances pull
    phi:           the distance law of every pull and push (sq: squared, lin, log)

Each variant trains for --seconds (after the mixture's fit, cached in RUN/prior_<K>c_seed<S>.pt) and is
scored by the domain protocol (5,000 samples against 5,000 test images), with latent spreads:
own = nearest-neighbour distance within 10,000 samples against 10,000 others, c->s / s->c between
20,000 training codes and 20,000 samples.

    python scripts/imle_mirror_study.py runs/s19/glann_s0 --seconds 150 "wf=0" "wf=1,wr=1" "wq=0.5" "lr=0.0001"
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _variants import load_fixed_run

from glann.checkpoints import load_checkpoint, save_checkpoint
from glann.imle_pool import map_noise
from glann.knn import nearest
from glann.nets import build_mapper, sphere
from glann.sampler import Sampler

DISTANCE = {  # phi: the per-row distance law, averaged over a batch
    "sq": lambda a, b: F.mse_loss(a, b),
    "lin": lambda a, b: ((a - b).pow(2).sum(1) + 1e-6).sqrt().mean(),
    "log": lambda a, b: ((a - b).pow(2).sum(1) + 1e-4).log().mean() / 2,
}


def nn1(queries: torch.Tensor, database: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d2, i = nearest(queries, database, k=1, backend="torch")
    return d2[:, 0].clamp_min(0).sqrt(), i[:, 0]


def train(codes, T, seconds: float, lr=0.01, bs=128, wf=0.0, wr=0.0, wq=0.0, phi="sq", seed=0):
    """IMLE on the sphere with the mirror terms; Adam as glann's IMLE (betas 0.5, 0.999), lr held."""
    dist, g = DISTANCE[phi], torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(T.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=1e-5)
    n, t0, epoch = len(codes), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        T.train()
        noise = torch.randn(n, T.noise_dim, generator=g)
        pool = sphere(map_noise(T, noise))
        d_code, m_code = nn1(codes, pool)
        info = {"nn": d_code.mean().item()}
        active = d_code >= torch.quantile(d_code, wq) if wq else torch.ones(n, dtype=torch.bool)
        if wf or wr:
            mirror = sphere(map_noise(T, torch.randn(n, T.noise_dim, generator=g)))
        if wf:
            d, m_mirror = nn1(mirror, pool)
            info["mirror_nn"] = d.mean().item()
        if wr:
            d, b_code = nn1(pool, codes)
            info["pool->codes"] = d.mean().item()
            _, b_mirror = nn1(pool, mirror)
        perms = [torch.randperm(n, generator=g) for _ in range(3)]
        for s in range(n // bs):
            rows = [perms[k][s * bs:(s + 1) * bs] for k in range(3)]
            take = [m_code[rows[0]]] + ([m_mirror[rows[1]]] if wf else []) + ([rows[2]] if wr else [])
            out = sphere(T(noise[torch.cat(take)])).split(bs)
            act = active[rows[0]].float()
            loss = ((out[0] - codes[rows[0]]).pow(2).mean(1) * act).sum() / act.sum().clamp_min(1) if wq \
                else dist(out[0], codes[rows[0]])
            if wf:
                loss = loss - wf * dist(out[1], mirror[rows[1]])
            if wr:
                b = out[-1]
                loss = loss + wr * (dist(b, codes[b_code[rows[2]]]) - dist(b, mirror[b_mirror[rows[2]]]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(epoch, {k: round(v, 4) for k, v in info.items()}, f"{time.perf_counter() - t0:.0f} s", flush=True)
        epoch += 1
    return T.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("variants", nargs="+", help="key=value,... of lr, bs, wf, wr, wq, phi, epochs=0 (the start)")
    p.add_argument("--seconds", type=float, default=150.0)
    args = p.parse_args()
    run = Path(args.run)
    fixed = load_fixed_run(run, 5000)
    cfg, codes, G = fixed.cfg, fixed.codes, fixed.generator
    start = build_mapper(cfg)  # model.mapper_prior=mixture: fitted once, cached beside the run
    cache = run / f"prior_{start.prior.components}c_seed{cfg.seed}.pt"  # (not a checkpoint of the run)
    if cache.exists():
        start.prior.load_state_dict(load_checkpoint(cache))
    else:
        start.prior.fit(codes, seed=cfg.seed)
        save_checkpoint(start.prior.state_dict(), cache)
    held = codes[torch.randperm(len(codes), generator=torch.Generator().manual_seed(5))[:20000]]
    spread = lambda a, b: nn1(a, b)[0].mean().item()  # noqa: E731
    for spec in args.variants:
        kv = dict(x.split("=") for x in spec.split(",") if x)
        torch.manual_seed(1)
        T = copy.deepcopy(start)
        seconds = 0.0 if kv.get("epochs") == "0" else args.seconds
        T = train(codes, T, seconds, lr=float(kv.get("lr", 0.01)), bs=int(kv.get("bs", 128)),
                  wf=float(kv.get("wf", 0)), wr=float(kv.get("wr", 0)), wq=float(kv.get("wq", 0)),
                  phi=kv.get("phi", "sq")) if seconds else T.eval()
        with torch.no_grad():
            z = sphere(T(torch.randn(20000, T.noise_dim, generator=torch.Generator().manual_seed(3))))
        lat = {"own": spread(z[:10000], z[10000:]), "codes own": spread(held[:10000], held[10000:]),
               "c->s": spread(held, z), "s->c": spread(z, codes)}
        m = fixed.score(Sampler(G, T, cfg, "cpu").sample(5000, seed=0))
        print("RESULT", spec, json.dumps({k: round(m[k], 4) for k in ("fd", "precision", "recall", "mode_kl")}),
              {k: round(v, 3) for k, v in lat.items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
