"""IMLE stage (Li & Malik 2018): a mapper T from Gaussian noise to the latent space, trained so
that every data code has a nearby mapped sample."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .config import GlannConfig
from .devices import to_device_async
from .images import save_grid, to_unit
from .imle_pool import draw_pool, match_codes, pool_labels, search
from .nets import Generator, Mapper, build_mapper, draw_labels, grid_classes, grid_row, sphere
from .distributed import current as current_dist
from .errors import CheckpointError, DataError, TrainingError
from .evaluate.training import CodeFDCheck, DomainFDCheck
from .loop import CHECK_EVERY, Budget, Cosine, LossTracker, end_of_epoch, epoch_loop, keep_configured_lr, step_scheduler
from .runs import Run

HOLDOUT_SAMPLES = 10000  # imle.keep_best: mapped samples scored against the held-out codes


@dataclass
class IMLEResult:
    mapper: Mapper
    nn_distances: list[float] = field(default_factory=list)  # mean data -> sample NN distance per refresh
    epoch_seconds: list[float] = field(default_factory=list)
    knn_seconds: list[float] = field(default_factory=list)  # the search alone, per refresh
    holdout_fds: list[float] = field(default_factory=list)  # imle.keep_best: each epoch's score (first the start's, when scored)
    kept_epoch: Optional[int] = None  # imle.keep_best: the epoch whose mapper `mapper` is (-1: the start)


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
    counts, world = cfg.model.class_counts, current_dist().world
    # Conditional: a pool of about m laid out by class as training lays it out, every class in it.
    labels = pool_labels([math.ceil(c * m / sum(counts)) for c in counts], 1.0, world) if counts else None
    m = m if labels is None else len(labels)
    code_labels = draw_labels(counts, q, g).to(device) if counts else None
    sample_labels = None if labels is None else labels.to(device)
    opt = torch.optim.Adam(T.parameters(), lr=ic.lr)
    batch, probe, warm = max(2, min(ic.batch_size, n)), 20, 3
    noise = torch.randn(batch, T.noise_dim, generator=g).to(device)
    y = draw_labels(counts, batch, g).to(device) if counts else None
    target = codes[:batch] if batch <= q else torch.randn(batch, nz, generator=g).to(device)

    def steps(k: int) -> None:
        for _ in range(k):
            loss = F.mse_loss(T(noise, y), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Untimed warm-up: first calls pay one-off costs (thread pools, kernels, Adam's state) that the
    # scaling below would multiply by n / q and n / batch. Then each part is timed twice and the
    # faster kept (as timeit does): on a shared 2-core CPU single timings overestimated an epoch by
    # up to 2x (6.2-11.8 s planned against 5.8-6.8 s trained), and GLO lost that time.
    _, samples = draw_pool(T, m, rng, device, ic.sphere, labels)
    w = max(1, q // 8)
    match_codes(codes[:w], samples, ic, w, None if code_labels is None else code_labels[:w], sample_labels)
    steps(warm)
    draw = knn = train = math.inf  # not `search`: that name is the k-NN function imported above
    for _ in range(2):
        sync()
        t0 = time.perf_counter()
        _, samples = draw_pool(T, m, rng, device, ic.sphere, labels)
        sync()
        t1 = time.perf_counter()
        match_codes(codes, samples, ic, q, code_labels, sample_labels)
        sync()
        t2 = time.perf_counter()
        steps(probe // 2)
        sync()
        t3 = time.perf_counter()
        draw, knn, train = min(draw, t1 - t0), min(knn, t2 - t1), min(train, t3 - t2)
    both = 2 if ic.precision_weight > 0 else 1  # precision_weight: a second search and forward of the same size
    refresh = draw + both * knn * n / q
    return refresh / ic.refresh_every + both * train / (probe // 2) * (n // batch)


@dataclass
class _IMLEState:
    """What IMLE's step loop works on, made by `_setup_imle`."""

    T: Mapper
    T_train: nn.Module  # T, wrapped in DDP under torchrun
    codes: torch.Tensor  # this rank's codes
    opt: torch.optim.Adam
    sched: torch.optim.lr_scheduler.StepLR
    state: dict  # what a checkpoint holds
    rng: torch.Generator  # pool noise and batch order (per rank)
    budget: Budget
    cosine: Cosine
    start: int
    n: int  # codes on every rank
    m: int  # pool size
    batch: int  # per rank
    steps: int  # per epoch
    noise: Optional[torch.Tensor] = None  # the pool's noise in use (restored from a checkpoint, else drawn)
    match: Optional[torch.Tensor] = None  # each of this rank's codes' sample in the pool
    back: Optional[torch.Tensor] = None  # imle.precision_weight: each pool sample's nearest code
    labels: Optional[torch.Tensor] = None  # conditional IMLE: this rank's codes' classes
    pool_labels: Optional[torch.Tensor] = None  # conditional IMLE: the pool's classes (`pool_labels`)
    targets: Optional[torch.Tensor] = None  # imle.code_noise: this refresh's jittered codes (else the codes)
    best: Optional[_KeepBest] = None  # imle.keep_best: the held-out check and the best mapper so far


@dataclass
class _KeepBest:
    """imle.keep_best: the held-out score, and the mapper that has scored best so far (checkpointed)."""

    check: CodeFDCheck  # the held-out codes of every rank and the fixed noise
    mapper: Mapper  # a copy of the best mapper
    epoch: int = -1  # the best mapper's epoch (-1: the start)
    score: float = math.inf

    def offer(self, T: Mapper, epoch: int) -> float:
        """Score T (rank 0 scores, so every rank keeps the same mapper) and keep it if it is the best."""
        d = current_dist()
        fd = d.sum(self.check(T) if d.is_main else 0.0)
        if fd < self.score:
            self.mapper.load_state_dict(T.state_dict())
            self.epoch, self.score = epoch, fd
        return fd


def train_imle(codes: torch.Tensor, cfg: GlannConfig, run: Optional[Run] = None,
               generator: Optional[Generator] = None, codes_epoch: Optional[int] = None,
               labels: Optional[torch.Tensor] = None) -> IMLEResult:
    """Train the mapper on data codes (float N x nz on the training device).

    `generator`, when given, is used only to draw sample grids. Resumes from run's IMLE checkpoint;
    `codes_epoch` (the GLO epochs behind `codes`) is recorded in it, so a resume can tell stale ones.
    Under torchrun `codes` is this rank's shard: the ranks share one pool of mapped samples and
    each searches it for its own codes. labels (int64, one per code; needed when
    cfg.model.class_counts is set, i.e. imle.conditional): each code's class, for conditional IMLE.
    """
    _check_labels(codes, cfg, labels)
    codes, labels, held = _hold_out(codes, labels, cfg)
    s, ic, d = _setup_imle(codes, cfg, run, labels, held), cfg.imle, current_dist()
    result = IMLEResult(s.T)
    if s.best is not None and not s.start:  # the start is a candidate too (with the mixture start: the mixture)
        result.holdout_fds.append(s.best.offer(s.T, -1))
    grid_labels = grid_classes(cfg.model.class_counts, cfg.grid_size, codes.device)  # conditional: a row per class
    grid_noise = torch.randn(cfg.grid_size if grid_labels is None else len(grid_labels), s.T.noise_dim,
                             generator=torch.Generator().manual_seed(cfg.seed + 2)).to(codes.device)
    fd_check = None  # the training-time domain FD (cfg.eval), built on first use
    for epoch, bar in epoch_loop("IMLE", s.start, ic.epochs, s.budget):
        s.T.train()
        t0 = time.perf_counter()
        metrics = _refresh(s, cfg, epoch, result)
        tracker = _imle_epoch(s, cfg, epoch, run)
        stop = s.budget.end_epoch("IMLE", epoch, ic.epochs)  # agreed by every rank: the last epoch of the budget
        s.cosine.time_share = s.budget.fraction(in_epoch=False)
        s.sched.step()
        mean = d.sum(tracker.flush()) / d.world
        result.epoch_seconds.append(time.perf_counter() - t0)
        nn_last = result.nn_distances[-1] if result.nn_distances else None
        bar.set_postfix(loss=f"{mean:.5f}", nn=f"{nn_last:.4f}" if nn_last is not None else "")
        if run and run.is_main and generator is not None and cfg.eval.every and (epoch + 1) % cfg.eval.every == 0:
            fd_check = fd_check or DomainFDCheck(cfg, codes.device)  # built once: data, classifier, reference features
            metrics["domain_fd"] = fd_check(generator, s.T)
        if s.best is not None:
            result.holdout_fds.append(s.best.offer(s.T, epoch))
            metrics.update(holdout_fd=result.holdout_fds[-1], kept_epoch=s.best.epoch)
        record = dict(loss=mean, skipped_batches=tracker.skipped, lr=s.opt.param_groups[0]["lr"],
                      epoch_seconds=result.epoch_seconds[-1], seconds=s.budget.spent, **metrics)
        end_of_epoch(run, "imle", epoch, ic.epochs, stop, cfg.sample_every, cfg.checkpoint_every, record,
                     save=lambda: _save_imle(s, run, epoch, codes_epoch),
                     grids=None if generator is None else lambda: _save_imle_grid(s.T, generator, grid_noise, grid_labels,
                                                                                   run, epoch))
        if stop:
            break
    if s.best is not None:
        _keep_best(s, result)
    s.T.eval()
    return result


def _check_labels(codes: torch.Tensor, cfg: GlannConfig, labels: Optional[torch.Tensor]) -> None:
    if cfg.model.class_counts and (labels is None or labels.shape != (len(codes),)):
        raise DataError(f"conditional IMLE (model.class_counts set) needs one label per code: "
                        f"{len(codes)} codes, labels {None if labels is None else tuple(labels.shape)}")


def _hold_out(codes: torch.Tensor, labels: Optional[torch.Tensor],
              cfg: GlannConfig) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """imle.keep_best: set aside a tenth of the codes, at most imle.holdout (the same share on every
    rank, the same rows on a resume). Returns (codes IMLE trains on, their labels, every rank's
    held-out codes); with keep_best off, (codes, labels, None)."""
    ic, d = cfg.imle, current_dist()
    if not ic.keep_best:
        return codes, labels, None
    n = int(d.sum(len(codes)))
    per_rank = min(ic.holdout // d.world, n // d.world // 10)
    if per_rank * d.world < 2:
        fix = "raise imle.holdout" if ic.holdout // d.world < 2 else "set imle.keep_best=false"
        raise DataError(f"imle.keep_best scores the mapper on a tenth of the codes (at most imle.holdout="
                        f"{ic.holdout}, split over {d.world} process(es)), which leaves fewer than 2 of "
                        f"{n} codes; {fix}")
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(cfg.seed + 3 + 7919 * d.rank))
    keep = order[per_rank:].sort().values.to(codes.device)
    held = d.all_gather_cat(codes[order[:per_rank].to(codes.device)])
    return codes[keep], None if labels is None else labels[keep], held


def _keep_best(s: _IMLEState, result: IMLEResult) -> None:
    """imle.keep_best: hand back the mapper that scored best on the held-out codes, and say which."""
    best = s.best
    assert best is not None
    s.T.load_state_dict(best.mapper.state_dict())
    result.kept_epoch = best.epoch
    if current_dist().is_main:
        what = "the start" if best.epoch < 0 else f"the mapper of epoch {best.epoch}"
        start = " (the mixture: no epoch fitted the held-out codes better)" if best.epoch < 0 and s.T.prior is not None else ""
        tqdm.write(f"IMLE: kept {what}{start}, held-out code FD {best.score:.5f}"
                   + (f"; the last epoch scored {result.holdout_fds[-1]:.5f}" if result.holdout_fds else "")
                   + " (imle.keep_best)")


def _setup_imle(codes: torch.Tensor, cfg: GlannConfig, run: Optional[Run],
                labels: Optional[torch.Tensor] = None, held: Optional[torch.Tensor] = None) -> _IMLEState:
    """Mapper, optimiser and budget, restored from run's checkpoint with the pool then in use; with
    held-out codes (imle.keep_best) the check that scores each epoch, with its best mapper so far."""
    device, n_local = codes.device, codes.shape[0]
    d = current_dist()
    n = int(d.sum(n_local))
    ic, counts = cfg.imle, cfg.model.class_counts
    torch.manual_seed(cfg.seed + 1)
    rng = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * d.rank)
    T = build_mapper(cfg).to(device)
    T_train = DDP(T) if d.active else T
    opt = torch.optim.Adam(T.parameters(), lr=ic.lr, betas=(ic.beta1, ic.beta2), weight_decay=ic.weight_decay)
    sched = step_scheduler(opt, ic.schedule, ic.decay_every, ic.decay_rate)
    state = {"mapper": T, "opt": opt, "sched": sched}
    best = None
    if held is not None:
        best = _KeepBest(CodeFDCheck(held, cfg, HOLDOUT_SAMPLES, device), copy.deepcopy(T))
        state["best_mapper"] = best.mapper
    start, extra = run.load_stage("imle", state, rng, device) if run else (0, {})
    if best is not None and start:
        if int(extra.get("holdout_world", d.world)) != d.world:
            raise CheckpointError(f"this IMLE checkpoint held out its imle.keep_best codes over "
                                  f"{int(extra['holdout_world'])} process(es); resume with as many, or delete "
                                  f"{run.checkpoint_path('imle')} to start IMLE again")
        best.epoch, best.score = int(extra["best_epoch"]), float(extra["best_score"])
    if start:
        keep_configured_lr(opt, ic.lr, sched)
    match = extra.get("match")  # the pool in use when the checkpoint was taken
    if match is not None and d.active:
        match = match[d.shard(n, device)]  # checkpoints hold every code's match in global order
    budget = Budget(ic.max_seconds, extra)
    if not start and T.prior is not None:
        budget.spent += _fit_prior(T, codes, n, cfg)  # the fit is part of IMLE's time
    batch = max(1, min(ic.batch_size, n) // d.world)  # per rank; the global batch stays imle.batch_size
    steps = (n // d.world) // batch
    cosine = Cosine(ic.schedule, [(opt, ic.lr)], ic.epochs, steps)
    cosine.time_share = budget.fraction(in_epoch=False)
    pool = pool_labels(counts, ic.samples_per_point, d.world).to(device) if counts else None
    noise, back = extra.get("noise"), extra.get("back")
    if pool is not None and noise is not None and len(noise) != len(pool):  # another world size pads it otherwise
        noise = match = back = None  # a new pool at the first refresh: the saved one's classes are not these
    return _IMLEState(T, T_train, codes, opt, sched, state, rng, budget, cosine, start, n,
                      math.ceil(ic.samples_per_point * n) if pool is None else len(pool), batch, steps,
                      noise, match, back, None if pool is None else labels.to(device), pool, best=best)


def _fit_prior(T: Mapper, codes: torch.Tensor, n: int, cfg: GlannConfig) -> float:
    """model.mapper_prior=mixture: fit T's mixture to the codes of every rank, once, on rank 0, and
    give every rank the result. Returns the seconds it took."""
    d, t0 = current_dist(), time.perf_counter()
    everything = d.gather_rows(codes, n)
    if d.is_main:
        T.prior.fit(sphere(everything) if cfg.imle.sphere else everything, seed=cfg.seed)
        tqdm.write(f"IMLE: a {T.prior.fitted_components}-component mixture fitted to the codes in "
                   f"{time.perf_counter() - t0:.0f} s (model.mapper_prior=mixture)")
    d.broadcast_module(T.prior)
    # rank 0's time on every rank (the sum's read also waits for an asynchronous broadcast)
    return d.sum(time.perf_counter() - t0 if d.is_main else 0.0)


def _refresh(s: _IMLEState, cfg: GlannConfig, epoch: int, result: IMLEResult) -> dict[str, float]:
    """When due (every imle.refresh_every epochs, or with no pool yet): draw a new pool and match
    every code to it (data -> sample, IMLE Alg. 1). Returns the search's metrics ({} when not due)."""
    ic = cfg.imle
    if not (epoch % ic.refresh_every == 0 or s.match is None or (ic.precision_weight > 0 and s.back is None)
            or (ic.code_noise > 0 and s.targets is None)):
        return {}
    s.targets = _jittered(s.codes, ic, s.rng) if ic.code_noise > 0 else s.codes
    s.noise, samples = draw_pool(s.T, s.m, s.rng, s.codes.device, ic.sphere, s.pool_labels)
    if not bool(torch.isfinite(samples).all()):  # one check per refresh; the search needs finite rows
        raise TrainingError(f"IMLE epoch {epoch}: the mapper's samples are NaN or infinite; lower imle.lr "
                            f"and resume from the last checkpoint")
    t_knn = time.perf_counter()
    _, s.match, found = match_codes(s.targets, samples, ic, s.n, s.labels, s.pool_labels)
    if ic.precision_weight > 0:  # sample -> data: each pool sample's nearest code (of its class)
        back_d2, back = search(samples, s.codes, ic, 1, s.pool_labels, s.labels)
        s.back = back[:, 0]
        found["sample_nn_distance"] = back_d2[:, 0].clamp_min(0).sqrt().mean().item()
    result.nn_distances.append(found["nn_distance"])
    result.knn_seconds.append(time.perf_counter() - t_knn)
    return {**found, "knn_seconds": result.knn_seconds[-1]}


def _jittered(codes: torch.Tensor, ic, rng: torch.Generator) -> torch.Tensor:
    """imle.code_noise: the codes plus fresh Gaussian noise of that scale (back on the sphere with imle.sphere)."""
    z = codes + ic.code_noise * torch.randn(codes.shape, generator=rng).to(codes.device)
    return sphere(z) if ic.sphere else z


def _imle_epoch(s: _IMLEState, cfg: GlannConfig, epoch: int, run: Optional[Run]) -> LossTracker:
    """One IMLE epoch's steps: each batch of codes pulls its matched samples' mapped noise towards it."""
    ic, device = cfg.imle, s.codes.device
    assert s.noise is not None and s.match is not None  # _refresh has drawn the pool
    perm = to_device_async(torch.randperm(len(s.codes), generator=s.rng), device)
    targets = s.codes if s.targets is None else s.targets
    if ic.precision_weight > 0:
        pool_perm = to_device_async(torch.randperm(len(s.noise), generator=s.rng), device)
        pool_batch = max(1, len(s.noise) // s.steps)
    tracker = LossTracker("IMLE", epoch, run, device, cfg.skip_nonfinite)
    bar = tqdm(range(s.steps), desc=f"IMLE epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
    for step in bar:
        s.cosine.set(epoch, step)
        idx = perm[step * s.batch:(step + 1) * s.batch]
        out = _map_pool(s, s.match[idx])
        loss = F.mse_loss(sphere(out) if ic.sphere else out, targets[idx])
        if ic.precision_weight > 0:  # pull pool samples towards their nearest codes too
            j = pool_perm[step * pool_batch:(step + 1) * pool_batch]
            out_s = _map_pool(s, j)
            loss = loss + ic.precision_weight * F.mse_loss(sphere(out_s) if ic.sphere else out_s, s.codes[s.back[j]])
        if not tracker.add(loss, step):
            continue
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        if (step + 1) % CHECK_EVERY == 0:
            bar.set_postfix(loss=f"{tracker.flush():.5f}")
            s.cosine.time_share = s.budget.fraction()
            if s.cosine.time_share >= 1.0:
                break  # the budget ends mid-epoch: close this epoch and stop
    return tracker


def _map_pool(s: _IMLEState, rows: torch.Tensor) -> torch.Tensor:
    """The mapper (with grad) on these rows of the pool's noise, with their classes when conditional."""
    return s.T_train(s.noise[rows], None if s.pool_labels is None else s.pool_labels[rows])


def _save_imle(s: _IMLEState, run: Run, epoch: int, codes_epoch: Optional[int]) -> None:
    """Checkpoint the mapper with the pool in use (noise, every code's match), so a resume goes on
    with the same matches; `codes_epoch` tells a resume which GLO codes they were made for."""
    extra = {"noise": s.noise, "match": current_dist().gather_rows(s.match, s.n), **s.budget.state()}
    if s.back is not None:
        extra["back"] = s.back
    if s.best is not None:
        extra.update(best_epoch=torch.tensor(s.best.epoch), best_score=torch.tensor(s.best.score, dtype=torch.float64),
                     holdout_world=torch.tensor(current_dist().world))
    if codes_epoch is not None:
        extra["codes_epoch"] = torch.tensor(codes_epoch)
    run.save_stage("imle", epoch, s.state, s.rng, extra=extra)


@torch.no_grad()
def _save_imle_grid(T: Mapper, generator: Generator, grid_noise: torch.Tensor, grid_labels: Optional[torch.Tensor],
                    run: Run, epoch: int) -> None:
    T.eval()
    images = to_unit(generator.eval()(T(grid_noise, grid_labels)))
    save_grid(images, run.sample_path(f"imle_samples_epoch{epoch:04d}"), nrow=grid_row(grid_labels))
