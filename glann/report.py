"""Side-by-side comparison of runs: metrics table (mean +- std over seeds), plots, report.md and a
standalone report.html (every image embedded). `glann report RUN_DIRS...` and `glann compare` use it.

Metrics come from a pluggable function run_dir -> {name: value}. The default evaluates each run with
glann.evaluate (features domain or inception) or, with features=basic, with cheap pixel statistics
that need no classifier; results are cached in <run>/report_metrics.json.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .checkpoints import MODEL_FILE, atomic_write, checkpoint_file, load_checkpoint
from .config import HELD_OUT_SOURCES, MIXTURES, STAGES, read_run_config
from .data import class_names, load_dataset
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate_run
from .evaluate.metrics import diversity, metric_columns
from .images import to_model
from .runs import Run
from .sampler import Sampler

METRICS_FILE = "report_metrics.json"
# (key, column title, better): the columns of the table, in order, when a run has them.
COLUMNS = metric_columns(("fd", "kd_mean", "precision", "recall", "density", "coverage", "classes_covered",
                          "modes_covered", "high_quality_share", "mode_kl", "domain_score", "class_accuracy",
                          "class_fd_mean", "pixel_fd", "point_fd", "diversity",
                          "train_seconds", "g_steps", "flags"))
MetricsFn = Callable[[Path], dict]


# ---------------------------------------------------------------------------- metrics
def basic_metrics(run_dir: Path, num_samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Pixel statistics needing no feature network: Frechet distance between 8 x 8 average-pooled
    samples and real images (test split when there is one), and sample diversity relative to the data's.
    Vector data (2-D mixtures) is compared as it is, point against point."""
    s = Sampler.from_pretrained(run_dir, device="cpu")
    data_cfg = s.cfg.data
    split = "test" if data_cfg.source in HELD_OUT_SOURCES else "train"
    try:
        real = load_dataset(replace(data_cfg, split=split, limit=num_samples)).images
    except Exception:  # no test split on disk: fall back to the run's own training data
        real = load_dataset(replace(data_cfg, limit=num_samples)).images
    fake = s.sample(num_samples, seed=seed)
    vector = fake.ndim == 2
    fake, real = (fake, real.float()) if vector else (fake * 2 - 1, to_model(real))

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return x.double() if vector else torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1).double()

    k = min(256, len(real), len(fake))
    return {"point_fd" if vector else "pixel_fd": _frechet(pooled(real), pooled(fake)),
            "diversity": diversity(fake[:k]) / max(diversity(real[:k]), 1e-12)}


def _frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), rows are samples (float64)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(sa)
    root_a = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + sa.trace() + sb.trace() - 2 * cross)


def evaluation_metrics(run_dir: Path, features: str, num_samples: int) -> dict[str, Any]:
    """glann.evaluate's metrics for a run (FD, KD, PRDC, mode coverage ...), features domain|inception."""
    cfg = read_run_config(run_dir)
    # Against the test split where the dataset has one, else its training data (folders, arrays, shapes).
    against = "test" if cfg is None or cfg.data.source in HELD_OUT_SOURCES else "train"
    return evaluate_run(run_dir, features=features, num_samples=num_samples, against=against, recon_images=0,
                        device="cpu")["metrics"]


def default_metrics(features: str = "domain", num_samples: int = 10000) -> MetricsFn:
    """run_dir -> metrics, cached in <run>/report_metrics.json under '<features>:<num_samples>'."""
    key = f"{features}:{num_samples}"

    def metrics(run_dir: Path) -> dict:
        cache = run_dir / METRICS_FILE
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        model_time = (run_dir / MODEL_FILE).stat().st_mtime
        if key in stored and stored[key].get("_model_mtime") == model_time:
            return stored[key]
        got = dict(basic_metrics(run_dir, min(num_samples, 2000)))
        if features != "basic":
            got.update(evaluation_metrics(run_dir, features, num_samples))
        got["_model_mtime"] = model_time
        stored[key] = got
        atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(stored, indent=1)))
        return got

    return metrics


# ---------------------------------------------------------------------------- runs
def summarise_run(run_dir: Path, metrics_fn: MetricsFn) -> dict[str, Any]:
    """Everything the report shows about one run: method, seed, metrics, curves, flags, samples."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).is_file():
        raise CheckpointError(f"{run_dir} holds no finished run (no {MODEL_FILE}); train or resume it first")
    cfg = read_run_config(run_dir)
    if cfg is None:
        raise CheckpointError(f"{run_dir} has no config.yaml; the report needs it to tell the method and seed")
    records = Run(run_dir, cfg).read_metrics()
    m = re.fullmatch(r"(.+)_s(\d+)", run_dir.name)
    method = m.group(1) if m else (cfg.name if cfg.method == "glann" else f"{cfg.name}")
    values = {k: v for k, v in metrics_fn(run_dir).items() if not k.startswith("_")}
    gan = [r for r in records if r["stage"] == "gan"]
    flags = sorted({k[5:] for r in gan for k, v in r.items() if k.startswith("flag_") and v == 1.0})
    timing = run_dir / "timing.json"
    if timing.is_file():
        values["train_seconds"] = json.loads(timing.read_text())["train_seconds"]
    else:  # a run trained outside `glann compare`: the training time its stages' checkpoints carry
        seconds = _checkpoint_seconds(run_dir)
        if seconds is not None:
            values["train_seconds"] = seconds
    if gan:
        values["g_steps"] = gan[-1]["g_steps"]
    values["flags"] = ", ".join(flags) if cfg.method == "gan" else ""
    return {"dir": run_dir, "method": method, "kind": cfg.method, "seed": cfg.seed, "metrics": values,
            "records": records, "samples": run_dir / "samples.png", "data": _data_label(cfg),
            "source": cfg.data.source, "conditional": bool(cfg.model.class_counts)}


def _checkpoint_seconds(run_dir: Path) -> Optional[float]:
    """Seconds of training inside epochs, summed over the stages' checkpoints (loop.Budget keeps
    them across resumes); None when no checkpoint carries them (runs from before budgets)."""
    total = None
    for stage in STAGES:
        path = checkpoint_file(run_dir, stage)
        if path.is_file():
            seconds = load_checkpoint(path, mmap=True).get("extra", {}).get("seconds")
            if seconds is not None:
                total = (total or 0.0) + float(seconds)
    return total


def _data_label(cfg: Any) -> str:
    """What a run was trained on, as far as it decides which metrics compare: source, split, size, stacking."""
    d = cfg.data
    parts = [d.source] + [f"{k}={v}" for k, v in (("image_size", d.image_size), ("channels", d.channels))
                          if v is not None]
    return " ".join(parts + ([f"stack={d.stack}"] if d.stack != 1 else []))


def _points_protocol(runs: list[dict]) -> bool:
    """True when the runs are 2-D mixture runs: evaluate_run counts modes there and ignores `features`."""
    return all(r["data"].split()[0] in MIXTURES for r in runs)


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xs:
        return "-"
    mean = statistics.fmean(xs)
    fmt = (lambda v: f"{v:.0f}") if abs(mean) >= 100 else (lambda v: f"{v:.3g}")
    return f"{fmt(mean)} ± {fmt(statistics.stdev(xs))}" if len(xs) > 1 else fmt(mean)


def _table(runs: list[dict], methods: list[str]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, per-method rows with mean ± std, per-run rows)."""
    cols = [c for c in COLUMNS if any(c[0] in r["metrics"] and r["metrics"][c[0]] not in ("", None) for r in runs)
            or (c[0] == "flags" and any(r["kind"] == "gan" for r in runs))]
    header = ["method", "seeds"] + [f"{t} ({b})" if b != "-" else t for _, t, b in cols]
    rows = []
    for meth in methods:
        rs = [r for r in runs if r["method"] == meth]
        row = [meth, str(len(rs))]
        for key, _, _ in cols:
            vals = [r["metrics"].get(key) for r in rs]
            if key == "flags":
                gan = any(r["kind"] == "gan" for r in rs)
                row.append(("; ".join(f"s{r['seed']}: {v}" for r, v in zip(rs, vals) if v) or "none") if gan else "-")
            else:
                row.append(_mean_std(vals))
        rows.append(row)
    per_run = []
    for r in runs:
        row = [r["method"], str(r["seed"])]
        for key, _, _ in cols:
            v = r["metrics"].get(key)
            if key == "flags" and r["kind"] == "gan":
                v = v or "none"
            row.append((v or "-") if isinstance(v, str) else _mean_std([v]) if v is not None else "-")
        per_run.append(row)
    return header, rows, per_run


# ---------------------------------------------------------------------------- plots

def _save(fig, path: Path) -> Path:
    """Lay out, write and close one matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _quality_curve(records: list[dict]) -> tuple[list[tuple[float, float]], bool]:
    """(x, domain FD) for each metrics.jsonl record of one run that logged `domain_fd`, and whether x
    is training seconds (True) or, for runs logged before records carried `seconds`, wall-clock
    seconds since the run's first record (False).

    Training seconds are the stage's own (`seconds`, cumulative across resumes) plus, for IMLE, the
    GLO stage's total before it: GLANN's curve starts only once its GLO stage is paid for."""
    logged = [r for r in records if isinstance(r.get("domain_fd"), (int, float))]
    glo = [r for r in records if r["stage"] == "glo"]
    glo_seconds = glo[-1].get("seconds") if glo else 0.0
    timed = glo_seconds is not None and all(isinstance(r.get("seconds"), (int, float)) for r in logged)
    if timed:
        return [((glo_seconds if r["stage"] == "imle" else 0.0) + r["seconds"], r["domain_fd"]) for r in logged], True
    t0 = records[0]["time"] if records else 0.0
    return [(r["time"] - t0, r["domain_fd"]) for r in logged], False


def _plots(runs: list[dict], methods: list[str], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    paths: dict[str, Path] = {}

    # Loss curves: one panel per method, a line per seed and loss.
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), squeeze=False)
    for ax, meth in zip(axes[0], methods):
        for r in (r for r in runs if r["method"] == meth):
            for stage, key in (("glo", "loss"), ("imle", "loss"), ("gan", "d_loss"), ("gan", "g_loss")):
                pts = [(x["step"], x[key]) for x in r["records"] if x["stage"] == stage and key in x
                       and isinstance(x[key], (int, float))]
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=f"s{r['seed']} {stage} {key}")
        ax.set_title(meth)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    paths["losses"] = _save(fig, out / "losses.png")

    # Quality over training time: the race. One metric (domain FD, logged with eval.every=K) against
    # training seconds, a line per run: colour per method, line style per seed.
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    seeds = sorted({r["seed"] for r in runs})
    styles = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}
    ys: list[float] = []
    for r in runs:
        pts, timed = _quality_curve(r["records"])
        if pts:
            label = f"{r['method']} s{r['seed']}" + ("" if timed else " (no `seconds` logged: wall-clock)")
            ax.plot(*zip(*pts), marker=".", color=colours[r["method"]], linestyle=styles[r["seed"]], label=label)
            ys += [y for _, y in pts]
    ax.set_xlabel("training seconds")
    ax.set_ylabel("domain FD (lower is better)")
    ax.set_title("domain FD during training (GLANN's line starts after its GLO stage)", fontsize=9)
    if ys:
        if min(ys) > 0 and max(ys) > 10 * min(ys):
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, not over them
    else:
        ax.text(0.5, 0.5, "no run logged the domain FD during training;\n"
                "train with eval.every=K to log it every K epochs", ha="center", va="center", transform=ax.transAxes)
    paths["quality"] = _save(fig, out / "quality_over_time.png")

    # Headline metric per run, grouped by method: the spread over seeds at a glance.
    key = next((k for k in ("fd", "pixel_fd") if any(k in r["metrics"] for r in runs)), None)
    if key:
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        for i, meth in enumerate(methods):
            ys = [r["metrics"][key] for r in runs if r["method"] == meth and key in r["metrics"]]
            ax.scatter([i] * len(ys), ys, color=colours[meth], s=40)
            if ys:
                ax.hlines(statistics.fmean(ys), i - 0.25, i + 0.25, color=colours[meth])
        long = sum(len(m) for m in methods) > 60  # names that would run into each other: slant them
        ax.set_xticks(range(len(methods)), methods, fontsize=8, rotation=20 if long else 0,
                      ha="right" if long else "center")
        ax.set_ylabel(f"{key} (lower is better)")
        ax.set_title(f"{key} per seed (bar: mean)")
        paths["spread"] = _save(fig, out / "metric_spread.png")

    # Class histograms of generated samples (when the evaluation's classifier gave them).
    hist_runs = [r for r in runs if isinstance(r["metrics"].get("class_histogram"), list)]
    if hist_runs:
        k = len(hist_runs[0]["metrics"]["class_histogram"])
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        width = 0.8 / len(methods)
        for i, meth in enumerate(methods):
            hs = [r["metrics"]["class_histogram"] for r in hist_runs if r["method"] == meth]
            if hs:
                mean = [statistics.fmean(col) for col in zip(*hs)]
                ax.bar([c + i * width for c in range(k)], mean, width, color=colours[meth], label=meth)
        ax.axhline(1.0 / k, color="grey", linestyle=":", label="uniform")
        names = class_names(hist_runs[0]["source"], k)
        if names or k <= 20:  # beyond 20 unnamed classes (stacked data's modes) matplotlib's own ticks read better
            names = names or tuple(str(c) for c in range(k))
            long = k * max(len(n) for n in names) > 60  # Fashion-MNIST's and CIFAR-10's names would overlap
            ax.set_xticks([c + 0.4 - width / 2 for c in range(k)], names, fontsize=8,
                          rotation=30 if long else 0, ha="right" if long else "center")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("share of samples (mean over seeds)")
        ax.legend(fontsize=7)
        paths["classes"] = _save(fig, out / "class_histograms.png")
    return paths


# ---------------------------------------------------------------------------- writing
def write_report(run_dirs: Sequence[Union[str, Path]], out_dir: Union[str, Path], features: str = "domain",
                 num_samples: int = 10000, metrics_fn: Optional[MetricsFn] = None, title: str = "glann comparison",
                 budget: str = "") -> Path:
    """Write report.md, report.html and plots/ for the runs into out_dir; returns out_dir."""
    out_dir = Path(out_dir)
    metrics_fn = metrics_fn or default_metrics(features, num_samples)
    seen: dict[Path, str] = {}
    for d in run_dirs:  # one run twice would count as two seeds with a spread of 0
        if Path(d).resolve() in seen:
            raise ConfigError(f"run {d} is given twice (as {seen[Path(d).resolve()]} too); list each run once")
        seen[Path(d).resolve()] = str(d)
    runs = [summarise_run(Path(d), metrics_fn) for d in run_dirs]
    if not runs:
        raise CheckpointError("no runs to report on; pass run directories such as runs/compare/glann_s0")
    datasets = sorted({r["data"] for r in runs})
    if len(datasets) > 1:  # metrics against different data do not compare: one report per dataset
        raise ConfigError(f"the runs were trained on different data ({'; '.join(datasets)}); "
                          f"write one report per dataset")
    methods = list(dict.fromkeys(r["method"] for r in runs))
    header, rows, per_run = _table(runs, methods)
    plots = _plots(runs, methods, out_dir / "plots")
    flags = [(r["method"], r["seed"], f) for r in runs for f in _flag_lines(r)]
    curves = [_quality_curve(r["records"]) for r in runs]
    notes = []  # what the quality plot cannot show, and how to make it
    if not any(pts for pts, _ in curves):
        notes.append("No run logged the domain FD during training, so the quality plot is empty: train with "
                     "eval.every=K (e.g. eval.every=5) to log it every K IMLE or GAN epochs.")
    if any(pts and not timed for pts, timed in curves):
        notes.append("Runs logged before records carried `seconds` are plotted against wall-clock seconds since "
                     "their first record (marked in the legend).")
    points = _points_protocol(runs)
    measured = ("mode counts on the 2-D points" if points and features != "basic"
                else f"features `{features}`")
    protocol = (f"Data: {datasets[0]}. Metrics: {measured}, {num_samples} generated samples per run"
                + ((" (point FD and diversity from 2000)" if points else " (pixel FD and diversity from 2000)")
                   if features != "basic" else "")
                + f". Budget: {budget or 'as configured per run'}.")

    sections: list[Section] = [
        ("h1", title), ("p", protocol),
        ("h2", "Mean ± std over seeds"), ("table", (header, rows, "summary")),
        ("h2", "Every run"), ("table", (["method", "seed"] + header[2:], per_run, "runs"))]
    if flags:
        sections += [("h2", "GAN failure flags (first epoch each was seen)"),
                     ("list", [f"{m} s{s}: {f}" for m, s, f in flags])]
    sections += [("h2", "Plots"), *[("p", n) for n in notes], *[("figure", (n, p)) for n, p in plots.items()],
                 ("h2", "Samples (seed of each run's sampler: its config seed)"),
                 ("samples", [(f"{r['method']} s{r['seed']}" + (" (a row per class)" if r["conditional"] else ""),
                               r["samples"]) for r in runs])]
    md = _markdown(sections, out_dir)
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text(md))
    page = HTML_PAGE.format(title=html.escape(title), body=_html(sections))
    atomic_write(out_dir / "report.html", lambda tmp: Path(tmp).write_text(page))
    return out_dir


# The report's content, built once and rendered twice (Markdown, HTML): (kind, payload) with kind
# h1/h2/p (text), table ((header, rows, css class)), list (lines), figure ((name, png)) and
# samples ([(caption, png)]).
Section = tuple[str, Any]


def _markdown(sections: list[Section], out_dir: Path) -> str:
    lines: list[str] = []
    for kind, x in sections:
        if kind in ("h1", "h2"):
            lines += [f"{'#' if kind == 'h1' else '##'} {x}", ""]
        elif kind == "p":
            lines += [x, ""]
        elif kind == "table":
            lines += [*_md_table(x[0], x[1]), ""]
        elif kind == "list":
            lines += [f"- {item}" for item in x] + [""]
        elif kind == "figure":
            lines += [f"![{x[0]}](plots/{x[1].name})", ""]
        elif kind == "samples":
            lines += [f"**{cap}** ![{cap}]({_rel(png, out_dir)})" for cap, png in x]
    return "\n".join(lines) + "\n"


def _html(sections: list[Section]) -> str:
    body: list[str] = []
    for kind, x in sections:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(x)}</{kind}>")
        elif kind == "table":
            body.append(_html_table(*x))
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in x) + "</ul>")
        elif kind == "figure":
            body.append(f'<figure><img alt="{x[0]}" src="{_data_uri(x[1])}"><figcaption>{x[0]}</figcaption></figure>')
        elif kind == "samples":
            body += ["<div class='grids'>"] + [
                f'<figure><img class="samples" alt="samples {html.escape(cap)}" src="{_data_uri(png)}">'
                f'<figcaption>{html.escape(cap)}</figcaption></figure>' for cap, png in x if png.is_file()] + ["</div>"]
    return "\n".join(body)


def _flag_lines(r: dict) -> list[str]:
    seen: dict[str, int] = {}
    for x in r["records"]:
        for k, v in x.items():
            if k.startswith("flag_") and v == 1.0 and k not in seen:
                seen[k] = x["step"]
    return [f"{k[5:]} from epoch {e}" for k, e in seen.items()]


def _rel(path: Path, base: Path) -> str:
    """`path` relative to `base` (with ../ where needed), so report.md and the runs can move together."""
    return os.path.relpath(path.resolve(), base.resolve())


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:  # a | inside a cell (KL(gen || data)) would end it
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    """The table as HTML that wraps to fit the window: a header's "(better)" and a cell's "± std" may
    each go to a second line (18 columns of "mean ± std" on one line overflow 1,400 px)."""
    def th(h: str) -> str:
        m = re.fullmatch(r"(.+) \((lower|higher|closer to data)\)", h)
        return (f'<th>{html.escape(m.group(1))} <span class="better">({m.group(2)})</span></th>' if m
                else f"<th>{html.escape(h)}</th>")

    def td(c: str) -> str:
        mean, sep, std = c.partition(" ± ")
        if sep:
            return f'<td>{html.escape(mean)} <span class="std">± {html.escape(std)}</span></td>'
        return f'<td class="text">{html.escape(c)}</td>' if re.search("[a-z]", c) else f"<td>{html.escape(c)}</td>"

    def method(c: str) -> str:  # long method names break after their _ and - rather than widen the table
        return "<td>" + re.sub(r"([_-])", r"\1<wbr>", html.escape(c)) + "</td>"

    head = "".join(th(h) for h in header)
    body = "".join("<tr>" + method(r[0]) + "".join(td(c) for c in r[1:]) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1400px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
/* Tables wrap to the window rather than scroll sideways: headers at word breaks, "± std" under its mean. */
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.72em; width: 100%; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.25em; text-align: right; }}
th {{ font-weight: 600; vertical-align: bottom; }}
th .better {{ font-weight: normal; color: #666; }}
td .std {{ white-space: nowrap; }}
th:first-child, td:first-child, td.text {{ text-align: left; }}
thead {{ background: #f2f2f2; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure img {{ max-width: 100%; }}
img.samples {{ width: 260px; image-rendering: pixelated; }}
figcaption {{ text-align: center; font-size: 0.85em; }}
</style></head>
<body>
{body}
<script>
// Lets a headless browser (the report test) confirm every embedded image decoded and that the
// tables fit the window: no horizontal scroll bar on the page or inside a table.
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesDecoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.pageWidth = document.documentElement.scrollWidth;
  document.body.dataset.tablesOverflowing = Array.from(document.querySelectorAll("table")).filter(t =>
    t.scrollWidth > t.clientWidth + 1 || t.getBoundingClientRect().right > window.innerWidth).length;
}});
</script>
</body></html>
"""
