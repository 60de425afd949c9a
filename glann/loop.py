"""What the three training loops (GLO, IMLE, GAN) share: the time budget, the learning-rate
schedules, the running loss with its finiteness check, and the one end-of-epoch place where a
stage logs, draws its grids and checkpoints.

Every stage reads the same way (glann/glo.py, glann/imle.py, glann/gan.py):

    setup: networks, optimisers, resume from the stage's checkpoint, Budget
    for epoch, bar in epoch_loop(stage, start, epochs, budget):
        <the stage's step loop>; stop = budget.end_epoch(...)
        end_of_epoch(run, stage, epoch, epochs, stop, ..., record, save, grids)
        if stop: break
    return the stage's result
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .distributed import current as current_dist
from .errors import TrainingError

if TYPE_CHECKING:  # annotations only: runs.py holds the run directory, which this module never builds
    from .runs import Run

CHECK_EVERY = 50  # training steps between host syncs for the progress bar and the finiteness check


def due(epoch: int, every: int, epochs: int, stop: bool) -> bool:
    """After `epoch`, is a periodic write due: every `every` epochs, after the stage's last epoch,
    and after the last epoch of its budget (`stop`)."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs or stop


def epoch_loop(stage: str, start: int, epochs: int, budget: "Budget") -> Iterator[tuple[int, Any]]:
    """The epochs a stage may train, with their progress bar: from `start` (a resume's next epoch)
    to `epochs`, none when the budget is already spent. The budget's clock starts at each epoch it
    yields; the stage itself breaks out after the epoch its `budget.end_epoch()` says is the last."""
    if budget.exhausted(in_epoch=False):  # a resumed run whose budget is already spent
        return
    # Under a budget the epoch count is a cap the budget usually ends first: no total, no ETA from it.
    limits = ([] if budget.limit is None else [budget.seconds_text]) + \
        ([] if budget.max_steps is None else [f"max_steps={budget.max_steps}"])
    bar = tqdm(desc=f"{stage} ({', '.join(limits)})" if limits else stage, unit="epoch", initial=start,
               total=None if limits else epochs)
    try:
        for epoch in range(start, epochs):
            budget.start_epoch()
            try:
                yield epoch, bar
            finally:  # also when the stage breaks out after its budget's last epoch: that epoch ran
                bar.update(1)
    finally:
        bar.close()


def end_of_epoch(run: Optional["Run"], stage: str, epoch: int, epochs: int, stop: bool, sample_every: int,
                 checkpoint_every: int, record: dict[str, Any], save: Callable[[], None],
                 grids: Optional[Callable[[], None]] = None) -> None:
    """A stage's epoch-end maintenance, the same for every stage: log `record` (rank 0), draw the
    grids when due (rank 0; `grids` None: the stage has none to draw) and call `save` when a
    checkpoint is due (on every rank: saving is collective under torchrun). Nothing without a run."""
    if run is None:
        return
    run.log(stage, epoch, **record)
    if grids is not None and run.is_main and due(epoch, sample_every, epochs, stop):
        grids()
    if due(epoch, checkpoint_every, epochs, stop):
        save()


def check_finite(value: float, stage: str, epoch: int, step: int, run: Optional["Run"]) -> None:
    """Raise TrainingError, naming epoch and step, when a running loss is NaN or infinite."""
    if math.isfinite(value):
        return
    ckpt = run.checkpoint_path(stage.lower()) if run else None
    where = f"the last good checkpoint {ckpt} is kept" if ckpt and ckpt.is_file() else "no checkpoint was written yet"
    raise TrainingError(f"non-finite {stage} loss at epoch {epoch}, step {step}; {where}; "
                        f"lower the learning rates or check the data, then resume with --resume")


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
    """A stage's training wall-clock, carried across resumes, against an optional limit in seconds,
    and optionally a count of updates against `max_steps` (the GAN's gan.max_steps: it counts its
    generator updates with `count_step`, kept in checkpoints under `steps_key`).

    `exhausted()` is agreed by every rank under torchrun: it is one all-reduce, so every rank must
    call it at the same points (every CHECK_EVERY steps, not every step); without a limit it costs
    nothing.
    """

    def __init__(self, limit: Optional[float], extra: dict[str, torch.Tensor], max_steps: Optional[int] = None,
                 steps_key: Optional[str] = None):
        self.limit, self.max_steps, self.steps_key = limit, max_steps, steps_key
        self.spent = float(extra["seconds"]) if "seconds" in extra else 0.0
        self.steps = int(extra[steps_key]) if steps_key is not None and steps_key in extra else 0
        self._t0 = time.perf_counter()

    def count_step(self) -> None:
        self.steps += 1

    def start_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def end_epoch(self, stage: str = "", epoch: int = 0, epochs: int = 0) -> bool:
        """Close the epoch's timing; True when the budget is spent (agreed by every rank). With a
        stage name, rank 0 says so when that cuts the stage short of its `epochs`."""
        self.spent += time.perf_counter() - self._t0
        self._t0 = time.perf_counter()
        stop = self.exhausted(in_epoch=False)
        if stop and stage and epoch + 1 < epochs and current_dist().is_main:
            limit = (f"max_steps={self.max_steps}" if self._steps_out() else self.seconds_text)
            tqdm.write(f"{stage}: {stage.lower()}.{limit} reached after {epoch + 1} of {epochs} epochs")
        return stop

    @property
    def seconds_text(self) -> str:
        """The limit as printed: 'max_seconds=410.6' (to 0.1 s; a split budget's share has many digits)."""
        return f"max_seconds={round(self.limit, 1):g}"

    def fraction(self, in_epoch: bool = True) -> float:
        """Share of the limit spent, agreed by every rank (their mean); 0 without a limit."""
        if self.limit is None:
            return 0.0
        now = self.spent + (time.perf_counter() - self._t0 if in_epoch else 0.0)
        d = current_dist()
        return d.sum(now / self.limit) / d.world

    def _steps_out(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    def exhausted(self, in_epoch: bool = True) -> bool:
        return self._steps_out() or (self.limit is not None and self.fraction(in_epoch) >= 1.0)

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the seconds spent, and the updates counted (under steps_key)."""
        out = {"seconds": torch.tensor(self.spent, dtype=torch.float64)}
        if self.steps_key is not None:
            out[self.steps_key] = torch.tensor(self.steps)
        return out


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
