import random

import pytest

from tunesmith.data.packing import pack_documents


def test_best_fit_decreasing_puts_each_document_in_the_fullest_bin_it_fits():
    # 5 -> new bin (room 3); 4 -> new bin (room 4); 3 -> the bin with room 3; 3 -> room 4; 1 -> room 1
    assert pack_documents([5, 4, 3, 3, 1], max_length=8) == [[0, 2], [1, 3, 4]]


def test_packing_places_every_document_once_within_max_length():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_documents(lengths, max_length=128)
    placed = sorted(d for b in bins for d in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[d] for d in b) <= 128 for b in bins)
    # close to the lower bound on the number of bins
    assert len(bins) <= sum(lengths) / 128 * 1.1 + 1


def test_packing_refuses_documents_longer_than_max_length():
    with pytest.raises(ValueError):
        pack_documents([10, 3], max_length=8)


def test_shuffle_before_pack_spreads_copies_of_a_record_over_rows():
    # 4 copies of one 100-token record and 40 short records: longest first puts the 4 copies
    # in one row, so a run that stops early sees all of them or none
    lengths = [100] * 4 + [30] * 40
    copies = {0, 1, 2, 3}
    by_length = pack_documents(lengths, max_length=512)
    assert any(copies <= set(b) for b in by_length)
    shuffled = pack_documents(lengths, max_length=512, shuffle_seed=0)
    assert sum(1 for b in shuffled if copies & set(b)) >= 3
    assert sorted(d for b in shuffled for d in b) == list(range(len(lengths)))
    assert all(sum(lengths[d] for d in b) <= 512 for b in shuffled)
    assert len(shuffled) <= len(by_length) + 1
    assert shuffled == pack_documents(lengths, max_length=512, shuffle_seed=0)
