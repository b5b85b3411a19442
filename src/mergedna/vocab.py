"""Vocabulary and sequence encoding (docs/method.md §2).

Ids: ``A=0 C=1 G=2 T=3 N=4 PAD=5 MASK=6``. The four bases are ordered so that the
complement of base id ``b`` is ``3 - b``. Encoding is a single 256-entry lookup
table applied to the raw bytes (no per-character Python loop):

* lower case (soft-masked repeats) maps to upper case;
* IUPAC ambiguity codes ``R Y K M S W B D H V`` map to ``N``;
* ``U`` maps to ``T``;
* anything else raises :class:`InvalidSequenceError`, naming the file, the record and
  the 1-based position of the first bad character.
"""

from __future__ import annotations

import numpy as np
import torch

A, C, G, T, N, PAD, MASK = range(7)
VOCAB_SIZE = 7
NUM_BASES = 4
ID_TO_CHAR = np.frombuffer(b"ACGTN-?", dtype=np.uint8)  # PAD prints as '-', MASK as '?'
_INVALID = 255


def _build_lut() -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.uint8)
    for chars, idx in (("A", A), ("C", C), ("G", G), ("TU", T), ("NRYKMSWBDHV", N)):
        for ch in chars:
            lut[ord(ch)] = idx
            lut[ord(ch.lower())] = idx
    return lut


LUT = _build_lut()


class InvalidSequenceError(ValueError):
    """A sequence holds a character that is neither a base, ``N`` nor an IUPAC code."""

    def __init__(self, char: str, position: int, record: str | None = None, file: str | None = None):
        self.char, self.position, self.record, self.file = char, position, record, file
        where = ", ".join(
            part for part in (f"file {file}" if file else "", f"record {record!r}" if record else "") if part
        )
        super().__init__(
            f"invalid character {char!r} at position {position} (1-based)" + (f" in {where}" if where else "")
        )


def encode_bytes(
    seq: bytes | bytearray | memoryview | np.ndarray,
    record: str | None = None,
    file: str | None = None,
    offset: int = 0,
) -> np.ndarray:
    """Encode raw ASCII bytes to a ``uint8`` id array of the same length.

    ``offset`` is added to the reported position, for callers that encode a record in
    pieces (a FASTA line at a time).
    """
    raw = seq if isinstance(seq, np.ndarray) else np.frombuffer(seq, dtype=np.uint8)
    ids = LUT[raw]
    bad = np.flatnonzero(ids == _INVALID)
    if bad.size:
        pos = int(bad[0])
        raise InvalidSequenceError(chr(raw[pos]), offset + pos + 1, record=record, file=file)
    return ids


def encode(seq: str, record: str | None = None, file: str | None = None) -> np.ndarray:
    """Encode a DNA string to a ``uint8`` id array (see module docstring for the rules)."""
    try:
        raw = seq.encode("ascii")
    except UnicodeEncodeError as err:
        raise InvalidSequenceError(seq[err.start], err.start + 1, record=record, file=file) from None
    return encode_bytes(raw, record=record, file=file)


def decode(ids) -> str:
    """Ids (any integer array or tensor, 1-D) back to a string; PAD prints ``-``, MASK ``?``."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    return ID_TO_CHAR[arr.astype(np.int64)].tobytes().decode("ascii")


def complement(ids):
    """Complement base ids (``b -> 3 - b``); N, PAD and MASK are unchanged. numpy or torch."""
    if isinstance(ids, torch.Tensor):
        return torch.where(ids < NUM_BASES, 3 - ids, ids)
    ids = np.asarray(ids)
    return np.where(ids < NUM_BASES, 3 - ids, ids).astype(ids.dtype)


def reverse_complement(ids, lengths: torch.Tensor | None = None):
    """Reverse complement of an id array.

    For a 1-D array, or an unpadded batch, the last axis is reversed. For a padded
    ``(B, N)`` tensor pass ``lengths`` (B,): each row's first ``lengths[b]`` ids are
    reverse-complemented in place and its padding stays at the end.
    """
    if lengths is None:
        if isinstance(ids, torch.Tensor):
            return complement(ids.flip(-1))
        return complement(np.asarray(ids)[..., ::-1].copy())
    n = ids.shape[-1]
    idx = torch.arange(n, device=ids.device)
    src = lengths[:, None] - 1 - idx[None, :]  # (B, N): mirror index inside the real part
    real = src >= 0
    out = torch.gather(ids, 1, src.clamp_min(0))
    return torch.where(real, complement(out), ids)
