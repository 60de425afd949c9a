"""The whole GLANN pipeline: data -> GLO -> IMLE -> exported sampler, in one run directory."""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .config import GlannConfig, is_conditional, load_config, read_run_config
from .distributed import current as current_dist
from .distributed import init_from_env
from .errors import ConfigError
from .data import CLASS_NAMES, Dataset, load_dataset
from .checkpoints import load_checkpoint
from .devices import resolve_device, resolve_perf
from .gan import train_gan
from .glo import train_glo
from .imle import epoch_seconds_estimate, train_imle
from .nets import MixturePrior, grid_classes, grid_row
from .runs import Run
from .sampler import Sampler


def stage_budgets(cfg: GlannConfig, n: int, device: torch.device, glo_seconds: Optional[float] = None) -> GlannConfig:
    """The per-stage budgets a whole-method `max_seconds` implies (a copy of cfg; cfg unchanged).

    GAN: gan.max_seconds. GLANN, before GLO (glo_seconds None): GLO gets max_seconds minus IMLE's
    part, the measured time of imle.budget_epochs epochs (imle.epochs when fewer: 0 plans none)
    plus, with the mixture start, its fit's estimated time, at most imle.budget_max_share of the
    budget (glann.imle.epoch_seconds_estimate, MixturePrior.fit_seconds_estimate). After GLO: IMLE
    gets what GLO left, so the two stages together train for max_seconds. A stage's own
    max_seconds, when set, wins. The plan is logged once by rank 0; a resume with the same
    max_seconds keeps the plan GLO trained under (`_kept_plan`), a new max_seconds is planned afresh.
    """
    if cfg.max_seconds is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    total = cfg.max_seconds
    if cfg.method == "gan":
        cfg.gan.max_seconds = cfg.gan.max_seconds or total
        return cfg
    d = current_dist()
    if glo_seconds is None:
        if cfg.glo.max_seconds is None:
            if cfg.imle.max_seconds is not None:
                imle = min(cfg.imle.max_seconds, total)
            else:
                t0 = time.perf_counter()
                planned = min(cfg.imle.budget_epochs, cfg.imle.epochs)  # imle.epochs, when fewer, caps the plan
                epoch = (d.sum(epoch_seconds_estimate(-(-n // d.world), cfg, device)) / d.world  # one plan on every rank
                         if planned else 0.0)
                # The mixture start's fit is IMLE's time too, planned so that its epochs still run; rank 0
                # alone fits (imle._fit_prior), so it alone times the fit while the others wait here.
                mixture = cfg.model.mapper_prior == "mixture"
                fit = d.sum(MixturePrior(cfg.model.mapper_prior_components, cfg.model.nz).fit_seconds_estimate(n)
                            if mixture and d.is_main else 0.0)
                probe = time.perf_counter() - t0  # charged to GLO: the budget covers all training work
                imle = min(cfg.imle.budget_max_share * total, planned * epoch + fit) + probe
                if d.is_main:
                    fitted = f" and the mixture's fit about {fit:.0f} s" if mixture else ""
                    epochs = (imle - probe - fit) / epoch if planned else 0.0
                    measured = (f"an IMLE epoch measures {epoch:.1f} s here{fitted}" if planned else
                                f"imle.epochs=0{fitted}")
                    plan = f"about {max(epochs, 0):.0f} epochs at that speed" if planned else "no epochs"
                    tqdm.write(f"glann: max_seconds={total:g}: {measured}, so IMLE gets {imle:.0f} s ({plan}) "
                               f"and GLO the other {total - imle:.0f} s", file=sys.stderr)
                    if mixture and planned and epochs < 1:
                        tqdm.write(f"glann: warning: the mixture's fit fills IMLE's part of max_seconds={total:g} "
                                   f"(at most imle.budget_max_share={cfg.imle.budget_max_share:g} of it), so IMLE "
                                   f"will train no epoch and the run will overrun; raise max_seconds or "
                                   f"imle.budget_max_share, or set model.mapper_prior=gaussian", file=sys.stderr)
            cfg.glo.max_seconds = max(total - imle, 1e-3)
        return cfg
    if cfg.imle.max_seconds is None:
        cfg.imle.max_seconds = max(total - glo_seconds, 1e-3)  # what GLO left (GLO may end early on its epochs)
    return cfg


def _kept_plan(cfg: GlannConfig, run: Run) -> GlannConfig:
    """cfg with glo.max_seconds from the split GLO has trained under, when it was made for this same
    max_seconds: a resume keeps the plan rather than re-measuring it (a noisier probe could give GLO
    more time, reopen it and so retire IMLE's checkpoint). A new max_seconds is planned afresh."""
    f = run.checkpoint_path("glo")
    if cfg.max_seconds is None or cfg.glo.max_seconds is not None or not f.is_file():
        return cfg
    extra = load_checkpoint(f, mmap=True).get("extra", {})
    if "plan_total" not in extra or float(extra["plan_total"]) != float(cfg.max_seconds):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.glo.max_seconds = float(extra["plan_glo"])
    return cfg


def with_class_counts(cfg: GlannConfig, data: Dataset) -> GlannConfig:
    """cfg with model.class_counts set from the data's labels when the method is class-conditional
    (imle.conditional for GLANN, gan.conditional for the GAN); cfg itself otherwise. A resumed run
    must find the classes it was trained on."""
    key = "imle.conditional" if cfg.method == "glann" else "gan.conditional"
    if not is_conditional(cfg):
        return cfg
    if data.labels is None:
        raise ConfigError(f"{key}=true needs class labels, and data.source={cfg.data.source} has none; "
                          f"set {key}=false")
    names = CLASS_NAMES.get(cfg.data.source) if cfg.data.stack == 1 else None  # a missing last class shows too
    counts = torch.bincount(data.labels.cpu(), minlength=len(names or ())).tolist()
    if 0 in counts:
        raise ConfigError(f"{key}=true: class {counts.index(0)} has no training images (of {len(counts)} classes); "
                          f"raise data.limit or set {key}=false")
    if cfg.model.class_counts and cfg.model.class_counts != counts:
        raise ConfigError(f"this run was trained on {len(cfg.model.class_counts)} classes of "
                          f"{cfg.model.class_counts} images and the data now has {counts}; train it on the same data")
    cfg = copy.deepcopy(cfg)
    cfg.model.class_counts = counts
    return cfg


def _log_perf(cfg: GlannConfig) -> None:
    """One line saying which speed switches train this run (cfg.perf as resolve_perf decided it)."""
    p = cfg.perf
    on = [name for name, flag in (("bf16 autocast", p.amp == "bf16"), ("channels_last", p.channels_last),
                                  ("fused Adam", p.fused_adam), ("torch.compile", p.compile and cfg.method == "glann"))
          if flag]
    tqdm.write(f"glann: speed switches on: {', '.join(on) or 'none'} (perf.*; auto turns bf16, channels_last and "
               f"fused Adam on for images on a CPU with native bf16)", file=sys.stderr)


def train(cfg: Union[GlannConfig, str, Path], resume: bool = False, run_dir: Optional[Union[str, Path]] = None,
          overrides: Sequence[str] = ()) -> Path:
    """Train GLO then IMLE (method gan: the GAN baseline), export the sampler and write
    `samples.png`; returns the run directory.

    run_dir defaults to cfg.out_dir/cfg.name. With resume=True the run's own config.yaml is used,
    with `overrides` (`key=value`, e.g. glo.epochs=300) on top, and each stage continues from its
    last checkpoint. `cfg` may be a YAML path (then `overrides` apply to it as well).
    """
    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg, overrides)
    elif not isinstance(cfg, GlannConfig):
        raise ConfigError(f"train takes a GlannConfig (load_config(...)) or a YAML path, got {type(cfg).__name__}")
    path = Path(run_dir) if run_dir else Path(cfg.out_dir) / cfg.name  # from the command line, before any swap
    if resume:  # the config the run goes on with decides the device and the checks below
        cfg = read_run_config(path, overrides) or cfg
    device = resolve_device(cfg.device)
    d = init_from_env(device)  # under torchrun: join the group; rank 0 alone writes
    if d.active and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if d.active and cfg.method == "gan":
        raise ConfigError("the GAN baseline trains in one process; run it without torchrun")
    if d.active and cfg.method == "glann" and cfg.imle.precision_weight > 0:
        raise ConfigError("imle.precision_weight > 0 searches every code for each pool sample, which one "
                          "process does; set imle.precision_weight=0 under torchrun")
    if d.active and cfg.skip_nonfinite:
        raise ConfigError("skip_nonfinite=true skips a batch on one rank while the others step, which "
                          "desynchronises torchrun ranks; leave it false under torchrun")
    run = Run.create(cfg, path, resume=resume, overrides=overrides)
    cfg = run.cfg
    try:
        data = load_dataset(cfg.data, device, seed=cfg.seed)
        cfg = with_class_counts(cfg, data)  # conditional runs: the classes, from the labels
        # The speed switches this machine turns on, recorded as such: a resume elsewhere keeps them.
        run.set_config(dataclasses.replace(cfg, perf=resolve_perf(cfg.perf, device, data.is_vector)))
        cfg = run.cfg
        if run.is_main:
            _log_perf(cfg)
        if cfg.method == "gan":  # the adversarial baseline: same generator, no mapper
            generator, mapper = train_gan(data, stage_budgets(cfg, len(data), device), run).generator, None
        else:
            glo = train_glo(data, stage_budgets(_kept_plan(cfg, run), len(data), device), run)
            # IMLE fitted to the codes of fewer GLO epochs (a resume that lengthened GLO) starts again.
            run.retire_stage("imle", "codes_epoch", glo.epochs_done, default=bool(glo.losses))
            labels = data.labels[d.shard(len(data), device)] if cfg.model.class_counts else None  # the codes' classes
            imle = train_imle(glo.codes, stage_budgets(cfg, len(data), device, glo_seconds=glo.seconds), run,
                              generator=glo.generator, codes_epoch=glo.epochs_done, labels=labels)
            generator, mapper = glo.generator, imle.mapper
        if run.is_main:
            sampler = Sampler(generator, mapper, cfg, device)
            sampler.save_pretrained(run.path)
            rows = grid_classes(cfg.model.class_counts, cfg.grid_size, device)  # conditional: a row per class
            images = sampler.sample(cfg.grid_size if rows is None else len(rows), seed=cfg.seed, labels=rows)
            sampler.save_grid(images, run.path / "samples.png", nrow=grid_row(rows))
        d.barrier()
    finally:
        run.close()
    return run.path
