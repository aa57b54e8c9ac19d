"""Length buckets: the handful of sequence lengths that batches are cut to, chosen from a split's histogram.

Each distinct batch length is one more compiled graph (seconds to build, memory to hold), so a run uses a
few lengths, not one per batch: the boundaries that compute the fewest positions when every example is
padded up to the first boundary at or above its real length. Boundaries are multiples of `MULTIPLE` (what
matrix kernels like) and the last one covers the split's longest example (its length rounded up, at most
`max_seq_length`): the histogram counts every example of its split, so every example has a bucket, and no
graph is compiled for lengths no example has.
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from distil.errors import UsageError

MULTIPLE = 8
MAX_BUCKETS = 4
CHUNK_BATCHES = 32  # batches read, then regrouped by length together (as group_by_length's mega-batches)
MODES = ("auto", "off")  # --length_buckets: cut batches to their lengths, or compute max_seq_length always


def check_mode(mode: str) -> bool:
    """Whether --length_buckets `mode` cuts batches (a usage error names the valid modes)."""
    if mode not in MODES:
        raise UsageError(f"--length_buckets must be one of {', '.join(MODES)}, got '{mode}'")
    return mode == "auto"

Histogram = Sequence[Tuple[int, int]]  # (real length, examples), as meta.json's lengths.histogram


def choose_boundaries(histogram: Histogram, seq_length: int, max_buckets: int = MAX_BUCKETS,
                      multiple: int = MULTIPLE) -> List[int]:
    """At most `max_buckets` increasing lengths, the last one the longest example's rounded up to a multiple
    of `multiple` (at most `seq_length`; `seq_length` for an empty histogram), that minimise the positions
    computed (dynamic programming over the candidate lengths: the multiples of `multiple` below the last)."""
    if max_buckets < 1:
        raise UsageError(f"length buckets: at least one bucket is needed, got {max_buckets}")
    longest = max((length for length, count in histogram if count), default=0)
    if longest > seq_length:
        raise UsageError(f"length buckets: an example of {longest} tokens is longer than the data's "
                         f"max_seq_length {seq_length}")
    last = min(seq_length, -(-longest // multiple) * multiple) if longest else seq_length
    candidates = [n for n in range(multiple, last, multiple)] + [last]
    counts = _counts_up_to(histogram, candidates)
    # best[j]: (positions, buckets) for the examples up to candidates[j], the last bucket ending there;
    # each round allows one bucket more, and a tie keeps the option without it (listed first)
    best = {j: (counts[j] * length, [length]) for j, length in enumerate(candidates)}
    for _ in range(max_buckets - 1):
        best = {j: min([best[j]] + [(best[i][0] + (counts[j] - counts[i]) * length, best[i][1] + [length])
                                    for i in range(j)], key=lambda option: option[0])
                for j, length in enumerate(candidates)}
    return best[len(candidates) - 1][1]


def _counts_up_to(histogram: Histogram, candidates: Sequence[int]) -> List[int]:
    """Examples whose real length is at most each candidate length."""
    ordered = sorted(histogram)
    lengths = [length for length, _ in ordered]
    totals = [0]
    for _, count in ordered:
        totals.append(totals[-1] + count)
    return [totals[bisect.bisect_right(lengths, c)] for c in candidates]


def bucket_of(boundaries: Sequence[int], length: int) -> int:
    """Index of the first boundary at or above `length`."""
    index = bisect.bisect_left(boundaries, length)
    if index == len(boundaries):
        raise UsageError(f"an example of {length} tokens is longer than the longest bucket ({boundaries[-1]})")
    return index


def padded_positions(histogram: Histogram, boundaries: Sequence[int]) -> int:
    """Positions computed when every example is padded to its bucket's length."""
    return sum(count * boundaries[bucket_of(boundaries, length)] for length, count in histogram if count)


def describe(histogram: Histogram, boundaries: Sequence[int]) -> Dict[str, object]:
    """What a log line and a results file say about buckets: their lengths, examples, and the padding left."""
    examples = [0] * len(boundaries)
    real = 0
    for length, count in histogram:
        examples[bucket_of(boundaries, length)] += count
        real += length * count
    computed = padded_positions(histogram, boundaries)
    return {"lengths": list(boundaries), "examples": examples,
            "padding_share": round(1 - real / computed, 4) if computed else 0.0}


def boundaries_for(meta: Dict, seq_length: int) -> Optional[List[int]]:
    """The bucket lengths of a split (its meta.json's histogram) whose sequences hold `seq_length` positions,
    or None when meta.json has no histogram of them (converted before histograms were recorded)."""
    lengths = meta.get("lengths") if meta.get("seq_length") == seq_length else None
    return choose_boundaries(lengths["histogram"], seq_length) if lengths else None


def groups_by_length(lengths: np.ndarray, size: int) -> List[np.ndarray]:
    """Row indices sorted by length (ties in reading order) and cut every `size` rows: batches of similar
    length."""
    order = np.argsort(lengths, kind="stable")
    return [order[start:start + size] for start in range(0, len(order), size)]


def width_of(lengths: np.ndarray, boundaries: Optional[Sequence[int]]) -> int:
    """The length a batch of rows with these real lengths is cut to: its bucket's, or (no boundaries) its
    longest member's (at least 1)."""
    longest = max(1, int(lengths.max()))
    return boundaries[bucket_of(boundaries, longest)] if boundaries else longest


def cut(rows: Dict[str, np.ndarray], index: np.ndarray, width: int, sequences: Sequence[str]) -> Dict[str, np.ndarray]:
    """Rows `index` of every feature, the `sequences` among them cut to their first `width` positions."""
    return {name: value[index, :width] if name in sequences else value[index] for name, value in rows.items()}
