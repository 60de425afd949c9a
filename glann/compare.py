"""`glann compare`: train methods x seeds under one budget, evaluate each run, write the report.

A compare config (configs/compare_*.yaml) names methods (a training config + overrides each), the
seeds, the budget and the metrics. Runs live in <out_dir>/<name>/<method>_s<seed>/; a finished run
(one with model.safetensors) is not trained again, an interrupted one is resumed, so the command
can be re-run after a stop and only finishes what is missing. A run kept that way must have been made
with the config the comparison asks for now: one made otherwise (an older default, another budget)
is refused before anything trains, rather than reported as if it were this comparison's.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import GlannConfig, load_config, read_run_config, run_mismatches
from .errors import ConfigError
from .checkpoints import MODEL_FILE, atomic_write
from .pipeline import train
from .runs import has_checkpoint
from .report import write_report

TIMING_FILE = "timing.json"  # {"train_seconds": wall-clock of glann.train for this run}
FEATURES = ("basic", "domain", "inception")


@dataclass
class MethodSpec:
    config: str  # a training config, e.g. configs/gan_fashion_mnist.yaml
    overrides: List[str] = field(default_factory=list)


@dataclass
class CompareConfig:
    name: str = "compare"
    out_dir: str = "runs"
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    # The budget, the same for every run. budget_seconds becomes every run's max_seconds: GAN runs
    # stop at it; GLANN runs split it by their own rule (imle.budget_epochs), or, with glo_share
    # set, give that share to GLO and the rest to IMLE. budget_steps (generator updates) binds GAN runs only: GLANN's GLO and
    # IMLE steps update different networks, so size its epochs instead. Either way the report
    # shows every run's measured training time beside its metrics.
    budget_seconds: Optional[float] = None
    budget_steps: Optional[int] = None
    glo_share: Optional[float] = None
    features: str = "domain"  # domain | inception (glann.evaluate) | basic (pixel statistics)
    num_samples: int = 10000  # generated images per evaluation (and real ones they are compared to)
    overrides: List[str] = field(default_factory=list)  # applied to every method, before its own
    methods: Dict[str, MethodSpec] = field(default_factory=dict)


def load_compare_config(path: Union[str, Path], overrides: List[str] = ()) -> CompareConfig:
    """Defaults <- YAML <- `key=value` overrides; raises ConfigError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare config {path} not found; pass a file such as configs/compare_fashion_mnist.yaml")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. seeds=[0])")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    try:
        merged = OmegaConf.merge(OmegaConf.structured(CompareConfig), loaded, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{path}: bad compare key '{key}': {str(exc).splitlines()[0]}") from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # e.g. a top-level list, not a mapping
        raise ConfigError(f"{path}: cannot be read as a compare config ({str(exc).splitlines()[0]}); "
                          f"it must be a mapping such as configs/compare_fashion_mnist.yaml") from exc
    cfg: CompareConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if not cfg.methods:
        raise ConfigError(f"{path}: lists no methods; add methods: {{name: {{config: configs/...yaml}}}}")
    if not cfg.seeds:
        raise ConfigError(f"{path}: seeds is empty; give at least one, e.g. seeds: [0, 1, 2]")
    if cfg.glo_share is not None and not 0 < cfg.glo_share < 1:
        raise ConfigError(f"{path}: glo_share must be between 0 and 1 (GLO's part of a GLANN run's budget), "
                          f"got {cfg.glo_share}")
    if cfg.features not in FEATURES:
        raise ConfigError(f"{path}: features must be one of {FEATURES}, got '{cfg.features}'")
    return cfg


def run_overrides(cc: CompareConfig, method: str, seed: int) -> list[str]:
    """The `key=value` list that turns a method's config into one run of the comparison."""
    spec = cc.methods[method]
    budget = []
    if cc.budget_seconds is not None:
        budget.append(f"max_seconds={cc.budget_seconds}")
        if cc.glo_share is not None:
            glo = cc.budget_seconds * cc.glo_share
            budget += [f"glo.max_seconds={glo}", f"imle.max_seconds={cc.budget_seconds - glo}"]
    if cc.budget_steps is not None:
        budget.append(f"gan.max_steps={cc.budget_steps}")
    return [*cc.overrides, *spec.overrides, f"seed={seed}", f"name={method}_s{seed}",
            f"out_dir={Path(cc.out_dir) / cc.name}", *budget]


def compare(config: Union[str, Path, CompareConfig], overrides: List[str] = (),
            metrics_fn: Optional[Callable[[Path], dict]] = None) -> Path:
    """Train (or finish) every method x seed, evaluate each run and write report.md / report.html
    with PNG plots into <out_dir>/<name>/. Returns that directory."""
    cc = config if isinstance(config, CompareConfig) else load_compare_config(config, overrides)
    root = Path(cc.out_dir) / cc.name
    runs = [(root / f"{method}_s{seed}", load_config(spec.config, run_overrides(cc, method, seed)))
            for seed in cc.seeds for method, spec in cc.methods.items()]
    for run_dir, cfg in runs:  # every kept run is checked before any trains
        _check_kept_run(run_dir, cfg)
    for run_dir, cfg in runs:
        if (run_dir / MODEL_FILE).is_file():
            continue  # finished earlier
        resume = has_checkpoint(run_dir)
        timing = run_dir / TIMING_FILE
        before = json.loads(timing.read_text()).get("train_seconds", 0.0) if resume and timing.is_file() else 0.0
        t0 = time.perf_counter()
        try:
            train(cfg, resume=resume, run_dir=run_dir)
        finally:  # written on an interrupt too, so a resumed run's total counts the time before the stop
            seconds = before + time.perf_counter() - t0
            if run_dir.is_dir():
                atomic_write(timing, lambda tmp: Path(tmp).write_text(json.dumps({"train_seconds": seconds})))
    return write_report([run_dir for run_dir, _ in runs], root, features=cc.features, num_samples=cc.num_samples,
                        metrics_fn=metrics_fn, title=f"{cc.name}: {len(cc.methods)} methods x {len(cc.seeds)} seeds",
                        budget=_budget_text(cc))


def _check_kept_run(run_dir: Path, cfg: GlannConfig) -> None:
    """ConfigError when run_dir holds a run the comparison would keep (finished) or resume (stopped)
    that was made with another config than cfg, and so would be reported as cfg's."""
    if not ((run_dir / MODEL_FILE).is_file() or has_checkpoint(run_dir)):
        return  # nothing kept: a folder without a checkpoint is trained afresh
    saved = read_run_config(run_dir)
    differ = run_mismatches(saved, cfg) if saved is not None else {}
    if differ:
        shown = ", ".join(f"{k}={old!r} (asked: {new!r})" for k, (old, new) in list(differ.items())[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise ConfigError(f"{run_dir} was made with another config than this comparison asks for: {shown}{more}; "
                          f"delete that run directory to train it again, or give the comparison a new name=...")


def _budget_text(cc: CompareConfig) -> str:
    parts = []
    if cc.budget_seconds is not None:
        split = (f"{cc.glo_share:.0%} GLO, the rest IMLE" if cc.glo_share is not None
                 else "GLO and IMLE split by its imle.budget_epochs rule")
        parts.append(f"{cc.budget_seconds:g} s of training per run (GLANN: {split}; "
                     f"the time column adds start-up and exports)")
    if cc.budget_steps is not None:
        parts.append(f"{cc.budget_steps} generator updates per GAN run")
    return "; ".join(parts) or "each method's own epochs (no shared budget set)"
