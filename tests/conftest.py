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
