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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from .config import GlannConfig, config_from_dict, load_config, to_yaml
from .distributed import current as current_dist
from .errors import CheckpointError, ConfigError, TrainingError

MODEL_FILE = "model.safetensors"
CHECK_EVERY = 50  # training steps between host syncs for the progress bar and the finiteness check


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: a kill never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run directory is shared like any other output
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut only once the directory is on disk too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems refuse fsync on a directory: the file itself is whole anyway
        pass


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically save a dict of tensors, numbers, strings and nested containers of them.

    A failed write (disk full, permissions) raises CheckpointError; the previous file is untouched.
    """
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path} ({exc.strerror or exc}); the previous "
                              f"checkpoint there is intact: free space or fix permissions, then --resume") from exc


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain containers only, never arbitrary pickled objects.
    mmap=True maps the tensors instead of reading them: for a look at the epoch or a few scalars."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    raise TrainingError(f"non-finite {stage} loss at epoch {epoch}, step {step}; {where}; "
                        f"lower the learning rates or check the data, then resume with --resume")



# Keys a resume may change: how long and how fast the run goes on and what it logs. Anything else
# (model, data, losses, seeds) would no longer match the run's checkpoints or its data.
RESUMABLE_KEYS = ("max_seconds", "glo.epochs", "imle.epochs", "gan.epochs", "glo.max_seconds", "imle.max_seconds",
                  "gan.max_seconds", "gan.max_steps", "glo.lr_codes", "glo.lr_generator", "imle.lr", "gan.lr_generator",
                  "gan.lr_discriminator", "sample_every", "checkpoint_every", "grid_size", "device", "skip_nonfinite",
                  "imle.knn_backend", "imle.knn_query_batch", "perf.", "eval.", "name", "out_dir")


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def check_resume_overrides(saved: GlannConfig, merged: GlannConfig) -> None:
    """ConfigError naming each key an override changed that a resumed run cannot take."""
    before = _leaves(OmegaConf.to_container(OmegaConf.structured(saved)))
    after = _leaves(OmegaConf.to_container(OmegaConf.structured(merged)))
    bad = [k for k in after if after[k] != before.get(k)
           and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)]
    if bad:
        raise ConfigError(f"--resume cannot change {', '.join(bad)}: the run's checkpoints and data were made "
                          f"without it; start a new run (another name=...) or drop the override")


def keep_configured_lr(opt: torch.optim.Optimizer, lr: float, sched: Optional[Any] = None) -> None:
    """After a resume, the configured base learning rate wins over the checkpoint's (e.g. a lower
    glo.lr_generator after a NaN); the step decay reached so far is kept."""
    base = sched.base_lrs[0] if sched is not None else opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"])
    if base == lr:
        return
    for group in opt.param_groups:
        group["lr"] *= lr / base
        if "initial_lr" in group:
            group["initial_lr"] = lr
    if sched is not None:
        sched.base_lrs = [lr] * len(sched.base_lrs)
        sched._last_lr = [group["lr"] for group in opt.param_groups]


class Budget:
    """A stage's training wall-clock, carried across resumes, against an optional limit in seconds.

    `exhausted()` is agreed by every rank under torchrun: it is one all-reduce, so every rank must
    call it at the same points (every CHECK_EVERY steps, not every step); without a limit it costs
    nothing.
    """

    def __init__(self, limit: Optional[float], extra: dict[str, torch.Tensor]):
        self.limit = limit
        self.spent = float(extra["seconds"]) if "seconds" in extra else 0.0
        self._t0 = time.perf_counter()

    def start_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def end_epoch(self, stage: str = "", epoch: int = 0, epochs: int = 0) -> bool:
        """Close the epoch's timing; True when the budget is spent (agreed by every rank). With a
        stage name, rank 0 says so when that cuts the stage short of its `epochs`."""
        self.spent += time.perf_counter() - self._t0
        self._t0 = time.perf_counter()
        stop = self.exhausted(in_epoch=False)
        if stop and stage and epoch + 1 < epochs and current_dist().is_main:
            tqdm.write(f"{stage}: {stage.lower()}.max_seconds={self.limit:g} reached after {epoch + 1} of {epochs} epochs")
        return stop

    def fraction(self, in_epoch: bool = True) -> float:
        """Share of the limit spent, agreed by every rank (their mean); 0 without a limit."""
        if self.limit is None:
            return 0.0
        now = self.spent + (time.perf_counter() - self._t0 if in_epoch else 0.0)
        d = current_dist()
        return d.sum(now / self.limit) / d.world

    def exhausted(self, in_epoch: bool = True) -> bool:
        return self.limit is not None and self.fraction(in_epoch) >= 1.0

    def state(self) -> dict[str, torch.Tensor]:
        return {"seconds": torch.tensor(self.spent, dtype=torch.float64)}


def step_scheduler(opt: torch.optim.Optimizer, kind: str, every: int, rate: float) -> Any:
    """The epoch-end scheduler of a stage: StepLR for schedule=step (the reference); for cosine a
    StepLR that never changes the rate (`Cosine` sets it), so checkpoints keep one layout."""
    return torch.optim.lr_scheduler.StepLR(opt, every, rate if kind == "step" else 1.0)


class Cosine:
    """schedule=cosine: half a cosine from each optimiser's configured rate down to 0 over the stage.

    Progress is the larger of the epochs done (to the step) over the stage's epochs and the
    budget's spent share, so a run ends annealed whether its epochs or its seconds run out first.
    The budget's share is refreshed only where `Budget.exhausted` is checked (every CHECK_EVERY
    steps, agreed by every rank), so under torchrun all ranks use the same rates.
    """

    def __init__(self, kind: str, opts: Sequence[tuple[torch.optim.Optimizer, float]], epochs: int, steps: int):
        self.on, self.opts, self.epochs, self.steps = kind == "cosine", opts, max(1, epochs), max(1, steps)
        self.time_share = 0.0

    def set(self, epoch: int, step: int) -> None:
        if not self.on:
            return
        p = min(1.0, max((epoch + step / self.steps) / self.epochs, self.time_share))
        factor = 0.5 * (1.0 + math.cos(math.pi * p))
        for opt, base in self.opts:
            for group in opt.param_groups:
                group["lr"] = base * factor


class LossTracker:
    """Running mean of a stage's loss for one epoch, and the first non-finite step.

    Default: no host sync per step; the first bad step is recorded on the device and
    `flush` (every CHECK_EVERY steps) raises TrainingError naming it. With skip=True each
    loss is checked at once (one sync per step) and a non-finite batch is skipped and counted.
    """

    def __init__(self, stage: str, epoch: int, run: Optional["Run"], device: torch.device, skip: bool = False):
        self.stage, self.epoch, self.run, self.skip = stage, epoch, run, skip
        self.total = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.good = 0
        self.skipped = 0

    def add(self, loss: torch.Tensor, step: int) -> bool:
        """Record `loss` (a scalar tensor); False means: skip this batch's update."""
        loss = loss.detach()
        if self.skip:
            if not bool(torch.isfinite(loss)):
                self.skipped += 1
                return False
        else:
            bad = ~torch.isfinite(loss) & (self.first_bad < 0)
            self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.total += loss
        self.good += 1
        return True

    def flush(self) -> float:
        """Host sync: raise on a recorded non-finite step, else return the running mean."""
        first_bad = int(self.first_bad)
        if first_bad >= 0:
            check_finite(float("nan"), self.stage, self.epoch, first_bad, self.run)
        if self.skip and self.good == 0 and self.skipped:
            raise TrainingError(f"every {self.stage} batch of epoch {self.epoch} had a non-finite loss "
                                f"({self.skipped} skipped); lower the learning rates or check the data")
        return self.total.item() / max(self.good, 1)


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
        has_ckpt = (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("*.pt"))
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

    def _acquire_lock(self) -> None:
        """An flock on runs/<name>/.lock: a second trainer on the same directory refuses to start.

        The kernel drops the lock when the process dies, even by SIGKILL, so no stale lock remains.
        """
        import fcntl

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
        """The run's config.yaml (None when it has none), with `key=value` overrides on top."""
        f = self.path / "config.yaml"
        if not f.is_file():
            return None
        try:
            raw = OmegaConf.to_container(OmegaConf.load(f))
        except Exception as exc:  # yaml errors: a hand edit gone wrong
            raise CheckpointError(f"{f} is not valid YAML ({str(exc).splitlines()[0]}); fix it by hand "
                                  f"or restore it from a copy") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{f} does not hold a config (a mapping of keys); fix it or restore it from a copy")
        saved = config_from_dict(raw)
        if not overrides:
            return saved
        merged = load_config(f, overrides)
        check_resume_overrides(saved, merged)
        for stage in ("glo", "imle", "gan"):  # a run can be lengthened, not shortened below its checkpoint
            ckpt, epochs = self.checkpoint_path(stage), getattr(merged, stage).epochs
            if epochs != getattr(saved, stage).epochs and ckpt.is_file():
                done = int(load_checkpoint(ckpt, mmap=True)["epoch"]) + 1
                if epochs < done:
                    raise ConfigError(f"{stage}.epochs={epochs} is below the {done} epochs this run has "
                                      f"trained; resume with {stage}.epochs >= {done}, or start a new run")
        return merged

    # ------------------------------------------------------------------ paths
    def checkpoint_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.pt"

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
