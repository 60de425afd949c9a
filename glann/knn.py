"""Exact nearest neighbours (squared L2), batched so memory stays bounded for any N and m.

Backends:
- `faiss`: `faiss.knn_gpu` on one reused `StandardGpuResources` when faiss has GPU support
  and the tensors are on CUDA; `IndexFlatL2` (BLAS) on the CPU otherwise.
- `torch`: tiled ||q||^2 - 2 q.x + ||x||^2 GEMMs on any device (a cache-sized two-pass kernel
  for k = 1); the fallback when faiss is absent, and on CPU the faster of the two.
`auto` picks faiss's GPU search for CUDA tensors when faiss has GPU support, else torch.
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


def pick_backend(backend: str = "auto", device: torch.device | None = None) -> str:
    """auto: faiss on CUDA tensors when faiss has GPU support, else the torch kernel.

    On CPU, as measured (scripts/bench.py; benchmarks/bench_cpu.md, benchmarks/imle_study_cpu.md,
    benchmarks/bench_cpu_vs_refactor.md), which backend wins depends on the processor and the shape:
    on the Xeon of the first sessions the torch k = 1 kernel was 4.7x faster than faiss-cpu's
    IndexFlatL2 (137 against 29 GFLOP/s); on the AMD EPYC of issues 12-13 they were within 20% of
    each other, torch ahead on 60,000 codes x 120,000 samples (81-91 against 75-83 GFLOP/s) and faiss
    ahead in an IMLE epoch of 60,000 x 60,000 (5.5-6.8 s against 6.8-8.4 s). auto keeps torch on
    CPU: never far behind, far ahead on the Xeon, and what a seed has always trained with (the two
    can order exact ties differently). imle.knn_backend=faiss is one switch away.
    """
    if backend == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return "faiss" if on_cuda and faiss_has_gpu() else "torch"
    if backend == "faiss" and faiss_module() is None:
        raise ConfigError("knn backend 'faiss' asked for but faiss is not installed: "
                          "pip install faiss-cpu (or faiss-gpu on CUDA machines), or use knn_backend=torch")
    if backend not in ("faiss", "torch"):
        raise ConfigError(f"unknown knn backend '{backend}'; use auto, faiss or torch")
    return backend


@torch.no_grad()
def nearest(queries: torch.Tensor, database: torch.Tensor, k: int = 1, backend: str = "auto",
            query_batch: Optional[int] = None, db_batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, its k nearest database rows under squared L2.

    queries: float Q x d, database: float M x d, on the same device.
    Returns (distances float32 Q x k, ascending; indices int64 Q x k), on the queries' device.
    Extra memory is a query_batch x db_batch tile plus O(Q) vectors (torch), or faiss's own
    fixed-size blocks, whatever Q and M are.
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and database {tuple(database.shape)} "
                         "must be 2-D with the same number of columns")
    if not 1 <= k <= database.shape[0]:
        raise ValueError(f"k={k} must lie in [1, {database.shape[0]}] (database rows)")
    # One NaN row would make its whole tile's minimum NaN and hide every row in it: refuse instead.
    for name, t in (("queries", queries), ("database", database)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"k-NN {name} hold NaN or infinite values "
                             f"({int((~torch.isfinite(t)).any(1).sum())} of {len(t)} rows); search finite rows only")
    # Tile sizes: cache-sized on CPU (2048 x 1024 measured best on 2 cores); on a GPU large tiles
    # (16384^2 floats = 1 GiB) keep the kernels busy, small ones leave it waiting on Python.
    on_gpu = queries.device.type == "cuda"
    query_batch = query_batch or (16384 if on_gpu else 2048)
    db_batch = db_batch or (16384 if on_gpu else 1024)
    backend = pick_backend(backend, queries.device)
    if backend == "faiss":
        return _faiss_search(queries, database, k, query_batch)
    if k == 1:
        return _torch_nearest1(queries, database, query_batch, db_batch)
    return _torch_search(queries, database, k, query_batch, db_batch)


@torch.no_grad()
def nearest_within(queries: torch.Tensor, query_labels: torch.Tensor, database: torch.Tensor,
                   database_labels: torch.Tensor, k: int = 1, backend: str = "auto",
                   query_batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`nearest`, with each query searched only among the database rows of its own label (one
    exact search per label). Returns (distances Q x k, indices into the whole database Q x k).
    A label with fewer than k database rows raises ValueError, as `nearest` does."""
    dist = torch.empty(len(queries), k, device=queries.device)
    idx = torch.empty(len(queries), k, dtype=torch.long, device=queries.device)
    for c in query_labels.unique().tolist():
        q = (query_labels == c).nonzero()[:, 0]
        rows = (database_labels == c).nonzero()[:, 0]
        if len(rows) < k:
            raise ValueError(f"label {c}: {len(rows)} database rows for k={k}; every label of the queries "
                             f"needs at least k rows of its own")
        d2, i = nearest(queries[q], database[rows], k=k, backend=backend, query_batch=query_batch)
        dist[q], idx[q] = d2, rows[i]
    return dist, idx


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


def _squared_norms(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Row norms squared, chunk by chunk into one vector: no M x d temporary."""
    out = torch.empty(x.shape[0], device=x.device)
    for t in range(0, x.shape[0], chunk):
        c = x[t: t + chunk]
        torch.sum(c * c, 1, out=out[t: t + chunk])
    return out


def _torch_nearest1(queries: torch.Tensor, database: torch.Tensor, query_batch: int,
                    db_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k = 1 (the IMLE hot path), at GEMM speed.

    With queries augmented to [-2q, 1] and database rows to [x, ||x||^2], one GEMM gives
    ||x||^2 - 2 q.x. Tiles are computed transposed (database rows x queries) into a reused
    buffer small enough to stay in cache, so the min over database rows is a vectorised
    element-wise min across rows (`amin(0)`); asking for indices there runs several times
    slower than the GEMM itself. Pass 1 keeps each query's best value and the tile it came
    from; pass 2 recomputes only that tile per query to read off the index.
    """
    dev = queries.device
    q = queries.float()
    x = database.float()
    nq, (nx, dim) = q.shape[0], x.shape
    x_sq = _squared_norms(x, db_batch)
    # The augmented tiles are built on the fly in reused buffers: extra memory stays
    # O(tile + N), never a copy of the inputs and never N x m.
    xt_buf = torch.empty(min(db_batch, nx), dim + 1, device=dev)
    qt_buf = torch.empty(dim + 1, min(query_batch, nq), device=dev)
    buf = torch.empty(min(db_batch, nx), min(query_batch, nq), device=dev)

    def db_tile(t: int) -> torch.Tensor:  # [x, ||x||^2] for database rows t .. t + db_batch
        rows = min(db_batch, nx - t)
        xt = xt_buf[:rows]
        xt[:, :dim].copy_(x[t: t + rows])
        xt[:, dim].copy_(x_sq[t: t + rows])
        return xt

    best = torch.full((nq,), float("inf"), device=dev)
    best_tile = torch.zeros(nq, dtype=torch.int64, device=dev)
    for s in range(0, nq, query_batch):
        cols = min(query_batch, nq - s)
        qt = qt_buf[:, :cols]  # [-2q, 1], transposed
        torch.mul(q[s: s + cols].T, -2.0, out=qt[:dim])
        qt[dim].fill_(1.0)
        b_best, b_tile = best[s: s + cols], best_tile[s: s + cols]
        for tile, t in enumerate(range(0, nx, db_batch)):
            xt = db_tile(t)
            d = torch.mm(xt, qt, out=buf[: xt.shape[0], :cols])
            m = d.amin(0)
            better = m < b_best  # strict: ties keep the earlier tile, hence the lower index
            b_best.copy_(torch.where(better, m, b_best))
            b_tile.copy_(torch.where(better, torch.full_like(b_tile, tile), b_tile))
    idx = torch.empty(nq, dtype=torch.int64, device=dev)
    order = torch.argsort(best_tile, stable=True)
    counts = torch.bincount(best_tile, minlength=(nx + db_batch - 1) // db_batch).tolist()
    start = 0
    for tile, count in enumerate(counts):
        for c in range(start, start + count, query_batch):  # in query_batch chunks: bounded memory
            sel = order[c: min(c + query_batch, start + count)]
            qa = torch.cat([-2.0 * q[sel], torch.ones(len(sel), 1, device=dev)], 1)
            d = torch.mm(qa, db_tile(tile * db_batch).T)
            idx[sel] = d.argmin(1) + tile * db_batch  # argmin returns the first of equal values
        start += count
    dist = torch.empty(nq, device=dev)
    for s in range(0, nq, query_batch):  # exact distance of the chosen point, no cancellation
        dist[s: s + query_batch] = ((q[s: s + query_batch] - x[idx[s: s + query_batch]]) ** 2).sum(1)
    return dist.unsqueeze(1), idx.unsqueeze(1)


def _torch_search(queries: torch.Tensor, database: torch.Tensor, k: int, query_batch: int,
                  db_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k > 1: per-tile top-k merged across tiles (k = 1 takes _torch_nearest1)."""
    q_all = queries.float()
    x_all = database.float()
    x_sq = _squared_norms(x_all, db_batch)
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
            cd, ci = d.topk(min(k, x.shape[0]), dim=1, largest=False, sorted=True)
            ci = ci + t
            if best_d is None:
                best_d, best_i = cd, ci
            else:
                # Earlier chunks first, and a stable sort: ties go to the lower index.
                cat_d, cat_i = torch.cat([best_d, cd], 1), torch.cat([best_i, ci], 1)
                order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
                best_d, best_i = cat_d.gather(1, order), cat_i.gather(1, order)
        out_d[s: s + q.shape[0]] = (best_d + q_sq).clamp_min_(0.0)
        out_i[s: s + q.shape[0]] = best_i
    return out_d, out_i
