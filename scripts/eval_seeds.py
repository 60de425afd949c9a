#!/usr/bin/env python
"""Score runs at several evaluation seeds and compare them on the means: how much of a gap between
two runs is the evaluation's own spread? The seed picks the generated samples, the reference subset
(when --num-samples is below the test split's 10,000), the latent baselines' draws and refitted
mixture, and the KID subsets.

    python scripts/eval_seeds.py runs/race15_1800/glann_s1 runs/race15_1800/dcgan_s1 --seeds 0 1 2 \\
        --out benchmarks/race/sitting15_1800_s1_evalseeds

Each run is scored as `glann evaluate RUN --features domain --num-samples 5000 --against test --seed S
--recon-images 0` would score it (the defaults here), without replacing the run's own eval.json. A
run's eval.json is reused for the seed it was made with when its protocol matches and it is newer
than the model, and --out's JSON keeps every result, so a stopped call resumes where it ended.
Prints one table (mean and range over the seeds of every run, and of a GLANN run's latent
baselines), then the first run against each other one, and IMLE against the mixture on the first
run's codes, seed by seed and on the means; the sentences are drawn from these numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Optional

from bench import machine

from glann.checkpoints import checkpoint_file
from glann.evaluate.metrics import metric_columns
from glann.evaluate.suite import evaluate_run, imle_unjudged

KEYS = ("fd", "precision", "recall", "classes_covered", "mode_kl")
COLS = metric_columns(KEYS)
SETS = ("samples", "reconstructions", "mixture", "gaussian")


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {"features": args.features, "num_generated": args.num_samples, "against": args.against}


def recorded(run: Path, seed: int, args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The run's eval.json entry when it was made by this protocol at this seed, after the model was
    last written, with the latent baselines for a GLANN run; else None."""
    f, model = run / "eval.json", run / "model.safetensors"
    if not f.is_file() or (model.is_file() and f.stat().st_mtime < model.stat().st_mtime):
        return None
    result = json.loads(f.read_text()).get(args.features)
    if result is None:
        return None
    p = result.get("protocol", {})
    same = all(p.get(k) == v for k, v in protocol(args).items()) and p.get("seed") == seed
    glann_without_baselines = checkpoint_file(run, "glo").is_file() and "baselines" not in result
    return result if same and not glann_without_baselines else None


def score(run: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """{set: metrics} for one run at one evaluation seed ('samples' and any latent baselines), and
    'imle_epochs' for a GLANN run (0: its mapper took no step, so there is no IMLE to judge) and
    'imle_kept_epoch' (imle.keep_best; -1: the start was exported, no IMLE step was kept)."""
    result = recorded(run, seed, args)
    if result is None:  # recon_images=0: the test-image inversion is not in this table
        print(f"scoring {run} at evaluation seed {seed} ...", flush=True)
        result = evaluate_run(run, features=args.features, num_samples=args.num_samples, against=args.against,
                              seed=seed, recon_images=0, write=False)
    missing = [k for k in KEYS if k not in result["metrics"]]
    if missing:
        raise SystemExit(f"eval_seeds: {run} has no {', '.join(missing)} under --features {args.features} (a "
                         f"mode-collapse benchmark run? score it with scripts/bench_modes.py)")
    return {"samples": result["metrics"], **result.get("baselines", {}),
            "imle_epochs": result["protocol"].get("imle_epochs"),
            "imle_kept_epoch": result["protocol"].get("imle_kept_epoch")}


def cell(values: list[float], key: str) -> str:
    fmt = {"fd": lambda v: f"{v:.2f}", "classes_covered": lambda v: f"{v:g}"}.get(key, lambda v: f"{v:.3f}")
    mean = statistics.fmean(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ({fmt(min(values))}-{fmt(max(values))})"


def better(a: float, b: float, direction: str) -> bool:
    """a at least as good as b."""
    return a <= b if direction == "lower" else a >= b


def versus(name_a: str, a: dict[int, dict], name_b: str, b: dict[int, dict], seeds: list[int]) -> str:
    """'FD 12.1 vs 22.8 (A ahead on the mean; A level or ahead in 3 of 3 seeds); ...' for every column."""
    parts = []
    for k, label, direction in COLS:
        va, vb = [float(a[s][k]) for s in seeds], [float(b[s][k]) for s in seeds]
        ma, mb = statistics.fmean(va), statistics.fmean(vb)
        wins = sum(better(x, y, direction) for x, y in zip(va, vb))
        lead = "level" if f"{ma:.4g}" == f"{mb:.4g}" else f"{name_a if better(ma, mb, direction) else name_b} ahead"
        parts.append(f"{label} {ma:.4g} vs {mb:.4g} ({lead} on the mean; {name_a} level or ahead in "
                     f"{wins} of {len(seeds)} seeds)")
    return "; ".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--features", default="domain")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--against", default="test")
    p.add_argument("--out", help="write OUT.json (every seed's metrics; reused on a rerun of the same protocol) "
                                 "and OUT.md")
    args = p.parse_args()
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            raise SystemExit(f"eval_seeds: {run} is not a run directory (no config.yaml); give runs/NAME/METHOD_sSEED")
    out_json = Path(args.out + ".json") if args.out else None
    saved = json.loads(out_json.read_text()) if out_json is not None and out_json.is_file() else {}
    if saved and saved.get("protocol") != protocol(args):
        raise SystemExit(f"eval_seeds: {out_json} holds results of another protocol ({saved.get('protocol')}); "
                         f"give another --out or the same --features/--num-samples/--against")
    store: dict[str, dict[str, Any]] = saved.get("results", {})
    for run in args.runs:
        for seed in args.seeds:
            key = f"{run}@{seed}"
            if key not in store:
                store[key] = score(run, seed, args)
                if out_json is not None:
                    out_json.parent.mkdir(parents=True, exist_ok=True)
                    out_json.write_text(json.dumps({"protocol": protocol(args), "results": store}, indent=1) + "\n")
    # by run, then set, then seed
    got = {run: {name: {s: store[f"{run}@{s}"][name] for s in args.seeds if name in store[f"{run}@{s}"]}
                 for name in SETS} for run in args.runs}
    unique = len({run.name for run in args.runs}) == len(args.runs)
    label = {run: run.name if unique else f"{run.parent.name}/{run.name}" for run in args.runs}
    lines = [f"Machine: {machine()}. Protocol: --features {args.features} --num-samples {args.num_samples} "
             f"--against {args.against}, evaluation seeds {', '.join(map(str, args.seeds))}.", "",
             "| run | images | " + " | ".join(c[1].replace("|", "\\|") for c in COLS) + " |",
             "|---|---|" + "---|" * len(COLS)]
    for run in args.runs:
        for name in SETS:
            by_seed = got[run][name]
            if len(by_seed) == len(args.seeds):
                vals = [cell([float(by_seed[s][k]) for s in args.seeds], k) for k, _, _ in COLS]
                images = name if name == "samples" else f"↳ {name} on its codes"
                lines.append(f"| {run.parent.name}/{run.name} | {images} | " + " | ".join(vals) + " |")
    lines += ["", "Mean (min-max) over the evaluation seeds.", ""]
    first = args.runs[0]
    for other in args.runs[1:]:
        lines.append(f"- {label[first]} against {label[other]}: " + versus(
            label[first], got[first]["samples"], label[other], got[other]["samples"], args.seeds) + ".")
    unjudged = {imle_unjudged(store[f"{first}@{s}"]) for s in args.seeds}
    if len(got[first]["mixture"]) < len(args.seeds):
        lines.append(f"- {label[first]}: no latent baselines at every seed (not a GLANN run): no IMLE-vs-mixture line.")
    elif len(unjudged) == 1 and None not in unjudged:
        lines.append(f"- {label[first]}: {unjudged.pop()}, so its samples are its mapper's start (with "
                     f"model.mapper_prior=mixture, the mixture fitted to its codes) and there is no IMLE step "
                     f"to judge against the mixture.")
    else:
        lines.append(f"- {label[first]}'s IMLE samples against the mixture on its codes: "
                     + versus("IMLE", got[first]["samples"], "mixture", got[first]["mixture"], args.seeds) + ".")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
