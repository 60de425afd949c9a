"""What the lever studies (glo_levers.py, imle_study.py, imle_mirror_study.py) share: variants
given as NAME:key=value;key=value, a Markdown table printed and appended to an --out file, and one
run's fixed codes and generator with the domain protocol's reference and classifier."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from glann.checkpoints import load_checkpoint
from glann.config import GlannConfig, config_from_dict
from glann.data import Dataset
from glann.evaluate.classifier import domain_classifier
from glann.evaluate.suite import _subset, evaluate, reference_data
from glann.nets import build_generator, sphere


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """'lr3x:imle.lr=0.003;imle.batch_size=256' -> ('lr3x', ['imle.lr=0.003', 'imle.batch_size=256'])."""
    name, _, over = spec.partition(":")
    return name, [o for o in over.split(";") if o]


def emit(lines: list[str], out: Optional[str]) -> int:
    """Print the table and append it to `out` when given; the script's exit status (0)."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")
    return 0


def metric_cells(m: dict[str, Any]) -> str:
    """The domain protocol's metrics as a table row's last cells: 'FD | precision | recall | classes | KL'."""
    return (f"{m['fd']:.2f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['classes_covered']} | "
            f"{m['mode_kl']:.4f}")


def brief(m: dict[str, Any]) -> str:
    """FD, precision, recall and KL as one JSON line, for a study's progress prints."""
    return json.dumps({k: m[k] for k in ("fd", "precision", "recall", "mode_kl")})


@dataclass
class FixedRun:
    """A GLANN run's GLO result, held fixed while IMLE variants train on it."""
    raw: dict[str, Any]  # its config.yaml as a plain dict (variants override keys of a copy)
    cfg: GlannConfig
    codes: torch.Tensor  # on the unit sphere
    generator: torch.nn.Module  # in eval mode
    reference: Dataset  # num_samples test images, the domain protocol's reference
    classifier: Any  # the domain classifier

    def score(self, images: torch.Tensor) -> dict[str, float]:
        """The domain protocol's metrics of these images against the reference, with the run's classifier."""
        return evaluate(images, self.reference, "domain", classifier=self.classifier)["metrics"]


def load_fixed_run(run: Path, num_samples: int) -> FixedRun:
    """RUN's config, codes and generator (checkpoints/glo.pt: IMLE need not have run), num_samples
    test images and the domain classifier."""
    raw = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    cfg = config_from_dict(raw)
    ck = load_checkpoint(run / "checkpoints" / "glo.pt")
    ref, train, test = reference_data(cfg.data, "test")
    G = build_generator(cfg, tuple(train.images.shape[1:]))
    G.load_state_dict(ck["generator"])
    reference = Dataset(_subset(ref.images, num_samples, 1), _subset(ref.labels, num_samples, 1), ref.name)
    return FixedRun(raw, cfg, sphere(ck["codes"]["weight"].float()), G.eval(), reference,
                    domain_classifier(train, test))
