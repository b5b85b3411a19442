"""Shared fixtures. Plain helpers (paths, the naive FASTA reader, batches of real sequence) live in
``mergedna_testing``."""

import numpy as np
import pytest
import torch

from mergedna_testing import chr20_ids


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
    return chr20_ids()
