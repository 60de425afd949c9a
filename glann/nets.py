"""Networks: the image generator (shared by GLANN and the GAN baseline) and the IMLE mapper."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .config import IMAGE_SIZES


def sphere(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Project rows onto the unit sphere (GLO keeps every code there)."""
    return z / z.norm(dim=1, keepdim=True).clamp_min(eps)


class Generator(nn.Module):
    """Latent code (B x nz) -> image (B x C x S x S) in [-1, 1].

    DCGAN-style: a fully connected stem (nz -> fc_dim -> C0 x s0 x s0), then stride-2
    transposed convolutions. At 28/32 px this is the reference GLANN generator
    (two upsamplings from S/4; about 6.6 M parameters at nz 64, 28 px); at 64/128 px
    it starts from 4 x 4 and doubles four or five times, channels halving down to `ngf`.
    Inputs are projected to the unit sphere first, as the codes are.
    """

    def __init__(self, nz: int = 64, image_size: int = 28, channels: int = 1, ngf: int = 64,
                 fc_dim: int = 1024, batch_norm: bool = True):
        super().__init__()
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
        self.nz, self.image_size, self.channels = nz, image_size, channels
        s0 = image_size // 4 if image_size <= 32 else 4
        n_up = int(math.log2(image_size // s0))
        widths = [ngf * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. [128, 64] at 28 px
        self.s0, self.c0 = s0, widths[0]

        def norm1d(n: int) -> nn.Module:
            return nn.BatchNorm1d(n) if batch_norm else nn.Identity()

        def norm2d(n: int) -> nn.Module:
            return nn.BatchNorm2d(n) if batch_norm else nn.Identity()

        self.stem = nn.Sequential(
            nn.Linear(nz, fc_dim, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(fc_dim, self.c0 * s0 * s0, bias=False), norm1d(self.c0 * s0 * s0),
            nn.LeakyReLU(0.2, inplace=True),
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), norm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(sphere(z)).view(-1, self.c0, self.s0, self.s0)
        return self.body(x)


class Mapper(nn.Module):
    """IMLE mapper T: Gaussian noise (B x noise_dim) -> latent (B x nz); reference MLP 32-128-128-64."""

    def __init__(self, noise_dim: int = 32, nz: int = 64, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        self.noise_dim, self.nz = noise_dim, nz
        layers: list[nn.Module] = []
        d = noise_dim
        for h in hidden:
            layers += [nn.Linear(d, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, nz, bias=False))
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


def _init_weights(module: nn.Module) -> None:
    # The reference initialises every linear and conv layer with xavier_normal(gain=sqrt 2).
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=math.sqrt(2.0))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
