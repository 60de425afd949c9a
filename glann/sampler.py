"""The public sampling API: load a trained run, sample, interpolate, reconstruct (GLO inversion)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checkpoints import MODEL_FILE, atomic_write
from .config import GlannConfig, read_run_config, to_yaml
from .devices import check_memory, resolve_device, to_device_async
from .errors import CheckpointError, DataError
from .images import save_grid, to_model, to_unit
from .losses import make_loss
from .data import class_names
from .nets import Generator, Mapper, build_generator, build_mapper, draw_labels, sphere


Labels = Union[int, Sequence[int], torch.Tensor, None]  # one class for every sample, or one per sample


class Sampler:
    """Images from noise: e ~ N(0, I) -> T(e) -> G -> image (a GAN run has no T: e ~ N(0, I) of size nz -> G).

    >>> s = Sampler.from_pretrained("runs/fashion_mnist", device="cpu")
    >>> x = s.sample(64, seed=0)   # float N x C x H x W in [0, 1] (runs on 2-D points: float N x 2)
    """

    def __init__(self, generator: Generator, mapper: Optional[Mapper], cfg: GlannConfig,
                 device: Union[str, torch.device] = "cpu"):
        self.device = resolve_device(device)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.mapper = mapper.to(self.device).eval().requires_grad_(False) if mapper is not None else None
        self.cfg = cfg

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: Union[str, torch.device] = "auto") -> "Sampler":
        """Load `model.safetensors` + `config.yaml` from a run directory (weights only, no pickle)."""
        path = Path(path)
        if path.is_file():
            raise CheckpointError(f"{path} is a file; pass its run directory ({path.parent})")
        if not path.is_dir():
            raise CheckpointError(f"run directory {path} does not exist; train one with `glann train CONFIG`")
        model_file = path / MODEL_FILE
        if not model_file.is_file():
            if not (path / "config.yaml").is_file():  # not a run at all: perhaps the folder of runs
                runs = sorted(p.name for p in path.iterdir() if (p / MODEL_FILE).is_file())[:5]
                hint = f"; runs in it: {', '.join(runs)}" if runs else ""
                raise CheckpointError(f"{path} is not a run directory (no config.yaml, no {MODEL_FILE}){hint}")
            stage = "its IMLE stage never finished" if (path / "checkpoints").is_dir() else "it holds no trained model"
            raise CheckpointError(f"cannot sample from {path}: {stage} (no {MODEL_FILE}); "
                                  f"finish it with `glann train --resume --run-dir {path}`")
        cfg = read_run_config(path)
        if cfg is None:
            raise CheckpointError(f"{path} has {MODEL_FILE} but no config.yaml; both are needed to rebuild the model")
        try:
            with safe_open(str(model_file), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if "shape" in meta:
                shape = tuple(int(v) for v in meta["shape"].split(","))
            else:  # exported before vector data existed
                shape = (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"]))
            G = build_generator(cfg, shape)
            T = build_mapper(cfg) if cfg.method == "glann" else None  # a GAN run samples N(0, I) directly
            G.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("generator.")})
            if T is not None:
                T.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("mapper.")})
        except (KeyError, RuntimeError, ValueError, OSError, SafetensorError) as exc:
            raise CheckpointError(f"{model_file} does not match {path / 'config.yaml'} or is corrupt "
                                  f"({str(exc).splitlines()[0]})") from exc
        return cls(G, T, cfg, device)

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """Write the sampler into a directory, as `from_pretrained` reads it: the weights (generator
        and, for GLANN, mapper) as `model.safetensors` with the model's shape and config in its
        metadata, and that config as `config.yaml` (in a run directory: the run's own config, which
        it already holds). Returns the weights file."""
        path = Path(path)
        tensors = {f"generator.{k}": v.detach().cpu().contiguous() for k, v in self.generator.state_dict().items()}
        if self.mapper is not None:
            tensors.update({f"mapper.{k}": v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()})
        meta = {"shape": ",".join(map(str, self.generator.out_shape)), "config": to_yaml(self.cfg)}
        model_file = path / MODEL_FILE
        atomic_write(model_file, lambda tmp: save_file(tensors, tmp, metadata=meta))
        atomic_write(path / "config.yaml", lambda tmp: Path(tmp).write_text(to_yaml(self.cfg)))
        return model_file

    # ------------------------------------------------------------------ classes
    @property
    def num_classes(self) -> int:
        """Classes a conditional run generates on request (imle.conditional / gan.conditional); 0: unconditional."""
        return len(self.cfg.model.class_counts)

    @property
    def class_names(self) -> Optional[tuple[str, ...]]:
        """The dataset's class names in label order, where glann knows them (else None)."""
        return class_names(self.cfg.data.source, self.num_classes) if self.num_classes else None

    def class_index(self, name: Union[int, str]) -> int:
        """A class given by index (3, "3") or by the dataset's class name ("Trouser", any case) -> its index."""
        if not self.num_classes:
            raise self._unconditional("a class")
        text = str(name).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
        else:
            lowered = [c.lower() for c in self.class_names or ()]
            if text.lower() not in lowered:
                known = ", ".join(self.class_names) if self.class_names else f"0 .. {self.num_classes - 1}"
                raise DataError(f"unknown class '{text}'; this run's classes are {known}")
            index = lowered.index(text.lower())
        if not 0 <= index < self.num_classes:
            raise DataError(f"class {index} is out of range; this run has classes 0 .. {self.num_classes - 1}")
        return index

    def _unconditional(self, what: str) -> DataError:
        key = "gan.conditional" if self.mapper is None else "imle.conditional"
        return DataError(f"this run is unconditional (trained without {key}); sample it without {what}, "
                         f"or train it with {key}=true")

    def _labels(self, n: int, labels: Labels, g: Optional[torch.Generator]) -> Optional[torch.Tensor]:
        """The classes of n samples: `labels` (one int for all, or n of them) checked, or, for a
        conditional run asked for none, drawn in the training data's class shares."""
        counts = self.cfg.model.class_counts
        if labels is None:
            return draw_labels(counts, n, g).to(self.device) if counts else None
        if not counts:
            raise self._unconditional("labels")
        try:
            y = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"labels must be class numbers, got {labels!r}; turn a class name into its number "
                            f"with Sampler.class_index") from exc
        if y.is_floating_point() or y.dtype == torch.bool or y.ndim > 1:
            raise DataError(f"labels must be whole class numbers (one, or one per sample), got {y.dtype} of shape {tuple(y.shape)}")
        y = y.long().expand(n) if y.ndim == 0 else y.long()
        if len(y) != n:
            raise DataError(f"{len(y)} labels for {n} samples; give one label, or one per sample")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(counts)):
            raise DataError(f"labels must lie in 0 .. {len(counts) - 1} (this run's classes), "
                            f"got {int(y.min())} .. {int(y.max())}")
        return y.to(self.device)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def latents(self, n: int, seed: Optional[int] = None, labels: Labels = None) -> torch.Tensor:
        """n mapped latents T(e) (GAN runs: e itself), projected to the unit sphere: float n x nz.
        labels (conditional runs): see `sample`."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        if self.mapper is None:
            z = to_device_async(torch.randn(n, self.generator.nz, generator=g), self.device)
            y = self._labels(n, labels, g)
            return sphere(z if y is None else self.generator.class_embed(z, y))
        e = to_device_async(torch.randn(n, self.mapper.noise_dim, generator=g), self.device)
        y = self._labels(n, labels, g)
        if y is None:
            return sphere(torch.cat([self.mapper(c) for c in e.split(4096)]))
        return sphere(torch.cat([self.mapper(c, yc) for c, yc in zip(e.split(4096), y.split(4096))]))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Latents (n x nz) -> images, float n x C x H x W in [0, 1] (vector runs: points, float n x D)."""
        z = torch.as_tensor(z)
        if z.ndim != 2 or z.shape[1] != self.generator.nz:
            raise DataError(f"latents of shape {tuple(z.shape)} do not fit this model, which takes "
                            f"n x {self.generator.nz} (see Sampler.latents or reconstruct)")
        z = z.float().to(self.device)
        return torch.cat([to_unit(self.generator(c)) for c in z.split(batch_size)])

    def sample(self, n: int, seed: Optional[int] = None, batch_size: int = 1024, labels: Labels = None) -> torch.Tensor:
        """n images, float n x C x H x W in [0, 1] (vector runs: float n x D points); the same seed gives the same.

        labels (class-conditional runs only): the class of every sample, one int for all or n of
        them (a list, array or int64 tensor; `class_index` turns a class name into one). A
        conditional run given none draws classes in the training data's shares.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        check_memory(n * math.prod(self.generator.out_shape) * 4, self.device, f"{n} samples")
        return self.decode(self.latents(n, seed, labels), batch_size)

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Spherical interpolation between latents a and b (nz each): images steps x C x H x W in [0, 1]."""
        a, b = (torch.as_tensor(v).reshape(1, -1).float().to(self.device) for v in (a, b))
        if a.shape[1] != self.generator.nz or b.shape[1] != self.generator.nz:
            raise DataError(f"interpolate takes two latents of {self.generator.nz} values each, "
                            f"got {a.shape[1]} and {b.shape[1]}")
        a, b = sphere(a), sphere(b)
        omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
        t = torch.linspace(0, 1, steps, device=self.device).unsqueeze(1)
        z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        return self.decode(z)

    def reconstruct(self, images: torch.Tensor, steps: int = 300, lr: float = 0.05,
                    loss: Optional[str] = None, seed: int = 0) -> torch.Tensor:
        """GLO inversion: fit a code per image with the generator frozen.

        images: uint8 in [0, 255] or float in [0, 1], N x C x H x W of the model's size and channels
        (vector data: float N x D). loss: lap1 for images, l2 for vectors when not given.
        Returns codes float N x nz on the unit sphere; `decode` turns them into reconstructions.
        """
        x = self._check_images(images)
        loss = loss or ("l2" if x.ndim == 2 else "lap1")
        loss_fn = make_loss(loss, x.shape[1]).to(self.device)
        g = torch.Generator().manual_seed(seed)
        z = sphere(torch.randn(x.shape[0], self.generator.nz, generator=g)).to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(self.generator(z), x).sum().backward()
            opt.step()
            with torch.no_grad():
                z.copy_(sphere(z))
        return z.detach()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        """-> float in [-1, 1] on the device, after checking shape against the model."""
        want = tuple(self.generator.out_shape)
        images = torch.as_tensor(images)  # numpy arrays too
        if images.ndim != len(want) + 1 or tuple(images.shape[1:]) != want:
            raise DataError(f"inputs of shape {tuple(images.shape)} do not fit this model, which takes "
                            f"N x {' x '.join(map(str, want))}")
        if not images.is_floating_point() and images.dtype != torch.uint8:
            raise DataError(f"inputs of dtype {images.dtype}: pass uint8 images in [0, 255] or floats in [0, 1]")
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            raise DataError("inputs hold NaN or infinite values; pass finite images")
        if len(want) == 1:  # vector data: no image range
            return images.float().to(self.device)
        if images.dtype == torch.uint8:
            return to_model(images.to(self.device))
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise DataError(f"float images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
                            f"divide 0-255 values by 255, or pass them as uint8")
        return images.float().to(self.device) * 2.0 - 1.0

    @staticmethod
    def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: Optional[int] = None) -> Path:
        """Write images (float N x C x H x W in [0, 1]) as a PNG grid; points (N x D) as a scatter plot."""
        return save_grid(images, path, nrow)
