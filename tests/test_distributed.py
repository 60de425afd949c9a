"""torch.distributed on CPU (gloo, 2 processes): shards, the shared IMLE pool, rank-0-only writes."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glann.distributed import Dist

from conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLANN_OFFLINE="1")
    import faulthandler

    faulthandler.enable()  # a crash in a worker prints its stack instead of a bare exit signal
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
        dist.barrier()  # rank 0 may still write after the last collective: no rank tears gloo down under it
    finally:
        dist.destroy_process_group()


def _spawn(fn, *args, world=2):
    mp.spawn(_worker, args=(world, _free_port(), fn, args), nprocs=world, join=True)


@pytest.mark.parametrize("n", [1, 7, 10])
def test_shards_are_disjoint_and_cover_the_data(n):
    shards = [Dist(r, 3).shard(n) for r in range(3)]
    together = torch.cat(shards)
    assert len(together) == n and torch.equal(together.sort().values, torch.arange(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _assign(rank, out_dir):
    from glann.config import load_config
    from glann.distributed import current
    from glann.imle_pool import draw_pool
    from glann.nets import build_mapper
    from glann.knn import nearest

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    d = current()
    codes = torch.nn.functional.normalize(torch.randn(101, cfg.model.nz, generator=torch.Generator().manual_seed(5)), dim=1)
    torch.manual_seed(0)
    T = build_mapper(cfg)
    noise, samples = draw_pool(T, 202, torch.Generator().manual_seed(rank), torch.device("cpu"))
    mine = d.shard(101)
    match = nearest(codes[mine], samples)[1][:, 0]
    full = d.gather_rows(match, 101)
    if d.is_main:
        torch.save({"samples": samples, "match": full, "codes": codes}, os.path.join(out_dir, "assign.pt"))


def test_imle_assignment_across_ranks_equals_the_single_process_one(tmp_path):
    from glann.knn import nearest

    _spawn(_assign, str(tmp_path))
    got = torch.load(tmp_path / "assign.pt", weights_only=True)
    assert got["samples"].shape[0] == 202
    ref = nearest(got["codes"], got["samples"])[1][:, 0]
    assert torch.equal(got["match"], ref)


def _assign_conditional(rank, out_dir):
    from glann.config import load_config
    from glann.distributed import current
    from glann.imle_pool import draw_pool, match_codes, pool_labels
    from glann.nets import build_mapper

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["imle.conditional=true", "model.class_counts=[40,35,26]"])
    d = current()
    g = torch.Generator().manual_seed(5)
    codes = torch.nn.functional.normalize(torch.randn(101, cfg.model.nz, generator=g), dim=1)
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 35, 26]))[torch.randperm(101, generator=g)]
    torch.manual_seed(0)
    T = build_mapper(cfg)
    pool = pool_labels(cfg.model.class_counts, 2.0, d.world)
    noise, samples = draw_pool(T, len(pool), torch.Generator().manual_seed(rank),
                               torch.device("cpu"), labels=pool)
    mine = d.shard(101)
    _, match, _ = match_codes(codes[mine], samples, cfg.imle, 101, labels[mine], pool)
    full = d.gather_rows(match, 101)
    if d.is_main:
        torch.save({"samples": samples, "match": full, "codes": codes, "labels": labels, "pool": pool},
                   os.path.join(out_dir, "assign.pt"))


def test_conditional_imle_assignment_across_ranks_equals_the_single_process_one(tmp_path):
    """Each rank maps its part of the class-ordered pool and searches its own codes within their classes."""
    from glann.knn import nearest_within

    _spawn(_assign_conditional, str(tmp_path))
    got = torch.load(tmp_path / "assign.pt", weights_only=True)
    assert len(got["pool"]) == len(got["samples"]) and len(got["pool"]) % 2 == 0
    assert torch.equal(got["pool"][got["match"]], got["labels"])
    ref = nearest_within(got["codes"], got["labels"], got["samples"], got["pool"])[1][:, 0]
    assert torch.equal(got["match"], ref)


def _prior_worker(rank, out_dir):
    from glann.config import load_config
    from glann.distributed import current
    from glann.imle import _fit_prior
    from glann.nets import build_mapper

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.mapper_prior=mixture", "model.mapper_prior_components=3",
                                                          "model.nz=4"])
    d = current()
    codes = torch.nn.functional.normalize(torch.randn(101, cfg.model.nz, generator=torch.Generator().manual_seed(5)), dim=1)
    T = build_mapper(cfg)
    _fit_prior(T, codes[d.shard(101)], 101, cfg)
    torch.save(T.prior.state_dict(), os.path.join(out_dir, f"prior{rank}.pt"))


def test_mixture_prior_is_fitted_to_every_ranks_codes_and_shared(tmp_path):
    from glann.config import load_config
    from glann.imle import _fit_prior
    from glann.nets import build_mapper

    _spawn(_prior_worker, str(tmp_path))
    a, b = (torch.load(tmp_path / f"prior{r}.pt", weights_only=True) for r in (0, 1))
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["model.mapper_prior=mixture", "model.mapper_prior_components=3",
                                                          "model.nz=4"])
    T = build_mapper(cfg)
    _fit_prior(T, torch.nn.functional.normalize(torch.randn(101, cfg.model.nz, generator=torch.Generator().manual_seed(5)),
                                                dim=1), 101, cfg)
    assert T.prior.fitted_components == 3  # 101 codes at nz 4: enough for every component
    for k, v in T.prior.state_dict().items():
        assert torch.equal(a[k], b[k]) and torch.allclose(a[k], v, atol=1e-5), k


def _train(rank, out_dir, resume):
    from glann import load_config, train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={out_dir}", "glo.epochs=2", "imle.epochs=2",
                                                        "data.limit=250"])
    train(cfg, resume=resume)


def test_two_process_training_runs_and_only_rank_0_writes(tmp_path):
    _spawn(_train, str(tmp_path), False)
    run = tmp_path / "tiny"
    assert (run / "model.safetensors").is_file() and (run / "samples.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [("glo", 0), ("glo", 1), ("imle", 0), ("imle", 1)]
    ck = torch.load(run / "checkpoints" / "glo.pt", weights_only=True)
    assert ck["codes"]["weight"].shape[0] == 250  # gathered from both shards, single-process layout
    assert torch.allclose(ck["codes"]["weight"].norm(dim=1), torch.ones(250), atol=1e-5)
    assert ck["rng_ranks"].shape[0] == 2
    imle = torch.load(run / "checkpoints" / "imle.pt", weights_only=True)
    assert imle["extra"]["match"].shape == (250,)
    # Resume a finished two-process run: both stages load their gathered state and stop at once.
    _spawn(_train, str(tmp_path), True)
    from glann import Sampler

    assert Sampler.from_pretrained(run, "cpu").sample(4, seed=0).shape == (4, 1, 28, 28)


def _resume_default_cfg(rank, out_dir):
    from glann import load_config, train
    from glann.errors import ConfigError

    try:  # what `torchrun ... glann train --resume --run-dir RUN` builds: a default config
        train(load_config(), resume=True, run_dir=os.path.join(out_dir, "tiny"))
    except ConfigError as exc:
        with open(os.path.join(out_dir, f"refused{rank}"), "w") as f:
            f.write(str(exc))


def test_torchrun_resume_checks_the_runs_saved_config(tmp_path):
    from glann import load_config
    from glann.runs import Run

    Run.create(load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "skip_nonfinite=true"])).close()
    _spawn(_resume_default_cfg, str(tmp_path))
    assert all("skip_nonfinite" in (tmp_path / f"refused{r}").read_text() for r in range(2))


def _keep_best_config(out_dir):
    from glann.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml", [f"out_dir={out_dir}", "model.mapper_prior=mixture",
                                                        "model.mapper_prior_components=3", "imle.keep_best=true",
                                                        "imle.holdout=64", "imle.epochs=2"])


def _keep_best_codes(nz: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(1001, nz, generator=torch.Generator().manual_seed(5)), dim=1)


def _keep_best_worker(rank, out_dir):
    from glann.distributed import current
    from glann.imle import train_imle
    from glann.runs import Run

    cfg = _keep_best_config(out_dir)
    codes = _keep_best_codes(cfg.model.nz)
    result = train_imle(codes[current().shard(len(codes))], cfg, Run.create(cfg))
    torch.save({"kept": result.kept_epoch, "fds": torch.tensor(result.holdout_fds),
                "mapper": result.mapper.state_dict()}, os.path.join(out_dir, f"kept{rank}.pt"))


def test_keep_best_across_ranks_keeps_one_mapper_and_refuses_another_world_size(tmp_path):
    from glann.checkpoints import load_checkpoint
    from glann.errors import CheckpointError
    from glann.imle import train_imle
    from glann.runs import Run

    _spawn(_keep_best_worker, str(tmp_path))
    a, b = (torch.load(tmp_path / f"kept{r}.pt", weights_only=True) for r in (0, 1))
    assert a["kept"] == b["kept"] and torch.equal(a["fds"], b["fds"])  # every rank scores and keeps alike
    for k in a["mapper"]:
        assert torch.equal(a["mapper"][k], b["mapper"][k]), k
    cfg = _keep_best_config(tmp_path)
    run_dir = tmp_path / cfg.name
    saved = load_checkpoint(run_dir / "checkpoints" / "imle.pt")
    assert len(saved["extra"]["match"]) == 1001 - 2 * 32  # 32 codes held out on each rank, never matched
    with pytest.raises(CheckpointError, match="2 process"):  # the held-out rows were chosen per rank
        train_imle(_keep_best_codes(cfg.model.nz), cfg, Run.create(cfg, run_dir, resume=True))
