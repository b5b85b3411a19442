"""Fine-tuning, evaluation and benchmark tables (mergedna.finetune, mergedna.benchmark).

Tasks are the GUE-layout fixtures under tests/fixtures/tasks/gue (UCI splice rows, see the README
there); every run is a handful of steps of the tiny preset.
"""

import argparse
import csv
import json
import shutil

import numpy as np
import pytest
import torch

import mergedna.benchmark as benchmark_mod
import mergedna.commands.finetune as finetune_cmd
import mergedna.finetune as finetune_mod
from mergedna.benchmark import BenchmarkMismatchError, run_benchmark
from mergedna.config import preset
from mergedna.data.task_batching import make_dataloader
from mergedna.data.tasks import load_gue_task
from mergedna.finetune import (FinetuneSettings, TaskSetupError, apply_lora, classification_metrics, evaluate,
                               finetune, fit)
from mergedna.heads import MergeDNAForSequenceClassification
from mergedna.precision import resolve
from mergedna.runs import FIT_STATE, RunFolderError
from mergedna.vocab import SequenceFileError

from mergedna_testing import FIXTURES, RESUMABLE_RUN, Killed, die_at_dev_evaluation

GUE_FIX = FIXTURES / "tasks" / "gue"
SPLICE3 = GUE_FIX / "splice3"
QUICK = dict(max_steps=4, batch_size=4, eval_every=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")



def count_evaluations(monkeypatch):
    calls = []
    real = finetune_mod.evaluate

    def counting(model, loader, split, precision="auto", name="eval", progress=False):
        calls.append(name)
        return real(model, loader, split, precision, name, progress)

    monkeypatch.setattr(finetune_mod, "evaluate", counting)
    return calls


def test_classification_metrics_known_values():
    labels = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[labels]
    m = classification_metrics(labels, perfect)
    assert m == {"mcc": 1.0, "accuracy": 1.0, "f1": 1.0, "predicted_classes": 2, "auroc": 1.0}
    assert classification_metrics(labels, np.tile([0.6, 0.4], (4, 1)))["predicted_classes"] == 1
    wrong = np.eye(2)[1 - labels]
    assert classification_metrics(labels, wrong)["mcc"] == -1.0
    three = np.full((3, 3), 1 / 3)
    assert classification_metrics(np.array([0, 0, 1]), three)["auroc"] is None  # class 2 absent: undefined


def test_finetune_from_preset_writes_metrics_and_tests_once(tmp_path, monkeypatch):
    calls = count_evaluations(monkeypatch)
    out = tmp_path / "run"
    result = finetune(SPLICE3, out, preset="tiny", seed=3, **QUICK)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert calls.count("test") == 1 and saved["test_evaluations"] == 1
    assert calls.count("dev") == len(saved["dev_curve"]) == 2
    for key in ("mcc", "accuracy", "f1", "auroc", "loss"):
        assert key in saved["test"]
    assert -1 <= saved["test"]["mcc"] <= 1 and 0 <= saved["test"]["accuracy"] <= 1
    assert saved["best_step"] in (2, 4) and saved["best_dev"] == next(
        c["dev"] for c in saved["dev_curve"] if c["step"] == saved["best_step"])
    assert saved["seed"] == 3 and saved["model"]["init"] == "random" and saved["model"]["preset"] == "tiny"
    assert saved["model"]["config"]["num_labels"] == 3 and saved["task"]["dev_source"] == "task"
    for key in ("command", "date", "git_commit", "machine"):
        assert key in saved
    assert (out / "dev_curve.png").stat().st_size > 0
    reloaded = MergeDNAForSequenceClassification.from_pretrained(out / "model")
    assert reloaded.config.label_names == ["0", "1", "2"]
    with open(out / "test_predictions.tsv") as fh:
        assert len(list(csv.DictReader(fh, delimiter="\t"))) == 6


def test_a_run_that_predicts_one_class_at_every_dev_evaluation_says_it_did_not_learn(tmp_path, monkeypatch, capsys):
    """The collapse of from-scratch GUE runs (MCC 0 because one class is predicted) is flagged, not
    reported as a score: in metrics.json and on the console. One dev evaluation with two classes clears it."""
    real = finetune_mod.evaluate

    def one_class(model, loader, split, precision="auto", name="eval", progress=False):
        out = real(model, loader, split, precision, name, progress)
        probs = np.tile([0.9] + [0.1 / (out["probs"].shape[1] - 1)] * (out["probs"].shape[1] - 1), (len(split), 1))
        return {**out, **finetune_mod.classification_metrics(split.labels, probs), "probs": probs}

    monkeypatch.setattr(finetune_mod, "evaluate", one_class)
    result = finetune(SPLICE3, tmp_path / "run", preset="tiny", **QUICK, mlm_on_collapse=0)
    assert len(result["warnings"]) == 1 and "did not learn" in result["warnings"][0]
    assert "--mlm-weight 1" in result["warnings"][0]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"] == result["warnings"]
    finetune_cmd.print_result(result)
    assert "WARNING: the model predicted a single class at all 2 dev evaluations" in capsys.readouterr().out
    learned = {"dev_curve": [{"dev": {"predicted_classes": 1}}, {"dev": {"predicted_classes": 2}}]}
    assert finetune_mod.training_warnings(learned) == []
    rescued = finetune(SPLICE3, tmp_path / "rescued", preset="tiny", **QUICK)  # the default switches the loss on
    assert rescued["mlm_switched_at"] == 4 and "switched on from step 5" in rescued["warnings"][0]
    assert "did not learn" in rescued["warnings"][1] and "--mlm-weight" not in rescued["warnings"][1]


def test_finetune_cli_from_checkpoint(tmp_path, checkpoint, capsys):
    parser = argparse.ArgumentParser(prog="mergedna")
    finetune_cmd.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "ft"
    args = parser.parse_args(["finetune", "--model", str(checkpoint), "--task", str(SPLICE3), "--out", str(out),
                              "--max-steps", "3", "--batch-size", "4", "--eval-every", "3", "--lr", "1e-4",
                              "--no-progress"])
    assert args.func(args) == 0
    assert "test (evaluated once)" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"]["init"] == "pretrained" and saved["model"]["mode"] == "full"
    assert saved["settings"]["lr"] == 1e-4 and saved["command"].startswith("mergedna")
    assert saved["settings"]["precision"] == resolve("auto")  # recorded as run: bf16 only where native
    tuned = MergeDNAForSequenceClassification.from_pretrained(out / "model")
    start = MergeDNAForSequenceClassification.from_pretrained(checkpoint, num_labels=3)
    name = "mergedna.latent_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(tuned.state_dict()[name], start.state_dict()[name])  # full fine-tuning moved it
    resumed = parser.parse_args(["finetune", "--model", str(checkpoint), "--task", str(SPLICE3), "--out", str(out),
                                 "--max-steps", "3", "--batch-size", "4", "--eval-every", "3", "--lr", "1e-4",
                                 "--no-progress", "--resume"])
    assert resumed.func(resumed) == 0
    assert "holds a finished run: nothing to resume" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == saved  # untouched


def test_lora_freezes_encoder_and_trains_adapters_and_head(checkpoint):
    task = load_gue_task(SPLICE3)
    model = MergeDNAForSequenceClassification.from_pretrained(checkpoint, num_labels=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = apply_lora(model, rank=4)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".classifier." in n for n in trainable)
    assert any("lora_" in n for n in trainable) and any(".classifier." in n for n in trainable)
    loader = make_dataloader(task["train"], 4, 1024)
    settings = FinetuneSettings(max_steps=3, eval_every=3, lr=1e-2, precision="fp32")
    fit(wrapped, loader, lambda m: {"mcc": 0.0}, settings, progress=False)
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in wrapped.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert any(p.abs().sum() > 0 for n, p in wrapped.named_parameters() if "lora_B" in n)


def test_lora_finetune_saves_merged_model_that_reloads(tmp_path, checkpoint):
    out = tmp_path / "lora"
    result = finetune(SPLICE3, out, model=checkpoint, lora_rank=4, lr=1e-2, precision="fp32", **QUICK)
    assert result["model"]["mode"] == "lora"
    assert result["model"]["trainable_parameters"] < result["model"]["parameters"] / 4
    reloaded = MergeDNAForSequenceClassification.from_pretrained(out / "model")
    assert not any("lora" in k for k in reloaded.state_dict())
    test = load_gue_task(SPLICE3)["test"]
    again = evaluate(reloaded, make_dataloader(test, 8, 1024, shuffle=False), test, "fp32")
    for key in ("mcc", "accuracy", "f1", "auroc", "loss"):
        assert again[key] == pytest.approx(result["test"][key], abs=1e-6)


def test_early_stopping_restores_best_dev_weights():
    torch.manual_seed(0)
    model = MergeDNAForSequenceClassification(preset("tiny", num_labels=3))
    loader = make_dataloader(load_gue_task(SPLICE3)["train"], 4, 1024)
    scores, snapshots = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9]), []

    def scripted_dev(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"mcc": next(scores)}

    settings = FinetuneSettings(max_steps=6, eval_every=1, patience=2, lr=1e-3, precision="fp32")
    history = fit(model, loader, scripted_dev, settings, progress=False)
    assert history["stopped_early"] and history["steps"] == 4 and history["best_step"] == 2
    assert [c["step"] for c in history["dev_curve"]] == [1, 2, 3, 4]
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)


def _fit_recording_dev_weights(ema: float) -> tuple[dict, list, dict, dict]:
    """Five steps of ``tiny`` on the splice fixture, dev scripted (best at step 2) and evaluated after every step;
    returns the initial weights, the weights dev saw at each evaluation, the kept weights and the history."""
    torch.manual_seed(0)
    model = MergeDNAForSequenceClassification(preset("tiny", num_labels=3))
    loader = make_dataloader(load_gue_task(SPLICE3)["train"], 4, 1024)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores, seen = iter([0.1, 0.5, 0.3, 0.2, 0.4]), []

    def scripted_dev(m):
        seen.append({n: p.detach().clone() for n, p in m.named_parameters()})
        return {"mcc": next(scores)}

    settings = FinetuneSettings(max_steps=5, eval_every=1, patience=None, lr=1e-3, precision="fp32", ema=ema)
    history = fit(model, loader, scripted_dev, settings, progress=False)
    return initial, seen, {n: p.detach().clone() for n, p in model.named_parameters()}, history


def test_ema_dev_sees_selection_keeps_and_training_is_untouched_by_the_moving_average():
    """``ema``: the raw trajectory is the same as without it (the average never feeds back), dev sees the average
    a_t = a_(t-1) + (1 - d_t)(w_t - a_(t-1)), d_t = min(decay, (1 + t)/(10 + t)), a_0 = the initial weights,
    and the run keeps the average of its best dev step (step 2), not the raw weights of that step."""
    initial, raw, raw_kept, raw_history = _fit_recording_dev_weights(0.0)
    _, seen, kept, history = _fit_recording_dev_weights(0.2)  # d_1 = 2/11 (warm-up), then 0.2
    average = dict(initial)
    for t, weights in enumerate(raw, start=1):
        d = min(0.2, (1 + t) / (10 + t))
        average = {n: average[n] + (1 - d) * (weights[n] - average[n]) for n in average}
        assert all(torch.allclose(seen[t - 1][n], average[n], atol=1e-6) for n in average), t
        if t == 2:
            expected_kept = average
    assert history["best_step"] == raw_history["best_step"] == 2
    assert all(torch.allclose(kept[n], expected_kept[n], atol=1e-6) for n in kept)
    assert not all(torch.allclose(kept[n], raw_kept[n]) for n in kept)  # the raw step-2 weights differ
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema"):
            FinetuneSettings(ema=bad)


def test_a_killed_run_with_ema_resumes_its_moving_average(tmp_path, monkeypatch):
    """The moving average is part of the resume state: a killed ``ema`` run resumed ends with the kept weights
    and dev curve of the run that never stopped."""
    run = {**RESUMABLE_RUN, "ema": 0.9}
    whole = finetune(SPLICE3, tmp_path / "whole", **run)
    die_at_dev_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        finetune(SPLICE3, tmp_path / "cut", **run)
    monkeypatch.undo()
    resumed = finetune(SPLICE3, tmp_path / "cut", resume=True, **run)
    assert resumed["resumed_at_step"] == 4 and comparable(resumed) == comparable(whole)
    weights = [MergeDNAForSequenceClassification.from_pretrained(d / "model").state_dict()
               for d in (tmp_path / "cut", tmp_path / "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_evaluations_at_the_class_prior_do_not_use_up_patience():
    """A slow starter predicts one class for its first evaluations; early stopping must wait for it."""
    torch.manual_seed(0)
    model = MergeDNAForSequenceClassification(preset("tiny", num_labels=3))
    loader = make_dataloader(load_gue_task(SPLICE3)["train"], 4, 1024)
    dev = iter([(0.0, 1), (0.0, 1), (0.0, 1), (0.4, 3), (0.3, 3), (0.2, 3), (0.9, 3)])

    def scripted_dev(m):
        mcc, classes = next(dev)
        return {"mcc": mcc, "predicted_classes": classes}

    settings = FinetuneSettings(max_steps=7, eval_every=1, patience=2, lr=1e-3, precision="fp32")
    history = fit(model, loader, scripted_dev, settings, progress=False)
    assert history["stopped_early"] and history["steps"] == 6 and history["best_step"] == 4


def test_max_time_ends_the_run_and_its_schedule_when_the_time_is_spent():
    """``max_time``: a run bounded by far more steps than fit its time stops when the time is spent, with a dev
    evaluation, and warm-up and decay follow the clock: the lr reaches its peak and is back near 0 at the end.
    By steps alone (100,000 of them, 10% warm-up) it would still be warming up, far below the peak."""
    result = finetune(SPLICE3, None, preset="tiny", max_steps=100_000, max_time=3.0, eval_every=1, batch_size=4,
                      lr=1e-3, patience=None, mlm_on_collapse=0, progress=False)
    assert result["out_of_time"] and result["steps"] < 100_000 and result["dev_curve"][-1]["step"] == result["steps"]
    lrs = [row["lr"] for row in result["dev_curve"]]
    assert max(lrs) > 0.5e-3 and lrs[-1] < 0.2e-3
    assert result["train_seconds"] + result["eval_seconds"] >= 3.0
    assert not finetune(SPLICE3, None, preset="tiny", **QUICK)["out_of_time"]
    with pytest.raises(ValueError, match="max_time"):
        FinetuneSettings(max_time=0)


def test_a_device_that_is_not_there_is_named_before_anything_runs(tmp_path):
    assert finetune_mod.pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        finetune_mod.pick_device("gpu0")
    with pytest.raises(ValueError, match="usable CUDA"):
        finetune_mod.pick_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(ValueError, match="usable CUDA"):
        finetune(SPLICE3, tmp_path / "run", preset="tiny", device=f"cuda:{torch.cuda.device_count()}", **QUICK)
    assert not (tmp_path / "run").exists()


def test_a_setting_added_to_the_tool_later_still_matches_older_runs(tmp_path):
    """A run folder written before a setting existed resumes, and a benchmark reuses its finished runs, when
    the new setting is at its off value (None); at any other value it is another run."""
    from mergedna.runs import claim_run_dir

    claim_run_dir(tmp_path / "r", "finetune", {"lr": 1e-3})
    claim_run_dir(tmp_path / "r", "finetune", {"lr": 1e-3, "max_time": None}, resume=True)
    with pytest.raises(RunFolderError, match="max_time: None -> 60"):
        claim_run_dir(tmp_path / "r", "finetune", {"lr": 1e-3, "max_time": 60}, resume=True)


def comparable(result: dict) -> dict:
    """What a run learned and measured, without its timings."""
    curve = [{k: v for k, v in c.items() if k != "epoch"} for c in result["dev_curve"]]
    return {"curve": curve, "test": result["test"], "best_step": result["best_step"], "steps": result["steps"],
            "sequences_seen": result["sequences_seen"]}


def test_benchmark_table_carries_each_runs_notes(tmp_path, monkeypatch):
    """A run whose recipe changed part-way (the standby masked loss switched on) or that never left the class
    prior is named under the table, not hidden in a mean."""
    root = tmp_path / "gue"
    shutil.copytree(SPLICE3, root / "tf" / "0")
    scripted_classes(monkeypatch, [1, 1, 1])
    run_benchmark("gue", root, tmp_path / "bench", tasks=["tf/0"], seeds=1, preset="tiny",
                  **{**QUICK, "max_steps": 6})
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "- tf/0 seed 0: dev predicted a single class at step 4: the auxiliary masked loss was switched on" in table
    assert "- tf/0 seed 0: the model predicted a single class at all 3 dev evaluations" in table


def test_a_killed_run_resumes_exactly_where_its_last_dev_evaluation_left_it(tmp_path, monkeypatch, capsys):
    """Killed in its third dev evaluation (step 6; the state was written at step 4, in the middle of the
    second epoch), ``resume`` ends with the dev curve, test metrics and weights of the run that never stopped:
    the batches, the classifier's dropout, the auxiliary loss (switched on at step 4) and its masks continue,
    they do not restart."""
    whole = finetune(SPLICE3, tmp_path / "whole", **RESUMABLE_RUN)
    assert whole["mlm_switched_at"] == 4  # the standby masked loss is on in the resumed part: its state resumes too
    cut = tmp_path / "cut"
    die_at_dev_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        finetune(SPLICE3, cut, **RESUMABLE_RUN)
    monkeypatch.undo()
    assert (cut / FIT_STATE).is_file() and not (cut / "metrics.json").exists()
    with pytest.raises(RunFolderError, match="--resume to continue it"):
        finetune(SPLICE3, cut, **RESUMABLE_RUN)
    with pytest.raises(RunFolderError, match="settings differ"):
        finetune(SPLICE3, cut, resume=True, **{**RESUMABLE_RUN, "lr": 5e-4})
    resumed = finetune(SPLICE3, cut, resume=True, **RESUMABLE_RUN)
    assert resumed["resumed_at_step"] == 4 and "resumed_at_step" not in whole
    finetune_cmd.print_result(resumed)
    assert ", resumed at step 4:" in capsys.readouterr().out
    assert comparable(resumed) == comparable(whole)
    weights = [MergeDNAForSequenceClassification.from_pretrained(d / "model").state_dict() for d in (cut, tmp_path / "whole")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert not (cut / FIT_STATE).exists() and len(json.loads((cut / "run.json").read_text())["resumed"]) == 1
    assert finetune(SPLICE3, cut, resume=True, **RESUMABLE_RUN) == json.loads((cut / "metrics.json").read_text())


def test_an_unreadable_fine_tuning_state_is_named_not_half_used(tmp_path, monkeypatch):
    die_at_dev_evaluation(monkeypatch, 2)
    with pytest.raises(Killed):
        finetune(SPLICE3, tmp_path / "cut", **RESUMABLE_RUN)
    monkeypatch.undo()
    (tmp_path / "cut" / FIT_STATE).write_bytes(b"not a torch file")
    with pytest.raises(SequenceFileError, match="finetune_state.pt.*cannot read this fine-tuning state"):
        finetune(SPLICE3, tmp_path / "cut", resume=True, **RESUMABLE_RUN)
    assert not (tmp_path / "cut" / "metrics.json").exists()


def test_benchmark_continues_an_unfinished_run_instead_of_redoing_it(tmp_path, monkeypatch):
    root = tmp_path / "gue"
    shutil.copytree(SPLICE3, root / "tf" / "0")
    kwargs = dict(tasks=["tf/0"], seeds=1, first_seed=1, **{k: v for k, v in RESUMABLE_RUN.items() if k != "seed"})
    whole = run_benchmark("gue", root, tmp_path / "whole", **kwargs)
    die_at_dev_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        run_benchmark("gue", root, tmp_path / "cut", **kwargs)
    monkeypatch.undo()
    again = run_benchmark("gue", root, tmp_path / "cut", **kwargs)
    run = tmp_path / "cut" / "runs" / "tf" / "0" / "seed1"
    assert json.loads((run / "metrics.json").read_text())["resumed_at_step"] == 4
    assert again["runs"][0]["test"] == whole["runs"][0]["test"]


def test_task_without_train_needs_train_on_dev(tmp_path):
    with pytest.raises(TaskSetupError, match="--train-on-dev"):
        finetune(GUE_FIX / "no_train", None, preset="tiny", **QUICK)
    result = finetune(GUE_FIX / "no_train", None, preset="tiny", train_on_dev=True, dev_fraction=0.4, **QUICK)
    assert result["task"]["comparable"] is False and "dev" in result["task"]["reason"]
    assert result["task"]["sizes"] == {"train": 2, "dev": 2, "test": 4}


def test_dev_is_carved_from_train_when_missing():
    result = finetune(FIXTURES / "tasks" / "gb_csv", None, preset="tiny", layout="genomic_benchmarks",
                      dev_fraction=0.34, **QUICK)
    assert "of train" in result["task"]["dev_source"] and result["task"]["comparable"]
    assert result["task"]["sizes"] == {"train": 6, "dev": 3, "test": 3}
    single = finetune(FIXTURES / "splice_sample.csv", None, preset="tiny", layout="csv", **QUICK)
    assert single["task"]["sizes"] == {"train": 96, "dev": 12, "test": 12}  # 80/10/10, stratified
    assert "single file" in single["task"]["dev_source"] and single["task"]["label_names"] == ["ei", "ie", "n"]


def test_benchmark_table_and_resume(tmp_path, monkeypatch):
    root = tmp_path / "gue"
    shutil.copytree(SPLICE3, root / "tf" / "0")  # a GUE task name, so the published number shows
    out = tmp_path / "bench"
    kwargs = dict(tasks=["tf/0"], seeds=2, preset="tiny", **{**QUICK, "max_steps": 2})
    results = run_benchmark("gue", root, out, **kwargs)
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 2 and saved["skipped"] == []
    entry = saved["summary"]["tasks"]["tf/0"]
    assert entry["published"] == 72.36 and entry["mcc"]["n"] == 2 and entry["mcc"]["sd"] is not None
    mccs = [r["test"]["mcc"] for r in saved["runs"]]
    assert entry["mcc"]["mean"] == pytest.approx(np.mean(mccs))
    assert entry["mcc"]["sd"] == pytest.approx(np.std(mccs, ddof=1))
    assert saved["summary"]["mean_over_tasks"]["mcc"]["mean"] == pytest.approx(np.mean(mccs))
    table = (out / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| tf/0 "))
    assert f"{100 * np.mean(mccs):.2f} ± {100 * np.std(mccs, ddof=1):.2f}" in row and "72.36" in row
    assert "plain mean over 1 tasks" in table
    assert results["summary"] == saved["summary"]

    def must_not_run(*args, **kw):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(benchmark_mod, "finetune", must_not_run)
    again = run_benchmark("gue", root, out, **kwargs)
    assert sorted(again["skipped"]) == ["tf/0/seed0", "tf/0/seed1"]
    assert again["summary"]["tasks"] == saved["summary"]["tasks"]
    with pytest.raises(BenchmarkMismatchError):
        run_benchmark("gue", root, out, **{**kwargs, "lr": 1e-3})


def test_compare_table_side_by_side(tmp_path):
    root = tmp_path / "gue"
    shutil.copytree(SPLICE3, root / "tf" / "0")
    kwargs = dict(tasks=["tf/0"], seeds=2, **{**QUICK, "max_steps": 2})
    a = run_benchmark("gue", root, tmp_path / "a", preset="tiny", **kwargs)
    b = run_benchmark("gue", root, tmp_path / "b", preset="tiny", first_seed=5, **kwargs)
    table = benchmark_mod.compare_table([a, b], ["first", "second"])
    row = next(line for line in table.splitlines() if line.startswith("| tf/0 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = [f"{100 * r['summary']['tasks']['tf/0']['mcc']['mean']:.2f}" for r in (a, b)]
    assert [c.split(" ±")[0] for c in cells[1:3]] == expected and cells[3] == "72.36"
    assert "| **plain mean over tasks** |" in table and "- second: preset 'tiny'" in table


def test_benchmark_with_baselines_puts_them_in_table_and_json(tmp_path, monkeypatch):
    root = tmp_path / "gue"
    shutil.copytree(SPLICE3, root / "tf" / "0")
    out = tmp_path / "bench"
    kwargs = dict(tasks=["tf/0"], seeds=2, baselines=["kmer", "cnn"], **{**QUICK, "max_steps": 2})
    results = run_benchmark("gue", root, out, preset="tiny", **kwargs)
    saved = json.loads((out / "results.json").read_text())
    assert saved["baselines"] == ["cnn", "kmer"]
    for name in ("cnn", "kmer"):
        runs = saved["baseline_runs"][name]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["seconds"] > 0 for r in runs)
        on_disk = json.loads((out / "runs" / "tf/0" / "seed1" / "baselines" / f"{name}.json").read_text())
        assert on_disk["test"] == runs[1]["test"] and on_disk["task"]["sizes"] == {"train": 12, "dev": 6, "test": 6}
        entry = saved["baselines_summary"][name]["tasks"]["tf/0"]
        assert entry["mcc"]["mean"] == pytest.approx(np.mean([r["test"]["mcc"] for r in runs]))
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| task "))
    assert "cnn mcc" in header and "kmer accuracy" in header and "s/run cnn" in header
    row = next(line for line in table.splitlines() if line.startswith("| tf/0 "))
    assert f"{100 * saved['baselines_summary']['cnn']['tasks']['tf/0']['mcc']['mean']:.2f}" in row
    only = run_benchmark("gue", root, tmp_path / "only", tasks=["tf/0"], seeds=1, baselines=["kmer"], progress=False)
    assert only["runs"] == [] and len(only["baseline_runs"]["kmer"]) == 1
    assert "baselines only" in (tmp_path / "only" / "results.md").read_text()

    def must_not_run(*args, **kw):
        raise AssertionError("a finished baseline was redone")

    monkeypatch.setattr(benchmark_mod, "baseline_on_task", must_not_run)
    monkeypatch.setattr(benchmark_mod, "finetune", must_not_run)
    again = run_benchmark("gue", root, out, preset="tiny", **kwargs)
    assert "tf/0/seed0/cnn" in again["skipped"]
    assert results["baselines_summary"] == saved["baselines_summary"]


def test_finetune_with_baselines_same_splits(tmp_path):
    out = tmp_path / "ft"
    result = finetune(SPLICE3, out, preset="tiny", baselines=("cnn", "kmer"), **QUICK)
    for name in ("cnn", "kmer"):
        saved = json.loads((out / "baselines" / f"{name}.json").read_text())
        assert saved["test"] == result["baselines"][name]["test"] and saved["test_evaluations"] == 1


def test_sweep_selects_on_dev_only_and_tests_once(tmp_path, monkeypatch):
    real = finetune_mod.evaluate
    calls = []
    # dev scores per evaluation, 2 per trial (4 steps, eval every 2): trial 4 (lr 3e-4, wd 0.01) is best on dev
    dev_scores = iter([0.1, 0.2, 0.0, 0.3, 0.2, 0.1, 0.5, 0.6, 0.1, 0.0, 0.4, 0.2])

    def scripted(model, loader, split, precision="auto", name="eval", progress=False):
        calls.append(name)
        metrics = real(model, loader, split, precision, name, progress)
        if name == "dev":
            metrics["mcc"] = next(dev_scores)
        return metrics

    monkeypatch.setattr(finetune_mod, "evaluate", scripted)
    result = finetune(SPLICE3, tmp_path / "sweep", preset="tiny", sweep=True, save_model=False, **QUICK)
    trials = result["sweep"]["trials"]
    assert [(t["lr"], t["weight_decay"]) for t in trials] == [(1e-4, 0.0), (1e-4, 0.01), (3e-4, 0.0), (3e-4, 0.01),
                                                             (1e-3, 0.0), (1e-3, 0.01)]
    assert [t["best_dev"]["mcc"] for t in trials] == [0.2, 0.3, 0.2, 0.6, 0.1, 0.4]
    assert result["sweep"]["selected"] == {"lr": 3e-4, "weight_decay": 0.01, "lora_rank": 0}
    assert result["lr"] == 3e-4 and result["best_dev"]["mcc"] == 0.6
    assert calls.count("test") == 1 and calls[-1] == "test" and result["test_evaluations"] == 1


def test_sweep_over_heads_selects_the_head_on_dev(tmp_path, monkeypatch):
    real = finetune_mod.evaluate
    # one dev evaluation per trial (2 steps): 6 trials with the mean head, then 6 with flatten; the best is
    # flatten at lr 1e-4, weight decay 0.01 (trial 8)
    dev_scores = iter([0.1, 0.2, 0.0, 0.3, 0.2, 0.1, 0.1, 0.7, 0.4, 0.0, 0.2, 0.3])

    def scripted(model, loader, split, precision="auto", name="eval", progress=False):
        metrics = real(model, loader, split, precision, name, progress)
        if name == "dev":
            metrics["mcc"] = next(dev_scores)
        return metrics

    monkeypatch.setattr(finetune_mod, "evaluate", scripted)
    result = finetune(SPLICE3, None, preset="tiny", sweep=True, sweep_poolings=("mean", "flatten"),
                      **{**QUICK, "max_steps": 2, "eval_every": 2})
    assert [t["pooling"] for t in result["sweep"]["trials"]] == ["mean"] * 6 + ["flatten"] * 6
    assert result["sweep"]["selected"] == {"lr": 1e-4, "weight_decay": 0.01, "lora_rank": 0, "pooling": "flatten"}
    assert result["model"]["config"]["pooling"] == "flatten"
    with pytest.raises(ValueError, match="need sweep=True"):
        finetune(SPLICE3, None, preset="tiny", sweep_poolings=("mean",), **QUICK)


def test_auxiliary_masked_modelling_trains_the_shared_encoder(tmp_path):
    """mlm_weight > 0 adds a masked-modelling loss through decoders on the classifier's own encoder: the
    encoder ends somewhere else than without it, the loss is logged, and the saved model has no decoder."""
    def encoder_after(**kw):
        result = finetune(SPLICE3, tmp_path / f"m{kw.get('mlm_weight', 0)}", preset="tiny", **QUICK, **kw)
        saved = MergeDNAForSequenceClassification.from_pretrained(tmp_path / f"m{kw.get('mlm_weight', 0)}" / "model")
        return result, saved.mergedna.state_dict()

    plain, plain_state = encoder_after(mlm_on_collapse=0.0)
    aux, aux_state = encoder_after(mlm_weight=1.0)
    assert all("train_mlm_loss" not in c for c in plain["dev_curve"])
    assert all(0.5 < c["train_mlm_loss"] < 3.0 for c in aux["dev_curve"])  # ~ln 4 per masked base at the start
    moved = [k for k in plain_state if not torch.equal(plain_state[k], aux_state[k])]
    assert any(k.startswith("latent_encoder") for k in moved)
    assert not any("decoder" in k for k in aux_state)
    with pytest.raises(ValueError, match="mlm_weight"):
        FinetuneSettings(mlm_weight=-1.0)
    with pytest.raises(ValueError, match="mlm_on_collapse"):
        FinetuneSettings(mlm_on_collapse=-1.0)


def scripted_classes(monkeypatch, classes: list[int]) -> None:
    """Dev evaluations report ``classes[i]`` predicted classes at the i-th call (real metrics otherwise)."""
    real, calls = finetune_mod.evaluate, iter(classes)

    def scripted(model, loader, split, precision="auto", name="eval", progress=False):
        out = real(model, loader, split, precision, name, progress)
        return {**out, "predicted_classes": next(calls)} if name == "dev" else out

    monkeypatch.setattr(finetune_mod, "evaluate", scripted)


def test_the_masked_loss_stands_by_until_dev_predicts_one_class(tmp_path, monkeypatch):
    """Default recipe (mlm_on_collapse 1): a run whose dev predicts two classes is, bit for bit, the run
    without the standby loss (its decoders are built without moving the dropout generator); one whose
    first evaluation predicts one class keeps learning alone, one whose first two do gets the masked loss from the
    next step on."""
    kw = dict(preset="tiny", seed=2, **{**QUICK, "max_steps": 8, "patience": None})
    scripted_classes(monkeypatch, [1, 2, 1, 2])
    standby = finetune(SPLICE3, tmp_path / "standby", **kw)
    monkeypatch.undo()
    scripted_classes(monkeypatch, [1, 2, 1, 2])
    off = finetune(SPLICE3, tmp_path / "off", **kw, mlm_on_collapse=0)
    assert standby["mlm_switched_at"] is None and comparable(standby) == comparable(off)
    weights = [MergeDNAForSequenceClassification.from_pretrained(tmp_path / d / "model").state_dict()
               for d in ("standby", "off")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    monkeypatch.undo()
    scripted_classes(monkeypatch, [2, 1, 1, 2])  # evaluations at steps 2, 4, 6, 8
    switched = finetune(SPLICE3, tmp_path / "switched", **kw)
    assert switched["mlm_switched_at"] == 6
    assert ["train_mlm_loss" in c for c in switched["dev_curve"]] == [False, False, False, True]
    assert [c["train_loss"] for c in switched["dev_curve"][:3]] == [c["train_loss"] for c in off["dev_curve"][:3]]
    assert switched["dev_curve"][3]["train_loss"] != off["dev_curve"][3]["train_loss"]


def test_metrics_record_time_and_throughput(tmp_path):
    result = finetune(SPLICE3, None, preset="tiny", **QUICK)
    assert result["sequences_seen"] == 4 * 4 and result["epochs_done"] == pytest.approx(4 / 3, abs=1e-3)
    assert result["train_seconds"] > 0 and result["eval_seconds"] > 0
    assert result["sequences_per_s"] == pytest.approx(16 / result["train_seconds"], rel=0.05)
    assert result["lr"] == finetune_mod.DEFAULT_LR["random"] and result["settings"]["lr"] is None


def test_auto_head_is_mean_flatten_on_fixed_length_tasks_else_cls(tmp_path):
    result = finetune(SPLICE3, None, preset="tiny", **QUICK)
    assert result["model"]["config"]["pooling"] == "mean_flatten" and result["model"]["config"]["pool_length"] == 60
    train = load_gue_task(SPLICE3)["train"]
    assert finetune_mod.default_pooling(train) == "mean_flatten"
    ragged = train.take(np.arange(len(train)), lengths=np.where(np.arange(len(train)) % 2, 50, 60))
    assert finetune_mod.default_pooling(ragged) == "cls"
    mean = finetune(SPLICE3, None, preset="tiny", pooling="mean", **QUICK)
    assert mean["model"]["config"]["pooling"] == "mean" and not mean["model"]["config"]["cls_token"]


def test_compile_setting_compiles_every_block_of_the_classifier(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(finetune_mod, "apply_block_options",
                        lambda net, compile=False: compiled.append((net, compile)))  # wiring only: no 40 s compile
    finetune(SPLICE3, tmp_path / "c", preset="tiny", max_steps=1, batch_size=4, compile=True, progress=False)
    assert len(compiled) == 1 and compiled[0][1] is True
    assert isinstance(compiled[0][0], MergeDNAForSequenceClassification)
    saved = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert saved["settings"]["compile"] is True
    finetune(SPLICE3, tmp_path / "n", preset="tiny", max_steps=1, batch_size=4, progress=False)
    assert len(compiled) == 1  # off by default


def test_conv_stem_setting_builds_the_stem_from_random_init_and_is_refused_on_a_checkpoint_without_one(checkpoint):
    task, build = finetune_mod.load_task(SPLICE3, "gue"), finetune_mod.build_model
    model, _ = build(task, None, "tiny", FinetuneSettings(conv_stem=9))
    assert model.config.conv_stem == 9 and model.mergedna.local_encoder.stem.kernel_size == (9,)
    assert build(task, None, "tiny", FinetuneSettings())[0].mergedna.local_encoder.stem is None
    with pytest.raises(ValueError, match="conv_stem 9 asked for.*trained with conv_stem 0"):
        build(task, checkpoint, None, FinetuneSettings(conv_stem=9))


def test_dropout_setting_reaches_the_model_from_random_init_and_from_a_checkpoint(checkpoint):
    task, build = finetune_mod.load_task(SPLICE3, "gue"), finetune_mod.build_model
    assert build(task, None, "tiny", FinetuneSettings(dropout=0.2))[0].config.dropout == 0.2
    assert build(task, checkpoint, None, FinetuneSettings(dropout=0.2))[0].config.dropout == 0.2
    assert build(task, checkpoint, None, FinetuneSettings())[0].config.dropout == 0.0


def test_pool_bin_setting_reaches_the_flatten_head_from_random_init_and_from_a_checkpoint(checkpoint):
    task, build = finetune_mod.load_task(SPLICE3, "gue"), finetune_mod.build_model
    train = task.splits["train"]
    for model, preset_name in ((None, "tiny"), (checkpoint, None)):
        clf, _ = build(task, model, preset_name, FinetuneSettings(pooling="flatten", pool_bin=4), train)
        length = int(train.lengths.max())
        assert clf.config.pool_bin == 4 and clf.pooler.out.in_features == -(-length // 4) * 16
    assert build(task, None, "tiny", FinetuneSettings(pooling="flatten"), train)[0].config.pool_bin == 1
    with pytest.raises(ValueError, match="pool_bin 4 needs a head with a flatten path.*'mean'"):
        FinetuneSettings(pooling="mean", pool_bin=4)  # named: refused at once
    with pytest.raises(ValueError, match="pool_bin 4 needs a head with a flatten path.*'cls'"):
        build(task, None, "tiny", FinetuneSettings(pool_bin=4))  # "auto" without the training split: cls
    with pytest.raises(ValueError, match="pool_bin 4 needs a head with a flatten path.*'mean'"):
        build(task, checkpoint, None, FinetuneSettings(pooling=None, pool_bin=4))  # the checkpoint's own head


@pytest.mark.parametrize("bad", [{"conv_stem": 4}, {"merge_ratio": 1.5}, {"dropout": 1.0}, {"pool_bin": 0}])
def test_a_bad_model_override_is_refused_before_the_run_folder_is_claimed(tmp_path, bad):
    """Otherwise the corrected command meets a folder that "already holds a finetune run"."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        finetune(SPLICE3, tmp_path / "out", preset="tiny", max_steps=1, batch_size=4, progress=False, **bad)
    assert not (tmp_path / "out").exists()
