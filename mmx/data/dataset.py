"""The map-style dataset: every dataset file read, checked, encoded (or taken from the cache) up front.

``build_dataset(config)`` returns an :class:`EncodedDataset` (``len``, ``[i]`` → encoded sample dict, ``.stats``)
that the trainer samples and batches with :class:`mmx.data.collate.Collator`. Bad samples raise (or, with
``skip_bad_samples``, are counted in ``stats["bad"]``); samples cut through an image or left without labels are
always dropped and counted in ``stats["dropped"]``. :func:`drop_counts` merges both tallies by kind and
:func:`describe_drops` names each kind with the setting that dropped it (the trainer's start-up summary, its
metrics and the "dataset is empty" error use them).
"""
import multiprocessing
import os

import numpy as np

from mmx.data import cache
from mmx.data import errors
from mmx.data.errors import DROPPED_KINDS, BadSampleLog, DataError
from mmx.data.formats import load_samples
from mmx.data.processing import Preprocessor


def encode_samples(preprocessor, samples, bad_log, dropped_log, num_workers=1):
    """Encoded samples in input order; failures go to ``bad_log`` (raise unless skipping) or ``dropped_log``."""
    if num_workers > 1 and len(samples) > 1:
        # spawn, not fork: a fork after torch / FFmpeg / tokenizers threads ran in this process can deadlock (a
        # forked pool hung here on a set with images and an mp4). Each worker loads the processor once.
        context = multiprocessing.get_context("spawn")
        with context.Pool(num_workers, initializer=_init_worker, initargs=(preprocessor.config,)) as pool:
            results = pool.map(_encode_in_worker, samples, chunksize=max(1, len(samples) // (4 * num_workers)))
    else:
        results = [_try_encode(preprocessor, sample) for sample in samples]
    encoded = []
    for result in results:
        if isinstance(result, DataError):
            (dropped_log if result.kind in DROPPED_KINDS else bad_log).report(result)
        else:
            encoded.append(result)
    return encoded


def _try_encode(preprocessor, sample):
    try:
        return preprocessor.encode(sample)
    except DataError as err:
        return err


_worker_preprocessor = None


def _init_worker(config):
    global _worker_preprocessor
    _worker_preprocessor = Preprocessor(config)


def _encode_in_worker(sample):
    return _try_encode(_worker_preprocessor, sample)


# Every kind of dropped sample, in the order summaries list them (streaming counts travel as a vector in it).
DROP_KINDS = (errors.MALFORMED_JSON, errors.BAD_RECORD, errors.PLACEHOLDER_MISMATCH, errors.MISSING_MEDIA,
              errors.CORRUPT_MEDIA, errors.CUT_THROUGH_IMAGE, errors.NO_LABELS)


def drop_counts(*summaries):
    """{kind: count} (DROP_KINDS order, nonzero only) over BadSampleLog summaries (``stats["bad"]``,
    ``stats["dropped"]``) or logs."""
    total = {}
    for summary in summaries:
        by_kind = summary.counts if isinstance(summary, BadSampleLog) else summary["by_kind"]
        for kind, count in by_kind.items():
            total[kind] = total.get(kind, 0) + int(count)
    order = {kind: i for i, kind in enumerate(DROP_KINDS)}
    return {kind: total[kind] for kind in sorted(total, key=lambda k: order.get(k, len(order))) if total[kind]}


def describe_drops(counts, cutoff_len=None):
    """'3 missing_media (skip_bad_samples), 2 cut_through_image (cutoff_len 64)' for drop_counts' ``counts``."""
    def why(kind):
        if kind == errors.CUT_THROUGH_IMAGE:
            return f"cutoff_len {cutoff_len}" if cutoff_len else "cutoff_len"
        if kind == errors.NO_LABELS:
            return f"nothing supervised within cutoff_len {cutoff_len}" if cutoff_len else "nothing supervised"
        return "skip_bad_samples"
    return ", ".join(f"{count} {kind} ({why(kind)})" for kind, count in counts.items())


def summary_line(stats):
    """The start-up line of a map-style dataset: samples kept, and every dropped one counted with its reason."""
    counts = drop_counts(stats["bad"], stats["dropped"])
    dropped = sum(counts.values())
    line = (f"data: {stats['encoded']} of {stats['encoded'] + dropped} samples kept from {len(stats['files'])} "
            f"file{'s' if len(stats['files']) != 1 else ''}")
    if dropped:
        line += f"; {dropped} dropped: {describe_drops(counts, stats.get('cutoff_len'))}"
    return line


def empty_reason(stats):
    """Why a map-style dataset has no sample, for the trainer's error."""
    counts = drop_counts(stats["bad"], stats["dropped"])
    if not counts:
        return f"{', '.join(stats['files']) or 'no dataset file'} holds no sample"
    examples = (stats["bad"]["examples"] + stats["dropped"]["examples"])[:1]
    return (f"all {sum(counts.values())} samples of {', '.join(stats['files'])} were dropped: "
            f"{describe_drops(counts, stats.get('cutoff_len'))}" + (f"; first: {examples[0]}" if examples else ""))


def sample_counts(samples):
    """Counts of the raw samples: images, videos, text-only."""
    return {"samples": len(samples), "images": sum(len(s["images"]) for s in samples),
            "videos": sum(len(s["videos"]) for s in samples),
            "text_only": sum(1 for s in samples if not s["images"] and not s["videos"])}


def length_stats(lengths):
    if not len(lengths):
        return {"min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    lengths = np.asarray(lengths)
    return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2), "p50": int(np.percentile(lengths, 50)),
            "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}


class EncodedDataset:
    """Encoded samples of several dataset files, indexed as one list."""

    def __init__(self, parts, stats):
        self.parts, self.stats = parts, stats
        self.ends = np.cumsum([len(p) for p in parts]) if parts else np.zeros(0, np.int64)

    def __len__(self):
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        part = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[part - 1]) if part else 0
        return self.parts[part][index - start]


def build_dataset(config, preprocessor=None):
    """An :class:`EncodedDataset` of every file in ``config.dataset`` (cached in ``config.cache_dir`` if set)."""
    preprocessor = preprocessor or Preprocessor(config)
    fingerprint = preprocessor.fingerprint()
    bad_log, dropped_log = BadSampleLog(config.skip_bad_samples), BadSampleLog(skip=True)
    parts, counts, cache_hits = [], [], 0
    for file in config.dataset:
        key = cache.cache_key(file, fingerprint) if config.cache_dir and os.path.isfile(file) else None
        if key is None:
            part, file_counts = _encode_file(config, preprocessor, file, bad_log, dropped_log)
        else:
            with cache.locked(config.cache_dir, key):
                entry = None if config.overwrite_cache else cache.load_entry(config.cache_dir, key)
                if entry is None:
                    file_bad, file_dropped = BadSampleLog(config.skip_bad_samples), BadSampleLog(skip=True)
                    encoded, file_counts = _encode_file(config, preprocessor, file, file_bad, file_dropped)
                    cache.write_entry(config.cache_dir, key, encoded, {
                        "file": file, "counts": file_counts, "bad": file_bad.summary(),
                        "dropped": file_dropped.summary()})
                    entry = cache.load_entry(config.cache_dir, key)
                else:
                    cache_hits += 1
            part, file_counts = entry, entry.meta["counts"]
            _restore_log(bad_log, entry.meta["bad"])
            _restore_log(dropped_log, entry.meta["dropped"])
        parts.append(part)
        counts.append(file_counts)
    lengths = [len(part[i]["input_ids"]) for part in parts for i in range(len(part))]
    stats = {key: sum(c[key] for c in counts) for key in ("samples", "images", "videos", "text_only")}
    stats.update(encoded=len(lengths), bad=bad_log.summary(), dropped=dropped_log.summary(),
                 tokens=length_stats(lengths), cache_hits=cache_hits, files=list(config.dataset),
                 cutoff_len=config.cutoff_len)
    return EncodedDataset(parts, stats)


def _encode_file(config, preprocessor, file, bad_log, dropped_log):
    samples = load_samples(file, bad_log, config.attr, config.dataset_dir, config.max_samples)
    encoded = encode_samples(preprocessor, samples, bad_log, dropped_log, config.preprocessing_num_workers)
    return encoded, sample_counts(samples)


def _restore_log(log, summary):
    """Counts of a cache entry back into the run's log (skip_bad_samples is part of the key, so an entry with
    bad samples only exists for runs that skip them)."""
    log.counts.update(summary["by_kind"])
    log.messages.extend(summary["examples"][:max(0, log.keep - len(log.messages))])
