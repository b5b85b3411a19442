import numpy as np
import pytest
import torch

from mergedna.vocab import (MASK, PAD, InvalidSequenceError, complement, decode, encode, reverse_complement)


def test_encode_rules():
    assert encode("ACGTN").tolist() == [0, 1, 2, 3, 4]
    assert encode("acgtn").tolist() == [0, 1, 2, 3, 4]  # soft-masked repeats
    assert encode("RYKMSWBDHVryk").tolist() == [4] * 13  # IUPAC -> N
    assert encode("UuT").tolist() == [3, 3, 3]
    assert encode("").tolist() == []


def test_complement_of_b_is_3_minus_b():
    ids = encode("ACGT")
    assert complement(ids).tolist() == [3, 2, 1, 0]
    assert decode(reverse_complement(encode("AACGTN"))) == "NACGTT"


@pytest.mark.parametrize("seq,pos,char", [("ACGTX", 5, "X"), ("AC GT", 3, " "), ("A-C", 2, "-"), ("ACGé", 4, "é")])
def test_bad_character_names_record_and_position(seq, pos, char):
    with pytest.raises(InvalidSequenceError) as err:
        encode(seq, record="chr7", file="reads.fa")
    assert err.value.position == pos and err.value.char == char
    msg = str(err.value)
    assert f"position {pos}" in msg and "chr7" in msg and "reads.fa" in msg


def test_reverse_complement_is_an_involution(chr20):
    assert np.array_equal(reverse_complement(reverse_complement(chr20)), chr20)
    t = torch.from_numpy(chr20[:100].astype(np.int64))
    assert torch.equal(reverse_complement(reverse_complement(t)), t)


def test_batched_reverse_complement_keeps_padding_at_the_end(chr20):
    ids = torch.full((2, 10), PAD)
    ids[0, :10] = torch.from_numpy(chr20[:10].astype(np.int64))
    ids[1, :6] = torch.from_numpy(chr20[:6].astype(np.int64))
    ids[1, 2] = MASK
    rc = reverse_complement(ids, lengths=torch.tensor([10, 6]))
    assert torch.equal(rc[0], reverse_complement(ids[0]))
    assert torch.equal(rc[1, :6], reverse_complement(ids[1, :6]))
    assert (rc[1, 6:] == PAD).all()
    assert torch.equal(reverse_complement(rc, lengths=torch.tensor([10, 6])), ids)
