"""The cheap quality checks run during training: domain FD of a few thousand samples against a
fixed subset of training images, every `eval.every` IMLE or GAN epochs (glann/imle.py and
glann/gan.py log it); and IMLE's held-out check (imle.keep_best), a Fréchet distance in code space
that needs no labels and no evaluation network, so IMLE may select on it."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Iterator, Optional

import torch

from ..config import GlannConfig
from ..data import load_dataset
from ..errors import ConfigError
from ..images import to_unit
from ..imle_pool import map_noise
from ..nets import Generator, Mapper, draw_labels, noise_size, sphere
from .classifier import domain_classifier
from .features import DomainFeatures, extract_features
from .metrics import frechet_distance


class DomainFDCheck:
    """Built once per run: loads the training split, the cached domain classifier (training it the
    first time: seconds on a GPU, long on a small CPU for Fashion-MNIST) and the reference features.

    Calling it with the generator and mapper returns the domain FD (float) of `cfg.eval.num_samples`
    samples drawn with a fixed noise seed, so successive values differ only by the model. A GAN
    (cfg.method=gan) passes mapper=None: its noise is N(0, I) of size model.nz, fed to G directly.
    """

    def __init__(self, cfg: GlannConfig, device: torch.device):
        train = load_dataset(replace(cfg.data, split="train", limit=None))
        if train.labels is None:
            raise ConfigError(f"eval.every > 0 logs the domain FD, which needs class labels, and "
                              f"data.source={cfg.data.source} has none; set eval.every=0")
        n = cfg.eval.num_samples
        self.features = DomainFeatures(domain_classifier(train, device=device).model).to(device)
        g = torch.Generator().manual_seed(cfg.seed + 3)
        idx = torch.randperm(len(train), generator=g)[:n]
        self.real = extract_features(self.features, train.images[idx].cpu(), device=device)
        self.noise = torch.randn(n, noise_size(cfg), generator=g).to(device)
        counts = cfg.model.class_counts  # a conditional model: classes in the data's shares
        self.labels = draw_labels(counts, n, g).to(device) if counts else torch.zeros(n, dtype=torch.long, device=device)
        self.conditional = bool(counts)
        self.device = device

    @torch.no_grad()
    def __call__(self, generator: Generator, mapper: Optional[Mapper] = None) -> float:
        with eval_mode(generator, mapper):
            y = [c if self.conditional else None for c in self.labels.split(1024)]
            fake = torch.cat([to_unit(generator(e, y[i]) if mapper is None else generator(sphere(mapper(e, y[i]))))
                              for i, e in enumerate(self.noise.split(1024))])
        return frechet_distance(self.real, extract_features(self.features, fake.cpu(), device=self.device))


class CodeFDCheck:
    """imle.keep_best's score: the Fréchet distance, in code space, between held-out codes (float
    H x nz) and the mapper's samples of `samples` rows of fixed
    noise (seed + 4; conditional: labels in the codes' class shares), drawn as the exported sampler
    draws them (eval mode). With imle.sphere both sides are projected to the sphere, as the
    generator sees them. The same mapper always scores the same."""

    def __init__(self, held: torch.Tensor, cfg: GlannConfig, samples: int, device: torch.device):
        g = torch.Generator().manual_seed(cfg.seed + 4)
        self.on_sphere = cfg.imle.sphere
        self.held = (sphere(held) if self.on_sphere else held).double().cpu()
        self.noise = torch.randn(samples, noise_size(cfg), generator=g).to(device)
        counts = cfg.model.class_counts
        self.labels = draw_labels(counts, samples, g).to(device) if counts else None

    @torch.no_grad()
    def __call__(self, mapper: Mapper) -> float:
        with eval_mode(mapper):
            z = map_noise(mapper, self.noise, self.labels)
        return frechet_distance(self.held, (sphere(z) if self.on_sphere else z).double().cpu())


@contextlib.contextmanager
def eval_mode(*nets: Optional[torch.nn.Module]) -> Iterator[None]:
    """The given nets (None: skipped) in eval mode for the block, each back in its own mode after."""
    nets_ = [m for m in nets if m is not None]
    modes = [m.training for m in nets_]
    for m in nets_:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(nets_, modes):
            m.train(mode)
