"""Configuration: one dataclass per stage, YAML and `key=value` overrides merged on top.

The defaults are the reference GLANN configuration for Fashion-MNIST (yedidh/glann,
configs/fashion.yaml); YAML files only override. OmegaConf does the merging and the
type checking; this module turns its exceptions into a one-line `ConfigError`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import CheckpointError, ConfigError

IMAGE_SIZES = (28, 32, 64, 128)
MIXTURES = ("ring8", "grid25")  # 2-D Gaussian mixtures: vector data, for the mode-collapse benchmarks
DATA_SOURCES = ("fashion_mnist", "mnist", "cifar10", "folder", "array", "shapes") + MIXTURES
LOSSES = ("lap1", "lpips", "vgg", "l1", "l2")
KNN_BACKENDS = ("auto", "faiss", "torch")
CODE_INITS = ("pca", "random")
SCHEDULES = ("cosine", "step")
METHODS = ("glann", "gan")
GAN_LOSSES = ("minimax", "nonsaturating", "lsgan", "wgan-gp", "hinge")
# Sources whose test split is held-out data; others (folder, array, shapes) have no separate split.
HELD_OUT_SOURCES = ("fashion_mnist", "mnist", "cifar10")
STAGES = ("glo", "imle", "gan")  # the stages that keep a checkpoint each
# Keys a study added and a later commit removed: each with the value that meant "off" (today's
# behaviour) and the last commit that has it. A config (a run's saved one, or a file) that holds one at
# that value loads without it, so runs made while it existed still sample, evaluate and resume; at
# any other value it is refused, since the run depended on what was removed.
REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "glo.code_noise": (0.0, "956a209"),  # decoder smoothing, benchmarks/glo_levers_cpu.md
    "imle.spread_weight": (0.0, "c6f076b"),  # IMLE's spread term, benchmarks/imle_study_cpu.md
    "imle.pull": ("mse", "21da52c"),  # IMLE's energy-score pull, benchmarks/imle_study_cpu.md
    "imle.energy_repulsion": (1.0, "21da52c"),  # (the same study)
    "model.mapper_extra_noise": (0, "21da52c"),  # (the same study)
}

Check = tuple[bool, str]  # (the rule holds, the one-line error naming the key and the fix)


def resumable(default: Any = None, factory: Any = None) -> Any:
    """A field a resume may change (`glann train --resume ... key=value`): how long and how fast a run
    goes on, and what it logs. Every other field (model, data, losses, seeds) would no longer match
    the run's checkpoints or its data, so check_resume_overrides refuses it. A section marked
    resumable makes all its keys resumable."""
    if factory is not None:
        return field(default_factory=factory, metadata={"resumable": True})
    return field(default=default, metadata={"resumable": True})


def _positive_lrs(section: str, **lrs: float) -> list[Check]:
    return [(math.isfinite(v) and v > 0, f"{section}.{k} must be a positive learning rate, got {v}") for k, v in lrs.items()]


def _betas(section: str, beta1: float, beta2: float) -> list[Check]:
    return [(0.0 <= v < 1.0, f"{section}.{k} must be in [0, 1), got {v}") for k, v in (("beta1", beta1), ("beta2", beta2))]


def _budget(key: str, seconds: Optional[float]) -> Check:
    return (seconds is None or seconds > 0, f"{key} must be positive (or null: no time budget), got {seconds}")


def _schedule(section: str, kind: str, every: int, rate: float) -> list[Check]:
    return [(kind in SCHEDULES, f"{section}.schedule must be one of {SCHEDULES}, got '{kind}'"),
            (every >= 1 and 0 < rate <= 1, f"{section}.decay_every must be >= 1 and {section}.decay_rate in (0, 1], "
                                           f"got {every} and {rate}")]


@dataclass
class DataConfig:
    source: str = "fashion_mnist"
    # Directory (idx/cifar/folder sources) or file (array source). None: search the usual places.
    path: Optional[str] = None
    split: str = "train"
    # Keep the first `limit` images (None: all; mixtures: the number of points, None: 10,000;
    # stack=3: the number of stacks drawn from the whole split, None: as many as the split holds).
    limit: Optional[int] = None
    # Folder/array sources are resized and centre-cropped to this; None keeps the native size.
    image_size: Optional[int] = None
    # 1 (grey) or 3 (RGB); None keeps the source's.
    channels: Optional[int] = None
    # Allow torchvision to download a missing dataset (never in tests: they set this false).
    download: bool = True
    # Folder source: skip unreadable images with a warning and a count instead of stopping.
    skip_bad: bool = False
    # 3: stacked data (Metz et al. 2017): each image is three random images of a grey, labelled
    # source as its R, G and B channels, so 10 classes give 1,000 modes. 1: the source as it is.
    stack: int = 1

    def checks(self) -> list[Check]:
        return [
            (self.source in DATA_SOURCES, f"data.source must be one of {DATA_SOURCES}, got '{self.source}'"),
            (self.split in ("train", "test"), f"data.split must be train or test, got '{self.split}'"),
            (self.limit is None or self.limit > 0, "data.limit must be positive"),
            (self.image_size is None or self.image_size in IMAGE_SIZES,
             f"data.image_size must be one of {IMAGE_SIZES}, got {self.image_size}"),
            (self.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {self.channels}"),
            (self.stack in (1, 3), f"data.stack must be 1 or 3, got {self.stack}"),
            (self.stack == 1 or self.channels in (None, 3), "data.stack=3 makes 3-channel images; drop data.channels"),
            (self.stack == 1 or self.source != "cifar10",
             "data.stack=3 stacks grey images and cifar10 is colour; use fashion_mnist or mnist"),
            (self.source not in MIXTURES or self.stack == 1, "data.stack=3 stacks images, not 2-D points"),
        ]


@dataclass
class ModelConfig:
    nz: int = 64  # latent code size (reference: 64)
    ngf: int = 64  # width of the last generator conv layer; earlier ones double
    fc_dim: int = 1024  # hidden width of the generator's fully connected stem (reference: 1024)
    batch_norm: bool = True  # reference do_bn: True
    stem_bias: bool = False  # biases in the generator's fully connected stem (reference: none)
    noise_dim: int = 32  # IMLE noise size (reference: 32)
    mapper_hidden: List[int] = field(default_factory=lambda: [128, 128])
    mapper_batch_norm: bool = True  # batch norm after each hidden mapper layer (reference: yes)
    # The mapper's input. gaussian: N(0, I) noise of noise_dim values (reference). mixture: a Gaussian
    # mixture of mapper_prior_components components, fitted to the GLO codes when IMLE starts; the
    # noise is then nz + 1 values (noise_dim sizes nothing) and the mapper moves the mixture's samples
    # by a learnt residual that starts at zero.
    mapper_prior: str = "gaussian"
    mapper_prior_components: int = 50
    # Vector data (2-D mixtures) only: hidden widths of the MLP generator (PacGAN's: 4 x 400).
    mlp_hidden: List[int] = field(default_factory=lambda: [400, 400, 400, 400])
    # Set by training, not by hand: the training images per class of a class-conditional run
    # (imle.conditional for GLANN, gan.conditional for the GAN), from the data's labels. Its length is
    # the number of classes the mapper (GLANN) or generator and discriminator (GAN) take, and
    # sampling without labels draws classes in these shares. Empty: unconditional.
    class_counts: List[int] = field(default_factory=list)

    def checks(self) -> list[Check]:
        return [
            (self.nz > 0 and self.noise_dim > 0, "model.nz and model.noise_dim must be positive"),
            *[(v > 0, f"model.{k} must be positive, got {v}") for k, v in (("ngf", self.ngf), ("fc_dim", self.fc_dim))],
            (len(self.mapper_hidden) > 0 and min(self.mapper_hidden) > 0,
             "model.mapper_hidden needs at least one layer, each of positive width"),
            (self.mapper_prior in ("gaussian", "mixture"),
             f"model.mapper_prior must be 'gaussian' or 'mixture', got '{self.mapper_prior}'"),
            (self.mapper_prior_components > 0,
             f"model.mapper_prior_components must be positive, got {self.mapper_prior_components}"),
        ]


@dataclass
class GLOConfig:
    epochs: int = resumable(200)
    batch_size: int = 128
    lr_codes: float = resumable(0.01)
    lr_generator: float = resumable(0.003)  # reference 0.001 (configs/fashion_mnist_reference.yaml); see benchmarks/glo_levers_cpu.md
    beta1: float = 0.5
    beta2: float = 0.999
    # Learning-rate schedule. cosine: half a cosine from the configured rates to 0 over the stage's
    # length (its epochs, or its max_seconds when that ends first), so a run of any length ends
    # annealed. step: the reference's, x decay_rate every decay_every epochs.
    schedule: str = "cosine"
    decay_every: int = 20  # schedule=step: epochs between learning-rate halvings
    decay_rate: float = 0.5
    # Where the codes start. pca: the images' principal components (a low-rank PCA of a subset),
    # whitened and on the unit sphere, so similar images start close; each code gets one update
    # per epoch, so the start decides how fast GLO learns. random: Gaussian on the sphere (reference).
    init: str = "pca"
    # Adam's bias correction for the codes. row: each code counts its own updates (one per epoch),
    # as if it had its own optimiser. shared: one count for the table, as torch.optim.SparseAdam
    # (the reference) does, which makes a code's early updates about 10 x lr (glann.glo.RowAdam).
    code_steps: str = "row"
    loss: str = "lap1"
    # Budget: stop GLO after this many seconds of training (across resumes). Counted inside epochs:
    # sample grids and checkpoints between epochs are not, and the epoch in progress finishes its
    # current CHECK_EVERY steps, so the stage's wall-clock ends a little later.
    max_seconds: Optional[float] = resumable(None)
    # vgg/lpips only: use randomly initialised backbones (tests and timing; not for real training).
    loss_random_weights: bool = False
    # vgg only: how many of VGG16's feature maps the loss compares (relu1_2, relu2_2, relu3_2,
    # relu4_3, pool5; the reference: 3). Fewer are cheaper: with random weights on the 2-core bf16
    # EPYC GLO ran 720 / 430 / 317 images/s at 1 / 2 / 3 levels, lap1 1,920 (benchmarks/glo_levers_cpu.md).
    vgg_levels: int = 3

    def checks(self) -> list[Check]:
        return [
            (self.loss in LOSSES, f"glo.loss must be one of {LOSSES}, got '{self.loss}'"),
            (1 <= self.vgg_levels <= 5, f"glo.vgg_levels must be 1 to 5, got {self.vgg_levels}"),
            (self.init in CODE_INITS, f"glo.init must be one of {CODE_INITS}, got '{self.init}'"),
            (self.code_steps in ("row", "shared"), f"glo.code_steps must be row or shared, got '{self.code_steps}'"),
            _budget("glo.max_seconds", self.max_seconds),
            (self.epochs >= 0, f"glo.epochs must be >= 0, got {self.epochs}"),
            *_positive_lrs("glo", lr_codes=self.lr_codes, lr_generator=self.lr_generator),
            *_betas("glo", self.beta1, self.beta2),
            *_schedule("glo", self.schedule, self.decay_every, self.decay_rate),
        ]


@dataclass
class IMLEConfig:
    epochs: int = resumable(50)
    batch_size: int = 128
    lr: float = resumable(0.01)  # reference 0.001: with imle.sphere, 0.01 reached a lower FD in the same time
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-5
    schedule: str = "cosine"  # cosine | step, as glo.schedule
    decay_every: int = 50  # schedule=step: epochs between halvings
    decay_rate: float = 0.5
    # Mapped samples drawn per data code each refresh (reference: 2). The search is ~90% of an IMLE
    # epoch on a CPU, and 1 scored as well as 2 in the same time at half the cost per epoch.
    samples_per_point: float = 1.0
    refresh_every: int = 1  # epochs between nearest-neighbour searches (reference: every epoch)
    # Rejection-sampling IMLE (Vashist et al. 2024): before matching, drop every pool sample that lies
    # within eps of some data code, so each code is pulled towards a sample that is not already on
    # top of the data. eps is this quantile of the codes' nearest-sample distances at that refresh
    # (e.g. 0.1); null: plain IMLE.
    rs_quantile: Optional[float] = None
    # Match and regress on the unit sphere: the mapper's samples are projected there before the search
    # and the loss, as the generator sees them (it projects its input). false: raw outputs (reference),
    # whose norm starts far from 1, so the first epochs go to shrinking it. Sampling is the same either way.
    sphere: bool = True
    # Weight of a second, sample -> data term: every pool sample is also pulled towards its nearest
    # code (one more search per refresh). IMLE's own objective (data -> sample) leaves a sample that
    # is no code's nearest where it is, which costs precision. 0: plain IMLE. One process only.
    precision_weight: float = 0.0
    # Jittered targets: at each refresh every code is replaced by code + code_noise * N(0, I) (back on
    # the sphere with imle.sphere) before it is matched and regressed on, so the mapper covers a
    # smoothed copy of the codes rather than the codes themselves. 0: plain IMLE (0.1 in
    # configs/fashion_mnist.yaml). From the mixture start, 0.03-0.1 raised recall over plain IMLE
    # by damping its step (benchmarks/imle_study_cpu.md, tenth to twelfth sittings); from about
    # 0.12, with the default weight_decay, IMLE no longer moves the mixture at all. The
    # logged nn_distance is then to the jittered codes; imle.precision_weight's term uses the clean
    # codes. With imle.refresh_every > 1 a resume draws a fresh pool at once (the jitter is not
    # checkpointed).
    code_noise: float = 0.0
    # Keep the best mapper, not the last: a tenth of the codes (at most `holdout`) is set aside, IMLE
    # trains on the rest, and after every epoch (and at the start) the mapper's samples are scored
    # against the held-out codes by their Fréchet distance in code space (no labels, no evaluation
    # network). The best-scoring mapper is exported; with model.mapper_prior=mixture that may be the
    # mixture start itself, when no IMLE epoch fitted the held-out codes better.
    keep_best: bool = False
    holdout: int = 5000
    # Class-conditional IMLE (needs labelled data): the mapper takes a class embedding beside the
    # noise, each class draws its share of the pool, and each code is matched only among the
    # samples of its own class. GLO is unchanged. Sample a class with Sampler.sample(labels=...).
    conditional: bool = False
    knn_backend: str = resumable("auto")
    knn_query_batch: Optional[int] = resumable(None)  # queries per k-NN tile; None: 2048 on CPU, 16384 on a GPU
    max_seconds: Optional[float] = resumable(None)  # budget: stop IMLE after this many seconds of training, as glo.max_seconds
    # The split of a whole-method budget (top-level max_seconds): IMLE is given the time of
    # budget_epochs epochs, measured by a probe before GLO starts (glann.imle.epoch_seconds_estimate),
    # plus the mixture start's estimated fit (model.mapper_prior=mixture), but at most
    # budget_max_share of the budget; GLO gets the rest, and IMLE whatever GLO leaves.
    budget_epochs: int = 25
    budget_max_share: float = 0.4

    def checks(self) -> list[Check]:
        return [
            (self.knn_backend in KNN_BACKENDS, f"imle.knn_backend must be one of {KNN_BACKENDS}, got '{self.knn_backend}'"),
            (self.samples_per_point > 0, "imle.samples_per_point must be positive"),
            (self.precision_weight >= 0, f"imle.precision_weight must be >= 0, got {self.precision_weight}"),
            (self.code_noise >= 0, f"imle.code_noise must be >= 0, got {self.code_noise}"),
            (self.holdout >= 2, f"imle.holdout must be >= 2 (codes held out for imle.keep_best), got {self.holdout}"),
            (self.rs_quantile is None or 0 < self.rs_quantile < 1,
             f"imle.rs_quantile must be in (0, 1) (or null: plain IMLE), got {self.rs_quantile}"),
            _budget("imle.max_seconds", self.max_seconds),
            (self.budget_epochs >= 1 and 0 < self.budget_max_share < 1,
             f"imle.budget_epochs must be >= 1 and imle.budget_max_share in (0, 1), got {self.budget_epochs} "
             f"and {self.budget_max_share}"),
            (self.epochs >= 0, f"imle.epochs must be >= 0, got {self.epochs}"),
            *_positive_lrs("imle", lr=self.lr),
            *_betas("imle", self.beta1, self.beta2),
            *_schedule("imle", self.schedule, self.decay_every, self.decay_rate),
            (self.weight_decay >= 0, f"imle.weight_decay must be >= 0, got {self.weight_decay}"),
        ]


@dataclass
class GANConfig:
    """The adversarial baseline (method: gan). Defaults: DCGAN (Radford et al. 2016) with the
    non-saturating loss; every stabiliser off, each one a switch."""

    epochs: int = resumable(25)
    batch_size: int = 64
    loss: str = "nonsaturating"  # minimax | nonsaturating | lsgan | wgan-gp | hinge
    lr_generator: float = resumable(2e-4)
    lr_discriminator: float = resumable(2e-4)  # TTUR (Heusel et al. 2017) sets this higher than lr_generator
    beta1: float = 0.5
    beta2: float = 0.999
    ndf: int = 64  # width of the first discriminator conv layer; later ones double
    d_hidden: List[int] = field(default_factory=lambda: [200, 200, 200])  # vector data: the MLP discriminator's widths
    d_batch_norm: bool = True  # DCGAN; must be false with wgan-gp or r1_gamma > 0 (per-sample penalties)
    n_critic: int = 1  # discriminator steps per generator step (WGAN: 5)
    label_smoothing: float = 0.0  # one-sided (Salimans et al. 2016): real targets 1 - s; 0.1 is usual
    minibatch_std: bool = False  # ProGAN minibatch standard-deviation layer
    pack: int = 1  # PacGAN: samples per discriminator decision (2 in the paper's experiments)
    spectral_norm: bool = False  # SNGAN: spectral normalisation on every discriminator layer
    r1_gamma: float = 0.0  # R1 penalty weight on real data (Mescheder et al. 2018); 0: off
    gp_lambda: float = 10.0  # WGAN-GP gradient-penalty weight (used by loss wgan-gp only)
    feature_matching: float = 0.0  # weight of the feature-matching term added to G's loss; 0: off
    # Class-conditional GAN (needs labelled data): the generator's noise is shifted by a class
    # embedding, the discriminator is a projection discriminator (Miyato & Koyama 2018). Needs pack=1.
    conditional: bool = False
    # Virtual batch norm in the generator (Salimans et al. 2016): every batch is normalised with the
    # statistics of a fixed reference batch of noise together with itself (one forward of both).
    virtual_batch_norm: bool = False
    # An exponential moving average of the generator's weights (Yazici et al. 2019; BigGAN,
    # StyleGAN), updated after every generator step, with batch-norm statistics re-estimated for it
    # at each epoch's end: it is what the grids, the training-time FD check and the exported sampler
    # use (the logged diagnostics judge the trained G); training itself is unchanged. 0: off; 0.999
    # is usual, for runs of thousands of generator steps (at 0.999 the last ~1,000 weigh 63%).
    ema: float = 0.0
    max_steps: Optional[int] = resumable(None)  # budget: stop after this many generator updates
    max_seconds: Optional[float] = resumable(None)  # budget: stop after this much training wall-clock time

    def checks(self) -> list[Check]:
        return [
            (self.loss in GAN_LOSSES, f"gan.loss must be one of {GAN_LOSSES}, got '{self.loss}'"),
            _budget("gan.max_seconds", self.max_seconds),
            (self.epochs >= 0 and self.batch_size > 0 and self.n_critic >= 1 and self.pack >= 1,
             "gan.epochs must be >= 0, gan.batch_size > 0, gan.n_critic >= 1 and gan.pack >= 1"),
            (self.pack < 1 or self.batch_size % self.pack == 0,  # pack < 1 is refused above
             f"gan.batch_size ({self.batch_size}) must be a multiple of gan.pack ({self.pack})"),
            (0.0 <= self.label_smoothing < 0.5, "gan.label_smoothing must be in [0, 0.5); 0.1 is usual"),
            (0.0 <= self.ema < 1.0, f"gan.ema must be in [0, 1) (0: off; 0.999 is usual), got {self.ema}"),
            (not self.conditional or self.pack == 1,
             f"gan.conditional=true judges one sample per decision: set gan.pack=1 (got {self.pack})"),
            (not (self.d_batch_norm and (self.loss == "wgan-gp" or self.r1_gamma > 0)),
             "gradient penalties are per sample and batch norm mixes samples: set gan.d_batch_norm=false "
             "with gan.loss=wgan-gp or gan.r1_gamma > 0"),
            *_positive_lrs("gan", lr_generator=self.lr_generator, lr_discriminator=self.lr_discriminator),
            *_betas("gan", self.beta1, self.beta2),
        ]


@dataclass
class EvalConfig:
    # IMLE (GLANN) or GAN epochs between training-time domain-FD checks logged to metrics.jsonl/TensorBoard; 0: off.
    # Needs labelled data; the first check of a dataset trains and caches its domain classifier.
    every: int = 0
    num_samples: int = 2000  # samples (and training images) per check: about 2 s on a 2-core CPU

    def checks(self) -> list[Check]:
        return [(self.every >= 0 and self.num_samples >= 10,
                 "eval.every must be >= 0 (0: off) and eval.num_samples >= 10")]


@dataclass
class PerfConfig:
    """Speed switches for the generator's training (GLO, and the GAN baseline's G and D steps, so the
    race stays even; compile is GLO's only); scripts/bench.py --perf times each both ways. `auto`
    (the default; null for the two booleans) turns bf16 autocast, channels_last and fused Adam on
    where they were measured to pay: a CPU with native bf16 (AVX512-BF16 or AMX: 2.1x GLO images/s
    together on an AMD EPYC, benchmarks/perf_cpu.md); elsewhere off (an AVX2 Xeon ran them 0.5x; on
    an H200 one run measured channels_last 1.14x, fused Adam 1.16x, bf16 0.87x, within its baseline's
    ±10% drift; compile failed there with torch 2.11: benchmarks/gpu_h200_issue12.md). `glann.devices.resolve_perf` turns auto into on or off for a
    device, and training records the result in the run's config.yaml."""

    amp: str = "auto"  # auto | none | bf16: autocast the networks to bfloat16 (weights, codes, Adam stay fp32)
    channels_last: Optional[bool] = None  # NHWC memory format for the image networks' convolutions; null: auto
    fused_adam: Optional[bool] = None  # torch's fused Adam kernel for the networks (CPU and CUDA); null: auto
    compile: bool = False  # torch.compile the generator's training forward (the first epoch pays for compiling)

    def checks(self) -> list[Check]:
        return [(self.amp in ("auto", "none", "bf16"), f"perf.amp must be auto, none or bf16, got '{self.amp}'")]


@dataclass
class GlannConfig:
    name: str = resumable("fashion_mnist")
    out_dir: str = resumable("runs")
    seed: int = 0
    # One time budget for the whole method, in seconds of training: a GAN stops there (gan.max_seconds);
    # GLANN splits it between GLO and IMLE (imle.budget_epochs) and ends with an exported run. A
    # per-stage max_seconds given as well wins for its stage. Epoch counts still cap each stage.
    max_seconds: Optional[float] = resumable(None)
    device: str = resumable("auto")  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = resumable(1)  # epochs
    sample_every: int = resumable(1)  # epochs between PNG grids
    grid_size: int = resumable(64)
    # On a NaN/Inf loss: false stops at the first bad step (last good checkpoint kept); true skips
    # that batch's update and counts it (costs one host sync per step on GPUs).
    skip_nonfinite: bool = resumable(False)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    glo: GLOConfig = field(default_factory=GLOConfig)
    imle: IMLEConfig = field(default_factory=IMLEConfig)
    method: str = "glann"  # glann | gan (the adversarial baseline, configured by `gan`)
    gan: GANConfig = field(default_factory=GANConfig)
    eval: EvalConfig = resumable(factory=EvalConfig)
    perf: PerfConfig = resumable(factory=PerfConfig)

    def checks(self) -> list[Check]:
        """The top-level fields' own checks (the sections have theirs; validate adds the rules between them)."""
        return [
            _budget("max_seconds", self.max_seconds),
            (self.grid_size >= 1, f"grid_size must be >= 1, got {self.grid_size}"),
            (self.method in METHODS, f"method must be one of {METHODS}, got '{self.method}'"),
        ]


def _fail(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if key in REMOVED_KEYS:  # e.g. an override of a key a study added and a later commit removed
        return _removed(where, key)
    if key in ("perf.channels_last", "perf.fused_adam"):  # the switches whose auto is null, not 'auto'
        return ConfigError(f"{where}: bad config key '{key}': {msg}; use true, false or null (auto)")
    if key:
        return ConfigError(f"{where}: bad config key '{key}': {msg} (see glann/config.py for the valid keys)")
    if "is not a subclass of" in msg:  # `glo=3`: a value where a section of keys belongs
        return ConfigError(f"{where}: a value given for a whole config section ({msg}); set one key in it, "
                           f"e.g. glo.epochs=3")
    return ConfigError(f"{where}: {msg}")


def _removed(where: str, key: str, value: Any = None) -> ConfigError:
    """The error for a REMOVED_KEYS key given at another value than its "off" one (or as an override)."""
    off, commit = REMOVED_KEYS[key]
    given = key if value is None else f"{key}={value}"
    return ConfigError(f"{where}: {given} is no longer supported (removed after commit {commit}); set it to {off} "
                       f"or delete it to go on without it (an existing run then samples and evaluates as it "
                       f"did), or use glann at {commit}")


def _drop_removed(d: Any, where: str) -> Any:
    """A copy of a config mapping without the REMOVED_KEYS it holds at their "off" value; ConfigError
    (naming the key and the commit that has it) for one held at any other value."""
    if not isinstance(d, dict):
        return d
    d = copy.deepcopy(d)
    for key, (off, _) in REMOVED_KEYS.items():
        *sections, name = key.split(".")
        holder = d
        for section in sections:
            holder = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and name in holder:
            value = holder.pop(name)
            if value != off:
                raise _removed(where, key, value)
    return d


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> GlannConfig:
    """Defaults <- YAML file at `path` <- `key=value` overrides; validated.

    Raises ConfigError naming the key for an unknown key, a wrong type or a bad value.
    """
    if isinstance(overrides, str):  # load_config(path, "glo.epochs=1"): would be read letter by letter
        raise ConfigError(f"overrides must be a list of key=value strings, e.g. ['{overrides}']")
    merged = OmegaConf.structured(GlannConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise ConfigError(f"config file {path} {what}; pass a YAML file such as configs/fashion_mnist.yaml")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if OmegaConf.is_dict(loaded):
            loaded = OmegaConf.create(_drop_removed(OmegaConf.to_container(loaded), str(path)))
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as exc:
            raise _fail(exc, str(path)) from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{path}: cannot be merged onto the config ({str(exc).splitlines()[0]})") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. glo.epochs=5)")
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: GlannConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]  (resolves ${...} too)
    except OmegaConfBaseException as exc:
        raise _fail(exc, "overrides") from exc
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # YAML that cannot parse a value, or overrides that contradict each other (glo=[1] glo.epochs=2)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"overrides {list(overrides)} cannot be merged ({first})") from exc
    validate(cfg)
    return cfg


def is_conditional(cfg: GlannConfig) -> bool:
    """Whether the run's method is class-conditional: imle.conditional (GLANN), gan.conditional (GAN)."""
    return cfg.imle.conditional if cfg.method == "glann" else cfg.gan.conditional


def validate(cfg: GlannConfig) -> None:
    """Range checks OmegaConf's type checks cannot express: each section's own (its `checks`), then
    the rules that tie sections together. Raises ConfigError with the first that fails."""
    sections = (cfg, cfg.data, cfg.model, cfg.glo, cfg.imle, cfg.gan, cfg.eval, cfg.perf)
    mixture = cfg.data.source in MIXTURES
    cross: list[Check] = [
        (cfg.data.stack == 1 or not cfg.eval.every,
         "eval.every > 0 logs the domain FD of single images; stacked runs are scored by `glann evaluate` "
         "(modes per channel): set eval.every=0"),
        (not mixture or cfg.glo.loss in ("l1", "l2"),
         f"data.source={cfg.data.source} is 2-D vector data: set glo.loss=l2 (or l1); '{cfg.glo.loss}' is an image loss"),
        (not mixture or not cfg.eval.every,
         "eval.every > 0 logs the domain FD of images; set eval.every=0 for 2-D mixture data"),
        (len(cfg.model.mlp_hidden) > 0 and len(cfg.gan.d_hidden) > 0
         and min(cfg.model.mlp_hidden + cfg.gan.d_hidden) > 0,
         "model.mlp_hidden and gan.d_hidden need at least one layer, each of positive width"),
        (cfg.glo.batch_size > 0 and cfg.imle.batch_size > 0, "glo.batch_size and imle.batch_size must be positive"),
        (cfg.imle.refresh_every >= 1 and cfg.checkpoint_every >= 1 and cfg.sample_every >= 1,
         "imle.refresh_every, checkpoint_every and sample_every must be >= 1"),
        (not cfg.model.class_counts or (min(cfg.model.class_counts) > 0 and is_conditional(cfg)),
         "model.class_counts is set by training from the data's labels for a class-conditional run "
         "(imle.conditional / gan.conditional); leave it empty"),
        (not (cfg.method == "glann" and cfg.gan.conditional) and not (cfg.method == "gan" and cfg.imle.conditional),
         f"{'gan' if cfg.method == 'glann' else 'imle'}.conditional does nothing for method={cfg.method}: a "
         f"class-conditional {'GLANN' if cfg.method == 'glann' else 'GAN'} is "
         f"{'imle' if cfg.method == 'glann' else 'gan'}.conditional=true"),
        (not cfg.gan.virtual_batch_norm or cfg.model.batch_norm,
         "gan.virtual_batch_norm=true normalises the generator's batch-norm layers: set model.batch_norm=true"),
        (not (cfg.imle.conditional and cfg.model.mapper_prior == "mixture"),
         "model.mapper_prior=mixture is one mixture for all classes and takes no labels: with "
         "imle.conditional=true set model.mapper_prior=gaussian"),
        (not (cfg.data.stack == 3 and (cfg.imle.conditional or cfg.gan.conditional)),
         "stacked data (data.stack=3) counts 1,000 modes without labels to condition on: set "
         "imle.conditional=false and gan.conditional=false"),
    ]
    for ok, msg in [c for section in sections for c in section.checks()] + cross:
        if not ok:
            raise ConfigError(msg)


def to_yaml(cfg: GlannConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(d: dict[str, Any], where: str = "saved config") -> GlannConfig:
    """Rebuild a config from a saved run's config.yaml contents (validated like a user's); `where`
    (the file) names it in errors."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(GlannConfig), OmegaConf.create(_drop_removed(d, where)))
    except OmegaConfBaseException as exc:
        raise _fail(exc, where) from exc
    cfg: GlannConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def resumable_keys(cls: type = GlannConfig, prefix: str = "") -> set[str]:
    """The dotted keys a resume may change (fields marked `resumable`); a marked section is given
    as its prefix with a trailing dot ("perf.")."""
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        section = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
        if f.metadata.get("resumable"):
            keys.add(f"{prefix}{f.name}." if section else f"{prefix}{f.name}")
        elif section:
            keys |= resumable_keys(section, f"{prefix}{f.name}.")  # type: ignore[arg-type]
    return keys


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _leaves(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def config_differences(before: GlannConfig, after: GlannConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before's value, after's value)} for every key whose value differs."""
    a, b = (_leaves(OmegaConf.to_container(OmegaConf.structured(c))) for c in (before, after))
    return {k: (a.get(k), b.get(k)) for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)}


# Keys a saved run may hold other values of and still be the run a config asks for: where it lies, what
# training derives from the data (a conditional run's class counts), and speed switches that change how
# the same arithmetic is laid out or launched, not what it computes.
_NOT_THE_RUN = ("name", "out_dir", "model.class_counts", "perf.channels_last", "perf.fused_adam", "perf.compile")


def run_mismatches(saved: GlannConfig, asked: GlannConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, asked)} for the differences that make a saved run another run than `asked` trains.

    Not counted: the keys of _NOT_THE_RUN, perf.amp where `asked` leaves it to auto (training resolves
    it for the machine), and the sections the method does not read (gan.* for GLANN; glo.* and imle.*
    for a GAN). A key added to the config since the run was saved reads as today's default, so a
    changed default of a new key goes unseen."""
    unused = ("gan.",) if asked.method == "glann" else ("glo.", "imle.")
    return {k: v for k, v in config_differences(saved, asked).items()
            if k not in _NOT_THE_RUN and not k.startswith(unused) and not (k == "perf.amp" and v[1] == "auto")}


def check_resume_overrides(saved: GlannConfig, merged: GlannConfig) -> None:
    """ConfigError naming each key an override changed that a resumed run cannot take."""
    ok = resumable_keys()
    bad = [k for k in config_differences(saved, merged)
           if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in ok)]
    if bad:
        raise ConfigError(f"--resume cannot change {', '.join(bad)}: the run's checkpoints and data were made "
                          f"without it; start a new run (another name=...) or drop the override")


def read_run_config(run_dir: Union[str, Path], overrides: Sequence[str] = ()) -> Optional[GlannConfig]:
    """A run directory's config.yaml (None when it has none), with `key=value` overrides on top.

    Overrides are those a resume may take (check_resume_overrides); a stage's epochs cannot be set
    below the epochs its checkpoint has trained. CheckpointError for a file that is not a config.
    """
    f = Path(run_dir) / "config.yaml"
    if not f.is_file():
        return None
    try:
        raw = OmegaConf.to_container(OmegaConf.load(f))
    except Exception as exc:  # yaml errors: a hand edit gone wrong
        raise CheckpointError(f"{f} is not valid YAML ({str(exc).splitlines()[0]}); fix it by hand "
                              f"or restore it from a copy") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{f} does not hold a config (a mapping of keys); fix it or restore it from a copy")
    saved = config_from_dict(raw, str(f))
    if not overrides:
        return saved
    merged = load_config(f, overrides)
    check_resume_overrides(saved, merged)
    # torch comes with the checkpoints, and only here: `import glann` (and the CLI's --help) stays torch-free
    from .checkpoints import checkpoint_file, load_checkpoint

    for stage in STAGES:  # a run can be lengthened, not shortened below its checkpoint
        ckpt, epochs = checkpoint_file(Path(run_dir), stage), getattr(merged, stage).epochs
        if epochs != getattr(saved, stage).epochs and ckpt.is_file():
            done = int(load_checkpoint(ckpt, mmap=True)["epoch"]) + 1
            if epochs < done:
                raise ConfigError(f"{stage}.epochs={epochs} is below the {done} epochs this run has "
                                  f"trained; resume with {stage}.epochs >= {done}, or start a new run")
    return merged
