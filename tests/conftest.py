"""Shared fixtures: real sequence from the committed chr20 slice."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mergedna.vocab import PAD, encode

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def read_fasta_simple(path):
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


@pytest.fixture(scope="module")
def one_thread():
    """The machine's 2 cores are shared: one intra-op thread avoids OpenMP oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny pretraining checkpoint (random weights, seed 0): what `--model DIR` receives."""
    from mergedna.config import preset
    from mergedna.model import MergeDNAForPretraining

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "pretrained"
    MergeDNAForPretraining(preset("tiny")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def chr20() -> np.ndarray:
    """Ids of the 6 kb chr20 slice (real human sequence, no N)."""
    return encode(read_fasta_simple(FIXTURES / "chr20_slice.fa")["20:30000001-30006000"])


def batch_from(chr20: np.ndarray, lengths, start=0) -> torch.Tensor:
    """A right-padded (B, max(lengths)) batch of consecutive chr20 windows of the given lengths."""
    n = max(lengths)
    ids = torch.full((len(lengths), n), PAD, dtype=torch.long)
    for i, length in enumerate(lengths):  # building a test batch, not model code
        s = start + 500 * i
        ids[i, :length] = torch.from_numpy(chr20[s:s + length].astype(np.int64))
    return ids
