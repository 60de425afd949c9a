"""The adversarial baseline: GLANN's generator against a DCGAN discriminator.

Losses: minimax (Goodfellow et al. 2014, the saturating one), non-saturating (same paper,
sec. 3), LSGAN (Mao et al. 2017), WGAN-GP (Gulrajani et al. 2017), hinge (Lim & Ye 2017;
SAGAN). Stabilisers, each a `gan.*` switch: one-sided label smoothing, minibatch standard
deviation, PacGAN packing, spectral norm, R1 penalty, feature matching, n_critic, separate
learning rates. Every epoch it logs what diagnoses GAN failure and flags what it sees
(`diagnose`): vanishing generator gradients, mode collapse, oscillation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import GlannConfig
from .data import Dataset
from .devices import to_device_async
from .glo import build_generator
from .images import save_grid, to_model, to_unit
from .nets import Discriminator, Generator, MLPDiscriminator
from .runs import CHECK_EVERY, Budget, Run, check_finite, keep_configured_lr

# Diagnostic thresholds (heuristics, documented so a reader can argue with them).
VANISH_ACC = 0.99  # D right about (nearly) every real and every fake decision ...
VANISH_FALL = 0.1  # ... while G's gradient norm is under a tenth of its peak so far
COLLAPSE_RATIO = 0.3  # sample diversity under 30% of the real data's ...
COLLAPSE_FALL = 0.5  # ... or under half of its own peak so far
OSC_WINDOW = 6  # epochs looked at for oscillation: D's accuracy on fakes swings up and down
OSC_SWINGS = 4  # at least this many direction changes ...
OSC_RANGE = 0.3  # ... spanning at least this much accuracy
DIVERSITY_SAMPLES = 64


@dataclass
class GANResult:
    generator: Generator
    discriminator: Discriminator
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch diagnostics (as logged)
    flags: list[str] = field(default_factory=list)  # "epoch 3: mode collapse (...)", in order seen
    g_steps: int = 0  # generator updates in total (across resumes)
    seconds: float = 0.0  # training wall-clock in total (across resumes)


def build_discriminator(cfg: GlannConfig, shape: Sequence[int]) -> Union[Discriminator, MLPDiscriminator]:
    """The discriminator for samples of `shape`: (C, S, S) images -> DCGAN-style, (D,) vectors -> MLP."""
    g = cfg.gan
    if len(shape) == 1:
        return MLPDiscriminator(shape[0], g.d_hidden, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm)
    image_size, channels = shape[-1], shape[0]
    return Discriminator(image_size, channels, g.ndf, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm)


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


def gradient_penalty(D: Discriminator, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """WGAN-GP: E[(||grad D(x_hat)|| - 1)^2] on random interpolates of real and fake (one norm per decision)."""
    alpha = to_device_async(torch.rand(real.shape[0], *[1] * (real.ndim - 1), generator=rng), real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    norms = grad.reshape(real.shape[0] // D.pack, -1).norm(dim=1)
    return (norms - 1.0).pow(2).mean()


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1: E[||grad D(x)||^2] on real data (`real` must require grad and `d_real` come from it)."""
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.pow(2).reshape(d_real.shape[0], -1).sum(1).mean()


# ---------------------------------------------------------------------------- diagnostics
def diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images (float N x C x H x W), per pixel; 0 for identical ones."""
    x = images.reshape(images.shape[0], -1).float()
    d = torch.cdist(x, x)
    n = x.shape[0]
    return (d.sum() / max(n * (n - 1), 1)).item() / math.sqrt(x.shape[1])


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
def train_gan(data: Dataset, cfg: GlannConfig, run: Optional[Run] = None) -> GANResult:
    """Train GLANN's generator adversarially on `data` (uint8 images, or float points, on the training device).

    Noise is N(0, I) of size model.nz (the generator projects it to the unit sphere). Stops after
    gan.epochs, or earlier at the gan.max_steps / gan.max_seconds budget. Resumes from run's GAN
    checkpoint. Raises TrainingError on a non-finite loss, keeping the last good checkpoint.
    With eval.every=K it logs the domain FD every K epochs, outside the timed part (as IMLE does),
    so a report can race GLANN and the GAN on one metric against training seconds.
    """
    device = data.images.device
    n, gc = len(data), cfg.gan
    torch.manual_seed(cfg.seed)  # module initialisation is the only user of the global RNG
    rng = torch.Generator().manual_seed(cfg.seed)  # batch order, noise, penalty interpolates
    G = build_generator(cfg, data.shape).to(device)
    D = build_discriminator(cfg, data.shape).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=gc.lr_generator, betas=(gc.beta1, gc.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=gc.lr_discriminator, betas=(gc.beta1, gc.beta2))
    state = {"generator": G, "discriminator": D, "opt_g": opt_g, "opt_d": opt_d}
    start, extra = run.load_stage("gan", state, rng, device) if run else (0, {})
    if start:
        keep_configured_lr(opt_g, gc.lr_generator)
        keep_configured_lr(opt_d, gc.lr_discriminator)
    g_steps = int(extra["g_steps"]) if "g_steps" in extra else 0
    budget = Budget(gc.max_seconds, extra)
    history = [{k: float(r[k]) for k in ("d_acc_real", "d_acc_fake", "g_grad_norm", "diversity_ratio")}
               for r in (run.read_metrics() if run else []) if r.get("stage") == "gan" and r["step"] < start]

    batch = min(gc.batch_size, n) // gc.pack * gc.pack
    steps = n // batch
    threshold = 0.5 if gc.loss == "lsgan" else 0.0  # logit above which D calls a decision real
    grid_noise = torch.randn(max(cfg.grid_size, DIVERSITY_SAMPLES), cfg.model.nz,
                             generator=torch.Generator().manual_seed(cfg.seed + 2)).to(device)
    ref_idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 3))[:DIVERSITY_SAMPLES]
    real_diversity = diversity(to_model(data.images[ref_idx.to(device)]))
    flags: list[str] = []
    fd_check = None  # built at the first check: data, classifier, reference features

    def out_of_budget() -> bool:
        return (gc.max_steps is not None and g_steps >= gc.max_steps) or budget.exhausted(in_epoch=False)

    epochs = tqdm(range(start, gc.epochs), desc="GAN", unit="epoch", initial=start, total=gc.epochs)
    for epoch in epochs:
        if out_of_budget():
            break
        G.train()
        D.train()
        budget.start_epoch()
        perm = to_device_async(torch.randperm(n, generator=rng), device)
        # Running sums: d_loss, g_loss, D right on real, D right on fake, G grad norm; D steps; G steps.
        sums = torch.zeros(5, device=device)
        n_d = n_g = 0
        bar = tqdm(range(steps), desc=f"GAN epoch {epoch}", unit="batch", leave=False,
               disable=None)  # per-batch bars only on a terminal: in a log file they are noise
        for step in bar:
            real = to_model(data.images[perm[step * batch:(step + 1) * batch]])
            z = to_device_async(torch.randn(batch, cfg.model.nz, generator=rng), device)
            with torch.no_grad():
                fake = G(z)
            # -- discriminator step
            real.requires_grad_(gc.r1_gamma > 0)
            d_real, d_fake = D(real), D(fake)
            loss_d = discriminator_loss(gc.loss, d_real, d_fake, gc.label_smoothing)
            if gc.loss == "wgan-gp":
                loss_d = loss_d + gc.gp_lambda * gradient_penalty(D, real.detach(), fake, rng)
            if gc.r1_gamma > 0:
                loss_d = loss_d + 0.5 * gc.r1_gamma * r1_penalty(d_real, real)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            with torch.no_grad():
                sums[0] += loss_d.detach()
                sums[2] += (d_real > threshold).float().mean()
                sums[3] += (d_fake <= threshold).float().mean()
            n_d += 1
            # -- generator step, every n_critic discriminator steps
            if (step + 1) % gc.n_critic == 0:
                z = to_device_async(torch.randn(batch, cfg.model.nz, generator=rng), device)
                d_fake, f_fake = D(G(z), return_features=True)
                loss_g = generator_loss(gc.loss, d_fake)
                if gc.feature_matching > 0:
                    # Salimans et al. 2016, sec. 3.1: match the mean of D's last features on real data.
                    with torch.no_grad():
                        f_real = D(real.detach(), return_features=True)[1]
                    loss_g = loss_g + gc.feature_matching * (f_real.mean(0) - f_fake.mean(0)).pow(2).mean()
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(G.parameters(), float("inf"))  # measures, never clips
                opt_g.step()
                with torch.no_grad():
                    sums[1] += loss_g.detach()
                    sums[4] += gnorm
                n_g += 1
                g_steps += 1
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                s = sums.tolist()  # one host sync every CHECK_EVERY steps
                check_finite(s[0] / n_d + (s[1] / n_g if n_g else 0.0), "GAN", epoch, step, run)
                bar.set_postfix(d=f"{s[0] / n_d:.3f}", g=f"{s[1] / max(n_g, 1):.3f}")
            if (gc.max_steps is not None and g_steps >= gc.max_steps) or budget.exhausted():
                break  # the budget ends mid-epoch: close this epoch and stop
        budget.end_epoch()

        # -- diagnostics, on fixed noise so that epochs compare
        s = sums.tolist()
        G.eval()
        with torch.no_grad():
            samples = G(grid_noise)
        G.train()
        record = {"d_loss": s[0] / max(n_d, 1), "g_loss": s[1] / max(n_g, 1), "d_acc_real": s[2] / max(n_d, 1),
                  "d_acc_fake": s[3] / max(n_d, 1), "g_grad_norm": s[4] / max(n_g, 1),
                  "diversity_ratio": diversity(samples[:DIVERSITY_SAMPLES]) / max(real_diversity, 1e-12)}
        if run and run.is_main and cfg.eval.every and (epoch + 1) % cfg.eval.every == 0:
            from .evaluate.training import DomainFDCheck  # late: the evaluation suite loads only when asked for

            fd_check = fd_check or DomainFDCheck(cfg, device)
            record["domain_fd"] = fd_check(G)  # no mapper: G takes the N(0, I) noise itself
        history.append({k: record[k] for k in ("d_acc_real", "d_acc_fake", "g_grad_norm", "diversity_ratio")})
        seen = diagnose(history)
        flags += [f"epoch {epoch}: {reason}" for reason in seen.values()]
        epochs.set_postfix(d=f"{record['d_loss']:.3f}", g=f"{record['g_loss']:.3f}",
                           flags=",".join(seen) or "-")
        if run:
            run.log("gan", epoch, **record, g_steps=g_steps, seconds=budget.spent,
                    **{f"flag_{k}": float(k in seen) for k in ("vanishing", "collapse", "oscillation")})
            if (epoch + 1) % cfg.sample_every == 0 or epoch + 1 == gc.epochs or out_of_budget():
                save_grid(to_unit(samples[:cfg.grid_size]), run.sample_path(f"gan_samples_epoch{epoch:04d}"))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == gc.epochs or out_of_budget():
                run.save_stage("gan", epoch, state, rng, extra={"g_steps": torch.tensor(g_steps), **budget.state()})
    G.eval()
    D.eval()
    return GANResult(G, D, history, flags, g_steps, budget.spent)

