"""The levers that make GLANN converge in a budget: PCA code init, per-row Adam counts for the codes,
cosine schedules, one whole-method time budget, RS-IMLE, and the latent baselines in evaluation."""
from __future__ import annotations

import json
import time

import pytest
import torch

from glann import train
from glann.config import load_config
from glann.data import load_dataset
from glann.glo import RowAdam, pca_codes, train_glo
from glann.imle import train_imle
from glann.imle_pool import match_codes
from glann.knn import nearest
from glann.nets import sphere
from glann.runs import Run

from conftest import ROOT


def test_pca_codes_lie_on_the_sphere_and_keep_similar_images_close():
    g = torch.Generator().manual_seed(0)
    protos = torch.randint(0, 256, (40, 1, 8, 8), generator=g).float()  # more clusters than components
    labels = torch.arange(400) % 40
    images = (protos[labels] + 8 * torch.randn(400, 1, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    z = pca_codes(images, 16, seed=0)
    assert z.shape == (400, 16) and torch.allclose(z.norm(dim=1), torch.ones(400), atol=1e-5)
    d = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    assert d[same].mean() < 0.5 * d[~same].mean()  # random codes would give equal means
    # A torchrun shard gets exactly its rows of the single-process codes (same PCA on every rank).
    shard = torch.arange(1, 400, 2)
    assert torch.allclose(pca_codes(images[shard], 16, seed=0, full=images), z[shard], atol=1e-5)


def test_pca_codes_fill_dimensions_the_data_lacks():
    points = torch.randn(300, 2)
    z = pca_codes(points, 4, seed=0)
    assert z.shape == (300, 4) and torch.isfinite(z).all()


def test_glo_with_pca_init_learns_faster_than_random_init(tiny):
    cfg = tiny("glo.epochs=5", "glo.init=random")
    data = load_dataset(cfg.data, seed=cfg.seed)
    random_loss = train_glo(data, cfg).losses
    pca_loss = train_glo(data, tiny("glo.epochs=5", "glo.init=pca")).losses
    assert pca_loss[0] < random_loss[0] and pca_loss[-1] < 0.8 * random_loss[-1]


def test_row_adam_with_row_steps_is_adam_on_each_row_alone():
    g = torch.Generator().manual_seed(0)
    table = sphere(torch.randn(30, 5, generator=g))
    ours = table.clone()
    opt = RowAdam(ours, lr=0.05, betas=(0.5, 0.99), row_steps=True)
    rows_alone = [torch.nn.Parameter(table[i].clone()) for i in range(30)]
    adams = [torch.optim.Adam([p], lr=0.05, betas=(0.5, 0.99)) for p in rows_alone]
    target = torch.randn(30, 5, generator=g)
    for _ in range(7):
        rows = torch.randperm(30, generator=g)[:9]
        opt.step(rows, 2 * (ours[rows] - target[rows]))
        for i in rows.tolist():
            adams[i].zero_grad()
            (rows_alone[i] - target[i]).pow(2).sum().backward()
            adams[i].step()
    assert torch.allclose(ours, torch.stack([p.detach() for p in rows_alone]), atol=1e-6)
    # A shared-count (SparseAdam) checkpoint loads: the per-row counts are filled in.
    shared = RowAdam(table.clone(), lr=0.05, row_steps=False)
    shared.step(torch.arange(10), torch.randn(10, 5))
    again = RowAdam(table.clone(), lr=0.05, row_steps=True)
    again.load_state_dict(shared.state_dict())
    again.step(torch.arange(10, 20), torch.randn(10, 5))
    assert again.state_dict()["state"][0]["row_step"].shape == (30,)


def test_reference_settings_keep_the_step_schedule_and_random_codes(tiny):
    cfg = tiny("glo.epochs=4", "glo.init=random", "glo.code_steps=shared", "glo.schedule=step", "glo.decay_every=2")
    data = load_dataset(cfg.data, seed=cfg.seed)
    run = Run.create(cfg)
    result = train_glo(data, cfg, run)
    lrs = [r["lr_generator"] for r in run.read_metrics() if r["stage"] == "glo"]
    base = cfg.glo.lr_generator
    assert lrs == pytest.approx([base, base * 0.5, base * 0.5, base * 0.25])  # halved every 2 epochs, after the epoch
    untrained = train_glo(data, tiny("glo.epochs=0", "glo.init=random"))
    n, nz = len(data), cfg.model.nz
    assert torch.allclose(untrained.codes, sphere(torch.randn(n, nz, generator=torch.Generator().manual_seed(cfg.seed))))
    assert result.losses[-1] < result.losses[0]


def test_cosine_schedule_anneals_to_zero_by_the_last_epoch(tiny):
    cfg = tiny("glo.epochs=4", "glo.schedule=cosine")
    run = Run.create(cfg)
    train_glo(load_dataset(cfg.data, seed=cfg.seed), cfg, run)
    lrs = [r["lr_codes"] for r in run.read_metrics() if r["stage"] == "glo"]
    assert lrs[0] < cfg.glo.lr_codes and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.02 * cfg.glo.lr_codes


def test_cosine_schedule_follows_the_time_budget_when_it_ends_first(tiny):
    cfg = tiny("glo.epochs=100000", "glo.max_seconds=2", "sample_every=100000", "checkpoint_every=100000")
    run = Run.create(cfg)
    train_glo(load_dataset(cfg.data, seed=cfg.seed), cfg, run)
    last = [r for r in run.read_metrics() if r["stage"] == "glo"][-1]
    assert last["lr_generator"] < 0.05 * cfg.glo.lr_generator  # epochs alone would have left it at ~1x


def test_max_seconds_bounds_a_whole_glann_run_and_exports_it(tiny, capsys):
    cfg = tiny("glo.epochs=100000", "imle.epochs=100000", "max_seconds=4", "sample_every=100000",
               "checkpoint_every=100000", "data.limit=64")
    t0 = time.perf_counter()
    run_dir = train(cfg)
    assert time.perf_counter() - t0 < 60
    assert (run_dir / "model.safetensors").is_file()
    glo = torch.load(run_dir / "checkpoints" / "glo.pt", weights_only=True)["extra"]["seconds"]
    imle = torch.load(run_dir / "checkpoints" / "imle.pt", weights_only=True)["extra"]["seconds"]
    assert 0 < float(glo) < 4 and 0 < float(imle)
    assert float(glo) + float(imle) < 4 + 2  # the last CHECK_EVERY steps of a stage may run over
    assert "max_seconds=4: an IMLE epoch measures" in capsys.readouterr().err


def test_a_resume_keeps_the_budget_plan_it_was_trained_under(tiny, monkeypatch):
    import glann.pipeline as pipeline

    cfg = tiny("glo.epochs=100000", "imle.epochs=100000", "max_seconds=3", "sample_every=100000",
               "checkpoint_every=100000", "data.limit=64")
    run_dir = train(cfg)
    glo_epochs = len([r for r in Run(run_dir, cfg).read_metrics() if r["stage"] == "glo"])
    probes = []
    # A probe that would now give GLO nearly all the time: a re-plan would reopen GLO.
    monkeypatch.setattr(pipeline, "epoch_seconds_estimate", lambda *a: probes.append(a) or 1e-3)
    train(cfg, resume=True, run_dir=run_dir)
    assert not probes  # the saved plan, not a new probe
    assert len([r for r in Run(run_dir, cfg).read_metrics() if r["stage"] == "glo"]) == glo_epochs
    train(cfg, resume=True, run_dir=run_dir, overrides=["max_seconds=3.5"])
    assert probes  # a new budget is planned afresh


def test_a_budget_plans_the_mixture_fit_into_imles_part(tiny, monkeypatch, capsys):
    import glann.pipeline as pipeline
    from glann.nets import MixturePrior, build_mapper

    real = build_mapper(tiny("model.mapper_prior=mixture")).prior.fit_seconds_estimate(2000)
    assert 0 < real < 60  # a real 2-iteration EM probe, scaled
    monkeypatch.setattr(pipeline, "epoch_seconds_estimate", lambda *a: 1.0)
    monkeypatch.setattr(MixturePrior, "fit_seconds_estimate", lambda self, n: 30.0)
    glo = {prior: pipeline.stage_budgets(tiny("max_seconds=1000", f"model.mapper_prior={prior}", "imle.epochs=1000"),
                                         2000, torch.device("cpu")).glo.max_seconds for prior in ("gaussian", "mixture")}
    # IMLE's part: 25 epochs of 1 s, plus the fit's 30 s with the mixture start (and the probe's own time)
    assert 1000 - 25 - 1 < glo["gaussian"] <= 1000 - 25
    assert 1000 - 55 - 1 < glo["mixture"] <= 1000 - 55
    capped = pipeline.stage_budgets(tiny("max_seconds=100", "model.mapper_prior=mixture", "imle.epochs=1000"), 2000,
                                    torch.device("cpu"))
    assert 60 - 1 < capped.glo.max_seconds <= 60  # at most imle.budget_max_share (40%), the fit included
    assert "warning" not in capsys.readouterr().err
    pipeline.stage_budgets(tiny("max_seconds=60", "model.mapper_prior=mixture", "imle.epochs=1000"), 2000,
                           torch.device("cpu"))
    err = capsys.readouterr().err  # 30 s of fit in a 24 s part: no IMLE epoch, said so with the way out
    assert "(about 0 epochs at that speed)" in err and "IMLE will train no epoch" in err and "model.mapper_prior=gaussian" in err
    # imle.epochs fewer than imle.budget_epochs (25) caps the plan: 3 epochs of 1 s and the fit
    few = pipeline.stage_budgets(tiny("max_seconds=1000", "model.mapper_prior=mixture", "imle.epochs=3"), 2000,
                                 torch.device("cpu"))
    assert 1000 - 33 - 1 < few.glo.max_seconds <= 1000 - 33
    # imle.epochs=0 (GLO and the mixture start, no IMLE step): IMLE's part is the fit alone, no epoch probed
    monkeypatch.setattr(pipeline, "epoch_seconds_estimate", lambda *a: pytest.fail("probed an epoch IMLE won't train"))
    fit_only = pipeline.stage_budgets(tiny("max_seconds=1000", "model.mapper_prior=mixture", "imle.epochs=0"), 2000,
                                      torch.device("cpu"))
    assert 1000 - 30 - 1 < fit_only.glo.max_seconds <= 1000 - 30
    assert "imle.epochs=0" in capsys.readouterr().err


def test_max_seconds_is_a_gan_runs_budget(tiny):
    cfg = tiny("method=gan", "gan.epochs=100000", "max_seconds=2", "sample_every=100000", "checkpoint_every=100000",
               "data.limit=64")
    run_dir = train(cfg)
    spent = torch.load(run_dir / "checkpoints" / "gan.pt", weights_only=True)["extra"]["seconds"]
    assert 2 <= float(spent) < 6


def test_compare_passes_its_budget_as_max_seconds():
    from glann.compare import load_compare_config, run_overrides

    cc = load_compare_config(ROOT / "configs" / "compare_tiny.yaml", ["budget_seconds=30"])
    for method in cc.methods:
        over = run_overrides(cc, method, 0)
        assert "max_seconds=30.0" in over and not any(o.startswith("glo.max_seconds") for o in over)


@pytest.mark.parametrize("q", [0.1, 0.5])
def test_rs_imle_never_matches_a_rejected_sample(q):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"imle.rs_quantile={q}"])
    g = torch.Generator().manual_seed(0)
    codes = sphere(torch.randn(300, 6, generator=g))
    samples = sphere(torch.randn(500, 6, generator=g))
    d2, match, metrics = match_codes(codes, samples, cfg.imle, len(codes))
    all_d2, _ = nearest(codes, samples, k=1)
    eps2 = torch.quantile(all_d2[:, 0], q)
    full = torch.cdist(codes, samples).pow(2)
    rejected = (full < eps2).any(0)  # within eps of some code
    assert metrics["rs_rejected"] == pytest.approx(rejected.float().mean().item(), abs=1e-6)
    assert not rejected[match].any()
    kept = full.masked_fill(rejected[None, :], float("inf"))
    assert torch.allclose(d2, kept.min(1).values, atol=1e-4)  # the nearest kept sample, by brute force
    assert metrics["nn_distance"] == pytest.approx(all_d2[:, 0].clamp_min(0).sqrt().mean().item(), rel=1e-4)


def test_rs_imle_trains_and_logs_its_rejections(tiny):
    cfg = tiny("imle.epochs=3", "imle.rs_quantile=0.2")
    codes = sphere(torch.randn(128, cfg.model.nz, generator=torch.Generator().manual_seed(0)))
    run = Run.create(cfg)
    result = train_imle(codes, cfg, run)
    rows = [r for r in run.read_metrics() if r["stage"] == "imle"]
    assert len(result.nn_distances) == 3 and all(0 < r["rs_rejected"] < 1 for r in rows)


@pytest.mark.slow
def test_evaluate_reports_latent_baselines_for_a_glann_run(tmp_path, monkeypatch):
    from conftest import tiny_config
    from glann.evaluate import evaluate_run, format_table

    monkeypatch.setenv("GLANN_CACHE", str(tmp_path / "cache"))
    run_dir = train(tiny_config(tmp_path, "glo.epochs=2", "imle.epochs=2"))
    result = evaluate_run(run_dir, num_samples=64, against="train", recon_images=0, device="cpu")
    b = result["baselines"]
    assert set(b) == {"reconstructions", "gaussian", "mixture"}
    for m in b.values():
        assert {"fd", "precision", "recall", "classes_covered", "mode_kl"} <= set(m) and m["fd"] >= 0
    saved = json.loads((run_dir / "eval.json").read_text())["domain"]
    assert saved["baselines"]["mixture"]["fd"] == pytest.approx(b["mixture"]["fd"])
    table = format_table(result)
    assert "where quality is lost" in table and "the mixture on the same codes" in table
    assert result["protocol"]["imle_epochs"] == 2  # the IMLE epochs the run trained, read from its history
    # Another evaluation seed with write=False (scripts/eval_seeds.py): other numbers, the record untouched.
    recorded, grid = (run_dir / "eval.json").read_bytes(), (run_dir / "eval_nearest.png").read_bytes()
    other = evaluate_run(run_dir, num_samples=64, against="train", recon_images=0, device="cpu", seed=1,
                         latent_baselines=False, write=False)
    assert other["protocol"]["seed"] == 1 and other["metrics"]["fd"] != pytest.approx(result["metrics"]["fd"])
    assert (run_dir / "eval.json").read_bytes() == recorded and (run_dir / "eval_nearest.png").read_bytes() == grid
    # A GAN run has no codes: no baselines.
    gan_dir = train(tiny_config(tmp_path, "method=gan", "gan.epochs=1", "name=tiny_gan"))
    assert "baselines" not in evaluate_run(gan_dir, num_samples=64, against="train", recon_images=0, device="cpu")


def test_the_baseline_table_gives_no_imle_verdict_for_a_run_whose_imle_took_no_step():
    from glann.evaluate.suite import baseline_table

    def scores(fd, recall):
        return {"fd": fd, "precision": 0.9, "recall": recall, "classes_covered": 10, "mode_kl": 0.01}

    result = {"metrics": scores(18.9, 0.56), "protocol": {"mixture_components": 50},
              "baselines": {"mixture": scores(19.5, 0.60), "reconstructions": scores(14.4, 0.67)}}
    table = baseline_table(result)
    assert "IMLE did not beat the mixture" in table and "imle.epochs=0" in table  # recall lower: no win, a way out
    result["metrics"]["recall"] = 0.61
    table = baseline_table(result)
    assert "IMLE beat the mixture" in table and "imle.epochs=0" not in table
    result["protocol"]["imle_epochs"] = 0  # the samples are the untrained mapper's: nothing to credit IMLE with
    table = baseline_table(result)
    assert "beat" not in table and "IMLE took no step" in table and "before any IMLE step" in table
    result["protocol"].update(imle_epochs=10, imle_kept_epoch=-1)  # imle.keep_best exported the start
    table = baseline_table(result)
    assert "beat" not in table and "imle.keep_best" in table and "before any IMLE step" in table
    result["protocol"]["imle_kept_epoch"] = 7  # a trained mapper was kept: judged as any other
    assert "IMLE beat the mixture" in baseline_table(result)


def _two_clusters(spread: float) -> torch.Tensor:
    """200 codes on the sphere in 16 dimensions, in two clusters of this spread."""
    g = torch.Generator().manual_seed(0)
    centres = sphere(torch.randn(2, 16, generator=g))
    return sphere(centres[torch.arange(200) % 2] + spread * torch.randn(200, 16, generator=g))


def _mean_distance_to_nearest_code(mapper, codes: torch.Tensor, noise_dim: int) -> float:
    """500 of the mapper's samples (eval mode, noise seed 1): their mean distance to the nearest code."""
    with torch.no_grad():
        z = sphere(mapper.eval()(torch.randn(500, noise_dim, generator=torch.Generator().manual_seed(1))))
    return torch.cdist(z, codes).min(1).values.mean().item()


def test_precision_weight_pulls_pool_samples_towards_the_codes(tiny):
    codes = _two_clusters(0.05)
    far = {}
    for w in (0.0, 1.0):
        cfg = tiny("imle.epochs=6", f"imle.precision_weight={w}")
        run = Run.create(tiny("imle.epochs=6", f"imle.precision_weight={w}", f"name=pw{w}"))
        far[w] = _mean_distance_to_nearest_code(train_imle(codes, cfg, run).mapper, codes, cfg.model.noise_dim)
        if w:
            assert all("sample_nn_distance" in r for r in run.read_metrics() if r["stage"] == "imle")
    assert far[1.0] < far[0.0]


def test_code_noise_spreads_the_mapped_samples_over_a_smoothed_copy_of_the_codes(tiny):
    codes = _two_clusters(0.02)
    spread = {}
    for sigma in (0.0, 0.15):
        cfg = tiny("imle.epochs=150", f"imle.code_noise={sigma}")
        result = train_imle(codes, cfg)
        spread[sigma] = _mean_distance_to_nearest_code(result.mapper, codes, cfg.model.noise_dim)
        if sigma:  # matched to jittered codes: each code's nearest sample is about the jitter away
            assert result.nn_distances[-1] > 0.5 * sigma * 16 ** 0.5
    assert spread[0.15] > 1.5 * spread[0.0]


def test_precision_weight_is_refused_under_torchrun(tiny, monkeypatch):
    import glann.pipeline as pipeline
    from glann.errors import ConfigError

    class Fake:
        active, is_main, world, rank, local_rank = True, True, 2, 0, 0

    monkeypatch.setattr(pipeline, "init_from_env", lambda device: Fake())
    with pytest.raises(ConfigError, match="precision_weight"):
        train(tiny("imle.precision_weight=0.5"))


def _three_clusters(nz: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes on the sphere in three tight clusters of 60%, 30% and 10% of 1,000 codes, and their centres."""
    g = torch.Generator().manual_seed(seed)
    centres = sphere(torch.randn(3, nz, generator=g))
    which = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    return sphere(centres[which] + 0.03 * torch.randn(1000, nz, generator=g)), centres


def test_mixture_prior_draws_each_component_in_its_share():
    from glann.nets import Mapper

    codes, centres = _three_clusters(8)
    T = Mapper(nz=8, hidden=[16], prior_components=3)
    T.prior.fit(codes)
    T.eval()
    assert T.noise_dim == 9
    with torch.no_grad():
        z = T(torch.randn(6000, 9, generator=torch.Generator().manual_seed(1)))
    share = torch.bincount(torch.cdist(z, centres).argmin(1), minlength=3) / 6000.0
    assert torch.allclose(share, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    assert torch.cdist(z, centres).min(1).values.max() < 0.5  # every sample inside a cluster


def test_mixture_prior_mapper_starts_at_the_mixture_and_imle_moves_it(tiny):
    cfg = tiny("model.mapper_prior=mixture", "model.mapper_prior_components=3", "imle.epochs=4")
    codes, _ = _three_clusters(cfg.model.nz)
    run = Run.create(cfg)
    result = train_imle(codes, cfg, run)
    T = result.mapper.eval()
    assert result.nn_distances[-1] < result.nn_distances[0]  # IMLE moved the mixture's samples closer
    with torch.no_grad():
        e = torch.randn(50, T.noise_dim, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(T(e), T.prior(e))  # the residual is trained
    # The prior is fitted once: a resumed run keeps the saved one, not a refit to other codes.
    saved = T.prior.means.clone()
    more = tiny("model.mapper_prior=mixture", "model.mapper_prior_components=3", "imle.epochs=6")
    run.close()
    resumed = train_imle(sphere(torch.randn(1000, cfg.model.nz)), more, Run.create(more, run.path, resume=True))
    assert torch.equal(resumed.mapper.prior.means, saved)


def test_mixture_prior_run_exports_and_samples_deterministically(tiny):
    from glann.sampler import Sampler

    run_dir = train(tiny("model.mapper_prior=mixture", "model.mapper_prior_components=4", "glo.epochs=1",
                         "imle.epochs=1", "data.limit=64"))
    a, b = Sampler.from_pretrained(run_dir, "cpu"), Sampler.from_pretrained(run_dir, "cpu")
    assert a.mapper.noise_dim == 17 and a.mapper.prior.means.abs().sum() > 0  # the fitted prior was saved
    assert torch.equal(a.sample(8, seed=3), b.sample(8, seed=3))


def test_unknown_mapper_prior_is_a_one_line_config_error(tiny):
    from glann.errors import ConfigError

    with pytest.raises(ConfigError, match="model.mapper_prior must be 'gaussian' or 'mixture'"):
        tiny("model.mapper_prior=gmm")
    with pytest.raises(ConfigError, match="with imle.conditional=true set model.mapper_prior=gaussian"):
        tiny("model.mapper_prior=mixture", "imle.conditional=true")


def test_mixture_fit_stops_at_its_iteration_cap_quietly_and_still_finds_the_clusters():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from glann.nets import MixturePrior

    g = torch.Generator().manual_seed(0)
    centres = sphere(torch.randn(3, 8, generator=g))
    which = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    codes = sphere(centres[which] + 0.2 * torch.randn(1000, 8, generator=g))  # wide clusters: EM needs ~40 steps
    prior = MixturePrior(3, 8)
    # the cap does bind on these codes: scikit-learn's EM warns that it stopped short of its tolerance
    with pytest.warns(ConvergenceWarning):
        prior._em(len(codes), 0).fit(codes.double().numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a user's run shows no "did not converge" for a cap set on purpose
        prior.fit(codes)
    assert torch.cdist(centres, prior.means).min(1).values.max() < 0.2  # each cluster has its component


def test_keep_best_exports_the_mapper_that_scored_best_on_the_held_out_codes(tiny, monkeypatch):
    import glann.imle as imle

    matched = []
    real_match = imle.match_codes
    monkeypatch.setattr(imle, "match_codes", lambda codes, *a, **k: matched.append(len(codes)) or real_match(codes, *a, **k))
    cfg = tiny("model.mapper_prior=mixture", "model.mapper_prior_components=3", "imle.epochs=5", "imle.keep_best=true",
               "imle.holdout=64")
    codes, _ = _three_clusters(cfg.model.nz)
    result = train_imle(codes, cfg, Run.create(cfg))
    assert set(matched) == {1000 - 64}  # the held-out codes are never matched
    assert len(result.holdout_fds) == 6  # the start and every epoch
    best = min(range(6), key=result.holdout_fds.__getitem__)
    assert result.kept_epoch == best - 1
    # The exported mapper is the kept one: it scores that epoch's held-out FD again.
    from glann.evaluate.training import CodeFDCheck

    _, _, held = imle._hold_out(codes, None, cfg)
    check = CodeFDCheck(held, cfg, imle.HOLDOUT_SAMPLES, torch.device("cpu"))
    assert check(result.mapper) == pytest.approx(result.holdout_fds[best], rel=1e-6)


def test_keep_best_keeps_the_mixture_start_when_imle_only_moves_away_from_the_codes(tiny):
    # A step size that throws the residual far: every epoch fits the held-out codes worse than the mixture.
    over = ("model.mapper_prior=mixture", "model.mapper_prior_components=3", "imle.epochs=3", "imle.lr=0.5",
            "imle.code_noise=0.5", "imle.holdout=100")
    codes, _ = _three_clusters(tiny().model.nz)
    e = torch.randn(200, tiny().model.nz + 1, generator=torch.Generator().manual_seed(5))
    moved = train_imle(codes, tiny(*over)).mapper
    with torch.no_grad():
        assert not torch.allclose(moved(e), moved.prior(e), atol=1e-3)  # without the check, IMLE's steps are exported
    cfg = tiny(*over, "imle.keep_best=true")
    result = train_imle(codes, cfg, Run.create(cfg))
    assert result.kept_epoch == -1 and result.holdout_fds[0] < min(result.holdout_fds[1:])
    with torch.no_grad():
        assert torch.allclose(result.mapper(e), result.mapper.prior(e))  # the mixture's own samples


def test_keep_best_resumed_equals_uninterrupted(tiny, monkeypatch):
    from glann.loop import Budget

    over = ("model.mapper_prior=mixture", "model.mapper_prior_components=3", "imle.keep_best=true", "imle.holdout=64",
            "imle.epochs=4")
    codes, _ = _three_clusters(tiny().model.nz)
    whole_cfg = tiny(*over, "name=whole")
    whole = train_imle(codes, whole_cfg, Run.create(whole_cfg))
    cfg = tiny(*over, "name=parts")
    run = Run.create(cfg)
    real_end = Budget.end_epoch
    with monkeypatch.context() as mp:  # stop after epoch 1, as a spent budget stops a stage
        mp.setattr(Budget, "end_epoch", lambda self, stage="", epoch=0, epochs=0: real_end(self) or epoch == 1)
        train_imle(codes, cfg, run)
    run.close()
    run = Run.create(cfg, run.path, resume=True)
    resumed = train_imle(codes, cfg, run)
    run.close()
    assert resumed.kept_epoch == whole.kept_epoch and resumed.holdout_fds == whole.holdout_fds[3:]
    for a, b in zip(resumed.mapper.state_dict().values(), whole.mapper.state_dict().values()):
        assert torch.equal(a, b)
    # Resuming the finished run trains nothing and still hands back the kept mapper, not the last.
    again = train_imle(codes, cfg, Run.create(cfg, run.path, resume=True))
    assert again.holdout_fds == [] and again.kept_epoch == whole.kept_epoch
    for a, b in zip(again.mapper.state_dict().values(), whole.mapper.state_dict().values()):
        assert torch.equal(a, b)


def test_keep_best_with_too_few_codes_is_a_one_line_error(tiny):
    from glann.errors import ConfigError, DataError

    cfg = tiny("imle.keep_best=true")
    with pytest.raises(DataError, match="imle.keep_best=false"):
        train_imle(sphere(torch.randn(15, cfg.model.nz)), cfg)
    with pytest.raises(DataError, match="one label per code"):  # checked before any code is held out
        train_imle(sphere(torch.randn(100, cfg.model.nz)), tiny("imle.keep_best=true", "imle.conditional=true",
                                                              "model.class_counts=[50,50]"), labels=torch.zeros(101))
    with pytest.raises(ConfigError, match="imle.holdout"):
        tiny("imle.holdout=1")
