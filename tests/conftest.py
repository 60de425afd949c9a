from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glann.config import GlannConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing downloads in tests: no dataset downloads, no weight downloads.
    monkeypatch.setenv("GLANN_OFFLINE", "1")
    torch.set_num_threads(2)


def tiny_config(tmp_path: Path, *overrides: str) -> GlannConfig:
    """configs/tiny.yaml (generated shapes, small nets), writing under tmp_path."""
    return load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", *overrides])


@pytest.fixture
def tiny(tmp_path):
    return lambda *o: tiny_config(tmp_path, *o)


@pytest.fixture
def one_thread():
    """Nets this small gain nothing from a second thread."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


def ring_config(tmp_path: Path, *overrides: str, points: int = 512, width: int = 32) -> GlannConfig:
    """configs/ring8.yaml shrunk to seconds: `points` points, nets `width` wide."""
    w = f"[{width},{width}]"
    return load_config(ROOT / "configs" / "ring8.yaml",
                       [f"out_dir={tmp_path}", f"data.limit={points}", f"model.mlp_hidden={w}", f"gan.d_hidden={w}",
                        f"model.mapper_hidden={w}", "grid_size=64", "glo.batch_size=64", "imle.batch_size=64",
                        "gan.batch_size=64", "glo.lr_codes=0.05", *overrides])

