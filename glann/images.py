"""Image conventions, in one place: uint8 at rest, float in [-1, 1] inside networks,
float in [0, 1] at the API boundary. Vector data (float N x D, the 2-D mixtures) has no fixed
range: the conversions pass it through unchanged and `save_grid` draws it as a scatter plot."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from .checkpoints import atomic_write


def to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W in [0, 255] -> float32 in [-1, 1]; vectors (N x D) -> float32 unchanged."""
    if x.ndim == 2:
        return x.float()
    return x.float().div_(127.5).sub_(1.0)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> float in [0, 1] (clamped); vectors (N x D) unchanged."""
    if x.ndim == 2:
        return x
    return x.add(1.0).mul_(0.5).clamp_(0.0, 1.0)


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 in [0, 255], rounded."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write float images in [0, 1] (N x C x H x W) as one PNG grid; returns the path.
    Vectors (N x D) are drawn as a scatter plot of their first two coordinates."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"save_grid writes .png or .jpg files, got '{path.name}'")
    if len(images) == 0:
        raise ValueError("save_grid got no images")
    fmt = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    if images.ndim == 2:
        atomic_write(path, lambda tmp: save_scatter(images, tmp, fmt))
        return path
    n = images.shape[0]
    nrow = nrow or max(1, int(round(n ** 0.5)))
    # Atomic: a kill mid-write leaves the previous grid, never a torn PNG.
    atomic_write(path, lambda tmp: save_image(images.detach().float().cpu(), tmp, nrow=nrow, padding=2,
                                              pad_value=1.0, format=fmt))
    return path


def save_scatter(points: torch.Tensor, path: str | Path, fmt: str = "png") -> Path:
    """Scatter plot of the first two coordinates of float N x D points, as a PNG (or `fmt`)."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

    xy = points.detach().float().cpu().numpy()
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(xy[:, 0], xy[:, 1] if xy.shape[1] > 1 else 0 * xy[:, 0], s=2, alpha=0.5, linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{len(xy)} samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format=fmt)
    return Path(path)
