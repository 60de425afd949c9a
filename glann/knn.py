"""Exact nearest neighbours (squared L2), batched so memory stays bounded for any N and m.

Backends:
- `faiss`: `faiss.knn_gpu` on one reused `StandardGpuResources` when faiss has GPU support
  and the tensors are on CUDA; `IndexFlatL2` (BLAS) on the CPU otherwise.
- `torch`: chunked ||q||^2 - 2 q.x + ||x||^2 matmuls on any device; the fallback when faiss is
  absent and the cross-check in tests.
`auto` picks faiss when it can be imported, else torch.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import ConfigError

_GPU_RESOURCES = None


def faiss_module():
    """The installed `faiss` module (faiss-cpu or faiss-gpu provide the same name), or None."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = faiss_module()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def pick_backend(backend: str = "auto") -> str:
    if backend == "auto":
        return "faiss" if faiss_module() is not None else "torch"
    if backend == "faiss" and faiss_module() is None:
        raise ConfigError("knn backend 'faiss' asked for but faiss is not installed: "
                          "pip install faiss-cpu (or faiss-gpu on CUDA machines), or use knn_backend=torch")
    if backend not in ("faiss", "torch"):
        raise ConfigError(f"unknown knn backend '{backend}'; use auto, faiss or torch")
    return backend


@torch.no_grad()
def nearest(queries: torch.Tensor, database: torch.Tensor, k: int = 1, backend: str = "auto",
            query_batch: int = 4096, db_batch: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, its k nearest database rows under squared L2.

    queries: float Q x d, database: float M x d, on the same device.
    Returns (distances float32 Q x k, ascending; indices int64 Q x k), on the queries' device.
    Memory is bounded by query_batch x db_batch (torch) or query_batch x M (faiss CPU's
    internal blocks are smaller still), whatever Q and M are.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and database {tuple(database.shape)} "
                         "must be 2-D with the same number of columns")
    if not 1 <= k <= database.shape[0]:
        raise ValueError(f"k={k} must lie in [1, {database.shape[0]}] (database rows)")
    backend = pick_backend(backend)
    if backend == "faiss":
        return _faiss_search(queries, database, k, query_batch)
    return _torch_search(queries, database, k, query_batch, db_batch)


def _faiss_search(queries: torch.Tensor, database: torch.Tensor, k: int,
                  query_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    faiss = faiss_module()
    if queries.is_cuda and faiss_has_gpu():
        global _GPU_RESOURCES
        import faiss.contrib.torch_utils  # noqa: F401  lets faiss take torch CUDA tensors without copies

        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        q = queries.float().contiguous()
        x = database.float().contiguous()
        dists, idx = [], []
        for s in range(0, q.shape[0], query_batch):
            d, i = faiss.knn_gpu(_GPU_RESOURCES, q[s: s + query_batch], x, k,
                                 device=q.device.index or 0)
            dists.append(d)
            idx.append(i)
        return torch.cat(dists), torch.cat(idx).long()
    # CPU index; tensors elsewhere (CUDA without faiss GPU support) make one round trip.
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database.detach().float().cpu().contiguous().numpy())
    q = queries.detach().float().cpu().contiguous().numpy()
    dists = torch.empty(q.shape[0], k, dtype=torch.float32)
    idx = torch.empty(q.shape[0], k, dtype=torch.int64)
    for s in range(0, q.shape[0], query_batch):
        d, i = index.search(q[s: s + query_batch], k)
        dists[s: s + len(d)] = torch.from_numpy(d)
        idx[s: s + len(i)] = torch.from_numpy(i)
    return dists.to(queries.device), idx.to(queries.device)


def _torch_search(queries: torch.Tensor, database: torch.Tensor, k: int, query_batch: int,
                  db_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_all = queries.float()
    x_all = database.float()
    x_sq = (x_all * x_all).sum(1)
    out_d = torch.empty(q_all.shape[0], k, dtype=torch.float32, device=q_all.device)
    out_i = torch.empty(q_all.shape[0], k, dtype=torch.int64, device=q_all.device)
    for s in range(0, q_all.shape[0], query_batch):
        q = q_all[s: s + query_batch]
        q_sq = (q * q).sum(1, keepdim=True)
        best_d: Optional[torch.Tensor] = None
        best_i: Optional[torch.Tensor] = None
        for t in range(0, x_all.shape[0], db_batch):
            x = x_all[t: t + db_batch]
            # ||x||^2 - 2 q.x in one fused GEMM; ||q||^2 is added after the top-k (same order).
            d = torch.addmm(x_sq[t: t + db_batch].unsqueeze(0), q, x.T, alpha=-2.0)
            kk = min(k, x.shape[0])
            if kk == 1:
                cd, ci = d.min(1, keepdim=True)
            else:
                cd, ci = d.topk(kk, dim=1, largest=False, sorted=True)
            ci = ci + t
            if best_d is None:
                best_d, best_i = cd, ci
            elif k == 1:
                better = cd < best_d  # strict: ties keep the earlier (lower) index
                best_d, best_i = torch.where(better, cd, best_d), torch.where(better, ci, best_i)
            else:
                # Earlier chunks first, and a stable sort: ties go to the lower index.
                cat_d, cat_i = torch.cat([best_d, cd], 1), torch.cat([best_i, ci], 1)
                order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
                best_d, best_i = cat_d.gather(1, order), cat_i.gather(1, order)
        out_d[s: s + q.shape[0]] = (best_d + q_sq).clamp_min_(0.0)
        out_i[s: s + q.shape[0]] = best_i
    return out_d, out_i
