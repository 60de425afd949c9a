"""Networks: the image generator (shared by GLANN and the GAN baseline), the IMLE mapper, the GAN's
discriminator, and the builders that make each from a config (inference and training use the same)."""
from __future__ import annotations

import math
import time
import warnings
from typing import Optional, Sequence, Union

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
    Inputs are projected to the unit sphere first, as the codes are. The stem's linear layers have no
    bias (the reference's) unless `stem_bias`: without batch norm nothing else shifts them.
    """

    def __init__(self, nz: int = 64, image_size: int = 28, channels: int = 1, ngf: int = 64,
                 fc_dim: int = 1024, batch_norm: bool = True, num_classes: int = 0, stem_bias: bool = False):
        super().__init__()
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
        self.nz, self.image_size, self.channels = nz, image_size, channels
        self.class_embed = ClassShift(num_classes, nz) if num_classes else None
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
            nn.Linear(nz, fc_dim, bias=stem_bias), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(fc_dim, self.c0 * s0 * s0, bias=stem_bias), norm1d(self.c0 * s0 * s0),
            nn.LeakyReLU(0.2, inplace=True),
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), norm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """labels (conditional GAN only): the classes asked for, which shift z before the sphere."""
        x = self.stem(sphere(_shift(self, z, labels))).view(-1, self.c0, self.s0, self.s0)
        return self.body(x)


class ClassShift(nn.Module):
    """The conditional GAN's generator input: the noise plus a learnt class direction of fixed
    length sqrt(dim), z + sqrt(dim) E[y] / ||E[y]||, before the generator's sphere projection.

    The length is fixed because only the direction of the sum reaches the generator: an embedding
    free to grow drowns the noise (z's length is about sqrt(dim) too), and the first 600 s run with
    a free one drew one image per class."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.scale = num_classes, math.sqrt(dim)
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return z + self.scale * sphere(self.embed(labels))


def _shift(module: nn.Module, z: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """z, shifted by its class embedding when the module is conditional and labels are given."""
    if labels is None or module.class_embed is None:
        return z
    return module.class_embed(z, labels)


MIXTURE_MAX_CODES = 20000  # MixturePrior.fit's sample of the codes: seconds on a 2-core CPU at nz 64
# EM iterations of MixturePrior.fit. On 300 s runs' Fashion-MNIST codes (2-core EPYC, 20,000 codes)
# 10 iterations scored as the converged fit (34-47 iterations, tol 1e-3) in a sixth of its time:
# domain FD 24.0 against 23.7 and 21.3 against 21.5, fits of 11 s against 48-66 s
# (benchmarks/ablation_cpu.md); the seconds saved go to GLO under a max_seconds budget
MIXTURE_EM_ITERS = 10
# A real fit's EM time over the 2-iteration probe's, calibrated on the 2-core EPYC at MIXTURE_EM_ITERS:
# the probe (which also runs a first M-step and a last E-step, on random unit vectors) took 2.7 s at
# 20,000 rows and 10 iterations 11.6 s; real 10-iteration fits to Fashion-MNIST codes 10.7-10.8 s
FIT_SCALE = 4
PRIOR_ROWS = 1024  # rows per batched matmul of MixturePrior: 16 MB of gathered factors at nz 64


class MixturePrior(nn.Module):
    """A Gaussian mixture over the latent space, drawn as a fixed map of standard noise.

    Noise of nz + 1 values: the last one, through the normal CDF, picks the component in its
    weight's share; the first nz, coloured by that component's Cholesky factor, give the point.
    So mixture samples are still a function of N(0, I) noise, and the seeding, pooling and
    resuming of plain IMLE carry over. The parameters are buffers, fitted once (`fit`) to the
    GLO codes and saved with the mapper.
    """

    def __init__(self, components: int, nz: int):
        super().__init__()
        self.components, self.nz = components, nz
        self.register_buffer("cum_weights", torch.linspace(1.0 / components, 1.0, components))
        self.register_buffer("means", torch.zeros(components, nz))
        self.register_buffer("chol", torch.eye(nz).repeat(components, 1, 1))

    def _em(self, rows: int, seed: int, max_iter: int = MIXTURE_EM_ITERS):
        """The scikit-learn EM (k-means start) that fits `rows` codes: with few codes, fewer
        components (4 nz codes each), as `glann evaluate`'s mixture baseline does."""
        from sklearn.mixture import GaussianMixture

        k = min(self.components, max(1, rows // (4 * self.nz)))
        return GaussianMixture(k, covariance_type="full", reg_covar=1e-5, max_iter=max_iter, random_state=seed)

    def fit_seconds_estimate(self, n: int, max_codes: int = MIXTURE_MAX_CODES) -> float:
        """Seconds `fit` will take on n codes here, timed on random unit vectors of the same size:
        the k-means start once, and a 2-iteration EM scaled by FIT_SCALE. Used to plan a time
        budget before GLO has made the codes; a plan, not a promise."""
        from sklearn.cluster import KMeans

        rows = torch.randn(min(n, max_codes), self.nz, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        rows = (rows / rows.norm(dim=1, keepdim=True)).numpy()
        em = self._em(len(rows), 0, max_iter=2)
        t0 = time.perf_counter()
        KMeans(em.n_components, n_init=1, random_state=0).fit(rows)  # the start `fit` makes (its init_params)
        t1 = time.perf_counter()
        with warnings.catch_warnings():  # "did not converge": two iterations are all it is asked for
            warnings.simplefilter("ignore")
            em.set_params(init_params="random_from_data").fit(rows)
        return (t1 - t0) + (time.perf_counter() - t1) * FIT_SCALE

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, seed: int = 0, max_codes: int = MIXTURE_MAX_CODES) -> None:
        """Fit a full-covariance mixture (scikit-learn EM, k-means start, MIXTURE_EM_ITERS
        iterations) to at most max_codes random rows of codes (float N x nz); with few codes, fewer
        components (4 nz codes each) and the rest weight 0, as `glann evaluate`'s mixture baseline does."""
        from sklearn.exceptions import ConvergenceWarning

        g = torch.Generator().manual_seed(seed)
        fit = codes.detach().double().cpu()[torch.randperm(len(codes), generator=g)[:max_codes]]
        gmm = self._em(len(fit), seed)
        k = gmm.n_components
        with warnings.catch_warnings():  # MIXTURE_EM_ITERS stops EM before its tolerance, on purpose
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(fit.numpy())
        weights = torch.zeros(self.components, dtype=torch.float64)
        weights[:k] = torch.from_numpy(gmm.weights_)
        self.cum_weights.copy_(torch.cumsum(weights / weights.sum(), 0))
        self.cum_weights[-1] = 1.0
        self.means.zero_()[:k] = torch.from_numpy(gmm.means_).to(self.means)
        self.chol[:k] = torch.linalg.cholesky(torch.from_numpy(gmm.covariances_)).to(self.chol)

    @property
    def fitted_components(self) -> int:
        """Components with a weight > 0 (fewer than `components` when fitted to few codes)."""
        return int((torch.diff(self.cum_weights, prepend=self.cum_weights.new_zeros(1)) > 0).sum())

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(e[:, -1]).contiguous()
        comp = torch.searchsorted(self.cum_weights, u).clamp_max(self.components - 1)
        x = e[:, :self.nz].unsqueeze(2)
        # Each row's own factor, a batched matmul in slices of PRIOR_ROWS rows (nz x nz floats per row)
        coloured = [torch.bmm(self.chol[c], v)[:, :, 0] for c, v in zip(comp.split(PRIOR_ROWS), x.split(PRIOR_ROWS))]
        return self.means[comp] + torch.cat(coloured)


class Mapper(nn.Module):
    """IMLE mapper T: Gaussian noise (B x noise_dim) -> latent (B x nz); reference MLP 32-128-128-64.

    num_classes > 0 (imle.conditional): T(e, y) takes a class embedding of noise_dim values
    beside the noise, so each class has its own map to the latent space.
    prior_components > 0 (model.mapper_prior=mixture): the noise is nz + 1 values, drawn through
    a Gaussian mixture fitted to the codes (`MixturePrior`), and T(e) = p + f(p) for that point p,
    with f's last layer zero at the start: IMLE starts from the mixture's samples and moves them.
    """

    def __init__(self, noise_dim: int = 32, nz: int = 64, hidden: Sequence[int] = (128, 128), batch_norm: bool = True,
                 num_classes: int = 0, prior_components: int = 0):
        super().__init__()
        self.prior = MixturePrior(prior_components, nz) if prior_components else None
        if self.prior is not None:
            noise_dim = nz + 1
        self.noise_dim, self.nz, self.num_classes = noise_dim, nz, num_classes
        self.class_embed = nn.Embedding(num_classes, noise_dim) if num_classes else None
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=1.0)
        layers: list[nn.Module] = []
        d = nz if self.prior is not None else noise_dim * (2 if num_classes else 1)
        for h in hidden:
            layers += [nn.Linear(d, h, bias=not batch_norm), nn.BatchNorm1d(h) if batch_norm else nn.Identity(),
                       nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, nz, bias=False))
        self.net = nn.Sequential(*layers)
        _init_weights(self)
        if self.prior is not None:
            nn.init.zeros_(layers[-1].weight)  # T starts as the mixture's sampler

    def forward(self, e: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.prior is not None:
            p = self.prior(e)
            return p + self.net(p)
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this mapper is class-conditional: pass the labels of the samples")
            e = torch.cat([e, self.class_embed(labels)], dim=1)
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
                 minibatch_std: bool = False, spectral_norm: bool = False, batch_norm: bool = True,
                 num_classes: int = 0):
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
        self.project = _projection(num_classes, self.feature_dim, pack)
        _init_weights(self)
        if spectral_norm:
            _spectral_norm(self)

    def pack_input(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x S x S -> B/pack x (C * pack) x S x S (consecutive samples share a decision)."""
        b, c, h, w = x.shape
        if b % self.pack:
            raise ValueError(f"batch of {b} does not split into packs of {self.pack}")
        return x.reshape(b // self.pack, c * self.pack, h, w)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, return_features: bool = False):
        """Logits (B / pack); with return_features also the last conv features (B / pack x feature_dim).
        labels: each image's class, for a projection discriminator (num_classes > 0)."""
        h = self.body(self.pack_input(x))
        feats = h.flatten(1)
        if self.mbstd is not None:
            h = self.mbstd(h)
        logits = _projected(self, self.head(h.flatten(1)).squeeze(1), feats, labels)
        return (logits, feats) if return_features else logits


class MLPGenerator(nn.Module):
    """Latent code (B x nz) -> vector (B x dim): the generator for vector data (2-D mixtures).

    Fully connected ReLU layers with batch norm, as the PacGAN 2-D experiments' generator (four
    hidden layers of 400); a linear output, since vector data has no fixed range. Inputs are
    projected to the unit sphere, like the image generator's.
    """

    def __init__(self, nz: int = 64, dim: int = 2, hidden: Sequence[int] = (400, 400, 400, 400),
                 batch_norm: bool = True, num_classes: int = 0):
        super().__init__()
        self.nz, self.dim, self.out_shape = nz, dim, (dim,)
        self.class_embed = ClassShift(num_classes, nz) if num_classes else None
        self.net = _mlp(nz, dim, hidden, nn.ReLU, batch_norm)
        _init_weights(self)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(sphere(_shift(self, z, labels)))


class MLPDiscriminator(nn.Module):
    """Vector (B x dim) -> one logit per decision (B / pack): the discriminator for vector data.

    LeakyReLU layers (PacGAN's 2-D discriminator used maxout; LeakyReLU keeps it to stock layers).
    `pack`, `minibatch_std` and `spectral_norm` as for the image Discriminator.
    """

    def __init__(self, dim: int = 2, hidden: Sequence[int] = (200, 200, 200), pack: int = 1,
                 minibatch_std: bool = False, spectral_norm: bool = False, batch_norm: bool = False,
                 num_classes: int = 0):
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
        self.project = _projection(num_classes, self.feature_dim, pack)
        _init_weights(self)
        if spectral_norm:
            _spectral_norm(self)

    def pack_input(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if b % self.pack:
            raise ValueError(f"batch of {b} does not split into packs of {self.pack}")
        return x.reshape(b // self.pack, -1)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, return_features: bool = False):
        """Logits (B / pack); with return_features also the last hidden features (B / pack x feature_dim).
        labels: each point's class, for a projection discriminator (num_classes > 0)."""
        h = self.body(self.pack_input(x))
        feats = h
        if self.mbstd is not None:
            h = self.mbstd(h)
        logits = _projected(self, self.head(h).squeeze(1), feats, labels)
        return (logits, feats) if return_features else logits


def _projection(num_classes: int, feature_dim: int, pack: int) -> Optional[nn.Embedding]:
    """The class embedding of a projection discriminator (Miyato & Koyama 2018), or None."""
    if not num_classes:
        return None
    if pack != 1:
        raise ValueError("a class-conditional discriminator judges one sample per decision: use pack=1")
    embed = nn.Embedding(num_classes, feature_dim)
    nn.init.normal_(embed.weight, std=feature_dim ** -0.5)  # the term starts at the size of a feature, as the head's
    return embed


def _projected(D: nn.Module, logits: torch.Tensor, feats: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """logits + <embed(y), features>: the projection term, when D is conditional."""
    if D.project is None:
        return logits
    if labels is None:
        raise ValueError("this discriminator is class-conditional: pass the labels of the samples")
    return logits + (D.project(labels) * feats).sum(1)


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
    """Spectral normalisation on every conv and linear layer and on a projection discriminator's
    class embedding, as Miyato & Koyama do (after init: it normalises those weights)."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
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
    k = num_classes(cfg, "gan")
    if len(shape) == 1:
        return MLPGenerator(m.nz, shape[0], m.mlp_hidden, m.batch_norm, k)
    return Generator(m.nz, shape[-1], shape[0], m.ngf, m.fc_dim, m.batch_norm, k, m.stem_bias)


def build_mapper(cfg: GlannConfig) -> Mapper:
    """The IMLE mapper: noise of `noise_size(cfg)` values -> model.nz latents."""
    m = cfg.model
    return Mapper(m.noise_dim, m.nz, m.mapper_hidden, m.mapper_batch_norm, num_classes(cfg, "glann"),
                  m.mapper_prior_components if m.mapper_prior == "mixture" else 0)


def build_discriminator(cfg: GlannConfig, shape: Sequence[int]) -> Union[Discriminator, MLPDiscriminator]:
    """The discriminator for samples of `shape`: (C, S, S) images -> DCGAN-style, (D,) vectors -> MLP."""
    g, k = cfg.gan, num_classes(cfg, "gan")
    if len(shape) == 1:
        return MLPDiscriminator(shape[0], g.d_hidden, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm, k)
    image_size, channels = shape[-1], shape[0]
    return Discriminator(image_size, channels, g.ndf, g.pack, g.minibatch_std, g.spectral_norm, g.d_batch_norm, k)


def noise_size(cfg: GlannConfig) -> int:
    """Values of noise one sample takes: the GAN's z (model.nz), else the mapper's input
    (model.noise_dim; nz + 1 with model.mapper_prior=mixture, see MixturePrior)."""
    if cfg.method == "gan":
        return cfg.model.nz
    return cfg.model.nz + 1 if cfg.model.mapper_prior == "mixture" else cfg.model.noise_dim


def num_classes(cfg: GlannConfig, method: str) -> int:
    """Classes the `method`'s conditional network takes (GLANN: the mapper; GAN: generator and
    discriminator): len(model.class_counts) for a conditional run of that method, else 0."""
    return len(cfg.model.class_counts) if cfg.method == method else 0


def draw_labels(class_counts: Sequence[int], n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n class labels (int64) drawn in the shares of `class_counts` (the training data's): what a
    conditional model samples when no class is asked for."""
    shares = torch.tensor(class_counts, dtype=torch.float64)
    return torch.multinomial(shares / shares.sum(), n, replacement=True, generator=generator)


def grid_classes(class_counts: list[int], n: int, device: torch.device) -> Optional[torch.Tensor]:
    """A conditional model's grid of about n images: the classes in order, ceil(n / classes) of
    each (one row each), or None for an unconditional model."""
    if not class_counts:
        return None
    k = len(class_counts)
    return torch.arange(k, device=device).repeat_interleave(-(-n // k))


def grid_row(grid_labels: Optional[torch.Tensor]) -> Optional[int]:
    """Images per row of a `grid_classes` grid (one row per class); None (the default) for an unconditional one."""
    return None if grid_labels is None else len(grid_labels) // (int(grid_labels.max()) + 1)
