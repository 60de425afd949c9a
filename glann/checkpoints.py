"""Files that survive a kill: atomic writes, and checkpoints of plain tensors saved and loaded safely.

Every file glann writes into a run directory (config, checkpoints, exports, logs' summaries) goes
through `atomic_write`; checkpoints are `torch.save`d dicts read back with weights_only=True.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

MODEL_FILE = "model.safetensors"  # a run's exported sampler weights (glann.sampler.Sampler.save_pretrained)


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


def checkpoint_file(run_dir: Path, stage: str) -> Path:
    """Where a run keeps a stage's latest checkpoint: <run>/checkpoints/<stage>.pt."""
    return Path(run_dir) / "checkpoints" / f"{stage}.pt"
