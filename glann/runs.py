"""The run directory: its lock, config, stage checkpoints (saved, restored, retired) and metrics log
(jsonl + TensorBoard). File I/O lives in glann/checkpoints.py, the loops' helpers in glann/loop.py,
reading a run's saved config in glann/config.py (read_run_config).

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
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .checkpoints import atomic_write, checkpoint_file, load_checkpoint, save_checkpoint
from .config import GlannConfig, read_run_config, to_yaml
from .distributed import current as current_dist
from .errors import CheckpointError


def has_checkpoint(run_dir: Path) -> bool:
    """Whether run_dir holds a stage checkpoint, so that training there resumes rather than starts."""
    return (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.pt"))


class Run:
    """A run directory and its logger. `Run.create` for a new run, `Run.open` to resume."""

    def __init__(self, path: Path, cfg: GlannConfig):
        self.path, self.cfg = Path(path), cfg
        self._tb = None
        self._metrics = None
        self._lock = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, cfg: GlannConfig, path: Optional[Path] = None, resume: bool = False,
               overrides: Sequence[str] = ()) -> "Run":
        """Open a run directory for training and take its lock (released by close() or process exit).

        resume=True continues the run there with its own saved config. With `overrides` (e.g.
        glo.epochs=300 to train on), `cfg` must be `saved_config(overrides)`, as train() passes it,
        and is written to config.yaml. A run that was
        stopped before its first checkpoint starts again from scratch.
        """
        path = Path(path) if path else Path(cfg.out_dir) / cfg.name
        d = current_dist()
        if not d.is_main:  # rank 0 checks, locks and writes; the others follow once it has
            d.barrier()
            run = cls(path, cfg)
            saved = run.saved_config() if resume else None  # rank 0 has written the overrides into it
            run.cfg = saved or cfg
            return run
        has_ckpt = has_checkpoint(path)
        if resume and not has_ckpt and not (path / "config.yaml").is_file():
            raise CheckpointError(f"--resume: {path} holds no run (no config.yaml, no checkpoint); "
                                  f"start it without --resume")
        if not resume and has_ckpt:
            raise CheckpointError(f"{path} already holds a run; pass --resume to continue it, "
                                  f"or choose another name=... / out_dir=...")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, cfg)
        run._acquire_lock()
        for stale in path.rglob(".*.tmp"):  # temp files of writes a kill interrupted
            stale.unlink(missing_ok=True)
        if resume and overrides:  # cfg is already the saved config with them on top (train() checked it):
            # resumable keys only, so it is safe to record before the stages load
            atomic_write(path / "config.yaml", lambda tmp: Path(tmp).write_text(to_yaml(cfg)))
            tqdm.write(f"glann: resuming {path} with its config.yaml and {' '.join(overrides)}", file=sys.stderr)
        elif resume:
            run.cfg = run.saved_config() or cfg  # the run's own config wins over the command line's file
        else:
            atomic_write(path / "config.yaml", lambda tmp: Path(tmp).write_text(to_yaml(cfg)))
        d.barrier()
        return run

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes logs, grids, checkpoints and exports."""
        return current_dist().is_main

    def set_config(self, cfg: GlannConfig) -> None:
        """Replace the run's config with one training derived from the data (model.class_counts),
        and record it in config.yaml (rank 0) when it changed."""
        if cfg == self.cfg:
            return
        self.cfg = cfg
        if self.is_main:
            atomic_write(self.path / "config.yaml", lambda tmp: Path(tmp).write_text(to_yaml(cfg)))

    def _acquire_lock(self) -> None:
        """An flock on runs/<name>/.lock: a second trainer on the same directory refuses to start.

        The kernel drops the lock when the process dies, even by SIGKILL, so no stale lock remains.
        """
        import fcntl  # POSIX only: here, so that reading runs (sampler, report, evaluate) works without it

        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            raise CheckpointError(f"{self.path} is being trained by another process (lock {self.path / '.lock'}); "
                                  f"wait for it, stop it, or train under another name=...") from exc
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def saved_config(self, overrides: Sequence[str] = ()) -> Optional[GlannConfig]:
        """The run's config.yaml (None when it has none), with `key=value` overrides on top
        (glann.config.read_run_config)."""
        return read_run_config(self.path, overrides)

    # ------------------------------------------------------------------ paths
    def checkpoint_path(self, stage: str) -> Path:
        return checkpoint_file(self.path, stage)

    def sample_path(self, name: str) -> Path:
        return self.path / "samples" / f"{name}.png"

    # ------------------------------------------------------------------ logging
    def log(self, stage: str, step: int, **metrics: float) -> None:
        """Append one record to metrics.jsonl and the same scalars to TensorBoard (rank 0 only)."""
        if not self.is_main:
            return
        if self._metrics is None:
            f = self.path / "metrics.jsonl"
            torn = f.is_file() and f.stat().st_size > 0 and not f.read_bytes().endswith(b"\n")
            self._metrics = open(f, "a", buffering=1)
            if torn:  # a kill cut the last record short: start ours on a fresh line
                self._metrics.write("\n")
        record = {"stage": stage, "step": step, "time": round(time.time(), 3)}
        record.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()})
        self._metrics.write(json.dumps(record) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        for k, v in metrics.items():
            self._tb.add_scalar(f"{stage}/{k}", float(v), step)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def read_metrics(self) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            return []
        records = []
        for line in f.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                continue
        return records

    # ------------------------------------------------------------------ stage state
    def save_stage(self, stage: str, epoch: int, objects: dict[str, Any], rng: torch.Generator,
                   extra: Optional[dict[str, torch.Tensor]] = None) -> None:
        """Checkpoint a stage after `epoch`: each object's state_dict, the RNG state and `extra` tensors.

        Collective under torch.distributed (sharded state is gathered, every rank's RNG state
        kept); rank 0 writes.
        """
        d = current_dist()
        state = {"epoch": epoch, "rng": rng.get_state(), "extra": extra or {},
                 "rng_ranks": d.all_gather_cat(rng.get_state().unsqueeze(0))}
        state.update({name: obj.state_dict() for name, obj in objects.items()})
        if d.is_main:
            save_checkpoint(state, self.checkpoint_path(stage))
        d.barrier()

    def retire_stage(self, stage: str, key: str, value: int, default: bool = False) -> bool:
        """Move a stage's checkpoint aside (<stage>.pt.stale) when its extra[key] is not `value`:
        it was trained on inputs that have changed since (IMLE on the codes of fewer GLO epochs).
        `default` decides for a checkpoint without the key. Rank 0 decides; every rank agrees."""
        d = current_dist()
        path = self.checkpoint_path(stage)
        stale = False
        if d.is_main and path.is_file():
            saved = load_checkpoint(path, mmap=True).get("extra", {}).get(key)
            stale = default if saved is None else int(saved) != value
        stale = d.any(stale)
        if stale and d.is_main:
            path.replace(path.with_suffix(".pt.stale"))
            tqdm.write(f"glann: {stage} starts again: it was trained on inputs that have changed since "
                       f"(old checkpoint kept as {path.name}.stale)", file=sys.stderr)
        d.barrier()
        return stale

    def load_stage(self, stage: str, objects: dict[str, Any], rng: torch.Generator,
                   device: torch.device) -> tuple[int, dict[str, torch.Tensor]]:
        """Restore a stage saved by save_stage; returns (next epoch, extra). (0, {}) when none is saved."""
        path = self.checkpoint_path(stage)
        if not path.is_file():
            return 0, {}
        # Loaded on the CPU: load_state_dict copies weights and moments to their parameters' device,
        # while Adam's step counts stay host tensors, as in a fresh optimiser. Loaded straight onto
        # the GPU they would stay there, and Adam reads each one back every step (a wait per tensor).
        state = load_checkpoint(path, map_location="cpu")
        try:
            for name, obj in objects.items():
                if isinstance(obj, torch.optim.Optimizer):
                    _load_optimizer(obj, state[name])
                else:
                    obj.load_state_dict(state[name])
            d = current_dist()
            ranks = state.get("rng_ranks")
            if ranks is not None and ranks.shape[0] == d.world:
                rng.set_state(ranks[d.rank].cpu().clone())  # a fresh tensor: set_state misreads a view with an offset
            elif d.is_main:
                rng.set_state(state["rng"].cpu())  # saved by a different world size: others keep their seeds
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match this run's config "
                                  f"({str(exc).splitlines()[0]}); delete it to start the {stage} stage again") from exc
        extra = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.get("extra", {}).items()}
        return int(state["epoch"]) + 1, extra


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """opt.load_state_dict(saved), keeping the kernel this run built opt with and its weights' layout.

    load_state_dict restores the saved groups' `fused`/`foreach`/`capturable` flags (and places
    Adam's step counts by them), so a resume that sets perf.fused_adam would silently run the old
    kernel; and it keeps the layout the moments were saved in, while fused Adam walks weights, grads
    and moments by raw memory position: moments saved with perf.channels_last off and loaded into
    channels_last weights (or the reverse) would be updated element-for-wrong-element. Each moment
    takes its weight's layout instead."""
    kernels = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in opt.param_groups]
    # Into the saved groups before loading: torch places each step count (host or device) by them.
    opt.load_state_dict({**saved, "param_groups": [{**g, **k} for g, k in zip(saved["param_groups"], kernels)]})
    for group in opt.param_groups:
        for p in group["params"]:
            for key, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=v.dtype).copy_(v)
