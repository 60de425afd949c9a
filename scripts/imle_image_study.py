#!/usr/bin/env python
"""IMLE in image space on fixed GLO codes (a study prototype, not part of the package).

Latent IMLE matches each GLO code to its nearest mapped sample and pulls the sample's latent
towards the code; the earlier sittings (benchmarks/imle_study_cpu.md) found that this latent
objective moves the mixture start to latents that decode to *worse* images. Here the match and
the pull are in the generator's output space instead, as in Li & Malik's original IMLE: each
training image's nearest generated image G(sphere(T(e))) among a pool, and the mapper trained
(generator frozen) to bring that image towards it under the GLO loss (lap1). The mapper starts as
the mixture sampler (model.mapper_prior=mixture, f's last layer zero), and "f x 0" rows score that
start on the same noise and reference as the trained mappers.

    python scripts/imle_image_study.py RUN --seconds 60 "image:lr=0.0001" "block_ot:match=ot,target=code,lr=0.0001"

Results: benchmarks/imle_study_cpu.md, nineteenth sitting.

Variant fields (NAME:key=value,key=value): lr (1e-3), q (data images per refresh, 8192), pool
(pool samples per data image, 1), batch (128), match (image: nearest in pixels; latent: the
image's own code's nearest sample; ot: an exact one-to-one assignment of codes and samples within
random blocks of `block`, 1024), target (image: the training image; recon: its reconstruction
G(z_i); code: its code, regressed on the sphere as latent IMLE does).
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from _variants import brief, emit, load_fixed_run, metric_cells

from glann.config import config_from_dict
from glann.data import load_dataset
from glann.images import to_model
from glann.knn import nearest
from glann.losses import Lap1Loss
from glann.nets import build_mapper, sphere
from glann.sampler import Sampler
from omegaconf import OmegaConf

DEFAULTS = {"lr": 1e-3, "q": 8192, "pool": 1.0, "batch": 128, "match": "image", "target": "image", "block": 1024}


def ot_blocks(codes: torch.Tensor, lat: torch.Tensor, block: int, g: torch.Generator):
    """Each code's sample under an exact one-to-one assignment (scipy's Hungarian) within random
    blocks of `block` codes and `block` samples (needs as many samples as codes)."""
    from scipy.optimize import linear_sum_assignment

    n = len(codes)
    pc, ps = torch.randperm(n, generator=g), torch.randperm(len(lat), generator=g)[:n]
    j, d2 = torch.empty(n, dtype=torch.long), torch.empty(n)
    for bc, bs in zip(pc.split(block), ps.split(block)):
        cost = torch.cdist(codes[bc], lat[bs]).pow(2)
        r, c = linear_sum_assignment(cost.numpy())
        j[bc[r]] = bs[c]
        d2[bc[r]] = cost[r, c]
    return d2[:, None], j[:, None]


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    opts = dict(DEFAULTS)
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        opts[k] = type(DEFAULTS[k])(v) if not isinstance(DEFAULTS[k], str) else v
    return name, opts


@torch.no_grad()
def decode(G, T, noise: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    lat = torch.cat([sphere(T(e)) for e in noise.split(chunk)])
    return lat, torch.cat([G(z) for z in lat.split(chunk)])


def train(G, T, x: torch.Tensor, codes: torch.Tensor, o: dict, seconds: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(T.net.parameters(), lr=o["lr"])
    loss_fn = Lap1Loss(x.shape[1])
    t0, rounds, steps, nn_d, losses = time.perf_counter(), 0, 0, [], []
    while time.perf_counter() - t0 < seconds:
        T.eval()  # no batch norm in f by default; eval keeps a mapper with it deterministic in the pool
        idx = torch.randperm(len(x), generator=g)[:o["q"]]
        m = int(o["pool"] * len(idx))
        noise = torch.randn(m, T.noise_dim, generator=g)
        lat, imgs = decode(G, T, noise)
        if o["match"] == "image":
            d2, j = nearest(x[idx].flatten(1), imgs.flatten(1))
        elif o["match"] == "ot":  # one-to-one: an exact assignment within random blocks of `block` codes and samples
            d2, j = ot_blocks(codes[idx], lat, o["block"], g)
        else:
            d2, j = nearest(codes[idx], lat)
        j = j[:, 0]
        nn_d.append(d2[:, 0].clamp_min(0).sqrt().mean().item())
        with torch.no_grad():
            target = (x[idx] if o["target"] == "image" else codes[idx] if o["target"] == "code"
                      else torch.cat([G(z) for z in codes[idx].split(2048)]))
        T.train()
        perm = torch.randperm(len(idx), generator=g)
        for b in perm.split(o["batch"]):
            z = sphere(T(noise[j[b]]))
            if o["target"] == "code":  # latent IMLE's regression (on the sphere)
                loss = torch.nn.functional.mse_loss(z, target[b])
            else:
                loss = loss_fn(G(z), target[b]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        rounds += 1
    T.eval()
    return {"rounds": rounds, "steps": steps, "nn_first": nn_d[0], "nn_last": nn_d[-1],
            "loss_last": sum(losses[-50:]) / len(losses[-50:]), "wall": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("variants", nargs="+")
    p.add_argument("--seconds", type=float, default=70.0)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--out")
    args = p.parse_args()
    run = Path(args.run)
    fixed = load_fixed_run(run, args.num_samples)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_from_dict(fixed.raw)),
                                              OmegaConf.from_dotlist(["model.mapper_prior=mixture"])))
    G, codes = fixed.generator, fixed.codes
    G.requires_grad_(False)
    x = to_model(load_dataset(cfg.data, seed=cfg.seed).images)
    assert len(x) == len(codes), (len(x), len(codes))
    torch.manual_seed(cfg.seed + 1)
    T0 = build_mapper(cfg)
    t0 = time.perf_counter()
    T0.prior.fit(codes, seed=cfg.seed)
    print(f"mixture fit {time.perf_counter() - t0:.1f} s", flush=True)
    rows = [("mixture start, f x 0", "", fixed.score(Sampler(G, T0.eval(), cfg, "cpu").sample(args.num_samples, seed=0)), {})]
    print(rows[-1][0], brief(rows[-1][2]), flush=True)
    for spec in args.variants:
        name, o = parse(spec)
        T = copy.deepcopy(T0)
        T.net.requires_grad_(True)  # Sampler froze T0
        info = train(G, T, x, codes, o, args.seconds, cfg.seed)
        m = fixed.score(Sampler(G, T, cfg, "cpu").sample(args.num_samples, seed=0))
        rows.append((name, " ".join(f"{k}={v}" for k, v in o.items() if v != DEFAULTS[k]), m, info))
        print(name, brief(m), info, flush=True)
    lines = [f"\n## Image-space IMLE on fixed codes of `{run}` ({args.seconds:g} s each; "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)\n",
             "| variant | options | rounds / steps | nn first -> last | FD | precision | recall | classes | KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, over, m, i in rows:
        rs = f"{i['rounds']} / {i['steps']}" if i else ""
        nn = f"{i['nn_first']:.3f} -> {i['nn_last']:.3f}" if i else ""
        lines.append(f"| {name} | {over} | {rs} | {nn} | {metric_cells(m)} |")
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
