"""Length buckets chosen from a histogram: the fewest computed positions a handful of lengths allow."""

from __future__ import annotations

import itertools
import random

import pytest

from distil.data.buckets import bucket_of, choose_boundaries, describe, padded_positions
from distil.errors import UsageError


def brute_force(histogram, last, max_buckets, multiple):
    """The fewest positions over every set of at most `max_buckets` candidate lengths ending at `last`."""
    candidates = list(range(multiple, last, multiple))
    return min(
        padded_positions(histogram, [*chosen, last])
        for k in range(max_buckets)
        for chosen in itertools.combinations(candidates, k)
    )


@pytest.mark.parametrize("seed", range(12))
def test_the_chosen_lengths_compute_the_fewest_positions(seed):
    rng = random.Random(seed)
    seq_length, multiple, max_buckets = rng.choice([(64, 8, 4), (48, 8, 3), (40, 4, 5), (30, 8, 2)])[0:3]
    lengths = [min(seq_length, max(1, int(rng.lognormvariate(2.5, 0.6)))) for _ in range(rng.randint(1, 300))]
    histogram = sorted((n, lengths.count(n)) for n in set(lengths))
    chosen = choose_boundaries(histogram, seq_length, max_buckets, multiple)
    last = min(seq_length, -(-max(lengths) // multiple) * multiple)  # the longest example's, rounded up
    assert chosen == sorted(set(chosen)) and chosen[-1] == last and len(chosen) <= max_buckets
    assert all(n % multiple == 0 for n in chosen[:-1])
    assert padded_positions(histogram, chosen) == brute_force(histogram, last, max_buckets, multiple)


def test_short_sentences_get_short_buckets_and_the_last_covers_the_longest_example():
    histogram = [(9, 500), (14, 300), (23, 150), (97, 1)]
    assert choose_boundaries(histogram, 128, max_buckets=1) == [104]  # 97 rounded up: no graph at 128
    assert choose_boundaries(histogram, 128, max_buckets=2) == [24, 104]
    assert choose_boundaries(histogram, 128, max_buckets=3) == [16, 24, 104]
    assert choose_boundaries(histogram, 128, max_buckets=4) == [16, 24, 104]  # a fourth length saves nothing
    assert choose_boundaries([(9, 5), (126, 1)], 128, max_buckets=2) == [16, 128]  # never beyond max_seq_length
    summary = describe(histogram, [16, 24, 104])
    assert summary["examples"] == [800, 150, 1]
    real = 9 * 500 + 14 * 300 + 23 * 150 + 97
    assert summary["padding_share"] == round(1 - real / (800 * 16 + 150 * 24 + 104), 4)


def test_no_bucket_is_added_that_holds_no_example():
    assert choose_boundaries([(5, 10), (6, 3)], 128, max_buckets=4) == [8]
    assert choose_boundaries([], 128) == [128]


def test_lengths_beyond_the_data_and_an_empty_choice_are_refused():
    with pytest.raises(UsageError, match="130 tokens is longer than the data's max_seq_length 128"):
        choose_boundaries([(12, 4), (130, 1)], 128)
    with pytest.raises(UsageError, match="at least one bucket"):
        choose_boundaries([(12, 4)], 128, max_buckets=0)
    assert [bucket_of([16, 24, 128], n) for n in (1, 16, 17, 24, 25, 128)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(UsageError, match="longer than the longest bucket"):
        bucket_of([16, 24, 128], 129)
