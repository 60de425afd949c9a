"""Image conventions, in one place: uint8 at rest, float in [-1, 1] inside networks,
float in [0, 1] at the API boundary."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image


def to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W in [0, 255] -> float32 in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> float in [0, 1] (clamped)."""
    return x.add(1.0).mul_(0.5).clamp_(0.0, 1.0)


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 in [0, 255], rounded."""
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write float images in [0, 1] (N x C x H x W) as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    nrow = nrow or max(1, int(round(n ** 0.5)))
    save_image(images.detach().float().cpu(), path, nrow=nrow, padding=2, pad_value=1.0)
    return path
