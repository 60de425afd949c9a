"""Configuration: one dataclass per stage, YAML and `key=value` overrides merged on top.

The defaults are the reference GLANN configuration for Fashion-MNIST (yedidh/glann,
configs/fashion.yaml); YAML files only override. OmegaConf does the merging and the
type checking; this module turns its exceptions into a one-line `ConfigError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

IMAGE_SIZES = (28, 32, 64, 128)
MIXTURES = ("ring8", "grid25")  # 2-D Gaussian mixtures: vector data, for the mode-collapse benchmarks
DATA_SOURCES = ("fashion_mnist", "mnist", "cifar10", "folder", "array", "shapes") + MIXTURES
LOSSES = ("lap1", "lpips", "vgg", "l1", "l2")
KNN_BACKENDS = ("auto", "faiss", "torch")
CODE_INITS = ("pca", "random")
SCHEDULES = ("cosine", "step")
METHODS = ("glann", "gan")
GAN_LOSSES = ("minimax", "nonsaturating", "lsgan", "wgan-gp", "hinge")


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


@dataclass
class ModelConfig:
    nz: int = 64  # latent code size (reference: 64)
    ngf: int = 64  # width of the last generator conv layer; earlier ones double
    fc_dim: int = 1024  # hidden width of the generator's fully connected stem (reference: 1024)
    batch_norm: bool = True  # reference do_bn: True
    noise_dim: int = 32  # IMLE noise size (reference: 32)
    mapper_hidden: List[int] = field(default_factory=lambda: [128, 128])
    mapper_batch_norm: bool = True  # batch norm after each hidden mapper layer (reference: yes)
    # Vector data (2-D mixtures) only: hidden widths of the MLP generator (PacGAN's: 4 x 400).
    mlp_hidden: List[int] = field(default_factory=lambda: [400, 400, 400, 400])


@dataclass
class GLOConfig:
    epochs: int = 200
    batch_size: int = 128
    lr_codes: float = 0.01
    lr_generator: float = 0.003  # reference 0.001 (configs/fashion_mnist_reference.yaml); see benchmarks/glo_levers_cpu.md
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
    max_seconds: Optional[float] = None
    # vgg/lpips only: use randomly initialised backbones (tests and timing; not for real training).
    loss_random_weights: bool = False


@dataclass
class IMLEConfig:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.01  # reference 0.001: with imle.sphere, 0.01 reached a lower FD in the same time
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
    knn_backend: str = "auto"
    knn_query_batch: Optional[int] = None  # queries per k-NN tile; None: 2048 on CPU, 16384 on a GPU
    max_seconds: Optional[float] = None  # budget: stop IMLE after this many seconds of training, as glo.max_seconds
    # The split of a whole-method budget (top-level max_seconds): IMLE is given the time of
    # budget_epochs epochs, measured by a probe before GLO starts (glann.imle.epoch_seconds_estimate),
    # but at most budget_max_share of the budget; GLO gets the rest, and IMLE whatever GLO leaves.
    budget_epochs: int = 25
    budget_max_share: float = 0.4


@dataclass
class GANConfig:
    """The adversarial baseline (method: gan). Defaults: DCGAN (Radford et al. 2016) with the
    non-saturating loss; every stabiliser off, each one a switch."""

    epochs: int = 25
    batch_size: int = 64
    loss: str = "nonsaturating"  # minimax | nonsaturating | lsgan | wgan-gp | hinge
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4  # TTUR (Heusel et al. 2017) sets this higher than lr_generator
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
    max_steps: Optional[int] = None  # budget: stop after this many generator updates
    max_seconds: Optional[float] = None  # budget: stop after this much training wall-clock time


@dataclass
class EvalConfig:
    # IMLE (GLANN) or GAN epochs between training-time domain-FD checks logged to metrics.jsonl/TensorBoard; 0: off.
    # Needs labelled data; the first check of a dataset trains and caches its domain classifier.
    every: int = 0
    num_samples: int = 2000  # samples (and training images) per check: about 2 s on a 2-core CPU


@dataclass
class PerfConfig:
    """Speed switches for the GLO stage (GLANN's main cost); scripts/bench.py --perf times each both ways.
    All off by default: on the 2-core CPU none of them paid (benchmarks/perf_cpu.md); on a GPU,
    measure (scripts/gpu_check.sh runs the same table)."""

    amp: str = "none"  # none | bf16: autocast generator and loss to bfloat16 (weights, codes, Adam stay fp32)
    channels_last: bool = False  # NHWC memory format for the image generator's convolutions
    fused_adam: bool = False  # torch's fused Adam kernel for the generator (CPU and CUDA)
    compile: bool = False  # torch.compile the generator's training forward (the first epoch pays for compiling)


@dataclass
class GlannConfig:
    name: str = "fashion_mnist"
    out_dir: str = "runs"
    seed: int = 0
    # One time budget for the whole method, in seconds of training: a GAN stops there (gan.max_seconds);
    # GLANN splits it between GLO and IMLE (imle.budget_epochs) and ends with an exported run. A
    # per-stage max_seconds given as well wins for its stage. Epoch counts still cap each stage.
    max_seconds: Optional[float] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = 1  # epochs
    sample_every: int = 1  # epochs between PNG grids
    grid_size: int = 64
    # On a NaN/Inf loss: false stops at the first bad step (last good checkpoint kept); true skips
    # that batch's update and counts it (costs one host sync per step on GPUs).
    skip_nonfinite: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    glo: GLOConfig = field(default_factory=GLOConfig)
    imle: IMLEConfig = field(default_factory=IMLEConfig)
    method: str = "glann"  # glann | gan (the adversarial baseline, configured by `gan`)
    gan: GANConfig = field(default_factory=GANConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


def _fail(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if key:
        return ConfigError(f"{where}: bad config key '{key}': {msg} (see glann/config.py for the valid keys)")
    if "is not a subclass of" in msg:  # `glo=3`: a value where a section of keys belongs
        return ConfigError(f"{where}: a value given for a whole config section ({msg}); set one key in it, "
                           f"e.g. glo.epochs=3")
    return ConfigError(f"{where}: {msg}")


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


def validate(cfg: GlannConfig) -> None:
    """Range checks OmegaConf's type checks cannot express."""
    checks: list[tuple[bool, str]] = [
        (cfg.data.source in DATA_SOURCES, f"data.source must be one of {DATA_SOURCES}, got '{cfg.data.source}'"),
        (cfg.data.split in ("train", "test"), f"data.split must be train or test, got '{cfg.data.split}'"),
        (cfg.data.limit is None or cfg.data.limit > 0, "data.limit must be positive"),
        (cfg.data.image_size is None or cfg.data.image_size in IMAGE_SIZES,
         f"data.image_size must be one of {IMAGE_SIZES}, got {cfg.data.image_size}"),
        (cfg.data.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {cfg.data.channels}"),
        (cfg.glo.loss in LOSSES, f"glo.loss must be one of {LOSSES}, got '{cfg.glo.loss}'"),
        (cfg.glo.init in CODE_INITS, f"glo.init must be one of {CODE_INITS}, got '{cfg.glo.init}'"),
        (cfg.glo.code_steps in ("row", "shared"), f"glo.code_steps must be row or shared, got '{cfg.glo.code_steps}'"),
        *[(kind in SCHEDULES, f"{k}.schedule must be one of {SCHEDULES}, got '{kind}'")
          for k, kind in (("glo", cfg.glo.schedule), ("imle", cfg.imle.schedule))],
        (cfg.perf.amp in ("none", "bf16"), f"perf.amp must be none or bf16, got '{cfg.perf.amp}'"),
        (cfg.data.stack in (1, 3), f"data.stack must be 1 or 3, got {cfg.data.stack}"),
        (cfg.data.stack == 1 or cfg.data.channels in (None, 3), "data.stack=3 makes 3-channel images; drop data.channels"),
        (cfg.data.stack == 1 or cfg.data.source != "cifar10",
         "data.stack=3 stacks grey images and cifar10 is colour; use fashion_mnist or mnist"),
        (cfg.data.stack == 1 or not cfg.eval.every,
         "eval.every > 0 logs the domain FD of single images; stacked runs are scored by `glann evaluate` "
         "(modes per channel): set eval.every=0"),
        (cfg.data.source not in MIXTURES or cfg.glo.loss in ("l1", "l2"),
         f"data.source={cfg.data.source} is 2-D vector data: set glo.loss=l2 (or l1); '{cfg.glo.loss}' is an image loss"),
        (cfg.data.source not in MIXTURES or cfg.data.stack == 1, "data.stack=3 stacks images, not 2-D points"),
        (cfg.data.source not in MIXTURES or not cfg.eval.every,
         "eval.every > 0 logs the domain FD of images; set eval.every=0 for 2-D mixture data"),
        (len(cfg.model.mlp_hidden) > 0 and len(cfg.gan.d_hidden) > 0
         and min(cfg.model.mlp_hidden + cfg.gan.d_hidden) > 0,
         "model.mlp_hidden and gan.d_hidden need at least one layer, each of positive width"),
        (cfg.imle.knn_backend in KNN_BACKENDS,
         f"imle.knn_backend must be one of {KNN_BACKENDS}, got '{cfg.imle.knn_backend}'"),
        (cfg.imle.samples_per_point > 0, "imle.samples_per_point must be positive"),
        (cfg.imle.precision_weight >= 0, f"imle.precision_weight must be >= 0, got {cfg.imle.precision_weight}"),
        (cfg.imle.rs_quantile is None or 0 < cfg.imle.rs_quantile < 1,
         f"imle.rs_quantile must be in (0, 1) (or null: plain IMLE), got {cfg.imle.rs_quantile}"),
        *[(s is None or s > 0, f"{name}.max_seconds must be positive (or null: no time budget), got {s}")
          for name, s in (("glo", cfg.glo.max_seconds), ("imle", cfg.imle.max_seconds), ("gan", cfg.gan.max_seconds))],
        (cfg.max_seconds is None or cfg.max_seconds > 0,
         f"max_seconds must be positive (or null: no time budget), got {cfg.max_seconds}"),
        (cfg.imle.budget_epochs >= 1 and 0 < cfg.imle.budget_max_share < 1,
         f"imle.budget_epochs must be >= 1 and imle.budget_max_share in (0, 1), got {cfg.imle.budget_epochs} "
         f"and {cfg.imle.budget_max_share}"),
        (cfg.glo.epochs >= 0, f"glo.epochs must be >= 0, got {cfg.glo.epochs}"),
        (cfg.imle.epochs >= 0, f"imle.epochs must be >= 0, got {cfg.imle.epochs}"),
        (cfg.glo.batch_size > 0 and cfg.imle.batch_size > 0, "glo.batch_size and imle.batch_size must be positive"),
        (cfg.model.nz > 0 and cfg.model.noise_dim > 0, "model.nz and model.noise_dim must be positive"),
        *[(v > 0, f"model.{k} must be positive, got {v}")
          for k, v in (("ngf", cfg.model.ngf), ("fc_dim", cfg.model.fc_dim))],
        (len(cfg.model.mapper_hidden) > 0 and min(cfg.model.mapper_hidden) > 0,
         "model.mapper_hidden needs at least one layer, each of positive width"),
        (cfg.grid_size >= 1, f"grid_size must be >= 1, got {cfg.grid_size}"),
        *[(math.isfinite(v) and v > 0, f"{k} must be a positive learning rate, got {v}")
          for k, v in (("glo.lr_codes", cfg.glo.lr_codes), ("glo.lr_generator", cfg.glo.lr_generator),
                       ("imle.lr", cfg.imle.lr), ("gan.lr_generator", cfg.gan.lr_generator),
                       ("gan.lr_discriminator", cfg.gan.lr_discriminator))],
        *[(0.0 <= v < 1.0, f"{k} must be in [0, 1), got {v}")
          for k, v in (("glo.beta1", cfg.glo.beta1), ("glo.beta2", cfg.glo.beta2), ("imle.beta1", cfg.imle.beta1),
                       ("imle.beta2", cfg.imle.beta2), ("gan.beta1", cfg.gan.beta1), ("gan.beta2", cfg.gan.beta2))],
        *[(every >= 1 and 0 < rate <= 1, f"{k}.decay_every must be >= 1 and {k}.decay_rate in (0, 1], "
                                         f"got {every} and {rate}")
          for k, every, rate in (("glo", cfg.glo.decay_every, cfg.glo.decay_rate),
                                 ("imle", cfg.imle.decay_every, cfg.imle.decay_rate))],
        (cfg.imle.weight_decay >= 0, f"imle.weight_decay must be >= 0, got {cfg.imle.weight_decay}"),
        (cfg.imle.refresh_every >= 1 and cfg.checkpoint_every >= 1 and cfg.sample_every >= 1,
         "imle.refresh_every, checkpoint_every and sample_every must be >= 1"),
        (cfg.method in METHODS, f"method must be one of {METHODS}, got '{cfg.method}'"),
        (cfg.eval.every >= 0 and cfg.eval.num_samples >= 10,
         "eval.every must be >= 0 (0: off) and eval.num_samples >= 10"),
        (cfg.gan.loss in GAN_LOSSES, f"gan.loss must be one of {GAN_LOSSES}, got '{cfg.gan.loss}'"),
        (cfg.gan.epochs >= 0 and cfg.gan.batch_size > 0 and cfg.gan.n_critic >= 1 and cfg.gan.pack >= 1,
         "gan.epochs must be >= 0, gan.batch_size > 0, gan.n_critic >= 1 and gan.pack >= 1"),
        (cfg.gan.batch_size % cfg.gan.pack == 0,
         f"gan.batch_size ({cfg.gan.batch_size}) must be a multiple of gan.pack ({cfg.gan.pack})"),
        (0.0 <= cfg.gan.label_smoothing < 0.5, "gan.label_smoothing must be in [0, 0.5); 0.1 is usual"),
        (not (cfg.gan.d_batch_norm and (cfg.gan.loss == "wgan-gp" or cfg.gan.r1_gamma > 0)),
         "gradient penalties are per sample and batch norm mixes samples: set gan.d_batch_norm=false "
         "with gan.loss=wgan-gp or gan.r1_gamma > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def to_yaml(cfg: GlannConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(d: dict[str, Any]) -> GlannConfig:
    """Rebuild a config from a saved run's config.yaml contents (validated like a user's)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(GlannConfig), OmegaConf.create(d))
    except OmegaConfBaseException as exc:
        raise _fail(exc, "saved config") from exc
    cfg: GlannConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg
