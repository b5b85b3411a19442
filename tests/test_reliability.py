"""Never lose or silently corrupt a user's work: one test group per problem of the reliability issue.

1 run folders have an owner; 2 strict checkpoint loading; 3 I/O faults are one line, exit 2,
nothing half-written left; 4 outputs follow the umask; 5 the README's Python example runs;
6 defaults and messages; 7 progress for long work. Tiny preset, fixture slices of real DNA.
"""

import errno
import gzip
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

import mergedna.finetune as finetune_mod
from mergedna_testing import FIXTURES, REPO
from mergedna.cli import main
from mergedna.config import preset
from mergedna.data.genome import Genome, GenomeSampler
from mergedna.embed import iter_embeddings
from mergedna.finetune import TaskSetupError, finetune
from mergedna.heads import MergeDNAForSequenceClassification
from mergedna.model import MergeDNAForPretraining, MergeDNAModel
from mergedna.runs import RunFolderError, claim_run_dir
from mergedna.segment import segment_ids
from mergedna.seqio import (SequenceFileError, atomic_path, iter_fasta, iter_fasta_pieces, remove_stale_temps,
                            write_json_atomic)
from mergedna.training.checkpoints import checkpoint_dirs
from mergedna.training.trainer import TrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

FASTA = FIXTURES / "chr20_slice.fa"
VAL = "20:59001-61000"
SPLICE = FIXTURES / "tasks" / "gue" / "splice3"
QUICK = dict(max_steps=2, batch_size=4, eval_every=1, progress=False)


def tiny_run(out, **kw) -> TrainConfig:
    base = dict(fasta=[str(FASTA)], out=str(out), preset="tiny", window=256, batch_size=2, steps=2, warmup=1,
                val=VAL, val_windows=2, val_every=2, ckpt_every=2, log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


def cli(*args):
    """The CLI in a subprocess: (exit code, stderr lines)."""
    res = subprocess.run([sys.executable, "-m", "mergedna.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return res.returncode, [ln for ln in res.stderr.splitlines() if ln.strip()]


def one_line_error(code, lines, *needles):
    assert code == 2, lines
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1 and not any("Traceback" in ln for ln in lines), lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ---- 1. run folders have an owner -------------------------------------------------------------------


def test_a_folder_holding_another_run_is_refused_and_kept(tmp_path, checkpoint):
    out = tmp_path / "run"
    pretrain(tiny_run(out, cache_dir=str(tmp_path / "c")))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(RunFolderError, match="already holds a pretrain run"):
        pretrain(tiny_run(out, seed=1, cache_dir=str(tmp_path / "c")))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    # --resume with other defining settings is refused; with the same ones (more steps) it continues
    with pytest.raises(RunFolderError, match=r"settings differ.*lr"):
        pretrain(tiny_run(out, lr=1e-2, resume=True, cache_dir=str(tmp_path / "c")))
    assert pretrain(tiny_run(out, steps=4, resume=True, cache_dir=str(tmp_path / "c")))["steps_done"] == 4
    # fine-tuning never lands in a pretraining folder or its model/
    for target in (out, out / "model"):
        with pytest.raises(RunFolderError):
            finetune(SPLICE, target, model=out / "model", **QUICK)
    assert MergeDNAForPretraining.from_pretrained(out / "model")  # still the pretraining model
    # --overwrite deletes the old run's checkpoints: a new run cannot resume the old one
    pretrain(tiny_run(out, seed=1, overwrite=True, cache_dir=str(tmp_path / "c")))
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000002"]
    assert json.loads((out / "run.json").read_text())["settings"]["seed"] == 1


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_run(out, cache_dir=str(tmp_path / "c")))
    (out / "run.json").unlink()  # a run from before run.json: the checkpoint itself is checked
    with pytest.raises(RunFolderError, match=r"checkpoint .*step-00000002.*window"):
        pretrain(tiny_run(out, window=128, resume=True, cache_dir=str(tmp_path / "c")))


def test_claim_rules(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    claim_run_dir(tmp_path / "other", "finetune", {"a": 1})  # a folder of no run is fine
    with pytest.raises(RunFolderError, match="finetune run"):
        claim_run_dir(tmp_path / "other", "finetune", {"a": 2})
    claim_run_dir(tmp_path / "other", "finetune", {"a": 2}, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # only the run's own files go


# ---- 2. strict loading --------------------------------------------------------------------------------


def test_a_checkpoint_that_does_not_match_its_config_is_an_error(checkpoint, tmp_path):
    with pytest.raises(SequenceFileError, match=r"missing from the checkpoint: mergedna\.latent_encoder\.blocks\.4"):
        MergeDNAForPretraining.from_pretrained(checkpoint, latent_encoder_layers=5)
    cfg = json.loads((checkpoint / "config.json").read_text())
    (tmp_path / "fewer").mkdir()
    MergeDNAForPretraining(preset("tiny", latent_encoder_layers=3)).save_pretrained(tmp_path / "fewer")
    (tmp_path / "fewer" / "config.json").write_text(json.dumps(cfg))  # config says 4, weights hold 3
    with pytest.raises(SequenceFileError, match=r"missing from the checkpoint: latent_encoder\.blocks\.3"):
        MergeDNAModel.from_pretrained(tmp_path / "fewer")


def test_init_from_a_finetuned_model_is_refused_and_new_heads_are_new(checkpoint, tmp_path):
    torch.manual_seed(0)
    clf = MergeDNAForSequenceClassification.from_pretrained(checkpoint, num_labels=3)
    with torch.no_grad():
        for p in clf.classifier.parameters():
            p.fill_(0.5)
    clf.save_pretrained(tmp_path / "clf")
    with pytest.raises(SequenceFileError, match=r"missing from the checkpoint: latent_decoder"):
        pretrain(tiny_run(tmp_path / "run", init_from=str(tmp_path / "clf"), cache_dir=str(tmp_path / "c")))
    model, source = finetune_mod.build_model(finetune_mod.load_task(SPLICE, "gue"), tmp_path / "clf", None,
                                             finetune_mod.FinetuneSettings())
    assert not any(torch.all(p == 0.5) for p in model.classifier.parameters())  # the help says: the head is new
    assert "new (randomly initialised) classifier" in model.load_report
    enc = MergeDNAModel.from_pretrained(checkpoint)
    assert "dropped latent_decoder.*, lm_head.*, local_decoder.*" in enc.load_report


# ---- 3. I/O faults: one line, exit 2, nothing half-written ----------------------------------------------


def test_damaged_and_misnamed_gzip_inputs(tmp_path, checkpoint):
    raw = FASTA.read_bytes()
    (tmp_path / "trunc.fa.gz").write_bytes(gzip.compress(raw)[:-200])
    (tmp_path / "gz_without_suffix.fa").write_bytes(gzip.compress(raw))
    (tmp_path / "plain_named.fa.gz").write_bytes(raw)
    out = tmp_path / "e.npy"
    code, lines = cli("embed", "--model", checkpoint, "--input", tmp_path / "trunc.fa.gz", "--out", out)
    one_line_error(code, lines, "trunc.fa.gz", "truncated gzip")
    assert not out.exists() and not list(tmp_path.glob(".e.npy*"))
    want = [(n, ids.tolist()) for n, ids in iter_fasta(FASTA)]
    for name in ("gz_without_suffix.fa", "plain_named.fa.gz"):
        assert [(n, ids.tolist()) for n, ids in iter_fasta(tmp_path / name)] == want
        genome = Genome.from_fasta(tmp_path / name, cache_dir=tmp_path / "cache")
        assert [r.length for r in genome.records] == [len(ids) for _, ids in want]


def test_damaged_checkpoints_and_all_n_records(tmp_path, checkpoint):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    weights = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    code, lines = cli("segment", "--model", bad, "--fasta", FASTA, "--out", tmp_path / "s")
    one_line_error(code, lines, "model.safetensors", "damaged or truncated")
    shutil.copy(checkpoint / "model.safetensors", bad / "model.safetensors")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": "64"}))
    with pytest.raises(SequenceFileError, match=r"config\.json: hidden_size must be int, got '64'"):
        MergeDNAModel.from_pretrained(bad)
    all_n = tmp_path / "n.fa"
    all_n.write_text(">gap\n" + "N" * 3000 + "\n")
    with pytest.raises(ValueError, match=r"n\.fa: nearly every train window .* --max-n-fraction"):
        GenomeSampler(Genome.from_fasta(all_n, cache_dir=tmp_path / "c"), window=256, val=0.5).batch(0, 2)


def test_unwritable_output_and_full_disk_are_one_line(tmp_path, checkpoint, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, lines = cli("finetune", "--preset", "tiny", "--task", SPLICE, "--out", blocker / "run", "--max-steps", "1")
    one_line_error(code, lines, str(blocker))

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "emb" / "e.npy"
    assert main(["embed", "--model", str(checkpoint), "--input", str(FASTA), "--out", str(out), "--per-base",
                 "--no-progress"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list((tmp_path / "emb").iterdir()) == []  # no hidden temporary left


def test_killed_runs_leave_temporaries_that_the_next_start_removes(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_run(out, cache_dir=str(tmp_path / "c")))
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    partial = out / "checkpoints" / f".step-00000004.tmp-{dead}-abcd"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)
    (out / f".metrics.jsonl.tmp-{dead}-ef01").write_text("half")
    mine = out / f".keep.tmp-{os.getpid()}-0000"  # a live process's temporary stays
    mine.write_text("x")
    pretrain(tiny_run(out, steps=3, resume=True, cache_dir=str(tmp_path / "c")))
    assert not partial.exists() and not (out / f".metrics.jsonl.tmp-{dead}-ef01").exists() and mine.exists()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("fails mid-write")
    assert list(tmp_path.glob("*x.txt*")) == [] and remove_stale_temps(tmp_path / "missing") == []


# ---- 4. outputs follow the umask ----------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "m.json", {"a": 1})
        MergeDNAModel(preset("tiny")).save_pretrained(tmp_path / "model")
        genome = Genome.from_fasta(FASTA, cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    files = [tmp_path / "m.json", tmp_path / "model" / "model.safetensors", tmp_path / "model" / "config.json",
             *genome.cache_path.parent.iterdir()]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(file_mode)}
    assert oct(stat.S_IMODE((tmp_path / "model").stat().st_mode)) == oct(dir_mode)


# ---- 5. the README's Python example runs as written ----------------------------------------------------


def test_readme_python_example_runs(checkpoint, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = next(b for b in blocks if "from_pretrained" in b)
    run_model = tmp_path / "runs" / "my_model" / "model"
    run_model.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(checkpoint, run_model)  # what `mergedna pretrain --out runs/my_model` leaves in model/
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert tuple(scope["out"].last_hidden_state.shape[:2]) == (1, 256)


# ---- 6. defaults and messages ---------------------------------------------------------------------------


def test_finetune_writes_its_record_first_and_keeps_the_best_model(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "test_predictions.tsv")

    monkeypatch.setattr(finetune_mod, "_write_predictions", fail)
    out = tmp_path / "ft"
    with pytest.raises(OSError):
        finetune(SPLICE, out, preset="tiny", layout="gue", **QUICK)
    assert json.loads((out / "run.json").read_text())["command"] == "finetune"
    assert MergeDNAForSequenceClassification.from_pretrained(out / "model").config.num_labels == 3
    assert not list(out.glob(".*tmp*"))


def test_task_files_are_recognised_and_one_class_is_refused(tmp_path):
    rows = (FIXTURES / "splice_sample.csv").read_text().splitlines()
    header = rows[0].split(",")
    swapped = tmp_path / "mine.csv"  # a byte-order mark, and column names of its own
    swapped.write_text("\ufeffdna_seq,cls\n" + "\n".join(rows[1:]) + "\n", encoding="utf-8")
    result = finetune(swapped, None, preset="tiny", task_options={"sequence_column": "dna_seq", "label_column": "cls"},
                      **QUICK)
    assert result["task"]["sizes"]["train"] > 0
    label = header.index("label")
    one = tmp_path / "one.csv"
    one.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[label] == rows[1].split(",")[label]]))
    with pytest.raises(TaskSetupError, match="one class only"):
        finetune(one, None, preset="tiny", **QUICK)


def test_genome_messages_name_flags_and_records(tmp_path):
    short = tmp_path / "contigs.fa"
    short.write_text("".join(f">ctg{i}\n{'ACGT' * 100}\n" for i in range(30)))
    genome = Genome.from_fasta(short, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"--val 0\.01.*--window"):
        GenomeSampler(genome, window=256, split="val", val=0.01)
    with pytest.raises(ValueError, match=r"--val 'chrX'.*ctg0, ctg1"):
        GenomeSampler(genome, window=256, val="chrX")
    twice = tmp_path / "twice.fa"
    twice.write_text(">ctg3\nACGT\n")
    with pytest.raises(SequenceFileError, match=r"'ctg3' appears twice .*contigs\.fa and in .*twice\.fa"):
        Genome.from_fasta([short, twice], cache_dir=tmp_path / "c")
    empty = tmp_path / "empty.fa"
    empty.write_text("\n")
    with pytest.raises(SequenceFileError, match=r"empty\.fa: empty FASTA file"):
        list(iter_fasta(empty))


def test_empty_fasta_in_embed_and_segment_is_an_error(tmp_path, checkpoint):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    code, lines = cli("embed", "--model", checkpoint, "--input", empty, "--out", tmp_path / "e.npy")
    one_line_error(code, lines, "empty.fa")
    assert not (tmp_path / "e.npy").exists()


# ---- 7. progress for long work, counted in bases ----------------------------------------------------------


def test_progress_is_counted_in_bases_inside_long_records(checkpoint):
    (name, ids), = [(n, i) for n, i in iter_fasta(FASTA) if len(i) == 6000]
    calls = []
    list(iter_embeddings(checkpoint, [(name, ids)], chunk_length=1024, batch_size=2, progress=calls.append))
    assert len(calls) >= 3 and abs(sum(calls) - 6000) < 1e-6  # several updates inside one 6-kb record
    seg_calls = []
    segment_ids(MergeDNAModel.from_pretrained(checkpoint), ids, window=1000, batch_size=2, progress=seg_calls.append)
    assert seg_calls == [2000, 2000, 2000]
    read = []
    list(iter_fasta_pieces(FASTA, progress=read.append, chunk_bytes=1000))
    assert sum(read) == FASTA.stat().st_size and len(read) > 3
