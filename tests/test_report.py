import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from glann.cli import main
from glann.compare import compare, load_compare_config, run_overrides
from glann.errors import CheckpointError, ConfigError
from glann.report import COLUMNS, _quality_curve, write_report

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """configs/compare_tiny.yaml (GLANN vs GAN, 2 seeds, pixel metrics), run once for this module."""
    torch.set_num_threads(1)  # tiny nets: a second thread only adds OpenMP waiting on a shared CPU
    out = tmp_path_factory.mktemp("compare")
    root = compare(ROOT / "configs" / "compare_tiny.yaml", [f"out_dir={out}"])
    torch.set_num_threads(2)
    return root


def _summary_rows(md: str) -> list[str]:
    section = md.split("## Mean ± std over seeds")[1].split("##")[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def test_compare_writes_markdown_and_html_with_a_row_per_method(compared):
    md = (compared / "report.md").read_text()
    rows = _summary_rows(md)
    assert [r.split("|")[1].strip() for r in rows] == ["glann", "gan"]
    assert all(r.split("|")[2].strip() == "2" for r in rows)  # two seeds each
    assert "±" in rows[0]
    page = (compared / "report.html").read_text()
    assert page.count("<tr>") == 1 + 2 + 1 + 4  # summary header + 2 methods, per-run header + 4 runs
    assert page.count('src="data:image/png;base64,') >= 4 + 3  # 4 sample grids and the plots, embedded
    assert {p.name for p in (compared / "plots").iterdir()} >= {"losses.png", "quality_over_time.png"}


def test_compare_does_not_retrain_finished_runs(compared, tmp_path):
    shutil.copytree(compared, tmp_path / compared.name)  # a copy: the other tests read the original
    model = tmp_path / compared.name / "gan_s0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    compare(ROOT / "configs" / "compare_tiny.yaml", [f"out_dir={tmp_path}", "seeds=[0]"])
    assert model.stat().st_mtime_ns == before


def test_compare_refuses_a_kept_run_made_with_another_config(compared, tmp_path):
    root = tmp_path / compared.name
    shutil.copytree(compared, root)
    (root / "glann_s0" / "model.safetensors").unlink()  # stopped: it would be resumed first
    assert any((root / "glann_s0" / "checkpoints").glob("*.pt"))
    # budget_steps sets gan.max_steps, which GLANN does not read: glann_s0 is still this comparison's run,
    # gan_s0 (trained to 8 steps) is not, and is refused before glann_s0 trains on
    asked = r"[/\\]gan_s0 was made with another config .*gan\.max_steps=8 \(asked: 9\).*new name="
    with pytest.raises(ConfigError, match=asked):
        compare(ROOT / "configs" / "compare_tiny.yaml", [f"out_dir={tmp_path}", "seeds=[0]", "budget_steps=9"])
    assert not (root / "glann_s0" / "model.safetensors").exists()


def test_report_cli_rebuilds_the_report_from_run_dirs(compared, tmp_path):
    runs = [str(compared / n) for n in ("glann_s0", "gan_s0")]
    assert main(["report", *runs, "-o", str(tmp_path / "r"), "--features", "basic", "--num-samples", "64"]) == 0
    with pytest.raises(ConfigError, match="given twice"):
        write_report([runs[0], runs[0] + "/"], tmp_path / "twice", features="basic", num_samples=64)
    assert len(_summary_rows((tmp_path / "r" / "report.md").read_text())) == 2
    assert (tmp_path / "r" / "report.html").is_file()


def test_report_on_an_unfinished_run_names_the_problem(tmp_path):
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no finished run"):
        write_report([tmp_path / "half"], tmp_path / "r", features="basic")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("compare_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_compare_config_loads_and_its_methods_too(path):
    from glann.config import load_config

    cc = load_compare_config(path)
    for method, spec in cc.methods.items():
        load_config(ROOT / spec.config, run_overrides(cc, method, cc.seeds[0]))


def test_compare_config_without_methods_is_a_config_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="no methods"):
        load_compare_config(f)


@pytest.mark.parametrize("text, match", [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "must be a mapping")])
def test_compare_config_that_is_not_a_mapping_is_a_config_error(tmp_path, text, match):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_compare_config(f)


def test_an_interrupted_compare_run_keeps_the_time_it_trained(tmp_path, monkeypatch):
    import json
    import time

    import glann.compare

    def stopped(cfg, resume, run_dir):  # trains 0.3 s, saves a checkpoint, then Ctrl-C
        time.sleep(0.3)
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "glo.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(glann.compare, "train", stopped)  # compare's own name for glann.pipeline.train
    with pytest.raises(KeyboardInterrupt):
        compare(ROOT / "configs" / "compare_tiny.yaml", [f"out_dir={tmp_path}"])
    timing = next(tmp_path.rglob("timing.json"))
    assert json.loads(timing.read_text())["train_seconds"] >= 0.3  # the resumed run adds its time to this


def test_quality_curve_is_domain_fd_against_training_seconds():
    glann = [{"stage": "glo", "step": 0, "time": 100.0, "seconds": 1.0},
             {"stage": "glo", "step": 1, "time": 101.0, "seconds": 2.0},  # GLO's total: IMLE starts here
             {"stage": "imle", "step": 0, "time": 109.0, "seconds": 0.5, "domain_fd": 9.0},
             {"stage": "imle", "step": 1, "time": 119.0, "seconds": 1.0, "domain_fd": 4.0}]
    assert _quality_curve(glann) == ([(2.5, 9.0), (3.0, 4.0)], True)
    gan = [{"stage": "gan", "step": 0, "time": 5.0, "seconds": 0.3, "domain_fd": 7.0, "diversity_ratio": 0.5}]
    assert _quality_curve(gan) == ([(0.3, 7.0)], True)
    old = [{k: v for k, v in r.items() if k != "seconds"} for r in glann]  # logged before `seconds` existed
    assert _quality_curve(old) == ([(9.0, 9.0), (19.0, 4.0)], False)


def test_report_without_a_logged_domain_fd_names_the_fix(compared):
    assert "eval.every=K" in (compared / "report.md").read_text()


def _race_report(compared: Path, out: Path) -> Path:
    """The widest report the page must fit: the compare runs copied as five methods (long names) x
    2 seeds, every metric column with wide values, every GAN flag, class histograms, domain FD logged."""
    run_dirs = []
    for method in ("glann", "glann_lpips_codes_pca", "gan", "gan_hinge_spectral_norm", "gan_wgan-gp_r1_pack2"):
        for seed in (0, 1):
            d = out / "runs" / f"{method}_s{seed}"
            shutil.copytree(compared / f"{method.split('_')[0]}_s{seed}", d)
            records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for r in records:
                if r["stage"] in ("imle", "gan"):
                    r["domain_fd"] = 1000.0 / (1 + r["step"]) ** 4 + seed  # spans > 10x: a log axis
                if r["stage"] == "gan":
                    r.update(flag_vanishing=1.0, flag_collapse=1.0, flag_oscillation=1.0)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            run_dirs.append(d)

    def every_metric(run_dir: Path) -> dict:
        seed = int(run_dir.name[-1])
        got = {key: (12345.678 if key.endswith("fd") else 0.123456) * (1 + 0.1 * seed) for key, _, _ in COLUMNS
               if key not in ("g_steps", "flags")}  # summarise_run reads these from the run itself
        return {**got, "class_histogram": [0.1, 0.2, 0.3, 0.4]}

    return write_report(run_dirs, out / "report", metrics_fn=every_metric, budget="8 generator updates per GAN run")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _dump_dom(page: Path, profile: Path) -> str:
    """The page's DOM after its load script ran, in a headless 1400 x 900 window."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
           "--window-size=1400,900", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (scripts/test.sh installs Debian's chromium)")
def test_report_html_renders_in_headless_chromium(compared, tmp_path):
    dom = _dump_dom(compared / "report.html", tmp_path / "profile")
    assert '<table class="summary">' in dom and "glann" in dom
    images = re.search(r'data-images="(\d+)"', dom)
    decoded = re.search(r'data-images-decoded="(\d+)"', dom)
    assert images and decoded, "the page's load script did not run"
    assert int(images.group(1)) >= 7 and decoded.group(1) == images.group(1)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (scripts/test.sh installs Debian's chromium)")
def test_report_tables_fit_a_1400_px_window(compared, tmp_path):
    report = _race_report(compared, tmp_path)
    dom = _dump_dom(report / "report.html", tmp_path / "profile")
    width = re.search(r'data-page-width="(\d+)"', dom)
    overflowing = re.search(r'data-tables-overflowing="(\d+)"', dom)
    assert width and overflowing, "the page's load script did not run"
    assert int(width.group(1)) <= 1400 and overflowing.group(1) == "0"
