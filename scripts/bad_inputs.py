"""Try every bad input and fault of the reliability issue on real data; tabulate what happens.

Runs the `mergedna` CLI in subprocesses on small slices of ../shared/data (E. coli K-12, human
chr20, a GUE task), one case at a time, and writes results/bad_inputs.md: per case the command,
the exit code, the error line (or the one-line report) and what was left in the output folder.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/bad_inputs.py [--out results/bad_inputs.md]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "src"))

from mergedna.provenance import run_metadata  # noqa: E402
from mergedna.seqio import iter_fasta, write_text_atomic  # noqa: E402
from mergedna.vocab import decode  # noqa: E402

PRETRAIN = ["--preset", "tiny", "--window", "256", "--batch-size", "2", "--steps", "2", "--val-windows", "2",
            "--val-every", "2", "--ckpt-every", "2", "--no-progress"]
PRETRAIN_4 = [x if i != PRETRAIN.index("--steps") + 1 else "4" for i, x in enumerate(PRETRAIN)]  # two steps more
FINETUNE = ["--max-steps", "2", "--batch-size", "8", "--eval-every", "1", "--no-progress"]


class Bench:
    def __init__(self, root: Path):
        self.root, self.rows = root, []

    def short(self, text: str) -> str:
        return text.replace(str(self.root) + "/", "").replace(str(DATA) + "/", "shared/data/")

    def cli(self, *args) -> tuple[int, list[str], list[str]]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
        res = subprocess.run([sys.executable, "-m", "mergedna.cli", *map(str, args)], capture_output=True, text=True,
                             cwd=self.root, env=env, timeout=600)
        return res.returncode, res.stdout.splitlines(), [ln for ln in res.stderr.splitlines() if ln.strip()]

    def left(self, folder: Path | None) -> str:
        if folder is None or not folder.exists():
            return "nothing" if folder is not None else ""
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        return ", ".join(names) if names else "(empty)"

    def case(self, problem: str, what: str, args: list, out: Path | None = None, expect: int = 2,
             note: str = "", pick: str | None = None) -> tuple[int, list[str]]:
        t0 = time.time()
        code, stdout, stderr = self.cli(*args)
        lines = [ln for ln in stderr if ": error: " in ln] or stderr[-1:] or stdout[-1:]
        if pick:  # the report line we look for (e.g. what --model loaded)
            lines = [ln for ln in stderr + stdout if pick in ln and "%|" not in ln][:1] or lines
        lines = [ln for ln in lines if "%|" not in ln] or [""]  # not a progress bar
        msg = self.short(lines[0] if lines else "")
        traceback = any("Traceback" in ln for ln in stderr)
        self.rows.append({"problem": problem, "case": what, "command": self.short("mergedna " + " ".join(map(str, args))),
                          "exit": code, "expected": expect, "message": msg + (" [TRACEBACK]" if traceback else ""),
                          "left": self.left(out), "note": note, "seconds": round(time.time() - t0, 1)})
        print(f"{problem} {what}: exit {code} ({time.time() - t0:.0f}s) {msg[:150]}", flush=True)
        return code, stderr


def slice_fasta(src: Path, dst: Path, name: str, start: int, length: int) -> Path:
    """Bases [start, start + length) of the first record of ``src`` as a one-record FASTA."""
    for _, ids in iter_fasta(src):
        seq = decode(ids[start : start + length])
        break
    dst.write_text(f">{name}\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results" / "bad_inputs.md"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bad_inputs-"))
    b = Bench(root)
    cache = ["--cache-dir", root / "cache"]
    ecoli = slice_fasta(DATA / "genomes" / "Ecoli_K12_MG1655.fasta.gz", root / "ecoli.fa", "ecoli:1-20000", 0, 20000)
    chr20 = slice_fasta(DATA / "genomes" / "GRCh37_chr20.fa.gz", root / "chr20.fa", "20:30000001-30020000",
                        30_000_000, 20000)
    gue = root / "tf0"
    gue.mkdir()
    for split, n in (("train", 200), ("dev", 60), ("test", 60)):
        rows = (DATA / "gue" / "tf" / "0" / f"{split}.csv").read_text().splitlines()
        (gue / f"{split}.csv").write_text("\n".join(rows[: n + 1]) + "\n")

    # a pretraining run and a fine-tuned model to point things at
    run = root / "run"
    b.case("1", "pretrain a fresh run (reference)", ["pretrain", "--fasta", ecoli, "--out", run, "--val", "0.1",
                                                     *PRETRAIN, *cache], run, expect=0)
    ft = root / "ft"
    b.case("1", "finetune a fresh run (reference)", ["finetune", "--model", run / "model", "--task", gue, "--out", ft,
                                                     *FINETUNE], ft, expect=0, pick="loaded")

    # 1. run folders
    b.case("1", "pretrain into a folder holding another run", ["pretrain", "--fasta", chr20, "--out", run,
                                                              "--val", "0.1", *PRETRAIN, *cache], run)
    b.case("1", "--resume with other settings (--lr)", ["pretrain", "--fasta", ecoli, "--out", run, "--val", "0.1",
                                                       *PRETRAIN, "--lr", "1e-2", "--resume", *cache], run)
    b.case("1", "--resume with the same settings, more steps", ["pretrain", "--fasta", ecoli, "--out", run, "--val",
                                                               "0.1", *PRETRAIN_4, "--resume", *cache], run, expect=0)
    b.case("1", "finetune --out a pretraining run", ["finetune", "--model", run / "model", "--task", gue, "--out", run,
                                                     *FINETUNE], run)
    b.case("1", "finetune --out a pretraining run's model/", ["finetune", "--model", run / "model", "--task", gue,
                                                             "--out", run / "model", *FINETUNE], run / "model")
    run2 = root / "run2"
    shutil.copytree(run, run2)
    b.case("1", "--overwrite a run (old checkpoints go)", ["pretrain", "--fasta", chr20, "--out", run2, "--val", "0.1",
                                                          *PRETRAIN, "--overwrite", *cache], run2 / "checkpoints",
           expect=0)

    # 2. strict loading
    b.case("2", "pretrain --init-from a fine-tuned model", ["pretrain", "--fasta", ecoli, "--out", root / "init",
                                                           "--val", "0.1", "--init-from", ft / "model", *PRETRAIN,
                                                           *cache], root / "init")
    b.case("2", "pretrain --init-from with more layers than the checkpoint",
           ["pretrain", "--fasta", ecoli, "--out", root / "deeper", "--val", "0.1", "--init-from", run / "model",
            "--latent-encoder-layers", "6", *PRETRAIN, *cache], root / "deeper")
    b.case("2", "finetune --model a fine-tuned model (the head is new)",
           ["finetune", "--model", ft / "model", "--task", gue, "--out", root / "ft2", *FINETUNE], root / "ft2",
           expect=0, pick="loaded")

    # 3. I/O faults
    raw = ecoli.read_bytes()
    (root / "trunc.fa.gz").write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    corrupt = bytearray(gzip.compress(raw))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = b"\x00" * 64
    (root / "corrupt.fa.gz").write_bytes(bytes(corrupt))
    (root / "gzip_no_suffix.fa").write_bytes(gzip.compress(raw))
    (root / "plain_named.fa.gz").write_bytes(raw)
    for name in ("trunc.fa.gz", "corrupt.fa.gz"):
        b.case("3", f"embed: {name.split('.')[0]} gzip", ["embed", "--model", run / "model", "--input", root / name,
                                                          "--out", root / f"emb_{name[:5]}" / "e.npy"],
               root / f"emb_{name[:5]}")
        b.case("3", f"segment: {name.split('.')[0]} gzip", ["segment", "--model", run / "model", "--fasta", root / name,
                                                            "--out", root / f"seg_{name[:5]}"], root / f"seg_{name[:5]}")
        b.case("3", f"pretrain: {name.split('.')[0]} gzip", ["pretrain", "--fasta", root / name, "--out",
                                                             root / f"pre_{name[:5]}", *PRETRAIN, *cache],
               root / f"pre_{name[:5]}")
    for name in ("gzip_no_suffix.fa", "plain_named.fa.gz"):
        b.case("3", f"embed: {name}", ["embed", "--model", run / "model", "--input", root / name, "--out",
                                       root / f"e_{name[:5]}.npy"], None, expect=0, pick="embedded")
        b.case("3", f"segment: {name}", ["segment", "--model", run / "model", "--fasta", root / name, "--out",
                                         root / f"s_{name[:5]}"], None, expect=0, pick="wrote")
        b.case("3", f"pretrain: {name}", ["pretrain", "--fasta", root / name, "--out", root / f"p_{name[:5]}",
                                          "--val", "0.1", *PRETRAIN, *cache], None, expect=0, pick="done")
    damaged = root / "damaged"
    shutil.copytree(run / "model", damaged)
    w = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(w[: len(w) // 2])
    b.case("3", "embed with a truncated model.safetensors", ["embed", "--model", damaged, "--input", ecoli, "--out",
                                                             root / "emb_dmg" / "e.npy"], root / "emb_dmg")
    shutil.copy(run / "model" / "model.safetensors", damaged / "model.safetensors")
    cfg = json.loads((damaged / "config.json").read_text())
    (damaged / "config.json").write_text(json.dumps({**cfg, "num_heads": "4"}))
    b.case("3", "config.json with a wrong-typed value", ["embed", "--model", damaged, "--input", ecoli, "--out",
                                                         root / "emb_cfg" / "e.npy"], root / "emb_cfg")
    (root / "all_n.fa").write_text(">gap\n" + ("N" * 60 + "\n") * 200)
    b.case("3", "pretrain on an all-N record", ["pretrain", "--fasta", root / "all_n.fa", "--out", root / "alln",
                                                "--val", "0.1", *PRETRAIN, *cache], root / "alln")
    blocker = root / "a_file"
    blocker.write_text("not a folder\n")
    b.case("3", "finetune --out below a file (unwritable)", ["finetune", "--model", run / "model", "--task", gue,
                                                             "--out", blocker / "ft", *FINETUNE], None)
    b.case("3", "embed --out below a file (unwritable)", ["embed", "--model", run / "model", "--input", ecoli,
                                                          "--out", blocker / "e.npy"], None)
    small = root / "small_fs"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    if mounted:
        try:
            b.case("3", "embed --per-base onto a full (1 MB) disk", ["embed", "--model", run / "model", "--input",
                                                                      ecoli, "--out", small / "e.npy", "--per-base"],
                   small)
        finally:
            subprocess.run(["umount", str(small)])
    killed = root / "killed"
    shutil.copytree(run, killed)
    dead = 2 ** 22 + 4242  # above the default pid_max: a process that no longer exists
    (killed / "checkpoints" / f".step-00000006.tmp-{dead}-0a0a").mkdir()
    (killed / "checkpoints" / f".step-00000006.tmp-{dead}-0a0a" / "model.safetensors").write_bytes(b"\0" * 4096)
    (killed / f".metrics.jsonl.tmp-{dead}-0b0b").write_text("partial")
    b.case("3", "--resume after a kill left temporaries (simulated: dead-pid temporaries)",
           ["pretrain", "--fasta", ecoli, "--out", killed, "--val", "0.1", *PRETRAIN_4, "--resume", *cache], killed / "checkpoints", expect=0,
           note="the hidden .step-00000006.tmp-* folder and .metrics.jsonl.tmp-* are gone afterwards")

    # 4. modes, with the default umask 022
    modes = sorted({oct(stat.S_IMODE(p.stat().st_mode)) + (" (dir)" if p.is_dir() else "")
                    for p in [run, *run.rglob("*"), ft, *ft.rglob("*"), *(root / "cache").iterdir()]})
    b.rows.append({"problem": "4", "case": "modes of every file and folder of the runs above and the genome cache",
                   "command": "(umask 022)", "exit": "", "expected": "", "message": ", ".join(modes), "left": "",
                   "note": "", "seconds": 0})

    # 6. defaults and messages
    rows = (gue / "train.csv").read_text().splitlines()
    (root / "my.csv").write_text("\n".join(rows) + "\n")
    b.case("6", "finetune --task my.csv without --layout", ["finetune", "--preset", "tiny", "--task", root / "my.csv",
                                                            "--out", root / "ft_csv", *FINETUNE], None, expect=0,
           pick="task ")
    (root / "named.csv").write_text("\ufeffdna,target\n" + "\n".join(rows[1:]) + "\n", encoding="utf-8")
    b.case("6", "CSV with a byte-order mark and own column names", ["finetune", "--preset", "tiny", "--task",
                                                                    root / "named.csv", "--sequence-column", "dna",
                                                                    "--label-column", "target", "--out",
                                                                    root / "ft_named", *FINETUNE], None, expect=0,
           pick="task ")
    label = rows[0].split(",").index("label")
    first = rows[1].split(",")[label]
    (root / "one.csv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[label] == first]) + "\n")
    b.case("6", "a task with one class", ["finetune", "--preset", "tiny", "--task", root / "one.csv", "--out",
                                          root / "ft_one", *FINETUNE], root / "ft_one")
    contigs = root / "contigs.fa"
    seq = decode(next(iter_fasta(ecoli))[1])
    contigs.write_text("".join(f">ctg{i}\n{seq[i * 2000:(i + 1) * 2000]}\n" for i in range(10)))
    b.case("6", "default --val 0.01 on short contigs", ["pretrain", "--fasta", contigs, "--out", root / "ctg",
                                                        *PRETRAIN, *cache], root / "ctg")
    b.case("6", "--val naming a record that is not there", ["pretrain", "--fasta", contigs, "--out", root / "ctgx",
                                                            "--val", "chrX", *PRETRAIN, *cache], root / "ctgx")
    (root / "again.fa").write_text(f">ctg3\n{seq[:2000]}\n")
    b.case("6", "a record named in two files", ["pretrain", "--fasta", contigs, root / "again.fa", "--out",
                                                root / "dup", "--val", "ctg0", *PRETRAIN, *cache], root / "dup")
    (root / "empty.fa").write_text("")
    b.case("6", "embed an empty FASTA", ["embed", "--model", run / "model", "--input", root / "empty.fa", "--out",
                                         root / "emb_empty" / "e.npy"], root / "emb_empty")
    b.case("6", "segment an empty FASTA", ["segment", "--model", run / "model", "--fasta", root / "empty.fa", "--out",
                                           root / "seg_empty"], root / "seg_empty")
    long = root / "long"
    long.mkdir()
    for split in ("train", "dev", "test"):
        (long / f"{split}.csv").write_text("sequence,label\n" + f"{seq[:1500]},0\n{seq[1500:3000]},1\n" * 4)
    b.case("6", "sequences longer than the model (default --length-policy error)",
           ["finetune", "--model", run / "model", "--task", long, "--out", root / "ft_long", *FINETUNE],
           root / "ft_long")
    write_report(b, Path(args.out))
    shutil.rmtree(root, ignore_errors=True)


def write_report(b: Bench, path: Path) -> None:
    meta = run_metadata()
    ok = sum(1 for r in b.rows if r["expected"] == "" or r["exit"] == r["expected"])
    lines = ["# Bad inputs and faults: what each one gives", "",
             "Every case of the reliability issue (run folders, strict loading, I/O faults, modes, defaults and "
             "messages), tried with the `mergedna` CLI on small real slices: E. coli K-12 MG1655 bases 1-20,000, "
             "human chr20 (GRCh37) 30,000,001-30,020,000, GUE `tf/0` (first 200/60/60 rows), and a `tiny` model "
             "pretrained for 2 steps on the E. coli slice. Expected exit: 0 where the input is fine, 2 for bad input. "
             "`left` is what the output folder holds afterwards.", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ",
             f"Commit: {meta['git_commit']} (dirty: {meta['git_dirty']})  ",
             f"Machine: {meta['machine']['cpu']}, {meta['machine']['cpus']} CPUs, torch {meta['machine']['torch']}  ",
             "Seed: 0 (the CLI default)  ", f"Cases as expected: {ok} of {len(b.rows)}", "",
             "| # | case | exit (expected) | message | left in the output folder | command |", "|---|---|---|---|---|---|"]
    for r in b.rows:
        cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        exit_cell = f"{r['exit']} ({r['expected']})" if r["exit"] != "" else ""
        msg = cell(r["message"][:400]) + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['problem']} | {cell(r['case'])} | {exit_cell} | {msg} | {cell(r['left'])} | "
                     f"`{cell(r['command'])}` |")
    write_text_atomic(path, "\n".join(lines) + "\n")
    print(f"wrote {path}: {ok} of {len(b.rows)} as expected")


if __name__ == "__main__":
    main()
