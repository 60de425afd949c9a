import pytest
import torch

from glann import knn
from glann.errors import ConfigError

BACKENDS = ["torch"] + (["faiss"] if knn.faiss_module() is not None else [])


def brute(q, x):
    return torch.cdist(q.double(), x.double()).pow(2)


def check_exact(q, x, d, i, k=1):
    """Returned distances are the true ones of the returned indices, and the k smallest."""
    full = brute(q, x)
    true_sorted = full.sort(1).values[:, :k]
    got = full.gather(1, i)
    assert torch.allclose(got, d.double(), rtol=1e-4, atol=1e-4)
    assert torch.allclose(got, true_sorted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq,nx,d,k", [(1, 1, 3, 1), (257, 1000, 16, 1), (100, 37, 64, 5), (50, 300, 2, 3)])
def test_knn_matches_brute_force(backend, nq, nx, d, k):
    g = torch.Generator().manual_seed(nq * nx + d)
    q, x = torch.randn(nq, d, generator=g), torch.randn(nx, d, generator=g)
    dist, idx = knn.nearest(q, x, k=k, backend=backend)
    assert dist.shape == (nq, k) and idx.shape == (nq, k) and idx.dtype == torch.int64
    check_exact(q, x, dist, idx, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qb,xb", [(1, 1), (7, 13), (64, 1000), (1000, 64)])
def test_knn_batching_edges_give_the_same_answer(backend, qb, xb):
    g = torch.Generator().manual_seed(1)
    q, x = torch.randn(130, 8, generator=g), torch.randn(129, 8, generator=g)
    kwargs = {"query_batch": qb}
    if backend == "torch":
        kwargs["db_batch"] = xb
    dist, idx = knn.nearest(q, x, k=2, backend=backend, **kwargs)
    ref_d, ref_i = knn.nearest(q, x, k=2, backend=backend, query_batch=10**6, **({"db_batch": 10**6} if backend == "torch" else {}))
    assert torch.equal(idx, ref_i) or torch.allclose(dist, ref_d, atol=1e-5)
    check_exact(q, x, dist, idx, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_ties_return_a_tied_nearest_point(backend):
    # Integer grid points: many queries are exactly equidistant from two or more database points.
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [2.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 0.0], [3.0, 3.0]])
    dist, idx = knn.nearest(q, x, k=1, backend=backend, query_batch=2, **({"db_batch": 2} if backend == "torch" else {}))
    check_exact(q, x, dist, idx)
    assert idx[3, 0] in (1, 4)  # duplicate database points: either is exact


def test_torch_ties_prefer_the_lowest_index_across_chunks():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    q = torch.zeros(1, 2)
    for xb in (1, 2, 3):
        _, idx = knn.nearest(q, x, backend="torch", db_batch=xb)
        assert idx.item() == 0


def test_backends_agree_on_assignments():
    if knn.faiss_module() is None:
        pytest.skip("faiss not installed")
    g = torch.Generator().manual_seed(3)
    q, x = torch.randn(2000, 32, generator=g), torch.randn(5000, 32, generator=g)
    _, i_faiss = knn.nearest(q, x, backend="faiss")
    _, i_torch = knn.nearest(q, x, backend="torch", query_batch=333, db_batch=1024)
    assert (i_faiss == i_torch).float().mean() > 0.999  # only float near-ties may differ


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setattr(knn, "faiss_module", lambda: None)
    assert knn.pick_backend("auto") == "torch"
    with pytest.raises(ConfigError, match="faiss is not installed"):
        knn.pick_backend("faiss")
    q = torch.randn(10, 4)
    dist, idx = knn.nearest(q, q, backend="auto")
    assert torch.equal(idx[:, 0], torch.arange(10))


def test_knn_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same number of columns"):
        knn.nearest(torch.randn(3, 4), torch.randn(5, 3))


@pytest.mark.parametrize("where", ["queries", "database"])
def test_non_finite_rows_are_refused_not_silently_hidden(where):
    # One NaN database row used to make its whole tile's minimum NaN: every row in it was skipped.
    g = torch.Generator().manual_seed(0)
    q, x = torch.randn(50, 8, generator=g), torch.randn(3000, 8, generator=g)
    (q if where == "queries" else x)[7, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{where} hold NaN or infinite values \\(1 of"):
        knn.nearest(q, x, backend="torch")
