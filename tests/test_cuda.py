"""CUDA paths: skipped without a GPU (CI has none); run on a lent GPU by scripts/gpu_check.sh."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_torch_knn_on_cuda_equals_cpu():
    from glann.knn import nearest

    g = torch.Generator().manual_seed(0)
    q, x = torch.randn(3000, 64, generator=g), torch.randn(7000, 64, generator=g)
    d_cpu, i_cpu = nearest(q, x, backend="torch")
    d_gpu, i_gpu = nearest(q.cuda(), x.cuda(), backend="torch")
    assert i_gpu.is_cuda
    full = torch.cdist(q.double(), x.double()).pow(2)
    assert torch.allclose(full.gather(1, i_gpu.cpu()), full.min(1, keepdim=True).values, rtol=1e-4, atol=1e-4)
    assert (i_gpu.cpu() == i_cpu).float().mean() > 0.999


def test_glo_and_imle_train_on_cuda(tmp_path):
    from glann.config import load_config
    from glann.data import load_dataset
    from glann.glo import train_glo
    from glann.imle import train_imle

    from conftest import ROOT

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "device=cuda", "glo.epochs=4",
                                                       "imle.epochs=4"])
    data = load_dataset(cfg.data, "cuda", seed=0)
    glo = train_glo(data, cfg)
    assert glo.codes.is_cuda and glo.losses[-1] < glo.losses[0]
    imle = train_imle(glo.codes, cfg)
    assert imle.nn_distances[-1] < imle.nn_distances[0]


def test_pipeline_and_sampler_on_cuda(tmp_path):
    from glann import Sampler, load_config, train

    from conftest import ROOT

    run = train(load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "device=cuda"]))
    s = Sampler.from_pretrained(run, device="cuda")
    x = s.sample(16, seed=0)
    assert x.is_cuda and x.shape == (16, 1, 28, 28)
    again = s.sample(16, seed=0)
    assert (x - again).abs().max() < 1e-5, (x - again).abs().max()  # cuDNN may pick another algorithm
    # Same noise on both devices; TF32 convolutions on the GPU differ from CPU float32 slightly.
    diff = (x.cpu() - Sampler.from_pretrained(run, device="cpu").sample(16, seed=0)).abs()
    assert diff.mean() < 1e-2, (diff.mean(), diff.max())


def _device_waits(fn) -> int:
    """How many times `fn` makes the host wait for the GPU (torch's sync debug warnings)."""
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("stage", ["glo", "imle", "gan"])
def test_training_steps_never_wait_for_the_gpu(stage, tmp_path):
    """An epoch of 16 steps waits exactly as often as one of 8: the per-step work queues kernels
    and never reads a value back (the loss is read every CHECK_EVERY steps and at the epoch's end)."""
    from glann.config import load_config
    from glann.data import load_dataset
    from glann.gan import train_gan
    from glann.glo import train_glo
    from glann.imle import train_imle
    from glann.loop import CHECK_EVERY

    from conftest import ROOT

    assert CHECK_EVERY > 16
    waits = []
    for steps in (8, 16):
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "device=cuda", "glo.epochs=1",
                                                           "imle.epochs=1", "gan.epochs=1", "glo.batch_size=16",
                                                           "imle.batch_size=16", "gan.batch_size=16",
                                                           f"data.limit={16 * steps}"])
        data = load_dataset(cfg.data, "cuda", seed=0)
        if stage == "glo":
            waits.append(_device_waits(lambda: train_glo(data, cfg)))
        elif stage == "gan":
            waits.append(_device_waits(lambda: train_gan(data, cfg)))
        else:
            codes = torch.nn.functional.normalize(torch.randn(16 * steps, cfg.model.nz, device="cuda"), dim=1)
            waits.append(_device_waits(lambda: train_imle(codes, cfg)))
    assert waits[1] == waits[0], waits


def test_resumed_optimisers_keep_their_step_counts_on_the_host(tmp_path):
    """Adam reads a step count on the GPU back every step; a checkpoint must not put it there."""
    from glann.config import load_config
    from glann.runs import Run

    from conftest import ROOT

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "device=cuda"])
    run = Run.create(cfg)
    net = torch.nn.Linear(4, 4).cuda()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4, device="cuda")).sum().backward()
    opt.step()
    run.save_stage("glo", 0, {"net": net, "opt": opt}, torch.Generator(), extra={"x": torch.ones(3, device="cuda")})
    fresh_net = torch.nn.Linear(4, 4).cuda()
    fresh = torch.optim.Adam(fresh_net.parameters())
    start, extra = run.load_stage("glo", {"net": fresh_net, "opt": fresh}, torch.Generator(), torch.device("cuda"))
    assert start == 1 and extra["x"].is_cuda
    states = list(fresh.state.values())
    assert states and all(not s["step"].is_cuda and s["exp_avg"].is_cuda for s in states)
