"""Benchmark suites: tasks × seeds of :func:`~mergedna.finetune.finetune`, summarised next to the
published MergeDNA numbers (docs/method.md §8–9).

``run_benchmark`` fine-tunes every task of a suite with every seed, each run in its own folder
``<out>/runs/<task>/seed<k>/``. After every finished run it rewrites ``<out>/results.json`` and
``<out>/results.md`` (atomically), so a crash loses nothing already done; a rerun with the same
``out`` reuses every run whose ``metrics.json`` exists, continues every unfinished one from its last dev
evaluation (its ``finetune_state.pt``: exact resume, so a benchmark killed mid-run, e.g. at the end of a
session, loses at most one evaluation interval) and refuses to mix runs made with another model or
other settings.

With ``baselines`` (``cnn``, ``kmer``: :mod:`mergedna.baselines`) every task and seed also
trains those references on the same splits with the same seed, each to
``<out>/runs/<task>/seed<k>/baselines/<name>.json``; they are summarised like the MergeDNA runs
and appear as columns of the same table, with the mean wall time per run of each. ``model`` and
``preset`` may both be None when baselines are given: a baselines-only table.

The summary follows docs/method.md §8: per task the mean ± sample sd (n − 1) over seeds of each metric;
over tasks the *plain* mean of the per-task means (never a mean of group means), with, when every
task has the same seeds, the sd over seeds of the per-seed task mean. Tables show metrics × 100,
as the paper does; ``results.json`` keeps them as fractions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

import numpy as np

from .baselines import BASELINES, LABELS as BASELINE_LABELS, baseline_on_task
from .data.task_formats import find_split_files
from .data.tasks import load_task
from .finetune import FinetuneSettings, finetune
from .provenance import run_metadata, write_json_atomic, write_text_atomic
from .runs import FIT_STATE, differences

# docs/method.md §9: MergeDNA (380M), GUE, MCC × 100, per task as published
PUBLISHED_GUE_MCC = {
    "tf/0": 72.36, "tf/1": 76.50, "tf/2": 70.48, "tf/3": 61.12, "tf/4": 80.76,
    "mouse/0": 68.23, "mouse/1": 86.69, "mouse/2": 82.85, "mouse/3": 73.46, "mouse/4": 54.82,
    "prom/prom_core_all": 70.78, "prom/prom_core_notata": 70.91, "prom/prom_core_tata": 78.54,
    "prom/prom_300_all": 91.02, "prom/prom_300_notata": 94.90, "prom/prom_300_tata": 77.27,
    "splice/reconstructed": 89.95,
    "EMP/H3": 81.63, "EMP/H3K14ac": 69.09, "EMP/H3K36me3": 68.24, "EMP/H3K4me1": 57.10, "EMP/H3K4me2": 55.87,
    "EMP/H3K4me3": 66.84, "EMP/H3K79me3": 73.80, "EMP/H3K9ac": 68.36, "EMP/H4": 82.06, "EMP/H4ac": 65.22,
}

# suite -> loader layout, the metric the suite publishes, published per-task values (× 100) and
# published whole-suite means (only comparable when every task of the suite was run)
SUITES = {
    "gue": {"layout": "gue", "metric": "mcc", "published": PUBLISHED_GUE_MCC,
            "published_source": "MergeDNA 380M, docs/method.md §9",
            "suite_means": {"DNABERT-2 (117M), 28-task plain mean": 66.80}},
    "genomic_benchmarks": {"layout": "genomic_benchmarks", "metric": "accuracy", "published": {},
                           "published_source": "docs/method.md §9 (suite means only)",
                           "suite_means": {"MergeDNA, 8-task plain mean": 90.12, "GENERator": 89.92,
                                           "NT-500M": 89.26, "supervised CNN baseline": 79.24}},
    "nt": {"layout": "nt", "metric": "mcc", "published": {}, "published_source": "none in docs/method.md §9",
           "suite_means": {}},
    # labelled files without a fixed split (e.g. the embedded UCI splice set): split 80/10/10 by split_seed
    "csv": {"layout": "csv", "metric": "mcc", "published": {}, "published_source": "none",
            "suite_means": {}},
}
TABLE_METRICS = ("mcc", "accuracy")


class BenchmarkMismatchError(ValueError):
    """``out`` holds finished runs made with another model or other settings."""


def discover_tasks(data_root: str | os.PathLike) -> list[str]:
    """Task folders under ``data_root`` (relative, ``/``-separated, sorted) that have a train split."""
    root = Path(data_root)
    found = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        if "train" in find_split_files(folder):
            found.append(folder.relative_to(root).as_posix())
    return found


def _mean_sd(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(arr.mean()) if arr.size else None,
            "sd": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size)}


def summarise(runs: list[dict], tasks: list[str], suite: str) -> dict:
    """Per-task mean ± sd of every metric, the plain mean over tasks, and the published numbers."""
    spec = SUITES[suite]
    metrics = list(dict.fromkeys((*TABLE_METRICS, spec["metric"])))
    per_task = {}
    for task in tasks:
        done = sorted((r for r in runs if r["task"] == task), key=lambda r: r["seed"])
        if not done:
            continue
        per_task[task] = {m: _mean_sd([r["test"][m] for r in done]) for m in metrics}
        per_task[task].update(seeds=[r["seed"] for r in done], comparable=all(r["comparable"] for r in done),
                              published=spec["published"].get(task))
    over = {}
    if per_task:
        seed_sets = {tuple(v["seeds"]) for v in per_task.values()}
        for m in metrics:
            means = [v[m]["mean"] for v in per_task.values()]
            entry = {"mean": float(np.mean(means)) if None not in means else None, "sd": None, "tasks": len(means)}
            if len(seed_sets) == 1 and len(next(iter(seed_sets))) > 1 and entry["mean"] is not None:
                by_seed = [[r["test"][m] for r in runs if r["task"] in per_task and r["seed"] == s]
                           for s in next(iter(seed_sets))]
                if all(None not in row for row in by_seed):
                    entry["sd"] = float(np.std([np.mean(row) for row in by_seed], ddof=1))
            over[m] = entry
        published = [v["published"] for v in per_task.values()]
        over["published"] = float(np.mean(published)) if None not in published else None
    return {"metrics": metrics, "tasks": per_task, "mean_over_tasks": over}


def _pct(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    text = f"{100 * entry['mean']:.2f}"
    return text + (f" ± {100 * entry['sd']:.2f}" if entry.get("sd") is not None else "")


def pct_mean_sd(values) -> str:
    """Metric ``values`` (fractions, one per seed) as "mean ± sd" × 100, the sd over seeds (n - 1); one value:
    the mean alone; none: n/a. The one format of every results table (benchmark and the report scripts)."""
    return _pct(_mean_sd(list(values)))


def markdown_table(results: dict) -> str:
    """The results as markdown: header (model, command, date, commit, settings), the table, notes."""
    spec, summary = SUITES[results["suite"]], results["summary"]
    metric = spec["metric"]
    cols = summary["metrics"]
    meta = results["meta"]
    base = results.get("baselines_summary", {})
    has_model = results["model_label"] is not None
    lines = [f"# Benchmark `{results['suite']}`: {results['model_label'] or 'baselines only'}", "",
             f"- command: `{meta['command']}`",
             f"- date {meta['date']}, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}, "
             f"machine {meta['machine']['host']} ({meta['machine']['cpus']} CPUs, torch {meta['machine']['torch']})",
             "- settings: " + ", ".join(f"{k}={v}" for k, v in results["settings"].items() if v is not None),
             f"- test metrics × 100, mean ± sd over seeds (sd with n − 1); published: {spec['published_source']}",
             ]
    if base:
        lines.append("- baselines on the same splits and seeds, selected on dev: "
                     + "; ".join(f"{n} = {BASELINE_LABELS[n]}" for n in base)
                     + "; s/run = mean wall seconds per run (training, selection and test)")
    base_cols = [f"{n} {c}" for n in base for c in cols]
    time_cols = (["s/run MergeDNA"] if has_model else []) + [f"s/run {n}" for n in base]
    model_cols = [f"{c} (mean ± sd)" for c in cols] if has_model else []
    header = ["task", "seeds", *model_cols, *base_cols, *time_cols, f"published {metric}"]
    if has_model:
        header.append(f"Δ {metric}")
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    tasks = list(dict.fromkeys([*summary["tasks"], *(t for b in base.values() for t in b["tasks"])]))
    flagged = []
    for task in tasks:
        entry = summary["tasks"].get(task)
        bcells = [_pct(base[n]["tasks"].get(task, {}).get(c)) for n in base for c in cols]
        tcells = ([_secs(results["runs"], task)] if has_model else []) + \
            [_secs(results.get("baseline_runs", {}).get(n, []), task) for n in base]
        if entry is None:
            entry0 = next(b["tasks"][task] for b in base.values() if task in b["tasks"])
            pub = entry0["published"]
            lines.append(f"| {task} | {len(entry0['seeds'])} | " + " | ".join(bcells + tcells)
                         + f" | {pub if pub is not None else '–'} |")
            continue
        mark = "" if entry["comparable"] else " †"
        if mark:
            flagged.append(task)
        pub = entry["published"]
        delta = f"{100 * entry[metric]['mean'] - pub:+.2f}" if pub is not None and entry[metric]["mean"] is not None \
            else "–"
        lines.append(f"| {task}{mark} | {len(entry['seeds'])} | "
                     + " | ".join([_pct(entry[c]) for c in cols] + bcells + tcells)
                     + f" | {pub if pub is not None else '–'} | {delta} |")
    over = summary["mean_over_tasks"]
    ref = over or (next(iter(base.values()))["mean_over_tasks"] if base else {})
    if ref:
        pub = ref["published"]
        ours = over[metric]["mean"] if over else None
        delta = f"{100 * ours - pub:+.2f}" if pub is not None and ours is not None else "–"
        cells = ([_pct(over.get(c)) for c in cols] if has_model else []) \
            + [_pct(base[n]["mean_over_tasks"].get(c)) for n in base for c in cols] + [""] * len(time_cols)
        lines.append(f"| **plain mean over {ref[metric]['tasks']} tasks** | | " + " | ".join(cells)
                     + f" | {f'{pub:.2f}' if pub is not None else '–'} |" + (f" {delta} |" if has_model else ""))
    lines.append("")
    if flagged:
        lines.append(f"† trained on the task's dev split (no train split shipped): not comparable with published "
                     f"numbers: {', '.join(flagged)}.")
    carved = sorted({r["task"] for r in results["runs"] if r["dev_source"] != "task"})
    if carved:
        lines.append(f"Dev split carved by the fine-tuning run (the task ships none, or trains on dev) for: "
                     f"{', '.join(carved)}.")
    for name, value in spec["suite_means"].items():
        lines.append(f"Published suite mean, {name}: {value:.2f} (over the whole suite, not this subset).")
    noted = [f"- {r['task']} seed {r['seed']}: {w}" for r in results["runs"] for w in r.get("warnings", [])]
    if noted:
        lines += ["", "Notes from the runs (each run's `warnings` in its metrics.json):", *noted]
    return "\n".join(lines) + "\n"


def _secs(runs: list[dict], task: str) -> str:
    secs = [r["seconds"] for r in runs if r["task"] == task]
    return (f"{np.mean(secs):.0f}" if np.mean(secs) >= 10 else f"{np.mean(secs):.1f}") if secs else "–"


def _run_record(task: str, seed: int, run_dir: Path, metrics: dict) -> dict:
    return {"task": task, "seed": seed, "dir": str(run_dir), "test": metrics["test"],
            "best_step": metrics["best_step"], "best_dev": metrics["best_dev"], "steps": metrics["steps"],
            "comparable": metrics["task"]["comparable"], "dev_source": metrics["task"]["dev_source"],
            "seconds": metrics["seconds"], "date": metrics["date"], "warnings": metrics.get("warnings", [])}


def run_benchmark(suite: str, data_root: str | os.PathLike, out: str | os.PathLike, tasks: list[str] | None = None,
                  seeds: int = 3, first_seed: int = 0, *, model: str | os.PathLike | None = None,
                  preset: str | None = None, command: str | None = None, progress: bool = True,
                  save_models: bool = False, on_run=None, baselines: tuple | list = (), device=None,
                  **settings) -> dict:
    """Fine-tune each of ``tasks`` (folders relative to ``data_root``; default: every task folder
    with a train split) with seeds ``first_seed .. first_seed + seeds - 1``.

    ``settings`` are :class:`~mergedna.finetune.FinetuneSettings` fields, the same for every run.
    ``device``: where MergeDNA trains (:func:`~mergedna.finetune.pick_device`; the baselines train on the CPU).
    ``save_models`` keeps each run's fine-tuned checkpoint (off by default: one per task and seed
    adds up). ``on_run(record, skipped)`` is called after each run. Returns what ``results.json`` holds:
    ``runs`` (one record per finished run), ``summary`` (:func:`summarise`), ``skipped`` (runs
    reused from an earlier invocation), settings and run metadata.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {sorted(SUITES)}")
    data_root, out = Path(data_root), Path(out)
    tasks = list(tasks) if tasks else discover_tasks(data_root)
    missing = [t for t in tasks if not (data_root / t).exists()]
    if missing or not tasks:
        raise FileNotFoundError(f"task folders not found under {data_root}: {missing or 'none at all'}; "
                                f"available: {discover_tasks(data_root) if data_root.is_dir() else 'none'}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    baselines = [b for b in BASELINES if b in baselines]
    with_model = model is not None or preset is not None
    if not with_model and not baselines:
        raise ValueError("give a model, a preset or at least one baseline")
    full_settings = dataclasses.asdict(FinetuneSettings(**settings))
    source = {"checkpoint": str(Path(model).resolve())} if model is not None else {"preset": preset}
    label = (f"checkpoint {source['checkpoint']}" if model is not None else f"preset {preset!r} (random init)") \
        if with_model else None
    results = {"suite": suite, "data_root": str(data_root.resolve()), "tasks": tasks,
               "seeds": list(range(first_seed, first_seed + seeds)), "model": source if with_model else None,
               "model_label": label, "settings": full_settings, "meta": run_metadata(command), "runs": [],
               "skipped": [], "baselines": baselines, "baseline_runs": {b: [] for b in baselines}}
    out.mkdir(parents=True, exist_ok=True)

    def flush():
        results["summary"] = summarise(results["runs"], tasks, suite)
        results["baselines_summary"] = {b: summarise(results["baseline_runs"][b], tasks, suite) for b in baselines}
        results["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(out / "results.json", results)
        write_text_atomic(out / "results.md", markdown_table(results))

    for task in tasks:
        loaded = None
        for seed in results["seeds"]:
            run_dir = out / "runs" / task / f"seed{seed}"
            for name in baselines:
                path = run_dir / "baselines" / f"{name}.json"
                reused = path.is_file()
                if reused:
                    res = json.loads(path.read_text())
                    results["skipped"].append(f"{task}/seed{seed}/{name}")
                else:
                    if loaded is None:
                        loaded = load_task(data_root / task, SUITES[suite]["layout"])
                    res = baseline_on_task(name, loaded, seed, command, **settings)
                    write_json_atomic(path, res)
                results["baseline_runs"][name].append(
                    {"task": task, "seed": seed, "dir": str(path), "test": res["test"], "best_dev": res["best_dev"],
                     "comparable": res["task"]["comparable"], "dev_source": res["task"]["dev_source"],
                     "seconds": res["seconds"], "date": res["date"]})
                flush()
                if on_run is not None:
                    on_run({**results["baseline_runs"][name][-1], "baseline": name}, reused)
            if not with_model:
                continue
            done = run_dir / "metrics.json"
            skipped = done.is_file()
            if skipped:
                metrics = json.loads(done.read_text())
                theirs = {k: v for k, v in metrics["model"].items() if k in ("checkpoint", "preset")}
                if differences(metrics["settings"], full_settings) or theirs != source:
                    raise BenchmarkMismatchError(
                        f"{done} was made with other settings or another model ({theirs}); "
                        f"use another --out, or delete that run to redo it")
                results["skipped"].append(f"{task}/seed{seed}")
            else:
                resume = (run_dir / FIT_STATE).is_file()  # an unfinished run continues from its last dev evaluation
                metrics = finetune(data_root / task, run_dir, model=model, preset=preset,
                                   layout=SUITES[suite]["layout"], seed=seed, command=command, progress=progress,
                                   save_model=save_models, overwrite=not resume, resume=resume, device=device,
                                   **settings)
            record = _run_record(task, seed, run_dir, metrics)
            results["runs"].append(record)
            flush()
            if on_run is not None:
                on_run(record, skipped)
    if not results["runs"]:
        flush()
    return results


def compare_table(results: list[dict], names: list[str]) -> str:
    """Side-by-side markdown of several ``results.json`` (same suite): per task the suite's metric,
    mean ± sd over seeds (× 100) for each, the published value, and the plain mean over tasks."""
    suite = {r["suite"] for r in results}
    if len(suite) != 1:
        raise ValueError(f"cannot compare results of different suites: {sorted(suite)}")
    spec = SUITES[suite.pop()]
    metric = spec["metric"]
    tasks = list(dict.fromkeys(t for r in results for t in r["summary"]["tasks"]))
    lines = [f"Test {metric.upper()} × 100, mean ± sd over seeds; published: {spec['published_source']}.", "",
             "| task | " + " | ".join(names) + " | published |", "|---" * (len(names) + 2) + "|"]
    for task in tasks:
        cells = [_pct(r["summary"]["tasks"].get(task, {}).get(metric)) for r in results]
        pub = spec["published"].get(task)
        lines.append(f"| {task} | " + " | ".join(cells) + (f" | {pub:.2f} |" if pub is not None else " | n/a |"))
    means = [_pct(r["summary"]["mean_over_tasks"].get(metric)) for r in results]
    pub = results[0]["summary"]["mean_over_tasks"].get("published")
    lines.append("| **plain mean over tasks** | " + " | ".join(means)
                 + (f" | {pub:.2f} |" if pub is not None else " | n/a |"))
    lines.append("")
    for name, r in zip(names, results):
        m = r["meta"]
        lines.append(f"- {name}: {r['model_label']}; seeds {r['seeds']}; `{m['command']}`; {m['date']}, "
                     f"commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}, {m['machine']['cpu']}, "
                     f"{m['machine']['cpus']} cores, torch {m['machine']['torch']}")
    return "\n".join(lines) + "\n"
