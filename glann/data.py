"""Dataset sources -> one uint8 tensor N x C x H x W (+ int64 labels when the source has them);
the 2-D mixtures give float N x 2 points instead (vector data).

The whole dataset lives on the training device; batches are index gathers (GLO needs the
index of every image anyway), so there is no DataLoader on the hot path.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import DATA_SOURCES, IMAGE_SIZES, MIXTURES, DataConfig
from .errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Debian's dataset packages install here (apt-get install dataset-fashion-mnist).
DEBIAN_DIR = Path("/usr/share/datasets")
_IDX_NAMES = {"fashion_mnist": ("fashion-mnist", "FashionMNIST"), "mnist": ("mnist", "MNIST")}
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Class names of the labelled sources, in label order (the report's class-histogram axis).
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple("0123456789"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "shapes": ("square", "disc", "bar", "cross"),  # make_shapes' label order
}


@dataclass
class Dataset:
    """images: uint8 N x C x H x W (vector data: float N x D); labels: int64 N, or None when the
    source has none."""

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W) for images, (D,) for vector data."""
        return tuple(self.images.shape[1:])

    @property
    def is_vector(self) -> bool:
        return self.images.ndim == 2


def class_names(source: str, num_classes: int) -> Optional[tuple[str, ...]]:
    """The names of `source`'s classes in label order; None where glann knows none for that many
    classes (folders, arrays, mixtures, stacked data's K^3 modes): callers show the indices."""
    names = CLASS_NAMES.get(source)
    return names if names is not None and len(names) == num_classes else None


def cache_dir() -> Path:
    """Where downloads and cached artefacts go: $GLANN_CACHE, else ~/.cache/glann."""
    return Path(os.environ.get("GLANN_CACHE", Path.home() / ".cache" / "glann"))


def offline() -> bool:
    """$GLANN_OFFLINE set to anything but empty, 0, false, no or off: glann downloads nothing
    (datasets, VGG16 weights) and says where to put the files instead."""
    return os.environ.get("GLANN_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def load_dataset(cfg: DataConfig, device: torch.device | str = "cpu", seed: int = 0) -> Dataset:
    """Load the configured source, apply limit/size/channels, move to `device`."""
    if cfg.source in _IDX_NAMES:
        images, labels = _load_idx_dataset(cfg)
    elif cfg.source == "cifar10":
        images, labels = _load_cifar10(cfg)
    elif cfg.source == "folder":
        images, labels = _load_folder(cfg), None
    elif cfg.source == "array":
        images, labels = _load_array(cfg)
    elif cfg.source == "shapes":
        images, labels = make_shapes(cfg.limit or 512, cfg.image_size or 28, seed=seed)
    elif cfg.source in MIXTURES:  # vector data: no image conversions apply
        # A fixed draw per split (not per training seed), so every run of a comparison sees the same points.
        points, labels = make_mixture(cfg.source, cfg.limit or MIXTURE_POINTS, seed=0 if cfg.split == "train" else 1)
        return Dataset(points.to(device), labels.to(device), cfg.source)
    else:  # config validation refuses this; evaluate --dataset NAME comes here directly
        raise DataError(f"unknown data.source '{cfg.source}'; use one of {', '.join(DATA_SOURCES)}")

    if labels is not None and labels.shape[0] != images.shape[0]:  # before `limit` cuts both to size
        raise DataError(f"{labels.shape[0]} labels for {images.shape[0]} images in '{cfg.source}'; "
                        "the label and image files do not belong together")
    if cfg.stack == 3:
        images, labels = stack_channels(images, labels, cfg.limit or len(images), seed=0 if cfg.split == "train" else 1,
                                        where=cfg.source)
    elif cfg.limit is not None:
        images = images[: cfg.limit]
        labels = labels[: cfg.limit] if labels is not None else None
    if images.shape[0] == 0:
        raise DataError(f"data source '{cfg.source}' holds no images")
    images = _fit(images, cfg)
    return Dataset(images.contiguous().to(device), labels.to(device) if labels is not None else None, cfg.source)


def _fit(images: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Convert channels and size as configured, and refuse what the generator cannot take."""
    c = images.shape[1]
    if cfg.channels is not None and cfg.channels != c:
        if cfg.channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            images = images.expand(-1, 3, -1, -1)
    if images.shape[1] not in (1, 3):
        raise DataError(f"images have {images.shape[1]} channels; glann takes 1 or 3 (set data.channels=1 or 3)")
    h, w = images.shape[-2:]
    size = cfg.image_size or h
    if (h, w) != (size, size):
        if cfg.image_size is None:
            raise DataError(f"images are {h}x{w}; set data.image_size to one of {IMAGE_SIZES} to resize them")
        images = resize_center_crop(images, size)
    if size not in IMAGE_SIZES:
        raise DataError(f"images are {size}x{size} px; the generator takes {IMAGE_SIZES} "
                        f"(set data.image_size to one of them)")
    return images


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size: shorter side to `size`, centre crop."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = out[..., top: top + size, left: left + size]
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array; DataError naming the file if corrupt."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete it and fetch the dataset again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number); delete it and fetch it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a truncated IDX header; delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, its header promises {expected} "
                        f"(truncated or corrupt); delete it and fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_search_dirs(cfg: DataConfig) -> list[Path]:
    debian_name, tv_name = _IDX_NAMES[cfg.source]
    dirs = []
    if cfg.path:  # an explicit path is used or refused, never quietly replaced by another copy
        return [Path(cfg.path), Path(cfg.path) / tv_name / "raw"]
    if os.environ.get("GLANN_DATA"):
        root = Path(os.environ["GLANN_DATA"])
        dirs += [root / debian_name, root / cfg.source, root / tv_name / "raw", root]
    dirs += [DEBIAN_DIR / debian_name, cache_dir() / "data" / tv_name / "raw"]
    return dirs


def _load_idx_dataset(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = _IDX_FILES[cfg.split]
    dirs = _idx_search_dirs(cfg)
    found = next((d for d in dirs if _find_idx(d, img_stem)), None)
    if found is None and cfg.download and not cfg.path and not offline():
        found = _download_idx(cfg)
    if found is None and cfg.path:
        raise DataError(f"{cfg.source} ({img_stem}) not found in data.path={cfg.path} (nor its "
                        f"{dirs[1].relative_to(cfg.path)}); point data.path at the folder holding the IDX files, "
                        f"or drop data.path to use the installed copy")
    if found is None:
        debian_name, _ = _IDX_NAMES[cfg.source]
        raise DataError(
            f"{cfg.source} ({img_stem}) not found in {', '.join(str(d) for d in dirs)}; get it with "
            f"`apt-get install dataset-{debian_name}`, set data.path or $GLANN_DATA to a folder holding the "
            f"IDX files, or allow the download with data.download=true (and GLANN_OFFLINE unset)")
    images = read_idx(_find_idx(found, img_stem))  # type: ignore[arg-type]
    if images.ndim != 3:
        raise DataError(f"{found / img_stem}: expected N x H x W images, got shape {images.shape}")
    lbl_path = _find_idx(found, lbl_stem)
    labels = torch.from_numpy(read_idx(lbl_path).astype(np.int64)) if lbl_path else None
    return torch.from_numpy(images.copy()).unsqueeze(1), labels


def _download_idx(cfg: DataConfig) -> Optional[Path]:
    """torchvision's download into the glann cache; None when offline."""
    import torchvision.datasets as tvd

    _, tv_name = _IDX_NAMES[cfg.source]
    root = cache_dir() / "data"
    try:
        getattr(tvd, tv_name)(str(root), train=cfg.split == "train", download=True)
    except Exception:  # offline, mirror down: the caller reports every way to get the data
        return None
    return root / tv_name / "raw"


# ---------------------------------------------------------------- CIFAR-10

def _load_cifar10(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    root = Path(cfg.path) if cfg.path else Path(os.environ.get("GLANN_DATA", cache_dir() / "data"))
    try:
        ds = tvd.CIFAR10(str(root), train=cfg.split == "train", download=cfg.download and not offline())
    except RuntimeError as exc:
        raise DataError(f"CIFAR-10 not found under {root} ({exc}); set data.path to the folder holding "
                        f"cifar-10-batches-py, or allow the download with data.download=true") from exc
    except Exception as exc:
        raise DataError(f"CIFAR-10 could not be loaded from or downloaded to {root}: {exc}") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


# ---------------------------------------------------------------- folder of images

def image_files(root: Path) -> list[Path]:
    """The image files under `root`, recursively, in sorted order (the order a folder dataset has)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _load_folder(cfg: DataConfig) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not cfg.path:
        raise DataError("data.source=folder needs data.path=DIR, a folder of images")
    root = Path(cfg.path)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; set data.path to a folder of images")
    files = image_files(root)
    if cfg.limit is not None:
        files = files[: cfg.limit]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    size = cfg.image_size or 64
    mode = "L" if cfg.channels == 1 else "RGB"
    out = torch.empty(len(files), 1 if mode == "L" else 3, size, size, dtype=torch.uint8)
    from tqdm.auto import tqdm

    kept, bad = 0, []
    for f in tqdm(files, desc=f"reading {root}", unit="img", disable=len(files) < 2000):
        try:
            with Image.open(f) as im:
                arr = _pil_to_uint8(im, mode)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            if not cfg.skip_bad:
                raise DataError(f"cannot read image {f}: {exc}; remove or replace the file, "
                                f"or set data.skip_bad=true to skip unreadable files") from exc
            bad.append(f)
            continue
        t = torch.from_numpy(arr)
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        out[kept] = resize_center_crop(t.unsqueeze(0), size)[0]
        kept += 1
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {len(files)} under {root} "
                      f"(first: {bad[0]})", stacklevel=2)
    if kept == 0:
        raise DataError(f"none of the {len(files)} images under {root} could be read")
    return out[:kept]


def _pil_to_uint8(im, mode: str) -> np.ndarray:
    """A PIL image of any mode -> uint8 H x W (mode L) or H x W x 3 (RGB).

    16- and 32-bit greyscale are scaled to 8 bits (PIL's own convert clips them to white);
    alpha is dropped; palette images are expanded.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
    return np.array(im.convert(mode), dtype=np.uint8)


# ---------------------------------------------------------------- .npy / .npz arrays

def _load_array(cfg: DataConfig) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if not cfg.path:
        raise DataError("data.source=array needs data.path=FILE.npy or FILE.npz")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"array file {path} does not exist; set data.path to a .npy or .npz file")
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle a user's file
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            key = next((k for k in ("images", "x", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path} holds arrays {keys}; name the images 'images' (labels: 'labels')")
            arr = loaded[key]
            lkey = next((k for k in ("labels", "y") if k in keys), None)
            labels = torch.from_numpy(loaded[lkey].astype(np.int64)) if lkey else None
        else:
            arr = loaded
    except DataError:
        raise
    except Exception as exc:  # ValueError for pickled/corrupt files, OSError, zipfile errors
        raise DataError(f"cannot read array file {path}: {exc}") from exc
    return array_to_images(arr, str(path)), labels


def array_to_images(arr: np.ndarray, where: str = "array") -> torch.Tensor:
    """N x H x W, N x H x W x C or N x C x H x W; uint8 or float in [0, 1] -> uint8 N x C x H x W."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] == 4 and arr.shape[1] not in (1, 3, 4):
        raise DataError(f"{where}: images of shape {arr.shape} have 4 channels (RGBA?); glann takes grey or RGB: "
                        f"save arr[..., :3]")
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise DataError(f"{where}: expected images N x H x W[x C] or N x C x H x W, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr))
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any()):
            raise DataError(f"{where}: float images must lie in [0, 1]; got values in "
                            f"[{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]")
        return torch.from_numpy(np.round(arr * 255.0).astype(np.uint8))
    raise DataError(f"{where}: images must be uint8 or float in [0, 1], got dtype {arr.dtype}")


# ---------------------------------------------------------------- synthetic shapes (tests, smoke runs)

def make_shapes(n: int, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n grey images of four classes (square, disc, horizontal bar, cross) at random places and sizes."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.randint(0, 4, (n,), generator=g)
    r = torch.randint(size // 6, size // 3, (n,), generator=g)
    cy = torch.randint(size // 3, size - size // 3, (n,), generator=g)
    cx = torch.randint(size // 3, size - size // 3, (n,), generator=g)
    dy = (yy[None] - cy[:, None, None]).abs()
    dx = (xx[None] - cx[:, None, None]).abs()
    rr = r[:, None, None]
    masks = torch.stack([
        (dy <= rr) & (dx <= rr),
        dy ** 2 + dx ** 2 <= rr ** 2,
        (dy <= rr // 3) & (dx <= rr),
        ((dy <= rr // 3) & (dx <= rr)) | ((dx <= rr // 3) & (dy <= rr)),
    ])[labels, torch.arange(n)]
    return (masks.to(torch.uint8) * 255).unsqueeze(1), labels


# ---------------------------------------------------------------- stacked data (1,000 modes from 10 classes)

def stack_channels(images: torch.Tensor, labels: Optional[torch.Tensor], n: int, seed: int = 0,
                   where: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """n colour images, each three random grey images of `images` as its R, G and B channels.

    The stacked MNIST of Metz et al. (2017), used by VEEGAN and PacGAN to count modes: with K
    classes there are K^3 modes; a stack's label is a * K^2 + b * K + c for channel classes a, b, c.
    """
    if labels is None:
        raise DataError(f"data.stack=3 needs class labels to count modes, and '{where}' has none")
    if images.shape[1] != 1:
        raise DataError(f"data.stack=3 stacks grey images and '{where}' has {images.shape[1]} channels; "
                        f"use a grey source such as fashion_mnist or mnist")
    k = int(labels.max()) + 1
    idx = torch.randint(0, len(images), (n, 3), generator=torch.Generator().manual_seed(seed))
    stacked = images[idx.flatten(), 0].view(n, 3, *images.shape[-2:])
    return stacked, (labels[idx] * torch.tensor([k * k, k, 1])).sum(1)


# ---------------------------------------------------------------- 2-D Gaussian mixtures (vector data)

MIXTURE_POINTS = 10_000  # training points when data.limit is not set


def mixture_spec(name: str) -> tuple[torch.Tensor, float]:
    """(centres K x 2, standard deviation) of a named mixture, as in PacGAN's 2-D experiments:
    ring8, 8 Gaussians evenly on the unit circle with std 0.01; grid25, 25 Gaussians on the grid
    {-4, -2, 0, 2, 4}^2 with std 0.05."""
    if name == "ring8":
        angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([angle.cos(), angle.sin()], 1).float(), 0.01
    if name == "grid25":
        axis = torch.arange(-4.0, 5.0, 2.0)
        return torch.cartesian_prod(axis, axis), 0.05
    raise DataError(f"unknown mixture '{name}'; use one of {MIXTURES}")


def make_mixture(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (float n x 2) drawn evenly from the mixture's components, and each one's component."""
    centres, std = mixture_spec(name)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(centres), (n,), generator=g)
    return centres[labels] + std * torch.randn(n, 2, generator=g), labels
