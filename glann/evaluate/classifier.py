"""The domain classifier: a small CNN trained once on a dataset's labels, cached by a hash of the data.

It gives the `domain` feature network (fast FD/PRDC on a CPU) and the class predictions that
mode coverage counts. Weights are cached as safetensors under glann.data.cache_dir()/domain,
keyed by a hash of the training images and labels, so a changed dataset never reuses a stale
classifier and nothing is ever unpickled. The package ships the Fashion-MNIST one (glann/evaluate/
weights/, 1 MB; 91.6% test accuracy), found under the same key, so a fresh CPU machine does not
spend minutes training it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import Dataset, cache_dir
from ..errors import CheckpointError, DataError
from ..images import to_model
from ..checkpoints import atomic_write

ARCH_VERSION = "cnn32-64-128-fc128-v1"  # part of the cache key: change it when the net or recipe changes
SHIPPED_DIR = Path(__file__).parent / "weights"  # classifiers that come with the package, same file names


class DomainClassifier(nn.Module):
    """conv32-pool-conv64-pool-conv128-pool(3x3)-fc128-fc{classes}, batch norm; any 28-128 px, 1 or 3 ch.

    Input: uint8 N x C x H x W. `features` is the 128-d penultimate layer (after ReLU).
    """

    feature_dim = 128

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.channels, self.num_classes = channels, num_classes

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(channels, 32), nn.MaxPool2d(2),
            *block(32, 64), nn.MaxPool2d(2),
            *block(64, 128), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
            nn.Linear(128 * 9, self.feature_dim), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> float N x 128."""
        return self.body(to_model(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> logits float N x classes."""
        return self.head(self.dropout(self.features(images)))

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """uint8 N x C x H x W -> class probabilities float N x classes (CPU)."""
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([F.softmax(self(c.to(device)), 1).cpu() for c in images.split(batch_size)])


@dataclass
class TrainedClassifier:
    model: DomainClassifier
    test_accuracy: Optional[float]  # None when no labelled test split was given
    path: Optional[Path]  # the cache file, None when caching was off
    data_hash: str


def data_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 over the uint8 images, the labels and the recipe version: the cache key."""
    h = hashlib.sha256(ARCH_VERSION.encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    pred = model.predict_proba(images).argmax(1)
    return (pred == labels.cpu()).float().mean().item()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 4, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, device: Union[str, torch.device] = "cpu",
                     progress: bool = True) -> DomainClassifier:
    """Train a DomainClassifier on uint8 images N x C x H x W and int64 labels N; deterministic for a seed.

    Four epochs of Adam with a one-cycle schedule reach 91.6% test accuracy on Fashion-MNIST.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init and dropout
    model = DomainClassifier(images.shape[1], int(labels.max().item()) + 1).to(device)
    steps = max(1, images.shape[0] // batch_size) * epochs
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    images, labels = images.to(device), labels.to(device)
    model.train()
    bar = tqdm(total=steps, desc="domain classifier", unit="batch", disable=not progress)
    for _ in range(epochs):
        perm = torch.randperm(images.shape[0], generator=g).to(device)
        for i in range(max(1, images.shape[0] // batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            # No augmentation: the features should see what the data holds, flips included.
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def domain_classifier(train: Dataset, test: Optional[Dataset] = None, cache: bool = True,
                      device: Union[str, torch.device] = "cpu", **train_kwargs) -> TrainedClassifier:
    """The classifier for `train`'s data: loaded from the cache, else trained once and cached.

    train/test: Datasets with labels (uint8 images). test, when given, measures the accuracy that is
    reported beside every domain metric. Raises DataError when `train` has no labels.
    """
    if train.labels is None:
        raise DataError(f"the domain feature network needs class labels, and '{train.name}' has none; "
                        f"use features=inception (--features inception) for unlabelled data")
    key = data_hash(train.images, train.labels)
    path = cache_dir() / "domain" / f"{train.name}-{train.channels}x{train.image_size}-{key[:16]}.safetensors"
    found = next((p for p in (path, SHIPPED_DIR / path.name) if p.is_file()), None) if cache else None
    if found is not None:
        try:
            tensors = load_file(str(found))
            from safetensors import safe_open

            with safe_open(str(found), framework="pt") as f:
                meta = f.metadata() or {}
            model = DomainClassifier(int(meta["channels"]), int(meta["num_classes"]))
            model.load_state_dict(tensors)
        except (KeyError, RuntimeError, ValueError, OSError, SafetensorError) as exc:
            fix = "reinstall glann" if found.parent == SHIPPED_DIR else "delete it and it will be retrained"
            raise CheckpointError(f"domain classifier {found} is unreadable ({str(exc).splitlines()[0]}); {fix}") from exc
        acc = float(meta["test_accuracy"]) if meta.get("test_accuracy", "none") != "none" else None
        if acc is None and test is not None and test.labels is not None:
            acc = accuracy(model.to(device), test.images, test.labels)
        return TrainedClassifier(model.to(device).eval(), acc, found, key)

    t0 = time.perf_counter()
    model = train_classifier(train.images, train.labels, device=device, **train_kwargs)
    seconds = time.perf_counter() - t0
    acc = accuracy(model, test.images, test.labels) if test is not None and test.labels is not None else None
    if cache:
        meta = {"channels": str(model.channels), "num_classes": str(model.num_classes), "dataset": train.name,
                "arch": ARCH_VERSION, "data_hash": key, "train_images": str(len(train)),
                "train_seconds": f"{seconds:.1f}", "test_accuracy": "none" if acc is None else repr(acc)}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return TrainedClassifier(model.eval(), acc, path if cache else None, key)
