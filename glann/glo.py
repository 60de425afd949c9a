"""GLO stage (Bojanowski et al. 2018): one learnable code per image, a generator that reconstructs
each image from its code under a perceptual loss."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from .config import GlannConfig
from .data import Dataset
from .devices import resolve_perf, to_device_async
from .images import save_grid, to_model, to_unit
from .losses import make_loss
from .nets import Generator, build_generator, sphere
from .distributed import ShardedState
from .distributed import current as current_dist
from .loop import CHECK_EVERY, Budget, Cosine, LossTracker, end_of_epoch, epoch_loop, keep_configured_lr, step_scheduler
from .runs import Run

PCA_SUBSET = 10000  # images the code PCA is fitted on (a low-rank PCA: memory stays bounded at any N)


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for a code table, on the rows one step touches, without sparse tensors.

    `step(rows, grad)` updates `table[rows]` from `grad` (len(rows) x d); only those rows' moments
    move. SparseAdam coalesces a sparse gradient and masks the moments with it, which on CUDA
    waits for the GPU every step (the new sizes live on the device); here the rows are gathered and
    written back with index_select/index_copy_, so a step queues work and never waits. `rows` must
    be unique (a slice of a permutation). `project` (e.g. onto the unit sphere) is applied to the
    updated rows before they are written.

    Bias correction. row_steps=False is torch.optim.SparseAdam's (same numbers, same state_dict
    layout, so checkpoints load in both directions): one step count for the whole table. A code is
    touched once per epoch while the count grows by N / batch, so from its second update on its
    moments (one or two gradients) are corrected as if hundreds of steps had filled them: with
    beta2 = 0.999 the first update of a row at step 470 moves each coordinate by about 10 x lr,
    which throws PCA-initialised codes off their start. row_steps=True counts each row's own
    updates (state "row_step"), so every code gets exactly the Adam it would get alone.
    """

    def __init__(self, table: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, project=None, row_steps: bool = False):
        super().__init__([table], dict(lr=lr, betas=betas, eps=eps))
        self.project, self.row_steps = project, row_steps

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:  # type: ignore[override]
        group = self.param_groups[0]
        table = group["params"][0]
        beta1, beta2 = group["betas"]
        state = self.state[table]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(table), exp_avg_sq=torch.zeros_like(table))
        state["step"] += 1  # a Python int, as SparseAdam keeps it: no device read
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        # The same operations in SparseAdam's order, so both give the same numbers.
        old_m, old_v = exp_avg.index_select(0, rows), exp_avg_sq.index_select(0, rows)
        m = grad.sub(old_m).mul_(1 - beta1).add_(old_m)
        v = grad.pow(2).sub_(old_v).mul_(1 - beta2).add_(old_v)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        if self.row_steps:
            if "row_step" not in state:  # a table-count checkpoint: assume the rows were touched evenly
                done = (step - 1) * len(rows) / len(table)
                state["row_step"] = torch.full((len(table),), float(round(done)), device=table.device)
            t = state["row_step"].index_select(0, rows).add_(1)
            state["row_step"].index_copy_(0, rows, t)
            step_size = (1 - beta2 ** t).sqrt_().div_(1 - beta1 ** t).mul_(float(group["lr"])).unsqueeze(1)
        else:
            step_size = float(group["lr"]) * (1 - beta2 ** step) ** 0.5 / (1 - beta1 ** step)
        new = table.index_select(0, rows).add_(-step_size * m.div_(v.sqrt_().add_(group["eps"])))
        table.index_copy_(0, rows, self.project(new) if self.project else new)


@dataclass
class GLOResult:
    generator: Generator
    codes: torch.Tensor  # float N x nz, unit rows, on the training device (this rank's shard under torchrun)
    losses: list[float] = field(default_factory=list)  # mean reconstruction loss per epoch trained here
    images_per_s: list[float] = field(default_factory=list)  # training throughput per epoch trained here
    epochs_done: int = 0  # GLO epochs the codes have had in all, resumes included
    seconds: float = 0.0  # GLO training seconds in all, resumes included (what its budget counted)


@dataclass
class _GLOState:
    """What GLO's step loop works on, made by `_setup_glo`."""

    G: Generator
    G_train: nn.Module  # G, wrapped for torchrun (DDP) or torch.compile when asked
    codes: nn.Embedding  # this rank's codes
    images: torch.Tensor  # this rank's images
    opt_g: torch.optim.Adam
    opt_z: RowAdam
    sched_g: torch.optim.lr_scheduler.StepLR
    sched_z: torch.optim.lr_scheduler.StepLR
    loss_fn: nn.Module
    state: dict  # what a checkpoint holds
    rng: torch.Generator  # code init and batch order
    budget: Budget
    cosine: Cosine
    start: int  # the first epoch to train (a resume's next)
    batch: int  # per rank
    steps: int  # per epoch
    amp: bool = False  # bf16 autocast (perf.amp, resolved for the device)


def train_glo(data: Dataset, cfg: GlannConfig, run: Optional[Run] = None) -> GLOResult:
    """Train generator and per-image codes on `data` (uint8 images, or float points, on the training device).

    Resumes from run's GLO checkpoint when there is one. Raises TrainingError on a non-finite loss,
    leaving the last good checkpoint in place.
    """
    s, gc, d = _setup_glo(data, cfg, run), cfg.glo, current_dist()
    losses: list[float] = []
    throughput: list[float] = []
    grid_idx = torch.arange(min(cfg.grid_size, len(s.images)), device=s.images.device)
    # The split of a whole-method max_seconds GLO trains under, kept so a resume keeps it (pipeline.train)
    plan = {} if cfg.max_seconds is None or gc.max_seconds is None else {
        "plan_total": torch.tensor(float(cfg.max_seconds), dtype=torch.float64),
        "plan_glo": torch.tensor(float(gc.max_seconds), dtype=torch.float64)}
    for epoch, bar in epoch_loop("GLO", s.start, gc.epochs, s.budget):
        t0 = time.perf_counter()
        tracker, done = _glo_epoch(s, cfg, epoch, run)
        stop = s.budget.end_epoch("GLO", epoch, gc.epochs)  # agreed by every rank: the last epoch of the budget
        s.cosine.time_share = s.budget.fraction(in_epoch=False)
        s.sched_g.step()
        s.sched_z.step()
        mean = d.sum(tracker.flush()) / d.world
        losses.append(mean)
        throughput.append(done * s.batch * d.world / (time.perf_counter() - t0))
        bar.set_postfix(loss=f"{mean:.4f}")
        record = dict(loss=mean, skipped_batches=tracker.skipped, lr_codes=s.opt_z.param_groups[0]["lr"],
                      lr_generator=s.opt_g.param_groups[0]["lr"], images_per_s=throughput[-1], seconds=s.budget.spent)
        end_of_epoch(run, "glo", epoch, gc.epochs, stop, cfg.sample_every, cfg.checkpoint_every, record,
                     save=lambda: run.save_stage("glo", epoch, s.state, s.rng, {**s.budget.state(), **plan}),
                     grids=lambda: _save_glo_grids(s.G, s.codes.weight.detach(), s.images, grid_idx, cfg.seed,
                                                   run, epoch))
        if stop:
            break
    s.G.eval()
    return GLOResult(s.G, s.codes.weight.detach(), losses, throughput, s.start + len(losses), s.budget.spent)


def _setup_glo(data: Dataset, cfg: GlannConfig, run: Optional[Run]) -> _GLOState:
    """Networks, codes (initialised, or restored from run's checkpoint), optimisers and budget."""
    device = data.images.device
    n, gc, pc = len(data), cfg.glo, resolve_perf(cfg.perf, device, data.is_vector)
    d = current_dist()  # under torchrun: this rank trains the codes of its shard of the images only
    mine = d.shard(n, device)
    images = data.images[mine] if d.active else data.images
    n_local = len(mine)
    torch.manual_seed(cfg.seed)  # module initialisation is the only user of the global RNG
    rng = torch.Generator().manual_seed(cfg.seed)  # code init and batch order
    G = build_generator(cfg, data.shape).to(device)
    if pc.channels_last:
        G = G.to(memory_format=torch.channels_last)
    # Each step touches batch_size rows of an N-row table; RowAdam updates only those.
    codes = nn.Embedding(n_local, cfg.model.nz).to(device).requires_grad_(False)
    t_init = time.perf_counter()
    with torch.no_grad():  # the same initial codes whatever the world size
        init = sphere(torch.randn(n, cfg.model.nz, generator=rng))  # drawn either way: the same batch order
        if gc.init == "pca":
            codes.weight.copy_(pca_codes(images, cfg.model.nz, cfg.seed, data.images if d.active else None))
        else:
            codes.weight.copy_(init.to(device)[mine])
    if d.active:
        rng.manual_seed(cfg.seed + 7919 * d.rank)  # each rank its own batch order
    G_train = DDP(G) if d.active else G  # all-reduces G's gradients; codes stay local
    if pc.compile:  # G's own module stays uncompiled: checkpoints and exports keep their keys
        G_train = torch.compile(G_train)
    betas = (gc.beta1, gc.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=gc.lr_generator, betas=betas, fused=pc.fused_adam or None)
    opt_z = RowAdam(codes.weight, lr=gc.lr_codes, betas=betas, project=sphere,  # codes stay on the unit sphere
                    row_steps=gc.code_steps == "row")
    sched_g = step_scheduler(opt_g, gc.schedule, gc.decay_every, gc.decay_rate)
    sched_z = step_scheduler(opt_z, gc.schedule, gc.decay_every, gc.decay_rate)
    loss_fn = make_loss(gc.loss, data.channels, gc.loss_random_weights, gc.vgg_levels).to(device)
    state = {"generator": G, "codes": ShardedState(codes, d, n, n_local), "opt_g": opt_g,
             "opt_z": ShardedState(opt_z, d, n, n_local), "sched_g": sched_g, "sched_z": sched_z}
    start, extra = run.load_stage("glo", state, rng, device) if run else (0, {})
    if start:
        keep_configured_lr(opt_g, gc.lr_generator, sched_g)
        keep_configured_lr(opt_z, gc.lr_codes, sched_z)
    budget = Budget(gc.max_seconds, extra)
    if not start:  # the code initialisation (a PCA: seconds) is training time too
        budget.spent += time.perf_counter() - t_init
    batch = max(1, min(gc.batch_size, n) // d.world)  # per rank; the global batch stays glo.batch_size
    steps = (n // d.world) // batch  # equal on every rank; the last partial batch is dropped, as the reference does
    cosine = Cosine(gc.schedule, [(opt_g, gc.lr_generator), (opt_z, gc.lr_codes)], gc.epochs, steps)
    cosine.time_share = budget.fraction(in_epoch=False)
    return _GLOState(G, G_train, codes, images, opt_g, opt_z, sched_g, sched_z, loss_fn, state, rng, budget,
                     cosine, start, batch, steps, pc.amp == "bf16")


def _glo_epoch(s: _GLOState, cfg: GlannConfig, epoch: int, run: Optional[Run]) -> tuple[LossTracker, int]:
    """One GLO epoch's steps: generator and this batch's codes, one Adam step each per batch.
    Returns the epoch's loss tracker and the steps taken (fewer when the budget ends mid-epoch)."""
    device = s.images.device
    s.G.train()
    done = 0
    perm = to_device_async(torch.randperm(len(s.images), generator=s.rng), device)
    tracker = LossTracker("GLO", epoch, run, device, cfg.skip_nonfinite)
    bar = tqdm(range(s.steps), desc=f"GLO epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
    for step in bar:
        done = step + 1
        s.cosine.set(epoch, step)
        idx = perm[step * s.batch:(step + 1) * s.batch]
        real = to_model(s.images[idx])
        z = s.codes.weight.index_select(0, idx).requires_grad_()  # this batch's codes, a leaf
        with torch.autocast(device.type, torch.bfloat16, enabled=s.amp):
            loss = s.loss_fn(s.G_train(z), real).float().mean()
        if not tracker.add(loss, step):
            continue
        s.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        s.opt_g.step()
        s.opt_z.step(idx, z.grad)
        if (step + 1) % CHECK_EVERY == 0:
            bar.set_postfix(loss=f"{tracker.flush():.4f}")  # one host sync every CHECK_EVERY steps
            s.cosine.time_share = s.budget.fraction()
            if s.cosine.time_share >= 1.0:
                break  # the budget ends mid-epoch: close this epoch and stop
    return tracker, done


@torch.no_grad()
def pca_codes(images: torch.Tensor, nz: int, seed: int, full: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Initial codes from the images' principal components: float len(images) x nz, unit rows.

    A randomized low-rank PCA (torch.pca_lowrank) of at most PCA_SUBSET images drawn with `seed`
    (from `full`, the whole dataset, when `images` is a torchrun shard: every rank then fits the
    same components), each image projected on the top nz components, each component scaled to
    unit variance (whitened, so no one direction dominates the sphere), then onto the unit sphere.
    Data with fewer than nz dimensions (2-D points) fills the remaining ones with Gaussian noise.
    """
    src = images if full is None else full
    dim = math.prod(src.shape[1:])
    g = torch.Generator().manual_seed(seed + 104729)
    # At most 1 GiB of floats for the fit and 128 MiB per projected chunk, whatever the image size.
    sub = src[torch.randperm(len(src), generator=g)[:min(PCA_SUBSET, 2 ** 28 // dim)].to(src.device)]
    chunk = max(1, 2 ** 25 // dim)
    x = sub.flatten(1).float()
    mean = x.mean(0)
    q = min(nz, x.shape[0] - 1, x.shape[1])
    devices = [src.device] if src.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # pca_lowrank's sketch draws from the global RNG
        torch.manual_seed(seed)
        _, s, v = torch.pca_lowrank(x - mean, q=q, center=False, niter=4)
    scale = (s / max(1, x.shape[0] - 1) ** 0.5).clamp_min(1e-8)
    z = torch.cat([((c.flatten(1).float() - mean) @ v) / scale for c in images.split(chunk)])
    if q < nz:
        z = torch.cat([z, torch.randn(len(z), nz - q, generator=g).to(z.device)], dim=1)
    return sphere(z)


@torch.no_grad()
def _save_glo_grids(G: Generator, codes: torch.Tensor, images: torch.Tensor, grid_idx: torch.Tensor,
                    seed: int, run: Run, epoch: int) -> None:
    """Reconstructions (real row above its reconstruction) and samples from a Gaussian fit to the codes."""
    G.eval()
    real = to_unit(to_model(images[grid_idx]))
    rec = to_unit(G(codes[grid_idx]))
    half = max(1, len(grid_idx) // 2)
    nrow = max(1, int(round(half ** 0.5)))
    # Points: the reconstructions alone (beside the real points in one colour they would show nothing).
    pairs = rec if rec.ndim == 2 else _interleave_rows(real[:half], rec[:half], nrow)
    save_grid(pairs, run.sample_path(f"glo_recon_epoch{epoch:04d}"), nrow=nrow)
    # GLO alone samples from a Gaussian fitted to the codes (the reference's "gaussian" grid).
    mean = codes.mean(0)
    cov = torch.cov(codes.T) + 1e-5 * torch.eye(codes.shape[1], device=codes.device)
    eps = torch.randn(len(grid_idx), codes.shape[1], generator=torch.Generator().manual_seed(seed)).to(codes.device)
    z = mean + eps @ torch.linalg.cholesky(cov).T
    save_grid(to_unit(G(z)), run.sample_path(f"glo_gauss_epoch{epoch:04d}"))
    G.train()


def _interleave_rows(real: torch.Tensor, rec: torch.Tensor, nrow: int) -> torch.Tensor:
    """Row of real images, then the row of their reconstructions, and so on."""
    rows = []
    for r, f in zip(real.split(nrow), rec.split(nrow)):
        rows += [r, f]
    return torch.cat(rows)
