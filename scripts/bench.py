#!/usr/bin/env python
"""GLANN speed benchmark at the reference configuration (Fashion-MNIST, batch 128, nz 64).

Prints a Markdown table: GLO training throughput (lap1; 3-level VGG loss ours vs the
reference implementation's way of computing it, both measured here), IMLE epoch time at
N = 60,000 codes and 2 samples per code, k-NN GFLOP/s against this machine's SGEMM
roofline, and sampling throughput.

    python scripts/bench.py --out benchmarks/bench_cpu.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

from glann import knn
from glann.config import load_config
from glann.data import load_dataset, make_shapes
from glann.glo import train_glo
from glann.imle import train_imle
from glann.nets import build_generator, build_mapper
from glann.sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_VGG_IMAGES_PER_S = 72.0  # DESIGN.md: reference GLO stage, VGG loss, 2-core CPU


class ReferenceVGGDistance(nn.Module):
    """The reference implementation's loss computation (yedidh/glann vgg_metric._VGGDistance):
    trainable-by-default VGG16 weights, grey images expanded to 3 channels, both feature
    stacks built with autograd graphs. Same values as glann's VGGLoss, its cost is what we time."""

    def __init__(self, levels: int = 3):
        super().__init__()
        import torchvision

        self.vgg = torchvision.models.vgg16(weights=None).features  # requires_grad stays True, as there
        self.ids, self.levels = [2, 7, 12, 21, 30][:levels], levels

    def _feats(self, x):
        out = []
        for i in range(self.ids[-1] + 1):
            x = self.vgg[i](x)
            if i in self.ids:
                out.append(x)
        return out

    def forward(self, fake, real):
        fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
        fake, real = F.pad(fake, (2, 2, 2, 2)), F.pad(real, (2, 2, 2, 2))
        b = fake.shape[0]
        f1, f2 = self._feats(fake), self._feats(real)
        loss = (fake - real).abs().view(b, -1).mean(1)
        for a, c in zip(f1, f2):
            loss = loss + (a - c).abs().view(b, -1).mean(1)
        return loss


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fa = knn.faiss_module()
    return (f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"faiss {fa.__version__ if fa else 'absent'}, Python {platform.python_version()}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def sgemm_gflops(device: torch.device, n: int = 4096) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(4):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def glo_throughput(cfg, data, loss: str, reference_loss: bool = False, epochs: int = 2) -> float:
    """Images/s of the real GLO training loop, last epoch (the first warms up)."""
    cfg.glo.loss, cfg.glo.loss_random_weights, cfg.glo.epochs = loss, True, epochs
    if reference_loss:
        with mock.patch("glann.glo.make_loss", lambda *a, **k: ReferenceVGGDistance()):
            return train_glo(data, cfg).images_per_s[-1]
    return train_glo(data, cfg).images_per_s[-1]


# Ops whose output size depends on tensor values: on CUDA each one waits for the GPU to catch up.
WAITING_OPS = {"coalesce", "_coalesce", "sparse_mask", "nonzero", "unique", "_unique2", "masked_select"}


def glo_ops_per_step(cfg, data) -> tuple[float, float]:
    """(ops dispatched, ops that wait for the device) per GLO training step, counted on the real loop.

    On a GPU every op is at least one kernel launch, so the count is what Python and launch
    overhead scale with when the batch is too small to keep the GPU busy. Two epoch lengths are
    counted and subtracted, so set-up and per-epoch work cancel."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            self.ops, self.waits = self.ops + 1, self.waits + (name in WAITING_OPS)
            return func(*args, **(kwargs or {}))

    def count(steps: int) -> tuple[int, int]:
        cfg.glo.loss, cfg.glo.epochs = "lap1", 1
        with Count() as c:
            c.ops = c.waits = 0
            train_glo(type(data)(data.images[:128 * steps], None, data.name), cfg)
        return c.ops, c.waits

    (o2, w2), (o4, w4) = count(2), count(4)
    return (o4 - o2) / 2, (w4 - w2) / 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-codes", type=int, default=60000)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--perf", action="store_true",
                   help="only the perf.* switches: GLO images/s with each one on vs all off, in the same run")
    args = p.parse_args()
    device = torch.device(args.device)
    rows: list[tuple[str, str, str]] = []

    def row(what, value, note=""):
        rows.append((what, value, note))
        print(f"  {what}: {value}  {note}", file=sys.stderr, flush=True)

    # fp32, no speed switches: the rows stay comparable across machines and with earlier tables
    # (the switches' own gains are --perf's table)
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", [f"device={args.device}", *PERF_OFF.split()])
    steps = 4 if args.quick else 12
    try:
        data = load_dataset(cfg.data, device)
        data_note = "Fashion-MNIST"
    except Exception:  # no dataset: timing does not depend on pixel values
        from glann.data import Dataset

        images, labels = make_shapes(128 * 40, 28)
        data, data_note = Dataset(images.to(device), labels.to(device), "shapes"), "generated shapes"

    # --- GLO
    sub = lambda n: type(data)(data.images[:n], None, data.name)  # noqa: E731
    if args.perf:
        perf_rows(args, sub(128 * steps * 3), row)
        return write_table(args, rows, device, "")

    lap = glo_throughput(cfg, sub(128 * steps * 3), "lap1")
    row("GLO lap1, images/s", f"{lap:.0f}", f"{data_note}, batch 128, nz 64, 6.6 M-param generator, fp32 (perf.* off)")
    ops, waits = glo_ops_per_step(cfg, data)
    row("GLO lap1, ops dispatched per step", f"{ops:.0f}",
        f"of which {waits:.0f} wait for the device (sizes read back: coalesce, sparse_mask, nonzero, unique)")
    vgg = glo_throughput(cfg, sub(128 * steps), "vgg")
    ref = glo_throughput(cfg, sub(128 * steps), "vgg", reference_loss=True)
    row("GLO vgg (3 levels), images/s: glann", f"{vgg:.0f}", "random VGG16 weights (same cost as pretrained)")
    row("GLO vgg, images/s: reference's loss computation, same loop", f"{ref:.0f}",
        f"glann / reference = {vgg / ref:.2f}x")
    if device.type == "cpu":  # the published figure is a 2-core CPU one
        row("GLO vgg: glann vs the reference's published 72 images/s", f"{vgg / REFERENCE_VGG_IMAGES_PER_S:.2f}x",
            "target >= 1.5x")

    # --- k-NN
    n = 6000 if args.quick else args.n_codes
    g = torch.Generator().manual_seed(0)
    codes = F.normalize(torch.randn(n, cfg.model.nz, generator=g), dim=1).to(device)
    samples = torch.randn(2 * n, cfg.model.nz, generator=g).to(device)
    peak = sgemm_gflops(device)
    row("SGEMM roofline, GFLOP/s", f"{peak:.0f}", "torch.mm 4096^3, best of 4")
    flops = 2 * n * 2 * n * cfg.model.nz
    gflops: dict[str, float] = {}
    for backend in ["torch"] + (["faiss"] if knn.faiss_module() else []):
        knn.nearest(codes[:2048], samples[:4096], backend=backend)  # warm-up
        _sync(device)
        t = time.perf_counter()
        knn.nearest(codes, samples, backend=backend)
        _sync(device)
        dt = time.perf_counter() - t
        gflops[backend] = flops / dt / 1e9
        row(f"k-NN {backend}: {n} codes x {2 * n} samples, d 64, GFLOP/s", f"{flops / dt / 1e9:.0f}",
            f"{dt:.2f} s; {100 * flops / dt / 1e9 / peak:.0f}% of SGEMM")

    # --- IMLE epoch
    knn_share: dict[str, float] = {}
    for backend in ["torch"] + (["faiss"] if knn.faiss_module() else []):
        icfg = load_config(ROOT / "configs" / "fashion_mnist.yaml",
                           [f"device={args.device}", "imle.epochs=1", f"imle.knn_backend={backend}",
                            "model.mapper_prior=gaussian"])  # the reference's epoch: no mixture fit in it
        res = train_imle(codes, icfg)
        knn_share[backend] = res.knn_seconds[0] / res.epoch_seconds[0]
        row(f"IMLE epoch, N={n}, {icfg.imle.samples_per_point:g} samples/code, knn={backend}, s",
            f"{res.epoch_seconds[0]:.1f}",
            f"of which k-NN search {res.knn_seconds[0]:.1f} s (reference, 2 samples/code: about 12 s per epoch)")

    # --- sampling
    G = build_generator(cfg, (1, 28, 28))
    T = build_mapper(cfg)
    sampler = Sampler(G, T, cfg, device)
    sampler.sample(256, seed=0)
    m = 2000 if args.quick else 10000
    _sync(device)
    t = time.perf_counter()
    sampler.sample(m, seed=0)
    _sync(device)
    row("sampling, images/s", f"{m / (time.perf_counter() - t):.0f}", f"{m} images, batches of 1024")

    return write_table(args, rows, device, "\n".join(["", "Read from the figures above:"] + [
        f"- {x}" for x in findings(gflops, peak, knn_share)]))


def findings(gflops: dict[str, float], peak: float, knn_share: dict[str, float]) -> list[str]:
    """Sentences drawn from this run's own numbers (never fixed prose that they could contradict)."""
    out = [f"k-NN {b}: {v:.0f} GFLOP/s, {100 * v / peak:.0f}% of this machine's SGEMM." for b, v in gflops.items()]
    if "torch" in gflops and "faiss" in gflops:
        r = gflops["faiss"] / gflops["torch"]
        out.append(f"faiss-cpu ran at {r:.2f}x the torch kernel's speed here: "
                   + ("faiss was faster." if r > 1.05 else "torch was faster." if r < 0.95 else "about the same."))
    out += [f"IMLE epoch with knn={b}: the search was {100 * v:.0f}% of it." for b, v in knn_share.items()]
    return out


PERF_OFF = "perf.amp=none perf.channels_last=false perf.fused_adam=false"  # the defaults are auto: say off
PERF_ALL = "perf.amp=bf16 perf.channels_last=true perf.fused_adam=true"
PERF_SWITCHES = [("perf.amp=bf16", "bf16 autocast"), ("perf.channels_last=true", "channels_last"),
                 ("perf.fused_adam=true", "fused Adam"), ("perf.compile=true", "torch.compile"),
                 (PERF_ALL, "bf16 + channels_last + fused")]


def gan_throughput(cfg, data) -> float:
    """Real images/s (each through one D step and one G step) of the GAN baseline's training loop:
    the second of two one-epoch runs (the first warms up)."""
    from glann.gan import train_gan

    cfg.gan.epochs = 1
    train_gan(data, cfg)
    t = time.perf_counter()
    train_gan(data, cfg)
    return len(data) / (time.perf_counter() - t)


def perf_rows(args, data, row) -> None:
    """GLO lap1 images/s with each perf switch against all off; the baseline is timed before and
    after the switches (their mean is the denominator, their spread the noise). Then the GAN
    baseline's loop (it takes the same switches) with all of them off and on."""
    def config(overrides: str, yaml: str = "fashion_mnist.yaml"):
        return load_config(ROOT / "configs" / yaml, [f"device={args.device}", *PERF_OFF.split(), *overrides.split()])

    def measure(overrides: str) -> float:
        return glo_throughput(config(overrides), data, "lap1", epochs=3 if "compile" in overrides else 2)

    def attempt(overrides: str):  # a switch that fails here (e.g. a compiler error) is a row, not a lost table
        try:
            return measure(overrides)
        except Exception as exc:  # noqa: BLE001 - any failure of a switch is what the row reports
            return f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"

    first = measure("")
    results = [(label, o, attempt(o)) for o, label in PERF_SWITCHES]
    last = measure("")
    base = (first + last) / 2
    row("GLO lap1, all perf switches off, images/s", f"{base:.0f}",
        f"before / after the others: {first:.0f} / {last:.0f} (the noise between runs)")
    for label, overrides, value in results:
        name = f"GLO lap1, {label} (`{overrides}`), images/s"
        if isinstance(value, str):
            row(name, "-", value.replace("|", "/"))
            continue
        note = "last of 3 epochs (compiling is in the first)" if "compile" in overrides else ""
        row(name, f"{value:.0f}", f"{value / base:.2f}x of all off. {note}")
    gan = "gan_fashion_mnist.yaml"
    off, on = gan_throughput(config("", gan), data), gan_throughput(config(PERF_ALL, gan), data)
    row("GAN (DCGAN) loop, all perf switches off, images/s", f"{off:.0f}", "the same switches apply to G and D")
    row(f"GAN (DCGAN) loop, `{PERF_ALL}`, images/s", f"{on:.0f}", f"{on / off:.2f}x of all off")


def write_table(args, rows, device, footer: str) -> int:
    flags = (" --quick" if args.quick else "") + (" --perf" if args.perf else "") + \
        (f" --device {args.device}" if args.device != "cpu" else "")
    lines = [f"# glann benchmark ({date.today().isoformat()})", "",
             f"Machine: {machine()}", "",
             "Command: `python scripts/bench.py" + flags + "`", "",
             "| measurement | value | notes |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if footer:
        lines.append(footer)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
