import pytest
import torch

from glann.data import load_dataset
from glann.errors import TrainingError
from glann.glo import RowAdam, train_glo
from glann.nets import sphere
from glann.imle import train_imle
from glann.runs import Run


def test_glo_reconstruction_loss_falls(tiny):
    cfg = tiny("glo.epochs=6")
    result = train_glo(load_dataset(cfg.data, seed=cfg.seed), cfg)
    assert len(result.losses) == 6
    assert result.losses[-1] < 0.6 * result.losses[0]


def test_row_adam_matches_sparse_adam_and_loads_its_checkpoint():
    g = torch.Generator().manual_seed(0)
    table = sphere(torch.randn(50, 8, generator=g))
    emb = torch.nn.Embedding(50, 8, sparse=True)
    emb.weight.data.copy_(table)
    sparse = torch.optim.SparseAdam(emb.parameters(), lr=0.05, betas=(0.5, 0.99))
    ours = table.clone()
    row_adam = RowAdam(ours, lr=0.05, betas=(0.5, 0.99))
    target = torch.randn(50, 8, generator=g)
    for _ in range(6):  # rows revisited across steps: lazy moments and the shared step count matter
        rows = torch.randperm(50, generator=g)[:16]
        sparse.zero_grad()
        (emb(rows) - target[rows]).pow(2).sum().backward()
        sparse.step()
        row_adam.step(rows, 2 * (ours[rows] - target[rows]))
    assert torch.allclose(ours, emb.weight.detach(), atol=1e-6)
    assert not torch.equal(ours, table)
    # SparseAdam's state_dict layout: a checkpoint from either loads into the other
    restored = RowAdam(ours.clone(), lr=0.05, betas=(0.5, 0.99))
    restored.load_state_dict(sparse.state_dict())
    assert restored.state_dict()["state"][0]["step"] == 6
    assert torch.allclose(restored.state_dict()["state"][0]["exp_avg_sq"], sparse.state_dict()["state"][0]["exp_avg_sq"])
    back = torch.optim.SparseAdam(torch.nn.Embedding(50, 8, sparse=True).parameters(), lr=0.05, betas=(0.5, 0.99))
    back.load_state_dict(row_adam.state_dict())  # and the other way
    assert back.state_dict()["state"][0]["step"] == 6
    assert torch.equal(back.state_dict()["state"][0]["exp_avg"], row_adam.state_dict()["state"][0]["exp_avg"])


def test_row_adam_step_never_reads_the_device():
    """On CUDA a value read (item, nonzero, unique, coalesce) waits for the GPU; the code update does none."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: set = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    table = sphere(torch.randn(40, 4))
    opt = RowAdam(table, lr=0.1, project=sphere)
    with Ops() as ops:
        for _ in range(2):
            opt.step(torch.randperm(40)[:8], torch.randn(8, 4))
    assert ops.seen and not ops.seen & {"_local_scalar_dense", "item", "nonzero", "unique", "_unique2", "coalesce",
                                        "_coalesce", "sparse_mask"}
    assert torch.allclose(table.norm(dim=1), torch.ones(40))


@pytest.mark.parametrize("switches", [("perf.amp=bf16",), ("perf.channels_last=true", "perf.fused_adam=true")])
def test_glo_perf_switches_train_like_fp32(tiny, switches):
    cfg = tiny("glo.epochs=4")
    data = load_dataset(cfg.data, seed=cfg.seed)
    base, fast = train_glo(data, cfg), train_glo(data, tiny("glo.epochs=4", *switches))
    assert fast.losses[-1] < 0.8 * fast.losses[0]
    # Same initialisation and batches: the first epoch's loss differs only by rounding.
    tol = 0.05 if "bf16" in switches[0] else 1e-3
    assert abs(fast.losses[0] - base.losses[0]) < tol * base.losses[0]
    assert fast.codes.dtype == torch.float32 and next(fast.generator.parameters()).dtype == torch.float32


def test_perf_auto_turns_the_switches_on_only_for_images_on_a_cpu_with_native_bf16(monkeypatch):
    import glann.devices as devices
    from glann.config import PerfConfig

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(devices, "native_bf16_cpu", lambda: native)
        p = devices.resolve_perf(PerfConfig(), cpu)
        assert (p.amp, p.channels_last, p.fused_adam) == (("bf16", True, True) if native else ("none", False, False))
        p = devices.resolve_perf(PerfConfig(), cpu, vector=True)  # 2-D points: never auto
        assert (p.amp, p.channels_last, p.fused_adam) == ("none", False, False)
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)
    assert devices.resolve_perf(PerfConfig(), cuda).amp == "none"  # not adopted on an H200: explicit there
    explicit = PerfConfig(amp="none", channels_last=True, fused_adam=False)
    assert devices.resolve_perf(explicit, cpu) == explicit  # what a config says is kept


def test_keep_freed_memory_sets_glibcs_thresholds_once_and_is_a_no_op_without_glibc(monkeypatch):
    import ctypes
    import platform

    import glann.devices as devices

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value.value))
            return 1

    devices.keep_freed_memory.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    assert devices.keep_freed_memory() and devices.keep_freed_memory()
    assert calls == [(-1, 2 ** 31 - 1), (-3, 2 ** 31 - 1)]  # trim and mmap thresholds, set once
    devices.keep_freed_memory.cache_clear()

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert devices.keep_freed_memory() is False  # another allocator keeps its defaults, no error
    monkeypatch.undo()
    if platform.libc_ver()[0] == "glibc":  # the real call is accepted where CI runs
        devices.keep_freed_memory.cache_clear()
        assert devices.keep_freed_memory() is True


def test_glo_auto_perf_uses_bf16_where_the_cpu_has_it(tiny, monkeypatch):
    import glann.devices as devices

    cfg = tiny("glo.epochs=1", "data.limit=64", "perf.amp=auto", "perf.channels_last=null", "perf.fused_adam=null")
    seen = []
    real_autocast = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append(enabled)
        return real_autocast(device_type, dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    for native in (True, False):
        seen.clear()
        monkeypatch.setattr(devices, "native_bf16_cpu", lambda: native)
        train_glo(load_dataset(cfg.data, seed=cfg.seed), cfg)
        assert seen and all(e == native for e in seen)


def test_training_records_the_switches_it_resolved(tiny, tmp_path, monkeypatch):
    import glann.devices as devices
    from glann import train
    from glann.config import load_config

    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)
    train(tiny("glo.epochs=1", "imle.epochs=0", "data.limit=64", "sample_every=100000", "perf.amp=auto",
               "perf.channels_last=null", "perf.fused_adam=null"))
    saved = load_config(tmp_path / "tiny" / "config.yaml").perf  # what ran, not `auto`: a resume elsewhere keeps it
    assert (saved.amp, saved.channels_last, saved.fused_adam) == ("bf16", True, True)


def test_a_loaded_optimiser_keeps_the_kernel_it_was_built_with():
    from glann.runs import _load_optimizer

    w = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    plain.step()
    fused = torch.optim.Adam([w], lr=0.1, fused=True)
    _load_optimizer(fused, plain.state_dict())
    assert fused.param_groups[0]["fused"] and fused.state[w]["exp_avg"].shape == (3,)
    assert not plain.param_groups[0]["fused"]  # the saved groups are not changed


def test_a_resume_that_changes_the_layout_under_fused_adam_steps_as_plain_adam_does(tiny, tmp_path):
    import shutil

    from glann import train

    cfg = tiny("name=a", "glo.epochs=1", "imle.epochs=0", "data.limit=64", "sample_every=100000",
               "perf.fused_adam=true")
    train(cfg)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # Adam's moments were saved in the default layout; fused Adam walks weights and moments by raw
    # memory position, so loaded into channels_last weights they must take the weights' layout.
    def weights(name: str) -> torch.Tensor:
        saved = torch.load(tmp_path / name / "checkpoints" / "glo.pt", weights_only=True)["generator"]
        return torch.cat([w.reshape(-1) for k, w in saved.items() if w.is_floating_point() and "running" not in k])

    before = weights("a")
    for name, fused in (("a", "true"), ("b", "false")):
        train(cfg, resume=True, run_dir=tmp_path / name,
              overrides=["glo.epochs=2", "perf.channels_last=true", f"perf.fused_adam={fused}"])
    fused, plain = weights("a"), weights("b")
    assert (fused - plain).norm() < 0.01 * (plain - before).norm()  # rounding, against a whole epoch's steps


@pytest.mark.slow
def test_glo_compiled_generator_matches_eager(tiny):
    pytest.importorskip("torch._inductor")
    cfg = tiny("glo.epochs=1", "data.limit=64", "model.ngf=8", "model.fc_dim=32")
    data = load_dataset(cfg.data, seed=cfg.seed)
    eager, compiled = train_glo(data, cfg), train_glo(data, tiny("glo.epochs=1", "data.limit=64", "model.ngf=8",
                                                                    "model.fc_dim=32", "perf.compile=true"))
    assert abs(compiled.losses[0] - eager.losses[0]) < 1e-3 * eager.losses[0]
    assert set(compiled.generator.state_dict()) == set(eager.generator.state_dict())  # no _orig_mod. keys


def test_glo_codes_stay_on_the_unit_sphere(tiny):
    cfg = tiny("glo.epochs=2", "glo.lr_codes=0.5")
    codes = train_glo(load_dataset(cfg.data, seed=cfg.seed), cfg).codes
    assert torch.allclose(codes.norm(dim=1), torch.ones(len(codes)), atol=1e-5)


def test_glo_is_deterministic_under_a_seed(tiny):
    cfg = tiny("glo.epochs=2")
    data = load_dataset(cfg.data, seed=cfg.seed)
    a, b = train_glo(data, cfg), train_glo(data, cfg)
    assert torch.equal(a.codes, b.codes)
    other = train_glo(data, tiny("glo.epochs=2", "seed=1"))
    assert not torch.equal(a.codes, other.codes)


def test_imle_nearest_neighbour_distance_falls(tiny):
    cfg = tiny("imle.epochs=8", "imle.lr=0.005")
    g = torch.Generator().manual_seed(0)
    # Codes on the sphere in two tight clusters: the initial mapper's samples are far from them.
    centres = torch.nn.functional.normalize(torch.randn(2, cfg.model.nz, generator=g), dim=1)
    codes = torch.nn.functional.normalize(centres[torch.arange(200) % 2] + 0.05 * torch.randn(200, cfg.model.nz, generator=g), dim=1)
    result = train_imle(codes, cfg)
    d = result.nn_distances
    assert len(d) == 8 and d[-1] < 0.7 * d[0]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_imle_backends_give_the_same_training(tiny, backend):
    from glann.knn import faiss_module

    if backend == "faiss" and faiss_module() is None:
        pytest.skip("faiss not installed")
    cfg = tiny("imle.epochs=2", f"imle.knn_backend={backend}")
    codes = torch.nn.functional.normalize(torch.randn(64, cfg.model.nz, generator=torch.Generator().manual_seed(0)), dim=1)
    ref = train_imle(codes, tiny("imle.epochs=2", "imle.knn_backend=torch"))
    got = train_imle(codes, cfg)
    assert got.nn_distances == pytest.approx(ref.nn_distances, rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, monkeypatch):
    cfg = tiny("glo.epochs=4")
    run = Run.create(cfg)
    data = load_dataset(cfg.data, seed=cfg.seed)
    train_glo(data, tiny("glo.epochs=2"), run)  # a good checkpoint after epoch 1
    good = torch.load(run.checkpoint_path("glo"), weights_only=True)
    data.images[:] = 0
    import glann.glo as glo_mod

    real_to_model = glo_mod.to_model
    monkeypatch.setattr(glo_mod, "to_model", lambda x: real_to_model(x) * float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite GLO loss at epoch 2, step 0; the last good checkpoint .*glo.pt is kept"):
        train_glo(data, cfg, run)
    kept = torch.load(run.checkpoint_path("glo"), weights_only=True)
    assert kept["epoch"] == good["epoch"] == 1
    assert all(torch.equal(kept["generator"][k], good["generator"][k]) for k in good["generator"])


def test_time_budget_stops_glo_and_imle_and_holds_across_resume(tiny):
    import time

    from glann import train

    cfg = tiny("glo.epochs=100000", "imle.epochs=100000", "glo.max_seconds=1.5", "imle.max_seconds=1.0",
               "sample_every=100000", "checkpoint_every=100000", "data.limit=64")
    t0 = time.perf_counter()
    run_dir = train(cfg)
    assert time.perf_counter() - t0 < 30  # would be hours without the budget
    glo = [r for r in Run(run_dir, cfg).read_metrics() if r["stage"] == "glo"]
    assert 1 <= len(glo) < 100000
    state = torch.load(run_dir / "checkpoints" / "glo.pt", weights_only=True)
    assert 1.5 <= float(state["extra"]["seconds"]) < 10
    # Resumed, the spent budget is remembered: no further epochs.
    train(cfg, resume=True, run_dir=run_dir)
    assert len([r for r in Run(run_dir, cfg).read_metrics() if r["stage"] == "glo"]) == len(glo)


def test_imle_pool_never_leaves_batch_norm_a_one_row_chunk(monkeypatch):
    import glann.imle_pool as imle_pool

    monkeypatch.setattr(imle_pool, "SAMPLE_BATCH", 8)
    mapper = imle_pool.Mapper(4, 3, (16,)).train()
    seen = []
    mapper.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    out = imle_pool.map_noise(mapper, torch.randn(17, 4))  # split(8) would leave one row: batch norm raises
    assert out.shape == (17, 3) and seen == [6, 6, 5]


def test_imle_refuses_non_finite_samples_with_a_training_error(tiny, monkeypatch):
    import glann.imle as imle

    cfg = tiny("imle.epochs=1")
    codes = torch.nn.functional.normalize(torch.randn(64, cfg.model.nz), dim=1)
    real_draw = imle.draw_pool

    def diverged(*args):
        noise, samples = real_draw(*args)
        return noise, samples * float("nan")

    monkeypatch.setattr(imle, "draw_pool", diverged)
    with pytest.raises(TrainingError, match="IMLE epoch 0: the mapper's samples are NaN"):
        imle.train_imle(codes, cfg)
