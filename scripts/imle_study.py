#!/usr/bin/env python
"""IMLE levers on fixed GLO codes: each variant trains a mapper for the same wall-clock on one
run's codes and generator, and is scored by the domain protocol against the test split, beside
the latent baselines (reconstructions, one Gaussian, a Gaussian mixture) on the same codes.

    python scripts/imle_study.py RUN --seconds 120 --variant base: \
        --variant lr3x:imle.lr=0.003 --variant rs:imle.rs_quantile=0.1 --out benchmarks/imle_study.md

RUN is a GLANN run directory whose checkpoints/glo.pt holds the codes (IMLE need not have run).
Every variant starts from the same seed; one process, one variant at a time.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from _variants import brief, emit, load_fixed_run, metric_cells, parse_variant

from glann.config import config_from_dict
from glann.evaluate.latent import baseline_images
from glann.evaluate.suite import evaluate
from glann.imle import train_imle
from glann.knn import nearest
from glann.nets import sphere
from glann.sampler import Sampler
from omegaconf import OmegaConf


def scaled_residual(mapper: torch.nn.Module, scale: float, n: int = 5000) -> tuple[torch.nn.Module, float]:
    """A copy of a mixture-start mapper, p + f(p), whose residual is scale * f (f's last layer is
    linear with no bias, so scaling its weight scales f), and the mean |scale * f(p)| over n draws of
    its own (a fixed seed, not the scored samples' draws)."""
    T = copy.deepcopy(mapper).eval()
    with torch.no_grad():
        T.net[-1].weight.mul_(scale)
        e = torch.randn(n, T.noise_dim, generator=torch.Generator().manual_seed(1))
        move = (T(e) - T.prior(e[:, :T.nz + 1])).norm(dim=1).mean().item()
    return T, move


@torch.no_grad()
def own_spread(mapper: torch.nn.Module, n: int = 10000) -> float:
    """Mean distance from each of n mapped samples (on the unit sphere, as the generator sees them) to
    the nearest other one: how spread out the sampler is (the codes' own, at the same n, for scale)."""
    mapper.eval()
    z = sphere(mapper(torch.randn(n, mapper.noise_dim, generator=torch.Generator().manual_seed(2))))
    d2, _ = nearest(z, z, k=2)
    return d2[:, 1].clamp_min(0).sqrt().mean().item()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--seconds", type=float, default=120.0, help="IMLE training seconds per variant")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value;key=value (empty: defaults)")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--baselines", action="store_true", help="also score the latent baselines once")
    p.add_argument("--out", help="append the table (Markdown) to this file")
    p.add_argument("--step-scales", default="", metavar="A,B,...",
                   help="mixture start only: also score each trained mapper with its learnt residual f scaled by "
                        "these factors (0: the untrained mixture, 1: as trained), to see where along IMLE's step "
                        "the images are best")
    p.add_argument("--score-last", action="store_true",
                   help="with imle.keep_best: score each variant's last mapper, not the one keep_best would export "
                        "(the held-out code FDs are still recorded and shown)")
    args = p.parse_args()
    if args.score_last:
        import glann.imle

        glann.imle._keep_best = lambda s, result: None  # train_imle then returns the last epoch's mapper
    run = Path(args.run)
    fixed = load_fixed_run(run, args.num_samples)
    base_cfg, cfg0, codes, G = fixed.raw, fixed.cfg, fixed.codes, fixed.generator
    reference, clf = fixed.reference, fixed.classifier
    rows = []
    if args.baselines:
        s = Sampler(G, None, cfg0, "cpu")
        images, _ = baseline_images(s, codes, args.num_samples)
        r = evaluate(images.pop("reconstructions"), reference, "domain", classifier=clf, baselines=images,
                     num_samples=args.num_samples)
        g = torch.Generator().manual_seed(2)
        some = sphere(codes[torch.randperm(len(codes), generator=g)[:10000]])
        d2, _ = nearest(some, some, k=2)  # the codes' own spread, for scale
        rows.append(("reconstructions", "", r["metrics"], {"spread": d2[:, 1].clamp_min(0).sqrt().mean().item()}))
        for name, m in r["baselines"].items():
            rows.append((name, "", m, {}))
    for spec in args.variant or ["base:"]:
        name, overrides = parse_variant(spec)
        # clusters=K (not a config key): k-means of the codes (no labels), then conditional IMLE on
        # the cluster ids, each cluster drawn in its share of the codes when sampling.
        clusters = next((int(o.partition("=")[2]) for o in overrides if o.startswith("clusters=")), 0)
        overrides = [o for o in overrides if not o.startswith("clusters=")]
        labels, t_km = None, 0.0
        if clusters:
            from sklearn.cluster import KMeans

            t0 = time.perf_counter()
            labels = torch.from_numpy(KMeans(clusters, n_init=1, random_state=0).fit_predict(codes.numpy())).long()
            t_km = time.perf_counter() - t0
            overrides += ["imle.conditional=true", "model.mapper_prior=gaussian", f"model.class_counts={torch.bincount(labels).tolist()}"]
        cfg = config_from_dict(base_cfg)
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(
            [f"imle.max_seconds={args.seconds}", "imle.epochs=100000"] + overrides))
        cfg = OmegaConf.to_object(merged)
        t0 = time.perf_counter()
        res = train_imle(codes, cfg, labels=labels)
        wall = time.perf_counter() - t0
        sampler = Sampler(G, res.mapper, cfg, "cpu")
        # Images, not the sampler: a cluster-conditional sampler's "classes" are clusters, not labels.
        m = fixed.score(sampler.sample(args.num_samples, seed=0))
        nn = res.nn_distances or [float("nan")]  # no epoch: a mixture prior's fit took the whole time
        info = {"epochs": len(res.epoch_seconds), "wall": wall, "nn_first": nn[0], "nn_last": nn[-1],
                "kmeans_seconds": t_km, "spread": own_spread(res.mapper), "holdout": res.holdout_fds,
                "kept": res.kept_epoch}
        rows.append((name, " ".join(o for o in overrides if not o.startswith("model.class_counts"))
                     + (f" clusters={clusters} (k-means {t_km:.0f} s)" if clusters else ""), m, info))
        print(name, json.dumps({k: m[k] for k in ("fd", "precision", "recall", "classes_covered", "mode_kl")}), info,
              flush=True)
        if args.step_scales and res.mapper.prior is None:
            print(f"--step-scales: variant {name} has no mixture start (model.mapper_prior=gaussian), so no "
                  "residual to scale; its step rows are left out", flush=True)
        elif args.step_scales:
            trained = m
            for a in (float(x) for x in args.step_scales.split(",")):
                T, move = scaled_residual(res.mapper, a)
                move = f"{move:.3f}, own spread {own_spread(T):.3f}"
                # x 1 is the mapper just scored (same samples, seed 0): its metrics, not a second evaluation
                m = trained if a == 1 else fixed.score(Sampler(G, T, cfg, "cpu").sample(args.num_samples, seed=0))
                rows.append((f"{name}, f x {a:g}", f"mean move of a sample {move}", m, {}))
                print(rows[-1][:2], brief(m), flush=True)
    lines = [f"\n## IMLE on fixed codes of `{run}` ({args.seconds:g} s each; {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, {args.num_samples} samples vs test, domain features)\n",
             "| variant | overrides | epochs | nn_distance first -> last | held-out code FD start -> last (best) "
             "| own spread | FD | precision | recall | classes | KL |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, over, m, info in rows:
        nn = f"{info['nn_first']:.3f} -> {info['nn_last']:.3f}" if "nn_first" in info else ""
        h = info.get("holdout") or []
        held = f"{h[0]:.5f} -> {h[-1]:.5f} ({min(h):.5f})" if h else ""
        spread = f"{info['spread']:.3f}" if info else ""
        lines.append(f"| {name} | {over} | {info.get('epochs', '')} | {nn} | {held} | {spread} | {metric_cells(m)} |")
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
