"""Mode-collapse benchmarks: 2-D mixtures (ring8, grid25) and stacked images, GLANN vs IMLE alone
vs GAN variants, over seeds; prints a markdown table and writes it to --out.

    python scripts/bench_modes.py mixtures --seeds 0 1 2 --out benchmarks/modes_2d_cpu.md
    python scripts/bench_modes.py stacked --dataset fashion_mnist --seeds 0 1 2 --out benchmarks/stacked_cpu.md
    python scripts/bench_modes.py figure --run-dir RUNS --out benchmarks/modes_2d/scatter_seed0.png  # from kept runs

Mixtures follow the VEEGAN / PacGAN protocol (2,500 samples; a sample is high quality within
3 std of its nearest centre; a mode is covered by one high-quality sample; reverse KL over the
modes). Stacked data counts 1,000 modes with the base dataset's domain classifier per channel on
26,000 samples (PacGAN's count). Every method trains from the same config file: GLANN its GLO +
IMLE epochs (mixtures: 60 + 30), the GANs --gan-epochs (mixtures, default 60) or the config's
gan.epochs; IMLE alone the sum of GLANN's. The budgets are epochs, not time: the table gives
each run's measured training seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from glann import Sampler, train
from glann.config import load_config
from glann.data import load_dataset, mixture_spec
from glann.evaluate.modes import mixture_modes
from glann.evaluate.suite import evaluate_modes
from glann.imle import train_imle
from glann.imle_pool import map_noise

ROOT = Path(__file__).resolve().parents[1]
GAN_VARIANTS = {
    "GAN (non-saturating)": ["method=gan"],
    "GAN + PacGAN2 + minibatch std": ["method=gan", "gan.pack=2", "gan.minibatch_std=true"],
    "WGAN-GP (n_critic 5)": ["method=gan", "gan.loss=wgan-gp", "gan.n_critic=5", "gan.lr_generator=1e-4",
                             "gan.lr_discriminator=1e-4", "gan.beta1=0.5", "gan.beta2=0.9"],
}
# Mixtures only: their configs turn the generator's batch norm off (it costs GLO its precision on
# points), so virtual batch norm is measured against a GAN with plain batch norm turned back on.
MIXTURE_GAN_VARIANTS = {
    "GAN + batch norm": ["method=gan", "model.batch_norm=true"],
    "GAN + virtual batch norm": ["method=gan", "model.batch_norm=true", "gan.virtual_batch_norm=true"],
}


def imle_alone(config: Path, overrides: list[str], num_samples: int) -> torch.Tensor:
    """IMLE (Li & Malik 2018) straight on the data: the mapper maps noise to points, no GLO."""
    cfg = load_config(config, overrides)
    data = load_dataset(cfg.data)
    cfg.model.nz = data.shape[0]  # the mapper's output is a data point
    cfg.model.mapper_prior = "gaussian"  # Li & Malik's IMLE: noise in, no mixture fitted to the data first
    cfg.imle.epochs = cfg.glo.epochs + cfg.imle.epochs  # the budget of both GLANN stages
    T = train_imle(data.images.float(), cfg).mapper.eval()
    noise = torch.randn(num_samples, T.noise_dim, generator=torch.Generator().manual_seed(cfg.seed))
    return map_noise(T, noise)


def run_mixtures(args: argparse.Namespace, out: Path) -> list[dict]:
    rows = []
    for mixture in args.mixtures:
        config = ROOT / "configs" / f"{mixture}.yaml"
        centres, std = mixture_spec(mixture)
        methods = {"GLANN": [], "IMLE alone": None, **GAN_VARIANTS, **MIXTURE_GAN_VARIANTS}
        for method, extra in methods.items():
            if args.methods and method not in args.methods:
                continue
            for seed in args.seeds:
                overrides = [f"seed={seed}", f"out_dir={out}", f"name={mixture}-{_slug(method)}-s{seed}",
                             f"gan.epochs={args.gan_epochs}", "sample_every=1000", "checkpoint_every=1000",
                             *args.overrides]
                t0 = time.perf_counter()
                if extra is None:
                    samples = imle_alone(config, overrides, args.num_samples)
                    seconds = time.perf_counter() - t0
                else:
                    run = train(load_config(config, overrides + extra))
                    seconds = time.perf_counter() - t0
                    samples = Sampler.from_pretrained(run, device="cpu").sample(args.num_samples, seed=seed)
                m = mixture_modes(samples, centres, std)
                rows.append({"data": mixture, "method": method, "seed": seed, "seconds": seconds, **m})
                print(f"{mixture} {method} seed {seed}: {m['modes_covered']}/{m['num_modes']} modes, "
                      f"high quality {m['high_quality_share']:.3f}, KL {m['mode_kl']:.3f}, {seconds:.0f} s", flush=True)
    return rows


def run_stacked(args: argparse.Namespace, out: Path) -> list[dict]:
    rows = []
    config = ROOT / "configs" / f"stacked_{args.dataset}.yaml"
    methods = {"GLANN": [], **GAN_VARIANTS}
    for method, extra in methods.items():
        if "WGAN" in method:
            extra = extra + ["gan.d_batch_norm=false"]
        for seed in args.seeds:
            overrides = [f"seed={seed}", f"out_dir={out}", f"name=stacked-{_slug(method)}-s{seed}",
                         "sample_every=1000", "checkpoint_every=1000", *args.overrides]
            t0 = time.perf_counter()
            run = train(load_config(config, overrides + extra))
            seconds = time.perf_counter() - t0
            m = evaluate_modes(Sampler.from_pretrained(run, device="cpu"), args.num_samples, seed)["metrics"]
            rows.append({"data": f"stacked {args.dataset}", "method": method, "seed": seed, "seconds": seconds, **m})
            print(f"{method} seed {seed}: {m['modes_covered']}/{m['num_modes']} modes, KL {m['mode_kl']:.3f}, "
                  f"{seconds:.0f} s", flush=True)
    return rows


def figure(run_dir: Path, out: Path, seed: int = 0, num_samples: int = 2500) -> None:
    """Scatter plots of each mixture's data and of every kept run's samples for one seed
    (IMLE alone keeps no run directory, so it is not drawn)."""
    from matplotlib.figure import Figure

    methods = ["GLANN", *GAN_VARIANTS]
    fig = Figure(figsize=(3 * (len(methods) + 1), 6.2), dpi=90)
    for row, mixture in enumerate(["ring8", "grid25"]):
        centres, std = mixture_spec(mixture)
        data = load_dataset(load_config(ROOT / "configs" / f"{mixture}.yaml").data).images[:num_samples]
        panels = [("data", data)]
        for method in methods:
            path = run_dir / f"{mixture}-{_slug(method)}-s{seed}"
            if (path / "model.safetensors").is_file():
                panels.append((method, Sampler.from_pretrained(path, device="cpu").sample(num_samples, seed=seed)))
        for col, (title, pts) in enumerate(panels):
            ax = fig.add_subplot(2, len(methods) + 1, row * (len(methods) + 1) + col + 1)
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, linewidths=0)
            ax.scatter(centres[:, 0], centres[:, 1], s=8, c="red", marker="x", linewidths=0.8)
            m = mixture_modes(pts, centres, std)
            ax.set_title(f"{mixture}: {title}\n{m['modes_covered']}/{m['num_modes']} modes, "
                         f"HQ {m['high_quality_share']:.2f}", fontsize=7)
            lim = 1.5 if mixture == "ring8" else 5.5
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def _slug(method: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in method.lower()).strip("-")


def _mean_std(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(rows: list[dict]) -> str:
    hq = "high_quality_share" in rows[0]
    conf = "confident_share" in rows[0]  # stacked: samples whose three channels all classify with p > 0.9
    head = "| data | method | modes covered (per seed) | " + ("high-quality share | " if hq else "") + \
           "reverse KL | " + ("confident share | " if conf else "") + "train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["method"]), []).append(r)
    for (data, method), rs in groups.items():
        modes = ", ".join(str(r["modes_covered"]) for r in rs) + f" / {rs[0]['num_modes']}"
        cells = [data, method, modes]
        if hq:
            cells.append(_mean_std([r["high_quality_share"] for r in rs], ".3f"))
        cells.append(_mean_std([r["mode_kl"] for r in rs], ".3f"))
        if conf:
            cells.append(_mean_std([r["confident_share"] for r in rs], ".3f"))
        cells.append(_mean_std([r["seconds"] for r in rs], ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="which", required=True)
    m = sub.add_parser("mixtures")
    m.add_argument("--mixtures", nargs="+", default=["ring8", "grid25"])
    m.add_argument("--gan-epochs", type=int, default=60, help="GAN epochs (GLANN: the config's 60 GLO + 30 IMLE)")
    m.add_argument("--num-samples", type=int, default=2500)
    m.add_argument("--methods", nargs="+", help="run only these (names as in the table, e.g. 'GAN (non-saturating)')")
    s = sub.add_parser("stacked")
    s.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    s.add_argument("--num-samples", type=int, default=26000)
    f = sub.add_parser("figure")
    f.add_argument("--run-dir", type=Path, required=True, help="the --run-dir of an earlier `mixtures` run")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--seed", type=int, default=0)
    for q in (m, s):
        q.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. data.limit=25600)")
        q.add_argument("--seeds", type=int, nargs="+", default=[0])
        q.add_argument("--out", type=Path, help="markdown file for the table")
        q.add_argument("--run-dir", type=Path, help="where the runs go (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("GLANN_THREADS", "2")))
    if args.which == "figure":
        figure(args.run_dir, args.out, args.seed)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = args.run_dir or Path(tmp)
        rows = run_mixtures(args, out) if args.which == "mixtures" else run_stacked(args, out)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    text = (f"Command: `python {' '.join(sys.argv)}`\n\nMachine: {machine}; {torch.get_num_threads()} threads\n\n"
            f"{table(rows)}\n")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
