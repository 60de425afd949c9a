"""Metrics in a feature space: FID/KID (torchmetrics), precision/recall/density/coverage, and
memorisation (nearest training image distances).

All functions take features already extracted (float N x d), so one extraction serves every
metric; FID and KID still run through torchmetrics, fed by a pass-through feature module.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Union

import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ..errors import DataError
from ..images import save_grid
from ..knn import nearest

# Each metric here is computed from the whole feature sets it is given, in one process. torchmetrics
# would otherwise all-gather its states across a torchrun job at compute(), which hangs when one rank
# scores alone (the training-time checks run on rank 0) and double-counts when every rank scores.
LOCAL = {"sync_on_compute": False}


class Precomputed(nn.Module):
    """The identity as a torchmetrics feature module: `update` receives features, not images.

    Extracting once and feeding every metric the same features is what lets PRDC, FID and KID
    share one (slow, for Inception) pass over the images.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check(real: torch.Tensor, fake: torch.Tensor, least: int = 2) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise DataError(f"features must be N x d with the same d, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) < least:
        raise DataError(f"need at least {least} real and {least} generated images, got "
                        f"{real.shape[0]} and {fake.shape[0]}; raise --num-samples")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (float N x d, M x d); FID
    when the features are Inception pool3."""
    _check(real, fake)
    metric = FrechetInceptionDistance(feature=Precomputed(real.shape[1]), reset_real_features=False, **LOCAL)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_subset_size(subset_size: int, n: int) -> int:
    """The KID subset size used for n samples: `subset_size`, or half of n when n is under twice it
    (subsets of the whole set would all be the same, and the std would read 0)."""
    return subset_size if n >= 2 * subset_size else max(2, n // 2)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 1000, subsets: int = 100,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel over random
    subsets of kid_subset_size(subset_size, smaller set's size); returns (mean, std)."""
    _check(real, fake)
    size = kid_subset_size(subset_size, min(real.shape[0], fake.shape[0]))
    with warnings.catch_warnings():  # "KID keeps all features in memory": it is meant to, here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=size, **LOCAL)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # torchmetrics draws the subsets from the global generator
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std)


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (float N)."""
    out = []
    for c in x.split(chunk):
        d = torch.cdist(c, x)
        # k + 1: the row itself is at distance 0 and is its own first neighbour.
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5, chunk: int = 2048) -> dict[str, float]:
    """Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020)
    with k-NN balls, k = 5 as in both papers. real: float N x d, fake: float M x d.

    precision: share of fakes inside some real ball; recall: share of reals inside some fake ball;
    density: mean number of real balls holding a fake, / k (about 1 when the sets match);
    coverage: share of reals whose ball holds a fake.
    """
    _check(real, fake, least=k + 1)
    real, fake = real.double(), fake.double()  # distances compared against radii: avoid float32 ties
    r_real = _kth_nn_radius(real, k, chunk)
    r_fake = _kth_nn_radius(fake, k, chunk)
    in_real_balls = torch.zeros(fake.shape[0], dtype=torch.float64)  # per fake: how many real balls hold it
    real_covered = torch.zeros(real.shape[0], dtype=torch.bool)  # per real: some fake inside its ball
    real_recalled = torch.zeros(real.shape[0], dtype=torch.bool)  # per real: inside some fake ball
    for start in range(0, fake.shape[0], chunk):
        f = fake[start:start + chunk]
        d = torch.cdist(f, real)  # chunk x N
        inside = d <= r_real[None]
        in_real_balls[start:start + chunk] = inside.sum(1).double()
        real_covered |= inside.any(0)
        real_recalled |= (d <= r_fake[start:start + chunk, None]).any(0)
    return {
        "precision": (in_real_balls > 0).double().mean().item(),
        "recall": real_recalled.double().mean().item(),
        "density": (in_real_balls.sum() / (k * fake.shape[0])).item(),
        "coverage": real_covered.double().mean().item(),
    }


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).float() / 255.0


def memorisation(generated: torch.Tensor, test: torch.Tensor, train: torch.Tensor,
                 grid_path: Union[str, Path, None] = None, grid_pairs: int = 32) -> dict[str, float]:
    """Does the model copy its training set? Pixel-space nearest training image distances.

    generated, test, train: uint8 N x C x H x W of one size. Returns the mean L2 distance (pixels in
    [0, 1]) from each generated image to its nearest training image, the same for test images, and
    their ratio: about 1 for a model that generalises like held-out data, well below 1 for one that
    copies. Writes, when grid_path is set, a PNG of generated images (odd columns) beside their
    nearest training images (even columns).
    """
    if generated.shape[1:] != train.shape[1:] or test.shape[1:] != train.shape[1:]:
        raise DataError(f"memorisation needs images of one shape: generated {tuple(generated.shape[1:])}, "
                        f"test {tuple(test.shape[1:])}, train {tuple(train.shape[1:])}")
    db = _flat(train)
    d_gen, idx = nearest(_flat(generated), db, k=1, backend="torch")
    d_test, _ = nearest(_flat(test), db, k=1, backend="torch")
    gen_mean = d_gen[:, 0].clamp_min(0).sqrt().mean().item()
    test_mean = d_test[:, 0].clamp_min(0).sqrt().mean().item()
    if grid_path is not None:
        n = min(grid_pairs, generated.shape[0])
        pairs = torch.stack([generated[:n], train[idx[:n, 0]]], 1).flatten(0, 1)  # g0, nn0, g1, nn1, ...
        save_grid(pairs.float() / 255.0, grid_path, nrow=8)
    return {"nn_train_distance_generated": gen_mean, "nn_train_distance_test": test_mean,
            "memorisation_ratio": gen_mean / test_mean if test_mean > 0 else math.nan}


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images (float N x C x H x W), per pixel; 0 for identical ones."""
    x = images.reshape(images.shape[0], -1).float()
    d = torch.cdist(x, x)
    n = x.shape[0]
    return (d.sum() / max(n * (n - 1), 1)).item() / math.sqrt(x.shape[1])


def domain_score(probs: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """The Inception Score's formula, exp E[KL(p(y|x) || p(y))] over `splits` splits (mean, std), on
    the domain classifier's class probabilities (float N x K) instead of Inception's: torchmetrics'
    InceptionScore fed with log-probabilities as logits. High when each sample is confidently one
    class and the classes are spread; at most K. Not comparable with a published IS."""
    with warnings.catch_warnings():  # its note that it buffers every feature: N x K here, small
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=nn.Identity(), splits=splits, **LOCAL)
    metric.update(probs.double().clamp_min(1e-12).log())
    with torch.random.fork_rng(devices=[]):  # compute() shuffles with the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


# Every metric glann shows, key -> (label, which way is better: lower | higher | closer to data | -).
# `glann evaluate` (format_table), the latent-baseline table and the comparison report all take
# their labels from here, each showing the keys it lists, in its order.
METRICS: dict[str, tuple[str, str]] = {
    "fd": ("FD", "lower"), "kd_mean": ("KD", "lower"), "precision": ("precision", "higher"),
    "recall": ("recall", "higher"), "density": ("density", "higher"), "coverage": ("coverage", "higher"),
    "classes_covered": ("classes covered", "higher"), "modes_covered": ("modes covered", "higher"),
    "high_quality_share": ("high-quality share", "higher"), "mode_kl": ("KL(gen || data)", "lower"),
    "confident_share": ("confident share", "higher"), "memorisation_ratio": ("memorisation ratio", "-"),
    "nn_train_distance_generated": ("NN-train dist (gen)", "-"), "nn_train_distance_test": ("NN-train dist (test)", "-"),
    "recon_l1": ("recon L1", "lower"), "recon_psnr": ("recon PSNR (dB)", "higher"),
    "classifier_accuracy": ("classifier test acc", "-"), "pixel_fd": ("pixel FD", "lower"),
    "point_fd": ("point FD", "lower"), "diversity": ("diversity", "closer to data"), "train_seconds": ("train s", "-"),
    "g_steps": ("G updates", "-"), "flags": ("GAN flags", "-"),
    "domain_score": ("domain score", "higher"), "class_accuracy": ("class accuracy", "higher"),
    "class_fd_mean": ("FD within classes (mean)", "lower"),
}


def metric_columns(keys: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(key, label, better) for `keys`, in their order, from METRICS."""
    return [(k, *METRICS[k]) for k in keys]
