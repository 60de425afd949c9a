"""The one place that turns a device string into a torch.device, and `perf.*` auto into on or off."""
from __future__ import annotations

import ctypes
import dataclasses
import functools

import torch

from .config import PerfConfig
from .errors import ConfigError, ResourceError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device '{name}' is not a torch device; use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):  # mps, xla, ...: glann's kernels and tests cover CPU and CUDA
        raise ConfigError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but no CUDA GPU is visible; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    return device


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory in the process rather than give it back (once per
    process; Linux with glibc only; returns whether the setting is in force).

    By default glibc maps each allocation over its mmap threshold afresh and unmaps it when freed, and
    trims the heap's top likewise. The Inception network's activations on a CPU are hundreds of MB per
    batch, so every batch page-faults them in again: on a 2-core AMD EPYC, 250 images took 42 s with
    34 s of it in the kernel, against 28 s and 9 s with this setting (benchmarks/gpu_h200_issue12.md).
    GLO's training spent 3% of its time in the kernel, so nothing else calls it. Peak memory is unchanged;
    what was freed is reused instead of returned."""
    try:  # cached: one attempt per process, whether it took or not (it runs once per Inception batch)
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, most = -1, -3, ctypes.c_int(2 ** 31 - 1)
        return bool(libc.mallopt(m_trim_threshold, most) and libc.mallopt(m_mmap_threshold, most))
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator's own defaults stay
        return False


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), as oneDNN uses it.
    Without it bf16 is emulated and slower than fp32 (an AVX2 Xeon: 0.36x, benchmarks/perf_cpu.md)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own capability checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_perf(perf: PerfConfig, device: torch.device, vector: bool = False) -> PerfConfig:
    """perf with `auto` (amp) and null (channels_last, fused_adam) decided for `device`: all on for
    image networks on a CPU with native bf16, where together they doubled GLO's images/s; off on
    other CPUs and on CUDA (an H200 run could not tell them from its ±10% drift; set them there), and for
    vector data (2-D mixtures: small MLPs gain nothing, and bf16 would round points 0.4% apart).
    Explicit values are kept, except channels_last, which vector data (no convolutions) never takes."""
    fast = device.type == "cpu" and not vector and native_bf16_cpu()
    return dataclasses.replace(
        perf, amp=("bf16" if fast else "none") if perf.amp == "auto" else perf.amp,
        channels_last=(fast if perf.channels_last is None else perf.channels_last) and not vector,
        fused_adam=fast if perf.fused_adam is None else perf.fused_adam)


def to_device_async(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a freshly drawn host tensor to `device` without making the host wait for the GPU.

    A copy from ordinary (pageable) memory blocks until the GPU has caught up; one from pinned
    memory is queued like a kernel. Random draws stay on the CPU generator, so a seed gives the
    same numbers on every device."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def check_memory(nbytes: int, device: torch.device, what: str) -> None:
    """ResourceError, before allocating, when `nbytes` would not fit in what `device` has free."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):  # not Linux: no cheap way to know, let it try
            return
    if nbytes > 0.8 * free:
        raise ResourceError(f"{what} need about {nbytes / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is free on "
                            f"{device}; draw fewer at a time (a different seed for each part)")
