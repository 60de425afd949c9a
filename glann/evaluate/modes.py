"""Mode coverage: how the generated samples spread over the dataset's classes, as judged by the
domain classifier (the mode-collapse measurement of VEEGAN / PacGAN, on real labels)."""
from __future__ import annotations

import math
from typing import Optional

import torch

CONFIDENT = 0.9  # a sample counts as confidently classified above this top-class probability


def class_histogram(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 labels N -> float num_classes, the share of each class (sums to 1)."""
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes).double()
    return counts / counts.sum().clamp_min(1)


def mode_stats(probs: torch.Tensor, reference: Optional[torch.Tensor] = None,
               min_share: float = 0.0, confident: float = CONFIDENT) -> dict[str, object]:
    """Mode statistics of generated samples from the classifier's probabilities.

    probs: float N x K class probabilities of the generated samples. reference: float K, the data's
    class shares (uniform when None). A class is covered when at least one sample (or more than
    `min_share` of them) is predicted as it. KL(generated || data) is 0 when the generated class
    shares match the data's; a classless sample set (all one class) gives log K for balanced data.
    """
    k = probs.shape[1]
    pred = probs.argmax(1)
    hist = class_histogram(pred, k)
    ref = torch.full((k,), 1.0 / k, dtype=torch.float64) if reference is None else reference.double().cpu()
    covered = int(((hist > min_share) & (hist > 0)).sum())
    nz = hist > 0
    # KL(p || q) = sum p log(p / q) over the classes p puts mass on; a class the data never holds
    # but the samples do makes it infinite, which is the honest answer.
    with torch.no_grad():
        kl = float((hist[nz] * (hist[nz] / ref[nz]).log()).sum()) if bool((ref[nz] > 0).all()) else math.inf
    return {
        "classes_covered": covered,
        "num_classes": k,
        "mode_kl": kl,
        "confident_share": float((probs.max(1).values > confident).double().mean()),
        "class_histogram": [round(float(h), 6) for h in hist],
    }


def mixture_modes(samples: torch.Tensor, centres: torch.Tensor, std: float, sigmas: float = 3.0) -> dict[str, object]:
    """Mode statistics of 2-D samples (float N x 2) from a Gaussian mixture with `centres` (K x 2).

    The VEEGAN / PacGAN protocol: a sample is high quality when it lies within `sigmas` standard
    deviations of its nearest centre; a mode is covered when at least one high-quality sample is
    nearest to it. mode_kl is KL(generated || uniform) over the modes, each sample counted at its
    nearest centre (PacGAN's reverse KL): 0 for an even spread, log K when all sit on one mode.
    """
    dist, nearest = torch.cdist(samples.float().cpu(), centres.float().cpu()).min(1)
    good = dist <= sigmas * std
    k = centres.shape[0]
    return {
        "modes_covered": int((torch.bincount(nearest[good], minlength=k) > 0).sum()),
        "num_modes": k,
        "high_quality_share": float(good.double().mean()),
        "mode_kl": _kl_to_uniform(class_histogram(nearest, k)),
    }


def _kl_to_uniform(hist: torch.Tensor) -> float:
    """KL(hist || uniform) over len(hist) modes: 0 for an even spread, log K for one mode."""
    nz = hist > 0
    return float((hist[nz] * (hist[nz] * len(hist)).log()).sum())


def stacked_modes(channel_probs: list[torch.Tensor]) -> dict[str, object]:
    """Mode statistics of stacked samples: channel_probs holds, per channel, the classifier's
    probabilities (float N x K) for that channel; a sample's mode is the tuple of its channels'
    classes (K^3 modes for three channels). A mode is covered when at least one sample falls in
    it; mode_kl is KL(generated || uniform) over the modes (the data's are uniform by construction).
    """
    k = channel_probs[0].shape[1]
    mode = torch.zeros(channel_probs[0].shape[0], dtype=torch.long)
    for probs in channel_probs:
        mode = mode * k + probs.argmax(1).cpu()
    hist = class_histogram(mode, k ** len(channel_probs))
    confident = torch.stack([p.max(1).values.cpu() for p in channel_probs]).min(0).values > CONFIDENT
    return {"modes_covered": int((hist > 0).sum()), "num_modes": len(hist), "mode_kl": _kl_to_uniform(hist),
            "confident_share": float(confident.double().mean())}
