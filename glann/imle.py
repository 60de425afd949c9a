"""IMLE stage (Li & Malik 2018): a mapper T from Gaussian noise to the latent space, trained so
that every data code has a nearby mapped sample."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .config import GlannConfig
from .devices import to_device_async
from .images import save_grid, to_unit
from .knn import nearest
from .nets import Generator, Mapper, sphere
from .distributed import current as current_dist
from .errors import TrainingError
from .runs import CHECK_EVERY, Budget, Cosine, LossTracker, Run, keep_configured_lr, step_scheduler

SAMPLE_BATCH = 16384  # mapped samples per no-grad forward when drawing the candidate pool
RS_NEIGHBOURS = 8  # RS-IMLE: neighbours searched per code, to find rejected samples and a kept match


@dataclass
class IMLEResult:
    mapper: Mapper
    nn_distances: list[float] = field(default_factory=list)  # mean data -> sample NN distance per refresh
    epoch_seconds: list[float] = field(default_factory=list)
    knn_seconds: list[float] = field(default_factory=list)  # the search alone, per refresh


def build_mapper(cfg: GlannConfig) -> Mapper:
    return Mapper(cfg.model.noise_dim, cfg.model.nz, cfg.model.mapper_hidden, cfg.model.mapper_batch_norm)


@torch.no_grad()
def map_noise(mapper: Mapper, noise: torch.Tensor) -> torch.Tensor:
    """T(noise) in near-equal chunks of at most SAMPLE_BATCH rows. Equal, not SAMPLE_BATCH and a
    remainder: in train mode batch norm takes each chunk's statistics, and a last chunk of a
    few rows would get degenerate ones (one row is an error)."""
    return torch.cat([mapper(chunk) for chunk in noise.tensor_split(-(-len(noise) // SAMPLE_BATCH) or 1)])


def draw_pool(mapper: Mapper, m: int, noise_dim: int, rng: torch.Generator,
              device: torch.device, on_sphere: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """m noise vectors and their mapped samples (no grad). Under torchrun each rank draws
    ceil(m / world) and all ranks all-gather them (m x (noise_dim + nz) floats: small),
    so every rank holds the same pool in rank order. on_sphere: the samples projected to the
    unit sphere, as the generator sees them (imle.sphere)."""
    d = current_dist()
    noise = to_device_async(torch.randn(-(-m // d.world), noise_dim, generator=rng), device)
    samples = map_noise(mapper, noise)
    if on_sphere:
        samples = sphere(samples)
    return d.all_gather_cat(noise), d.all_gather_cat(samples)


@torch.no_grad()
def match_codes(codes: torch.Tensor, samples: torch.Tensor, ic, n: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Each code's match in the pool (data -> sample, IMLE Alg. 1): (matched squared distances,
    sample indices), both of len(codes), and metrics: nn_distance, the mean distance from a code to
    its nearest sample (n: the codes of every rank).

    With ic.rs_quantile (RS-IMLE), a sample within eps of any code is rejected first (the union
    over ranks under torchrun) and each code takes its nearest kept sample; eps is that quantile of
    the nearest-sample distances. The RS_NEIGHBOURS nearest found in one search usually hold a kept
    one; codes whose neighbours are all rejected are searched again among the kept samples.
    """
    d = current_dist()
    k = 1 if ic.rs_quantile is None else min(RS_NEIGHBOURS, len(samples))
    dist2, idx = nearest(codes, samples, k=k, backend=ic.knn_backend, query_batch=ic.knn_query_batch)
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
    if len(lost):
        d2, i2 = nearest(codes[lost], samples[kept], k=1, backend=ic.knn_backend, query_batch=ic.knn_query_batch)
        match[lost], md2[lost] = kept[i2[:, 0]], d2[:, 0].clamp_min(0)
    metrics.update(rs_eps=eps2 ** 0.5, rs_rejected=float(rejected.float().mean()),
                   rs_matched_distance=d.sum(md2.sqrt().sum().item()) / n)
    return md2, match, metrics


def epoch_seconds_estimate(n: int, cfg: GlannConfig, device: torch.device) -> float:
    """Seconds one IMLE epoch takes on n codes here, measured by a probe of a few seconds at most:
    the pool draw and search on a slice of random codes, and a few mapper steps, scaled up.
    Used to split a whole-method time budget (max_seconds) before GLO has made the codes."""
    ic, nz = cfg.imle, cfg.model.nz
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    m = math.ceil(ic.samples_per_point * n)
    q = min(n, 16384 if device.type == "cuda" else 1024)
    g = torch.Generator().manual_seed(0)
    T = build_mapper(cfg).to(device)
    codes = torch.randn(q, nz, generator=g).to(device)
    rng = torch.Generator().manual_seed(1)
    sync()
    t0 = time.perf_counter()
    _, samples = draw_pool(T, m, cfg.model.noise_dim, rng, device, ic.sphere)
    sync()
    t1 = time.perf_counter()
    match_codes(codes, samples, ic, q)
    sync()
    t2 = time.perf_counter()
    opt = torch.optim.Adam(T.parameters(), lr=ic.lr)
    batch, probe = max(2, min(ic.batch_size, n)), 20
    noise = torch.randn(batch, cfg.model.noise_dim, generator=g).to(device)
    target = codes[:batch] if batch <= q else torch.randn(batch, nz, generator=g).to(device)
    for _ in range(probe):
        loss = F.mse_loss(T(noise), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    t3 = time.perf_counter()
    both = 2 if ic.precision_weight > 0 else 1  # precision_weight: a second search and forward of the same size
    refresh = (t1 - t0) + both * (t2 - t1) * n / q
    return refresh / ic.refresh_every + both * (t3 - t2) / probe * (n // batch)


def train_imle(codes: torch.Tensor, cfg: GlannConfig, run: Optional[Run] = None,
               generator: Optional[Generator] = None, codes_epoch: Optional[int] = None) -> IMLEResult:
    """Train the mapper on data codes (float N x nz on the training device).

    `generator`, when given, is used only to draw sample grids. Resumes from run's IMLE checkpoint;
    `codes_epoch` (the GLO epochs behind `codes`) is recorded in it, so a resume can tell stale ones.
    Under torchrun `codes` is this rank's shard: the ranks share one pool of mapped samples and
    each searches it for its own codes.
    """
    device, n_local = codes.device, codes.shape[0]
    d = current_dist()
    n = int(d.sum(n_local))
    ic = cfg.imle
    torch.manual_seed(cfg.seed + 1)
    rng = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * d.rank)
    T = build_mapper(cfg).to(device)
    T_train = DDP(T) if d.active else T
    opt = torch.optim.Adam(T.parameters(), lr=ic.lr, betas=(ic.beta1, ic.beta2), weight_decay=ic.weight_decay)
    sched = step_scheduler(opt, ic.schedule, ic.decay_every, ic.decay_rate)
    state = {"mapper": T, "opt": opt, "sched": sched}
    start, extra = run.load_stage("imle", state, rng, device) if run else (0, {})
    if start:
        keep_configured_lr(opt, ic.lr, sched)
    noise, match = extra.get("noise"), extra.get("match")  # the pool in use when the checkpoint was taken
    back = extra.get("back")  # imle.precision_weight: each pool sample's nearest code
    budget = Budget(ic.max_seconds, extra)
    if match is not None and d.active:
        match = match[d.shard(n, device)]  # checkpoints hold every code's match in global order

    m = math.ceil(ic.samples_per_point * n)
    batch = max(1, min(ic.batch_size, n) // d.world)  # per rank; the global batch stays imle.batch_size
    steps = (n // d.world) // batch
    nn_distances: list[float] = []
    epoch_seconds: list[float] = []
    knn_seconds: list[float] = []
    grid_noise = torch.randn(cfg.grid_size, cfg.model.noise_dim,
                             generator=torch.Generator().manual_seed(cfg.seed + 2)).to(device)
    fd_check = None  # the training-time domain FD (cfg.eval), built on first use
    cosine = Cosine(ic.schedule, [(opt, ic.lr)], ic.epochs, steps)
    cosine.time_share = budget.fraction(in_epoch=False)

    stop = budget.exhausted(in_epoch=False)  # a resumed run whose time is already spent
    epochs = tqdm(range(start, ic.epochs), desc="IMLE", unit="epoch", initial=start, total=ic.epochs)
    for epoch in epochs:
        if stop:
            break
        T.train()
        budget.start_epoch()
        t0 = time.perf_counter()
        metrics = {}
        if epoch % ic.refresh_every == 0 or match is None or (ic.precision_weight > 0 and back is None):
            # Data -> sample direction (IMLE Alg. 1): every code picks its nearest of m mapped samples.
            noise, samples = draw_pool(T, m, cfg.model.noise_dim, rng, device, ic.sphere)
            if not bool(torch.isfinite(samples).all()):  # one check per refresh; the search needs finite rows
                raise TrainingError(f"IMLE epoch {epoch}: the mapper's samples are NaN or infinite; lower imle.lr "
                                    f"and resume from the last checkpoint")
            t_knn = time.perf_counter()
            _, match, found = match_codes(codes, samples, ic, n)
            if ic.precision_weight > 0:  # sample -> data: each pool sample's nearest code
                back_d2, back = nearest(samples, codes, k=1, backend=ic.knn_backend, query_batch=ic.knn_query_batch)
                back = back[:, 0]
                found["sample_nn_distance"] = back_d2[:, 0].clamp_min(0).sqrt().mean().item()
            nn_distances.append(found["nn_distance"])
            knn_seconds.append(time.perf_counter() - t_knn)
            metrics.update(found, knn_seconds=knn_seconds[-1])
        perm = to_device_async(torch.randperm(n_local, generator=rng), device)
        if ic.precision_weight > 0:
            pool_perm = to_device_async(torch.randperm(len(noise), generator=rng), device)
            pool_batch = max(1, len(noise) // steps)
        tracker = LossTracker("IMLE", epoch, run, device, cfg.skip_nonfinite)
        bar = tqdm(range(steps), desc=f"IMLE epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
        for step in bar:
            cosine.set(epoch, step)
            idx = perm[step * batch:(step + 1) * batch]
            out = T_train(noise[match[idx]])
            loss = F.mse_loss(sphere(out) if ic.sphere else out, codes[idx])
            if ic.precision_weight > 0:  # pull pool samples towards their nearest codes too
                j = pool_perm[step * pool_batch:(step + 1) * pool_batch]
                out_s = T_train(noise[j])
                loss = loss + ic.precision_weight * F.mse_loss(sphere(out_s) if ic.sphere else out_s, codes[back[j]])
            if not tracker.add(loss, step):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % CHECK_EVERY == 0:
                bar.set_postfix(loss=f"{tracker.flush():.5f}")
                cosine.time_share = budget.fraction()
                if cosine.time_share >= 1.0:
                    break  # the budget ends mid-epoch: close this epoch and stop
        stop = budget.end_epoch("IMLE", epoch, ic.epochs)  # agreed by every rank: the last epoch of the budget
        cosine.time_share = budget.fraction(in_epoch=False)
        sched.step()
        mean = d.sum(tracker.flush()) / d.world
        epoch_seconds.append(time.perf_counter() - t0)
        epochs.set_postfix(loss=f"{mean:.5f}", nn=f"{nn_distances[-1]:.4f}" if nn_distances else "")
        if run and run.is_main and generator is not None and cfg.eval.every and (epoch + 1) % cfg.eval.every == 0:
            from .evaluate.training import DomainFDCheck  # late: evaluate imports the sampler, which imports us

            fd_check = fd_check or DomainFDCheck(cfg, device)  # built once: data, classifier, reference features
            metrics["domain_fd"] = fd_check(generator, T)
        if run:
            run.log("imle", epoch, loss=mean, skipped_batches=tracker.skipped, lr=opt.param_groups[0]["lr"],
                    epoch_seconds=epoch_seconds[-1], seconds=budget.spent, **metrics)
            if run.is_main and generator is not None and ((epoch + 1) % cfg.sample_every == 0 or epoch + 1 == ic.epochs
                                                          or stop):
                T.eval()
                with torch.no_grad():
                    save_grid(to_unit(generator.eval()(T(grid_noise))), run.sample_path(f"imle_samples_epoch{epoch:04d}"))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == ic.epochs or stop:
                run.save_stage("imle", epoch, state, rng,
                               extra={"noise": noise, "match": d.gather_rows(match, n), **budget.state(),
                                      **({"back": back} if back is not None else {}),
                                      **({"codes_epoch": torch.tensor(codes_epoch)} if codes_epoch is not None else {})})
    T.eval()
    return IMLEResult(T, nn_distances, epoch_seconds, knn_seconds)
