"""Reconstruction losses for GLO. Each maps (fake, real) images in [-1, 1] to a per-sample loss (B,).

`lap1` (Laplacian-pyramid L1, the GLO paper's loss) needs no downloaded weights and is the
default. `vgg` is the reference GLANN perceptual loss; `lpips` uses the lpips package. Both
need ImageNet VGG16 weights; without them (offline) they stop at start-up and say where the
file goes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import offline
from .errors import ConfigError, WeightsError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# relu1_2, relu2_2, relu3_2, relu4_3 and pool5 of torchvision's vgg16.features. The reference
# (vgg_metric.py) taps the convs at 2, 7, 12, 21 but torchvision's in-place ReLUs overwrite
# those tensors before the loss reads them, so what it really compares is the ReLU outputs.
VGG_LAYER_IDS = (3, 8, 13, 22, 30)


class Lap1Loss(nn.Module):
    """Laplacian-pyramid L1 (Bojanowski et al. 2018, eq. 3).

    The paper weights level j by 2^(2j) on a sum over pixels; level j has 4^-j as many
    pixels, so that equals the plain sum of per-level *means* used here.
    """

    def __init__(self, channels: int, levels: int | None = None):
        super().__init__()
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = torch.outer(k, k) / 256.0
        self.register_buffer("kernel", k.expand(channels, 1, 5, 5).contiguous(), persistent=False)
        self.channels, self.levels = channels, levels

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.kernel, groups=self.channels)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = self.levels or max(1, x.shape[-1].bit_length() - 2)  # coarsest level about 4 px
        out = []
        for _ in range(levels - 1):
            low = self._blur(x)[..., ::2, ::2]
            out.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))
            x = low
        out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # One pyramid over fake and real stacked: half the kernel launches.
        pyr = self.pyramid(torch.cat([fake, real]))
        b = fake.shape[0]
        return sum((lv[:b] - lv[b:]).abs().flatten(1).mean(1) for lv in pyr)


class PixelLoss(nn.Module):
    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        d = (fake - real).flatten(1)
        return d.abs().mean(1) if self.p == 1 else d.pow(2).mean(1)


def _grey_to_rgb_pad(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (2, 2, 2, 2)) if x.shape[-1] == 28 else x  # 28 -> 32 as the reference does


def vgg16_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name


def _require_vgg16_weights() -> None:
    """Fail at start-up, with the fix, when the ImageNet VGG16 weights cannot be had."""
    path = vgg16_weights_path()
    if path.is_file():
        return
    fix = (f"put vgg16-397923af.pth ({VGG16_URL}) at {path} (or set $TORCH_HOME), "
           f"or train with glo.loss=lap1, which needs no weights")
    if offline():
        raise WeightsError(f"ImageNet VGG16 weights not found and GLANN_OFFLINE is set: {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # torch writes <path>.<hex>.partial there first
        torch.hub.download_url_to_file(VGG16_URL, str(path), progress=True)
    except Exception as exc:
        raise WeightsError(f"ImageNet VGG16 weights not found and the download failed ({exc}): {fix}") from exc


class VGGLoss(nn.Module):
    """Reference GLANN perceptual loss: L1 on pixels + L1 on `levels` VGG16 feature maps.

    Faster than the reference at the same values: the backbone is frozen (no weight
    gradients), the target images' features are computed without a graph, activations are
    channels_last, and for grey images the first convolution's weights are summed over RGB
    so it sees one channel instead of three identical ones (exactly the same output).
    """

    def __init__(self, channels: int, levels: int = 3, random_weights: bool = False):
        super().__init__()
        import torchvision

        if not random_weights:
            _require_vgg16_weights()
        weights = None if random_weights else torchvision.models.VGG16_Weights.IMAGENET1K_V1
        features = torchvision.models.vgg16(weights=weights).features[: VGG_LAYER_IDS[levels - 1] + 1]
        if channels == 1:
            conv = features[0]
            grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
            with torch.no_grad():
                grey.weight.copy_(conv.weight.sum(1, keepdim=True))
                grey.bias.copy_(conv.bias)
            features[0] = grey
        elif channels != 3:
            raise ConfigError(f"the vgg loss takes 1 or 3 channels, got {channels}")
        # channels_last: measured 1.5x faster for this backbone on CPU (oneDNN), and the GPU's preferred layout.
        self.features = features.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.taps = set(VGG_LAYER_IDS[:levels])

    def train(self, mode: bool = True) -> "VGGLoss":  # the backbone always stays in eval mode
        return self

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake, real = _grey_to_rgb_pad(fake), _grey_to_rgb_pad(real)
        with torch.no_grad():
            target = self._feats(real)
        loss = (fake - real).abs().flatten(1).mean(1)
        for f, t in zip(self._feats(fake), target):
            loss = loss + (f - t).abs().flatten(1).mean(1)
        return loss


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018) with the VGG backbone, through the `lpips` package."""

    def __init__(self, random_weights: bool = False):
        super().__init__()
        try:
            import lpips
        except ImportError as exc:
            raise ConfigError("glo.loss=lpips needs the lpips package: pip install 'glann[lpips]'") from exc
        if not random_weights:
            _require_vgg16_weights()
        self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=random_weights, verbose=False)
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        return self

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if fake.shape[1] == 1:
            fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
        return self.net(_grey_to_rgb_pad(fake), _grey_to_rgb_pad(real)).flatten(1).mean(1)


def make_loss(name: str, channels: int, random_weights: bool = False, vgg_levels: int = 3) -> nn.Module:
    """Build a per-sample reconstruction loss by name: lap1 | vgg | lpips | l1 | l2."""
    if name == "lap1":
        return Lap1Loss(channels)
    if name == "vgg":
        return VGGLoss(channels, vgg_levels, random_weights)
    if name == "lpips":
        return LPIPSLoss(random_weights)
    if name in ("l1", "l2"):
        return PixelLoss(int(name[1]))
    raise ConfigError(f"unknown loss '{name}'; use lap1, vgg, lpips, l1 or l2")
