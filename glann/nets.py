"""Networks: the image generator (shared by GLANN and the GAN baseline), the IMLE mapper, the GAN's
discriminator, and the builders that make each from a config (inference and training use the same)."""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn as nn

from .config import IMAGE_SIZES, GlannConfig


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
        self.out_shape = (channels, image_size, image_size)
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

    def __init__(self, noise_dim: int = 32, nz: int = 64, hidden: Sequence[int] = (128, 128), batch_norm: bool = True):
        super().__init__()
        self.noise_dim, self.nz = noise_dim, nz
        layers: list[nn.Module] = []
        d = noise_dim
        for h in hidden:
            layers += [nn.Linear(d, h, bias=not batch_norm), nn.BatchNorm1d(h) if batch_norm else nn.Identity(),
                       nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, nz, bias=False))
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


class MinibatchStd(nn.Module):
    """Append the mean over features of the per-group standard deviation as one more channel.

    ProGAN (Karras et al. 2018, sec. 3): a batch of collapsed samples has a small std,
    which the discriminator can then see and punish.
    """

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, rest = x.shape[0], x.shape[1:]  # C x H x W for images, F for vectors
        g = min(self.group_size, b)
        while b % g:  # the last batch may not divide into groups of 4
            g -= 1
        y = x.view(g, -1, *rest)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().flatten(1).mean(1)  # (b/g,)
        y = y.view(1, -1, *[1] * len(rest)).expand(g, -1, 1, *rest[1:]).reshape(b, 1, *rest[1:])
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Image (B x C x S x S, in [-1, 1]) -> one logit per decision (B / pack).

    DCGAN-style, the generator mirrored: stride-2 convolutions from S down to S/4 at 28/32 px
    (to 4 x 4 at 64/128 px), channels doubling from `ndf`, then a linear layer.
    `pack` > 1 is PacGAN (Lin et al. 2018): `pack` samples are stacked on the channel axis and
    judged together, so the first conv takes C x pack channels. `minibatch_std` adds the ProGAN
    layer before the head; `spectral_norm` wraps every conv and linear (Miyato et al. 2018).
    Batch norm mixes samples, which per-sample gradient penalties (WGAN-GP, R1) do not allow:
    turn it off for those.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, ndf: int = 64, pack: int = 1,
                 minibatch_std: bool = False, spectral_norm: bool = False, batch_norm: bool = True):
        super().__init__()
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
        if pack < 1:
            raise ValueError(f"pack must be >= 1, got {pack}")
        self.image_size, self.channels, self.pack = image_size, channels, pack
        s_last = image_size // 4 if image_size <= 32 else 4
        n_down = int(math.log2(image_size // s_last))
        widths = [ndf * 2 ** i for i in range(n_down)]  # e.g. [64, 128] at 28 px

        layers: list[nn.Module] = []
        cin = channels * pack
        for i, cout in enumerate(widths):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
            if batch_norm and i > 0:  # DCGAN: no batch norm on the first layer
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.mbstd = MinibatchStd() if minibatch_std else None
        self.feature_dim = widths[-1] * s_last * s_last
        self.head = nn.Linear((widths[-1] + int(minibatch_std)) * s_last * s_last, 1)
        _init_weights(self)
        if spectral_norm:
            _spectral_norm(self)

    def pack_input(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x S x S -> B/pack x (C * pack) x S x S (consecutive samples share a decision)."""
        b, c, h, w = x.shape
        if b % self.pack:
            raise ValueError(f"batch of {b} does not split into packs of {self.pack}")
        return x.reshape(b // self.pack, c * self.pack, h, w)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (B / pack); with return_features also the last conv features (B / pack x feature_dim)."""
        h = self.body(self.pack_input(x))
        feats = h.flatten(1)
        if self.mbstd is not None:
            h = self.mbstd(h)
        logits = self.head(h.flatten(1)).squeeze(1)
        return (logits, feats) if return_features else logits


class MLPGenerator(nn.Module):
    """Latent code (B x nz) -> vector (B x dim): the generator for vector data (2-D mixtures).

    Fully connected ReLU layers with batch norm, as the PacGAN 2-D experiments' generator (four
    hidden layers of 400); a linear output, since vector data has no fixed range. Inputs are
    projected to the unit sphere, like the image generator's.
    """

    def __init__(self, nz: int = 64, dim: int = 2, hidden: Sequence[int] = (400, 400, 400, 400),
                 batch_norm: bool = True):
        super().__init__()
        self.nz, self.dim, self.out_shape = nz, dim, (dim,)
        self.net = _mlp(nz, dim, hidden, nn.ReLU, batch_norm)
        _init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(sphere(z))


class MLPDiscriminator(nn.Module):
    """Vector (B x dim) -> one logit per decision (B / pack): the discriminator for vector data.

    LeakyReLU layers (PacGAN's 2-D discriminator used maxout; LeakyReLU keeps it to stock layers).
    `pack`, `minibatch_std` and `spectral_norm` as for the image Discriminator.
    """

    def __init__(self, dim: int = 2, hidden: Sequence[int] = (200, 200, 200), pack: int = 1,
                 minibatch_std: bool = False, spectral_norm: bool = False, batch_norm: bool = False):
        super().__init__()
        if pack < 1:
            raise ValueError(f"pack must be >= 1, got {pack}")
        if not hidden:
            raise ValueError("the MLP discriminator needs at least one hidden layer")
        self.dim, self.pack = dim, pack
        self.body = _mlp(dim * pack, hidden[-1], hidden[:-1], lambda: nn.LeakyReLU(0.2), batch_norm)
        self.body.append(nn.LeakyReLU(0.2))
        self.mbstd = MinibatchStd() if minibatch_std else None
        self.feature_dim = hidden[-1]
        self.head = nn.Linear(hidden[-1] + int(minibatch_std), 1)
        _init_weights(self)
        if spectral_norm:
            _spectral_norm(self)

    def pack_input(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if b % self.pack:
            raise ValueError(f"batch of {b} does not split into packs of {self.pack}")
        return x.reshape(b // self.pack, -1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (B / pack); with return_features also the last hidden features (B / pack x feature_dim)."""
        h = self.body(self.pack_input(x))
        feats = h
        if self.mbstd is not None:
            h = self.mbstd(h)
        logits = self.head(h).squeeze(1)
        return (logits, feats) if return_features else logits


def _mlp(d_in: int, d_out: int, hidden: Sequence[int], act, batch_norm: bool) -> nn.Sequential:
    """Linear -> [BatchNorm] -> act for each hidden width, then a linear output layer."""
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.BatchNorm1d(h) if batch_norm else nn.Identity(), act()]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def _spectral_norm(module: nn.Module) -> None:
    """Spectral normalisation on every conv and linear layer (after init: it normalises those weights)."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(m)


def _init_weights(module: nn.Module) -> None:
    # The reference initialises every linear and conv layer with xavier_normal(gain=sqrt 2).
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=math.sqrt(2.0))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- builders
def build_generator(cfg: GlannConfig, shape: Sequence[int]) -> Union[Generator, MLPGenerator]:
    """The generator for samples of `shape`: (C, S, S) images -> Generator, (D,) vectors -> MLPGenerator."""
    m = cfg.model
    if len(shape) == 1:
        return MLPGenerator(m.nz, shape[0], m.mlp_hidden, m.batch_norm)
    return Generator(m.nz, shape[-1], shape[0], m.ngf, m.fc_dim, m.batch_norm)


def build_mapper(cfg: GlannConfig) -> Mapper:
    """The IMLE mapper: model.noise_dim noise -> model.nz latents."""
    return Mapper(cfg.model.noise_dim, cfg.model.nz, cfg.model.mapper_hidden, cfg.model.mapper_batch_norm)


def build_discriminator(cfg: GlannConfig, shape: Sequence[int]) -> Union[Discriminator, MLPDiscriminator]:
    """The discriminator for samples of `shape`: (C, S, S) images -> DCGAN-style, (D,) vectors -> MLP."""
    g = cfg.gan
    if len(shape) == 1:
        return MLPDiscriminator(shape[0], g.d_hidden, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm)
    image_size, channels = shape[-1], shape[0]
    return Discriminator(image_size, channels, g.ndf, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm)
