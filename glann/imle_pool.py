"""IMLE's candidate pool and its match: mapped samples drawn from the mapper (the pool, shared by
every rank under torchrun) and each data code's nearest pool sample (data -> sample, IMLE Alg. 1),
with the rejection step of RS-IMLE. The training loop that uses them is `glann.imle`."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .devices import to_device_async
from .distributed import current as current_dist
from .knn import nearest, nearest_within
from .nets import Mapper, sphere

SAMPLE_BATCH = 16384  # mapped samples per no-grad forward when drawing the candidate pool
RS_NEIGHBOURS = 8  # RS-IMLE: neighbours searched per code, to find rejected samples and a kept match


@torch.no_grad()
def map_noise(mapper: Mapper, noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """T(noise) (conditional mapper: T(noise, labels)) in near-equal chunks of at most SAMPLE_BATCH
    rows. Equal, not SAMPLE_BATCH and a remainder: in train mode batch norm takes each chunk's
    statistics, and a last chunk of a few rows would get degenerate ones (one row is an error)."""
    chunks = -(-len(noise) // SAMPLE_BATCH) or 1
    if labels is None:
        return torch.cat([mapper(chunk) for chunk in noise.tensor_split(chunks)])
    return torch.cat([mapper(e, y) for e, y in zip(noise.tensor_split(chunks), labels.tensor_split(chunks))])


def pool_labels(class_counts: list[int], samples_per_point: float, world: int = 1) -> torch.Tensor:
    """Conditional IMLE's pool, by class: ceil(samples_per_point x n_c) samples of each class c
    (the largest classes take one more each until the pool splits evenly over `world` ranks).
    Returns the pool's labels in order (int64, on the CPU); every rank computes the same."""
    counts = torch.tensor([math.ceil(samples_per_point * n) for n in class_counts])
    pad = -int(counts.sum()) % world
    counts += pad // len(counts)  # more ranks than classes: every class takes some
    counts[torch.argsort(torch.tensor(class_counts), descending=True, stable=True)[:pad % len(counts)]] += 1
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def draw_pool(mapper: Mapper, m: int, rng: torch.Generator,
              device: torch.device, on_sphere: bool = False,
              labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """m noise vectors (of mapper.noise_dim) and their mapped samples (no grad). Under torchrun each
    rank draws ceil(m / world) and all ranks all-gather them (m x (noise_dim + nz) floats: small),
    so every rank holds the same pool in rank order. on_sphere: the samples projected to the
    unit sphere, as the generator sees them (imle.sphere). labels (conditional IMLE: the whole
    pool's, `pool_labels`; m is then its length): rank r maps the r-th contiguous part of them."""
    d = current_dist()
    mine = None if labels is None else labels.view(d.world, -1)[d.rank].to(device)
    rows = -(-m // d.world) if mine is None else len(mine)
    noise = to_device_async(torch.randn(rows, mapper.noise_dim, generator=rng), device)
    if mine is None:
        samples = map_noise(mapper, noise)
    else:  # mapped in a random order: in train mode each chunk's batch-norm statistics must span the
        # classes, not the one or two classes a chunk of the class-ordered pool holds
        order = to_device_async(torch.randperm(rows, generator=rng), device)
        samples = torch.empty(rows, mapper.nz, device=device)
        samples[order] = map_noise(mapper, noise[order], mine[order])
    if on_sphere:
        samples = sphere(samples)
    return d.all_gather_cat(noise), d.all_gather_cat(samples)


def search(queries: torch.Tensor, database: torch.Tensor, ic, k: int = 1, query_labels: Optional[torch.Tensor] = None,
           database_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IMLE's exact k-NN (imle.knn_backend): among all database rows, or with labels (conditional
    IMLE) among the rows of each query's own class only."""
    if query_labels is None:
        return nearest(queries, database, k=k, backend=ic.knn_backend, query_batch=ic.knn_query_batch)
    return nearest_within(queries, query_labels, database, database_labels, k=k, backend=ic.knn_backend,
                          query_batch=ic.knn_query_batch)


@torch.no_grad()
def match_codes(codes: torch.Tensor, samples: torch.Tensor, ic, n: int, labels: Optional[torch.Tensor] = None,
                sample_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Each code's match in the pool (data -> sample, IMLE Alg. 1): (matched squared distances,
    sample indices), both of len(codes), and metrics: nn_distance, the mean distance from a code to
    its nearest sample (n: the codes of every rank). With labels (the codes') and sample_labels
    (the pool's), conditional IMLE: a code is matched only among the samples of its class.

    With ic.rs_quantile (RS-IMLE), a sample within eps of any code is rejected first (the union
    over ranks under torchrun) and each code takes its nearest kept sample; eps is that quantile of
    the nearest-sample distances. The RS_NEIGHBOURS nearest found in one search usually hold a kept
    one; codes whose neighbours are all rejected are searched again among the kept samples.
    """
    d = current_dist()
    smallest = len(samples) if sample_labels is None else int(torch.bincount(sample_labels).min())
    k = 1 if ic.rs_quantile is None else min(RS_NEIGHBOURS, smallest)
    dist2, idx = search(codes, samples, ic, k, labels, sample_labels)
    dist2 = dist2.clamp_min(0)
    metrics = {"nn_distance": d.sum(dist2[:, 0].sqrt().sum().item()) / n}
    if ic.rs_quantile is None:
        return dist2[:, 0], idx[:, 0], metrics
    eps2 = d.sum(torch.quantile(dist2[:, 0].float(), ic.rs_quantile).item()) / d.world
    rejected = torch.zeros(len(samples), device=samples.device)
    rejected[idx[dist2 < eps2]] = 1.0
    rejected = d.all_gather_cat(rejected.unsqueeze(0)).amax(0) > 0
    kept = (~rejected).nonzero()[:, 0]
    if len(kept) == 0:  # eps so large that nothing is left: plain IMLE this refresh
        return dist2[:, 0], idx[:, 0], {**metrics, "rs_rejected": 1.0}
    ok = ~rejected[idx]
    first = ok.float().argmax(1, keepdim=True)  # the nearest kept one among the k
    match, md2 = idx.gather(1, first)[:, 0], dist2.gather(1, first)[:, 0]
    lost = (~ok.any(1)).nonzero()[:, 0]
    if labels is not None:  # a class whose samples were all rejected keeps its nearest rejected ones
        has_kept = torch.zeros(int(sample_labels.max()) + 1, dtype=torch.bool, device=samples.device)
        has_kept[sample_labels[kept]] = True
        lost = lost[has_kept[labels[lost]]]
    if len(lost):
        d2, i2 = search(codes[lost], samples[kept], ic, 1, None if labels is None else labels[lost],
                        None if labels is None else sample_labels[kept])
        match[lost], md2[lost] = kept[i2[:, 0]], d2[:, 0].clamp_min(0)
    metrics.update(rs_eps=eps2 ** 0.5, rs_rejected=float(rejected.float().mean()),
                   rs_matched_distance=d.sum(md2.sqrt().sum().item()) / n)
    return md2, match, metrics
