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
