"""Benchmark the evaluation suite on Fashion-MNIST: the domain classifier's accuracy, the floor
(train vs test) in domain FD and Inception FID, the cost of each feature network per 1,000 images,
and the scores of a trained GLANN run.

    python scripts/bench_eval.py --run runs/eval_bench --out benchmarks/eval_cpu.md

Inception on a 2-core CPU runs at a few images per second, so --inception-samples (default 1000)
is below the paper protocol's 10,000; the table says which counts were used.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from glann.config import DataConfig
from glann.data import Dataset, load_dataset
from glann.evaluate import (DomainFeatures, InceptionFeatures, domain_classifier, evaluate, evaluate_run,
                            extract_features, frechet_distance)
from glann.evaluate.suite import _subset


def per_1000(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> float:
    extract_features(net, images[:batch_size], batch_size)  # warm-up: first-call allocations, JIT
    t0 = time.perf_counter()
    extract_features(net, images, batch_size)
    return 1000 * (time.perf_counter() - t0) / images.shape[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="trained GLANN run directory to score (optional)")
    p.add_argument("--domain-samples", type=int, default=10000)
    p.add_argument("--inception-samples", type=int, default=1000)
    p.add_argument("--timing-images", type=int, default=2000, help="images timed per feature network (inception: /10)")
    p.add_argument("--out", default="benchmarks/eval_cpu.md")
    args = p.parse_args()
    torch.manual_seed(0)
    load0 = os.getloadavg()
    lines = [f"# Evaluation suite on Fashion-MNIST ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
             f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`", ""]

    train = load_dataset(DataConfig(source="fashion_mnist", split="train", download=False))
    test = load_dataset(DataConfig(source="fashion_mnist", split="test", download=False))
    t0 = time.perf_counter()
    clf = domain_classifier(train, test)
    clf_seconds = time.perf_counter() - t0
    lines += ["## Domain classifier", "",
              f"- test accuracy: **{clf.test_accuracy:.4f}** (target >= 0.90); cache file `{clf.path.name}`",
              f"- obtained in {clf_seconds:.1f} s (training when not cached; about 0.3 s when cached)", ""]

    # Feature cost per 1,000 images.
    dom = DomainFeatures(clf.model)
    inc = InceptionFeatures()
    t_dom = per_1000(dom, test.images[:args.timing_images], 512)
    t_inc = per_1000(inc, test.images[:max(64, args.timing_images // 10)], 64)
    lines += ["## Seconds per 1,000 images (feature extraction)", "", "| feature network | dim | s / 1,000 images |",
              "|---|---|---|", f"| domain (small CNN) | 128 | {t_dom:.2f} |", f"| inception (TF Inception-v3 pool3, 299 px) | 2048 | {t_inc:.1f} |", ""]

    # The floor: train vs test.
    n, ni = args.domain_samples, args.inception_samples
    tr_d = Dataset(_subset(train.images, n, 1), None, "train")
    te_d = Dataset(_subset(test.images, n, 2), _subset(test.labels, n, 2), "test")
    floor = evaluate(tr_d.images, te_d, "domain", classifier=clf)["metrics"]
    blurred = torch.nn.functional.avg_pool2d(tr_d.images.float(), 3, 1, 1).round().to(torch.uint8)
    blur = evaluate(blurred, te_d, "domain", classifier=clf)["metrics"]
    tr_i, te_i = _subset(train.images, ni, 1), _subset(test.images, ni, 2)
    fid_floor = frechet_distance(extract_features(inc, te_i, 64, desc="inception (test)"),
                                 extract_features(inc, tr_i, 64, desc="inception (train)"))
    lines += ["## Floor: Fashion-MNIST train images scored as if generated, against test", "",
              "| comparison | FD (domain) | precision | recall | density | coverage | classes | KL | FID (inception) |",
              "|---|---|---|---|---|---|---|---|---|",
              f"| train vs test ({n} vs {n}; FID {ni} vs {ni}) | {floor['fd']:.3f} | {floor['precision']:.3f} | "
              f"{floor['recall']:.3f} | {floor['density']:.3f} | {floor['coverage']:.3f} | "
              f"{floor['classes_covered']}/{floor['num_classes']} | {floor['mode_kl']:.4f} | {fid_floor:.2f} |",
              f"| 3x3-blurred train vs test | {blur['fd']:.3f} | {blur['precision']:.3f} | {blur['recall']:.3f} | "
              f"{blur['density']:.3f} | {blur['coverage']:.3f} | {blur['classes_covered']}/{blur['num_classes']} | "
              f"{blur['mode_kl']:.4f} | |", "",
              "FID on fewer than 10,000 images is biased upwards (the bias falls as 1/N): compare FIDs only "
              "at equal counts.", ""]

    if args.run:
        dom_run = evaluate_run(args.run, "domain", num_samples=n, recon_images=128, device="cpu")
        inc_run = evaluate_run(args.run, "inception", num_samples=ni, recon_images=0, device="cpu")
        m, mi = dom_run["metrics"], inc_run["metrics"]
        lines += [f"## Trained GLANN run `{args.run}`", "",
                  "| metric | value |", "|---|---|",
                  f"| FD (domain), {n} samples vs {n} test | {m['fd']:.3f} |",
                  f"| FID (inception), {ni} vs {ni} | {mi['fd']:.2f} |",
                  f"| KID x 1e3 (inception) | {1e3 * mi['kd_mean']:.2f} +- {1e3 * mi['kd_std']:.2f} |",
                  f"| precision / recall (domain) | {m['precision']:.3f} / {m['recall']:.3f} |",
                  f"| density / coverage (domain) | {m['density']:.3f} / {m['coverage']:.3f} |",
                  f"| classes covered | {m['classes_covered']} / {m['num_classes']} |",
                  f"| KL(generated \\|\\| data) | {m['mode_kl']:.4f} |",
                  f"| confident share (p > 0.9) | {m['confident_share']:.3f} |",
                  f"| memorisation ratio (NN-train distance, generated / test) | {m['memorisation_ratio']:.3f} |",
                  f"| reconstruction of 128 test images: L1 / PSNR | {m['recon_l1']:.4f} / {m['recon_psnr']:.2f} dB |",
                  f"| evaluation wall time: domain / inception | {dom_run['protocol']['seconds']:.0f} s / "
                  f"{inc_run['protocol']['seconds']:.0f} s |", ""]
    load1 = os.getloadavg()
    lines += [f"Load average at start / end: {load0[0]:.1f} / {load1[0]:.1f} (the machine was shared; "
              f"timings on an idle machine are lower).", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
