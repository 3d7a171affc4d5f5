"""Dataset mixing ratios (``data.mix_ratios``): how much of each dataset file one epoch draws.

With ratios ``r_1 .. r_k`` for the k files of ``data.dataset`` and N training samples in all, an epoch holds
``round(r_i / sum(r) * N)`` samples of file i: fewer than the file has are drawn without replacement, more repeat
the file whole and draw the rest (LLaMA-Factory's interleave with probabilities, as a fixed epoch). The draw is
seeded (``data.seed + i``), so a resumed run sees the same epoch. The eval split (``data.val_size``) is held out
before mixing, so no eval sample is ever trained on.
"""
import numpy as np


def part_of(dataset, index):
    """The dataset file (part) number of sample ``index`` of an EncodedDataset."""
    return int(np.searchsorted(dataset.ends, index, side="right"))


def mix_indices(dataset, indices, ratios, seed):
    """``indices`` (of ``dataset``'s samples) resampled so file i makes up ``ratios[i] / sum(ratios)`` of them."""
    by_part = [[] for _ in ratios]
    for index in indices:
        by_part[part_of(dataset, index)].append(index)
    total, weight = len(indices), float(sum(ratios))
    mixed = []
    for part, (ratio, members) in enumerate(zip(ratios, by_part)):
        count = int(round(ratio / weight * total))
        if not members:
            if count:
                raise ValueError(f"data.mix_ratios: dataset file {part + 1} has no training sample to draw {count} "
                                 f"from")
            continue
        rng = np.random.RandomState(seed + part)
        whole, rest = divmod(count, len(members))
        mixed += members * whole + [members[i] for i in sorted(rng.permutation(len(members))[:rest])]
    return mixed
