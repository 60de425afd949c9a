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
from .nets import Generator, Mapper
from .distributed import current as current_dist
from .errors import TrainingError
from .runs import CHECK_EVERY, Budget, LossTracker, Run, keep_configured_lr

SAMPLE_BATCH = 16384  # mapped samples per no-grad forward when drawing the candidate pool


@dataclass
class IMLEResult:
    mapper: Mapper
    nn_distances: list[float] = field(default_factory=list)  # mean data -> sample NN distance per refresh
    epoch_seconds: list[float] = field(default_factory=list)
    knn_seconds: list[float] = field(default_factory=list)  # the search alone, per refresh


def build_mapper(cfg: GlannConfig) -> Mapper:
    return Mapper(cfg.model.noise_dim, cfg.model.nz, cfg.model.mapper_hidden)


@torch.no_grad()
def map_noise(mapper: Mapper, noise: torch.Tensor) -> torch.Tensor:
    """T(noise) in near-equal chunks of at most SAMPLE_BATCH rows. Equal, not SAMPLE_BATCH and a
    remainder: in train mode batch norm takes each chunk's statistics, and a last chunk of a
    few rows would get degenerate ones (one row is an error)."""
    return torch.cat([mapper(chunk) for chunk in noise.tensor_split(-(-len(noise) // SAMPLE_BATCH) or 1)])


def draw_pool(mapper: Mapper, m: int, noise_dim: int, rng: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """m noise vectors and their mapped samples (no grad). Under torchrun each rank draws
    ceil(m / world) and all ranks all-gather them (m x (noise_dim + nz) floats: small),
    so every rank holds the same pool in rank order."""
    d = current_dist()
    noise = to_device_async(torch.randn(-(-m // d.world), noise_dim, generator=rng), device)
    samples = map_noise(mapper, noise)
    return d.all_gather_cat(noise), d.all_gather_cat(samples)


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
    sched = torch.optim.lr_scheduler.StepLR(opt, ic.decay_every, ic.decay_rate)
    state = {"mapper": T, "opt": opt, "sched": sched}
    start, extra = run.load_stage("imle", state, rng, device) if run else (0, {})
    if start:
        keep_configured_lr(opt, ic.lr, sched)
    noise, match = extra.get("noise"), extra.get("match")  # the pool in use when the checkpoint was taken
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

    stop = budget.exhausted(in_epoch=False)  # a resumed run whose time is already spent
    epochs = tqdm(range(start, ic.epochs), desc="IMLE", unit="epoch", initial=start, total=ic.epochs)
    for epoch in epochs:
        if stop:
            break
        T.train()
        budget.start_epoch()
        t0 = time.perf_counter()
        metrics = {}
        if epoch % ic.refresh_every == 0 or match is None:
            # Data -> sample direction (IMLE Alg. 1): every code picks its nearest of m mapped samples.
            noise, samples = draw_pool(T, m, cfg.model.noise_dim, rng, device)
            if not bool(torch.isfinite(samples).all()):  # one check per refresh; the search needs finite rows
                raise TrainingError(f"IMLE epoch {epoch}: the mapper's samples are NaN or infinite; lower imle.lr "
                                    f"and resume from the last checkpoint")
            t_knn = time.perf_counter()
            dist2, idx = nearest(codes, samples, k=1, backend=ic.knn_backend, query_batch=ic.knn_query_batch)
            match = idx[:, 0]
            nn_dist = d.sum(dist2[:, 0].clamp_min(0).sqrt().sum().item()) / n
            nn_distances.append(nn_dist)
            knn_seconds.append(time.perf_counter() - t_knn)
            metrics.update(nn_distance=nn_dist, knn_seconds=knn_seconds[-1])
        perm = to_device_async(torch.randperm(n_local, generator=rng), device)
        tracker = LossTracker("IMLE", epoch, run, device, cfg.skip_nonfinite)
        bar = tqdm(range(steps), desc=f"IMLE epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
        for step in bar:
            idx = perm[step * batch:(step + 1) * batch]
            loss = F.mse_loss(T_train(noise[match[idx]]), codes[idx])
            if not tracker.add(loss, step):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % CHECK_EVERY == 0:
                bar.set_postfix(loss=f"{tracker.flush():.5f}")
                if budget.exhausted():
                    break  # the budget ends mid-epoch: close this epoch and stop
        stop = budget.end_epoch("IMLE", epoch, ic.epochs)  # agreed by every rank: the last epoch of the budget
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
                    epoch_seconds=epoch_seconds[-1], **metrics)
            if run.is_main and generator is not None and ((epoch + 1) % cfg.sample_every == 0 or epoch + 1 == ic.epochs
                                                          or stop):
                T.eval()
                with torch.no_grad():
                    save_grid(to_unit(generator.eval()(T(grid_noise))), run.sample_path(f"imle_samples_epoch{epoch:04d}"))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == ic.epochs or stop:
                run.save_stage("imle", epoch, state, rng,
                               extra={"noise": noise, "match": d.gather_rows(match, n), **budget.state(),
                                      **({"codes_epoch": torch.tensor(codes_epoch)} if codes_epoch is not None else {})})
    T.eval()
    return IMLEResult(T, nn_distances, epoch_seconds, knn_seconds)
