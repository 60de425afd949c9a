"""The adversarial baseline: GLANN's generator against a DCGAN discriminator.

Losses: minimax (Goodfellow et al. 2014, the saturating one), non-saturating (same paper,
sec. 3), LSGAN (Mao et al. 2017), WGAN-GP (Gulrajani et al. 2017), hinge (Lim & Ye 2017;
SAGAN). Stabilisers, each a `gan.*` switch: one-sided label smoothing, minibatch standard
deviation, PacGAN packing, spectral norm, R1 penalty, feature matching, n_critic, separate
learning rates; and a moving average of the generator's weights to sample (`gan.ema`). Every
epoch it logs what diagnoses GAN failure and flags what it sees (`diagnose`): vanishing generator
gradients, mode collapse, oscillation.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import GlannConfig
from .data import Dataset
from .devices import resolve_perf, to_device_async
from .images import save_grid, to_model, to_unit
from .evaluate.metrics import diversity
from .evaluate.training import DomainFDCheck
from .nets import Discriminator, Generator, build_discriminator, build_generator, draw_labels, grid_classes, grid_row
from .loop import CHECK_EVERY, Budget, check_finite, end_of_epoch, epoch_loop, keep_configured_lr
from .runs import Run

# Diagnostic thresholds (heuristics, documented so a reader can argue with them).
VANISH_ACC = 0.99  # D right about (nearly) every real and every fake decision ...
VANISH_FALL = 0.1  # ... while G's gradient norm is under a tenth of its peak so far
COLLAPSE_RATIO = 0.3  # sample diversity under 30% of the real data's ...
COLLAPSE_FALL = 0.5  # ... or under half of its own peak so far
OSC_WINDOW = 6  # epochs looked at for oscillation: D's accuracy on fakes swings up and down
OSC_SWINGS = 4  # at least this many direction changes ...
OSC_RANGE = 0.3  # ... spanning at least this much accuracy
DIVERSITY_SAMPLES = 64
STANDING_BATCHES = 100  # training batches of noise that re-estimate gan.ema's batch-norm statistics


@dataclass
class GANResult:
    generator: Generator  # the one to sample: with gan.ema, the moving average of the trained one
    discriminator: Discriminator
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch diagnostics (as logged)
    flags: list[str] = field(default_factory=list)  # "epoch 3: mode collapse (...)", in order seen
    g_steps: int = 0  # generator updates in total (across resumes)
    seconds: float = 0.0  # training wall-clock in total (across resumes)


# ---------------------------------------------------------------------------- objectives
def discriminator_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """D's loss from its logits on real and fake decisions; `smoothing` is one-sided (real target 1 - s)."""
    target = 1.0 - smoothing
    if loss in ("minimax", "nonsaturating"):
        return (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, target))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    if loss == "lsgan":
        return 0.5 * ((d_real - target).pow(2).mean() + d_fake.pow(2).mean())
    if loss == "wgan-gp":
        return d_fake.mean() - d_real.mean()
    if loss == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    raise ValueError(f"unknown GAN loss '{loss}'")


def generator_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """G's loss from D's logits on its samples."""
    if loss == "minimax":
        # min log(1 - D(G(z))) = -softplus(logit): its gradient vanishes as D grows confident.
        return -F.softplus(d_fake).mean()
    if loss == "nonsaturating":
        return F.softplus(-d_fake).mean()  # max log D(G(z))
    if loss == "lsgan":
        return 0.5 * (d_fake - 1.0).pow(2).mean()
    if loss in ("wgan-gp", "hinge"):
        return -d_fake.mean()
    raise ValueError(f"unknown GAN loss '{loss}'")


def gradient_penalty(D: Discriminator, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator,
                     labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """WGAN-GP: E[(||grad D(x_hat)|| - 1)^2] on random interpolates of real and fake (one norm per
    decision; conditional: real and fake of the same classes, `labels`)."""
    alpha = to_device_async(torch.rand(real.shape[0], *[1] * (real.ndim - 1), generator=rng), real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, labels).sum(), x_hat, create_graph=True)
    norms = grad.reshape(real.shape[0] // D.pack, -1).norm(dim=1)
    return (norms - 1.0).pow(2).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: E[||grad D(x)||^2] on real data (`real` must require grad and `d_real` come from it)."""
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.pow(2).reshape(d_real.shape[0], -1).sum(1).mean()


# ---------------------------------------------------------------------------- diagnostics
def diagnose(history: list[dict[str, float]]) -> dict[str, str]:
    """Failure flags for the last epoch of `history` (dicts with d_acc_real, d_acc_fake,
    g_grad_norm, diversity_ratio): {flag name: reason}; empty when nothing is seen."""
    last = history[-1]
    flags: dict[str, str] = {}
    peak_g = max(h["g_grad_norm"] for h in history)
    if (last["d_acc_real"] >= VANISH_ACC and last["d_acc_fake"] >= VANISH_ACC
            and last["g_grad_norm"] < VANISH_FALL * peak_g):
        flags["vanishing"] = (f"vanishing generator gradients: D right on {last['d_acc_real']:.0%} real and "
                              f"{last['d_acc_fake']:.0%} fake, G grad norm {last['g_grad_norm']:.2g} "
                              f"(peak {peak_g:.2g})")
    peak_div = max(h["diversity_ratio"] for h in history)
    # The absolute rule waits one epoch: an untrained generator in eval mode (batch-norm running
    # statistics not yet estimated) draws near-identical images without having collapsed.
    low = len(history) >= 2 and last["diversity_ratio"] < COLLAPSE_RATIO
    if low or last["diversity_ratio"] < COLLAPSE_FALL * peak_div:
        flags["collapse"] = (f"mode collapse: sample diversity {last['diversity_ratio']:.2f} of the data's "
                             f"(peak {peak_div:.2f})")
    acc = [h["d_acc_fake"] for h in history[-OSC_WINDOW:]]
    if len(acc) == OSC_WINDOW:
        steps = [b - a for a, b in zip(acc[:-1], acc[1:])]
        swings = sum(1 for a, b in zip(steps[:-1], steps[1:]) if a * b < 0)
        if swings >= OSC_SWINGS and max(acc) - min(acc) >= OSC_RANGE:
            flags["oscillation"] = (f"oscillation: D's accuracy on fakes changed direction {swings} times "
                                    f"in {OSC_WINDOW} epochs, between {min(acc):.0%} and {max(acc):.0%}")
    return flags


# ---------------------------------------------------------------------------- training
@dataclass
class _GANState:
    """What the GAN's step loop works on, made by `_setup_gan`."""

    G: Generator
    D: Discriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    state: dict  # what a checkpoint holds
    rng: torch.Generator  # batch order, noise, penalty interpolates
    budget: Budget  # gan.max_seconds, and gan.max_steps over its count of generator updates
    start: int
    batch: int
    steps: int
    history: list[dict[str, float]]  # the diagnostics diagnose() reads, one per epoch (resumes included)
    conditional: bool = False  # gan.conditional: G and D take each sample's class (the real batch's labels)
    ref_noise: Optional[torch.Tensor] = None  # gan.virtual_batch_norm: the fixed reference batch's noise ...
    ref_labels: Optional[torch.Tensor] = None  # ... and, conditional, its classes
    amp: bool = False  # bf16 autocast of G and D (perf.amp, resolved for the device), as GLO has it
    ema: Optional[Generator] = None  # gan.ema > 0: the moving average of G's weights, kept in eval mode

    @property
    def sampling_generator(self) -> Generator:
        """What the grids, the FD check and the export sample: G's moving average, or G itself."""
        return self.G if self.ema is None else self.ema


def train_gan(data: Dataset, cfg: GlannConfig, run: Optional[Run] = None) -> GANResult:
    """Train GLANN's generator adversarially on `data` (uint8 images, or float points, on the training device).

    Noise is N(0, I) of size model.nz (the generator projects it to the unit sphere). Stops after
    gan.epochs, or earlier at the gan.max_steps / gan.max_seconds budget. Resumes from run's GAN
    checkpoint. Raises TrainingError on a non-finite loss, keeping the last good checkpoint.
    With eval.every=K it logs the domain FD every K epochs, outside the timed part (as IMLE does),
    so a report can race GLANN and the GAN on one metric against training seconds.
    """
    s, gc, device = _setup_gan(data, cfg, run), cfg.gan, data.images.device
    grid_labels = grid_classes(cfg.model.class_counts, max(cfg.grid_size, DIVERSITY_SAMPLES), device)
    grid_noise = torch.randn(max(cfg.grid_size, DIVERSITY_SAMPLES) if grid_labels is None else len(grid_labels),
                             cfg.model.nz, generator=torch.Generator().manual_seed(cfg.seed + 2)).to(device)
    ref_idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed + 3))[:DIVERSITY_SAMPLES]
    real_diversity = diversity(to_model(data.images[ref_idx.to(device)]))
    flags: list[str] = []
    fd_check = None  # built at the first check: data, classifier, reference features
    for epoch, bar in epoch_loop("GAN", s.start, gc.epochs, s.budget):
        s.G.train()
        s.D.train()
        sums, n_d, n_g = _gan_epoch(s, data, cfg, epoch, run)
        stop = s.budget.end_epoch()
        if s.ema is not None:  # outside the timed part, as the checks below
            _standing_statistics(s, cfg)
        # -- diagnostics, on fixed noise so that epochs compare
        s.G.eval()
        with torch.no_grad():
            samples = s.G(grid_noise, grid_labels)  # the diagnostics judge the trained G ...
            shown = samples if s.ema is None else s.ema(grid_noise, grid_labels)  # ... the grid what samples
        s.G.train()
        record = _diagnostics(sums, n_d, n_g, cfg.gan.loss, diversity(samples[:DIVERSITY_SAMPLES]) / max(real_diversity, 1e-12))
        if run and run.is_main and cfg.eval.every and (epoch + 1) % cfg.eval.every == 0:
            fd_check = fd_check or DomainFDCheck(cfg, device)
            # no mapper: G takes the N(0, I) noise itself
            record["domain_fd"] = fd_check(s.sampling_generator)
        s.history.append({k: record[k] for k in ("d_acc_real", "d_acc_fake", "g_grad_norm", "diversity_ratio")})
        seen = diagnose(s.history)
        flags += [f"epoch {epoch}: {reason}" for reason in seen.values()]
        bar.set_postfix(d=f"{record['d_loss']:.3f}", g=f"{record['g_loss']:.3f}", flags=",".join(seen) or "-")
        record.update(g_steps=s.budget.steps, seconds=s.budget.spent,
                      **{f"flag_{k}": float(k in seen) for k in ("vanishing", "collapse", "oscillation")})
        end_of_epoch(run, "gan", epoch, gc.epochs, stop, cfg.sample_every, cfg.checkpoint_every, record,
                     save=lambda: run.save_stage("gan", epoch, s.state, s.rng, extra=s.budget.state()),
                     grids=lambda: save_grid(to_unit(shown[:cfg.grid_size] if grid_labels is None else shown),
                                             run.sample_path(f"gan_samples_epoch{epoch:04d}"),
                                             nrow=grid_row(grid_labels)))
        if stop:
            break
    s.G.eval()
    s.D.eval()
    return GANResult(s.sampling_generator, s.D, s.history, flags, s.budget.steps, s.budget.spent)


def _setup_gan(data: Dataset, cfg: GlannConfig, run: Optional[Run]) -> _GANState:
    """Both networks and optimisers, restored from run's checkpoint with the diagnostics logged so far."""
    device = data.images.device
    # GLO's speed switches (perf.compile aside), so the race is even
    n, gc, pc = len(data), cfg.gan, resolve_perf(cfg.perf, device, data.is_vector)
    torch.manual_seed(cfg.seed)  # module initialisation is the only user of the global RNG
    rng = torch.Generator().manual_seed(cfg.seed)  # batch order, noise, penalty interpolates
    G = build_generator(cfg, data.shape).to(device)
    D = build_discriminator(cfg, data.shape).to(device)
    if pc.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    betas, fused = (gc.beta1, gc.beta2), pc.fused_adam or None
    opt_g = torch.optim.Adam(G.parameters(), lr=gc.lr_generator, betas=betas, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=gc.lr_discriminator, betas=betas, fused=fused)
    state = {"generator": G, "discriminator": D, "opt_g": opt_g, "opt_d": opt_d}
    ema = None
    if gc.ema > 0:  # the weights; its batch-norm statistics are its own (_standing_statistics)
        ema = copy.deepcopy(G).eval().requires_grad_(False)
        state["generator_ema"] = ema
    start, extra = run.load_stage("gan", state, rng, device) if run else (0, {})
    if start:
        keep_configured_lr(opt_g, gc.lr_generator)
        keep_configured_lr(opt_d, gc.lr_discriminator)
    history = [{k: float(r[k]) for k in ("d_acc_real", "d_acc_fake", "g_grad_norm", "diversity_ratio")}
               for r in (run.read_metrics() if run else []) if r.get("stage") == "gan" and r["step"] < start]
    batch = min(gc.batch_size, n) // gc.pack * gc.pack
    budget = Budget(gc.max_seconds, extra, max_steps=gc.max_steps, steps_key="g_steps")
    conditional = bool(cfg.model.class_counts)
    ref_noise = ref_labels = None
    if gc.virtual_batch_norm:  # a fixed reference batch, the same on a resume (its own seed)
        g = torch.Generator().manual_seed(cfg.seed + 5)
        ref_noise = torch.randn(batch, cfg.model.nz, generator=g).to(device)
        ref_labels = draw_labels(cfg.model.class_counts, batch, g).to(device) if conditional else None
    return _GANState(G, D, opt_g, opt_d, state, rng, budget, start, batch, n // batch, history, conditional,
                     ref_noise, ref_labels, pc.amp == "bf16", ema)


def _fake(s: _GANState, z: torch.Tensor, labels: Optional[torch.Tensor], G: Optional[Generator] = None) -> torch.Tensor:
    """G(z) for training (G: s.G unless given); with gan.virtual_batch_norm the reference batch goes
    through G with z, so every batch-norm layer normalises z's batch with the reference's statistics
    and its own (Salimans et al. 2016, sec. 3.4; the reference's outputs are dropped)."""
    G = s.G if G is None else G
    if s.ref_noise is None:
        return G(z, labels)
    y = None if labels is None else torch.cat([s.ref_labels, labels])
    return G(torch.cat([s.ref_noise, z]), y)[len(s.ref_noise):]


@torch.no_grad()
def _update_average(s: _GANState, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * G over the weights, after each generator step. By hand
    rather than torch's AveragedModel, whose update copies a host-side step counter to the device
    (a wait for the GPU every step) and every buffer too (the batch-norm statistics, which
    _standing_statistics sets). The benchmarks ran on AveragedModel: the same update, started from G
    after its first step instead of before it."""
    torch._foreach_lerp_(list(s.ema.parameters()), list(s.G.parameters()), 1.0 - decay)


@torch.no_grad()
def _standing_statistics(s: _GANState, cfg: GlannConfig) -> None:
    """Give gan.ema's generator the batch-norm statistics of its own weights: the mean over
    STANDING_BATCHES training-mode batches (BigGAN's standing statistics; torch's update_bn, with
    this G's classes and reference batch). The trained G's running statistics belong to other
    weights: averaged along with the weights, they cost 2.3 FD on Fashion-MNIST at 600 s against a
    re-estimate made once after training (benchmarks/race_cpu.md). The same noise every time (seed + 6)."""
    G = s.ema
    device = next(G.parameters()).device
    norms = [m for m in G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches
    g = torch.Generator().manual_seed(cfg.seed + 6)
    G.train()
    try:
        with torch.autocast(device.type, torch.bfloat16, enabled=s.amp):
            for _ in range(STANDING_BATCHES):
                z = torch.randn(s.batch, cfg.model.nz, generator=g).to(device)
                labels = draw_labels(cfg.model.class_counts, s.batch, g).to(device) if s.conditional else None
                _fake(s, z, labels, G)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.eval()


def _gan_epoch(s: _GANState, data: Dataset, cfg: GlannConfig, epoch: int,
               run: Optional[Run]) -> tuple[torch.Tensor, int, int]:
    """One epoch of D steps, with a G step every gan.n_critic of them. Returns the running sums
    (d_loss, g_loss, D right on real, D right on fake, G grad norm), D steps and G steps."""
    gc, device = cfg.gan, data.images.device
    threshold = 0.5 if gc.loss == "lsgan" else 0.0  # logit above which D calls a decision real
    perm = to_device_async(torch.randperm(len(data), generator=s.rng), device)
    sums = torch.zeros(5, device=device)
    n_d = n_g = 0
    bar = tqdm(range(s.steps), desc=f"GAN epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
    for step in bar:
        idx = perm[step * s.batch:(step + 1) * s.batch]
        real = to_model(data.images[idx])
        labels = data.labels[idx] if s.conditional else None  # the fakes are asked for the real batch's classes
        d_real, d_fake, loss_d = _discriminator_step(s, cfg, real, labels)
        with torch.no_grad():
            sums[0] += loss_d.detach()
            sums[2] += (d_real > threshold).float().mean()
            sums[3] += (d_fake <= threshold).float().mean()
        n_d += 1
        if (step + 1) % gc.n_critic == 0:  # a generator step every n_critic discriminator steps
            loss_g, gnorm = _generator_step(s, cfg, real, labels)
            with torch.no_grad():
                sums[1] += loss_g.detach()
                sums[4] += gnorm
            n_g += 1
            s.budget.count_step()
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == s.steps:
            v = sums.tolist()  # one host sync every CHECK_EVERY steps
            check_finite(v[0] / n_d + (v[1] / n_g if n_g else 0.0), "GAN", epoch, step, run)
            bar.set_postfix(d=f"{v[0] / n_d:.3f}", g=f"{v[1] / max(n_g, 1):.3f}")
        if s.budget.exhausted():
            break  # the budget ends mid-epoch: close this epoch and stop
    return sums, n_d, n_g


def _discriminator_step(s: _GANState, cfg: GlannConfig, real: torch.Tensor,
                        labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
    """One D update on a real batch and as many fakes (conditional: of the same classes);
    returns D's logits on both and its loss."""
    gc = cfg.gan
    z = to_device_async(torch.randn(s.batch, cfg.model.nz, generator=s.rng), real.device)
    real.requires_grad_(gc.r1_gamma > 0)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=s.amp):
        with torch.no_grad():
            fake = _fake(s, z, labels)
        d_real, d_fake = s.D(real, labels), s.D(fake, labels)
    d_real, d_fake = d_real.float(), d_fake.float()  # the losses in fp32
    loss_d = discriminator_loss(gc.loss, d_real, d_fake, gc.label_smoothing)
    if gc.loss == "wgan-gp":
        loss_d = loss_d + gc.gp_lambda * gradient_penalty(s.D, real.detach(), fake, s.rng, labels)
    if gc.r1_gamma > 0:
        loss_d = loss_d + 0.5 * gc.r1_gamma * r1_penalty(d_real, real)
    s.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    s.opt_d.step()
    return d_real, d_fake, loss_d


def _generator_step(s: _GANState, cfg: GlannConfig, real: torch.Tensor,
                    labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One G update on fresh noise; returns its loss and gradient norm (measured, never clipped)."""
    gc = cfg.gan
    z = to_device_async(torch.randn(s.batch, cfg.model.nz, generator=s.rng), real.device)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=s.amp):
        d_fake, f_fake = s.D(_fake(s, z, labels), labels, return_features=True)
        if gc.feature_matching > 0:
            with torch.no_grad():
                f_real = s.D(real.detach(), labels, return_features=True)[1]
    loss_g = generator_loss(gc.loss, d_fake.float())
    if gc.feature_matching > 0:
        # Salimans et al. 2016, sec. 3.1: match the mean of D's last features on real data.
        loss_g = loss_g + gc.feature_matching * (f_real.float().mean(0) - f_fake.float().mean(0)).pow(2).mean()
    s.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(s.G.parameters(), float("inf"))
    s.opt_g.step()
    if s.ema is not None:
        _update_average(s, gc.ema)
    return loss_g, gnorm


def _diagnostics(sums: torch.Tensor, n_d: int, n_g: int, loss: str, diversity_ratio: float) -> dict[str, float]:
    """The epoch's means of what diagnose() reads, and its losses."""
    v = sums.tolist()
    return {"d_loss": v[0] / max(n_d, 1), "g_loss": v[1] / max(n_g, 1), "d_acc_real": v[2] / max(n_d, 1),
            "d_acc_fake": v[3] / max(n_d, 1), "g_grad_norm": v[4] / max(n_g, 1), "diversity_ratio": diversity_ratio}
