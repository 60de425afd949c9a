"""Run directory: config, atomic checkpoints, resume, metrics log (jsonl + TensorBoard), exports.

runs/<name>/
  config.yaml            the merged config; enough to rebuild the run
  checkpoints/glo.pt     latest GLO state (weights, codes, optimisers, RNG, epoch)
  checkpoints/imle.pt    latest IMLE state
  model.safetensors      exported sampler weights (generator + mapper), written when IMLE ends
  samples/*.png          grids per epoch
  metrics.jsonl          one JSON object per logged step
  tb/                    TensorBoard events
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from .config import GlannConfig, config_from_dict, to_yaml
from .errors import CheckpointError, TrainingError

MODEL_FILE = "model.safetensors"
CHECK_EVERY = 50  # training steps between host syncs for the progress bar and the finiteness check


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: a kill never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically save a dict of tensors, numbers, strings and nested containers of them."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} does not exist") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or not a plain-tensor checkpoint "
                              f"({str(exc).splitlines()[0]}); delete it to start that stage again") from exc


def check_finite(value: float, stage: str, epoch: int, step: int, run: Optional[Run]) -> None:
    """Raise TrainingError, naming epoch and step, when a running loss is NaN or infinite."""
    if math.isfinite(value):
        return
    ckpt = run.checkpoint_path(stage.lower()) if run else None
    where = f"the last good checkpoint {ckpt} is kept" if ckpt and ckpt.is_file() else "no checkpoint was written yet"
    raise TrainingError(f"non-finite {stage} loss at epoch {epoch} (by step {step}); {where}; "
                        f"lower the learning rates or check the data, then resume with --resume")


class Run:
    """A run directory and its logger. `Run.create` for a new run, `Run.open` to resume."""

    def __init__(self, path: Path, cfg: GlannConfig):
        self.path, self.cfg = Path(path), cfg
        self._tb = None
        self._metrics = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, cfg: GlannConfig, path: Optional[Path] = None, resume: bool = False) -> "Run":
        path = Path(path) if path else Path(cfg.out_dir) / cfg.name
        if resume:
            if not (path / "checkpoints").is_dir() or not any((path / "checkpoints").glob("*.pt")):
                raise CheckpointError(f"--resume: {path} holds no checkpoint to resume from; "
                                      f"start it without --resume")
            run = cls(path, cfg)
            saved = run.saved_config()
            if saved is not None:
                run.cfg = saved  # the run's own config wins over the command line on resume
            return run
        if (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("*.pt")):
            raise CheckpointError(f"{path} already holds a run; pass --resume to continue it, "
                                  f"or choose another name=... / out_dir=...")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, cfg)
        atomic_write(path / "config.yaml", lambda tmp: Path(tmp).write_text(to_yaml(cfg)))
        return run

    def saved_config(self) -> Optional[GlannConfig]:
        f = self.path / "config.yaml"
        if not f.is_file():
            return None
        return config_from_dict(OmegaConf.to_container(OmegaConf.load(f)))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ paths
    def checkpoint_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.pt"

    def sample_path(self, name: str) -> Path:
        return self.path / "samples" / f"{name}.png"

    # ------------------------------------------------------------------ logging
    def log(self, stage: str, step: int, **metrics: float) -> None:
        """Append one record to metrics.jsonl and the same scalars to TensorBoard."""
        if self._metrics is None:
            self._metrics = open(self.path / "metrics.jsonl", "a", buffering=1)
        record = {"stage": stage, "step": step, "time": round(time.time(), 3)}
        record.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()})
        self._metrics.write(json.dumps(record) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        for k, v in metrics.items():
            self._tb.add_scalar(f"{stage}/{k}", float(v), step)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def read_metrics(self) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []

    # ------------------------------------------------------------------ stage state
    def save_stage(self, stage: str, epoch: int, objects: dict[str, Any], rng: torch.Generator,
                   extra: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Checkpoint a stage after `epoch`: each object's state_dict, the RNG state and `extra` tensors."""
        state = {"epoch": epoch, "rng": rng.get_state(), "extra": extra or {}}
        state.update({name: obj.state_dict() for name, obj in objects.items()})
        save_checkpoint(state, self.checkpoint_path(stage))

    def load_stage(self, stage: str, objects: dict[str, Any], rng: torch.Generator,
                   device: torch.device) -> tuple[int, dict[str, torch.Tensor]]:
        """Restore a stage saved by save_stage; returns (next epoch, extra). (0, {}) when none is saved."""
        path = self.checkpoint_path(stage)
        if not path.is_file():
            return 0, {}
        state = load_checkpoint(path, map_location=device)
        try:
            for name, obj in objects.items():
                obj.load_state_dict(state[name])
            rng.set_state(state["rng"].cpu())
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match this run's config "
                                  f"({str(exc).splitlines()[0]}); delete it to start the {stage} stage again") from exc
        return int(state["epoch"]) + 1, state.get("extra", {})
