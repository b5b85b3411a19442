"""Plain helpers of the test suite (the pytest fixtures are in ``conftest.py``): where the committed
fixture files and the shared data are, a naive FASTA reader independent of the package's own, and
batches of real chr20 sequence. Importable from any test as ``mergedna_testing`` (``tests`` is on
pytest's ``pythonpath``, pyproject.toml), and from the worker processes the tests spawn."""

from pathlib import Path

import numpy as np
import torch

from mergedna.vocab import PAD, encode

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CHR20_RECORD = "20:30000001-30006000"  # the fixture's 6 kb of real human sequence, no N


def read_fasta_simple(path) -> dict[str, str]:
    """A deliberately naive FASTA reader for tests (independent of the package's own reader)."""
    records, name, chunks = {}, None, []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                records[name] = "".join(chunks)
            name, chunks = line[1:].split()[0], []
        else:
            chunks.append(line.strip())
    records[name] = "".join(chunks)
    return records


def chr20_ids() -> np.ndarray:
    """Ids of the 6 kb chr20 slice (what the ``chr20`` fixture gives; spawned workers call this)."""
    return encode(read_fasta_simple(FIXTURES / "chr20_slice.fa")[CHR20_RECORD])


def batch_from(chr20: np.ndarray, lengths, start=0) -> torch.Tensor:
    """A right-padded (B, max(lengths)) batch of consecutive chr20 windows of the given lengths."""
    n = max(lengths)
    ids = torch.full((len(lengths), n), PAD, dtype=torch.long)
    for i, length in enumerate(lengths):  # building a test batch, not model code
        s = start + 500 * i
        ids[i, :length] = torch.from_numpy(chr20[s:s + length].astype(np.int64))
    return ids


# a fine-tuning run on the splice3 fixture that a test can kill and resume: its standby masked loss switches on
# at step 4 (two one-class dev evaluations), so the resumed part carries the auxiliary decoders' state too
RESUMABLE_RUN = dict(preset="tiny", seed=1, max_steps=8, batch_size=4, eval_every=2, patience=None, progress=False)


class Killed(Exception):
    """Stands for a kill (end of a session, an out-of-memory kill) in the middle of a run."""


def die_at_dev_evaluation(monkeypatch, n: int) -> None:
    """Make the ``n``-th dev evaluation of the next fine-tuning runs raise :class:`Killed`."""
    import mergedna.finetune as finetune_mod

    real, calls = finetune_mod.evaluate, []

    def dying(model, loader, split, precision="auto", name="eval", progress=False):
        calls.append(name)
        if name == "dev" and calls.count("dev") == n:
            raise Killed
        return real(model, loader, split, precision, name, progress)

    monkeypatch.setattr(finetune_mod, "evaluate", dying)
