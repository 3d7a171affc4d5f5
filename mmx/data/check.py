"""``mmx data check``: validate a whole dataset up front (every record parsed, every image/video decoded, every
sample encoded with the model dir's processor) and count what is there.

The report: per dataset file the samples, images, videos, text-only samples, bad samples (each with its message),
dropped samples (cut through an image by ``cutoff_len``, or no supervised token) and token-length stats; the last
line is one JSON object with the totals, for scripts.
"""
from mmx.data.dataset import encode_samples, length_stats, sample_counts
from mmx.data.errors import BadSampleLog
from mmx.data.formats import foreign_image_tags, load_samples
from mmx.data.processing import Preprocessor


def check_dataset(config, preprocessor=None, echo=print):
    """Validate ``config``'s datasets (module doc); returns the JSON summary dict."""
    preprocessor = preprocessor or Preprocessor(config)
    totals = {"samples": 0, "images": 0, "videos": 0, "text_only": 0}
    all_bad, all_dropped, lengths, files = BadSampleLog(True, keep=1000), BadSampleLog(True, keep=1000), [], []
    foreign = 0
    for file in config.dataset:
        bad, dropped = BadSampleLog(True, keep=1000), BadSampleLog(True, keep=1000)
        samples = load_samples(file, bad, config.attr, config.dataset_dir, config.max_samples)
        encoded = encode_samples(preprocessor, samples, bad, dropped, config.preprocessing_num_workers)
        counts = sample_counts(samples)
        counts["samples"] += bad.total - _late_bad(bad, samples, encoded, dropped)
        file_lengths = [len(e["input_ids"]) for e in encoded]
        echo(f"{file}: {counts['samples']} samples ({counts['images']} images, {counts['videos']} videos, "
             f"{counts['text_only']} text-only), {bad.total} bad, {dropped.total} dropped, "
             f"tokens {length_stats(file_lengths)}")
        for message in bad.messages + dropped.messages:
            echo(f"  {message}")
        for sample in samples:   # text that looks like another format's image tags trains as plain text
            found = foreign_image_tags(sample)
            if found:
                foreign += 1
                echo(f"  {file} sample {sample['id']!r}: its text holds {found[0]} ({len(sample['images'])} images "
                     f"placed by <image>); {found[1]}")
        for key in totals:
            totals[key] += counts[key]
        all_bad.merge(bad)
        all_dropped.merge(dropped)
        lengths += file_lengths
        files.append({"file": file, **counts, "bad": bad.total, "dropped": dropped.total})
    summary = dict(totals, bad=all_bad.total, bad_by_kind=dict(all_bad.counts), dropped=all_dropped.total,
                   dropped_by_kind=dict(all_dropped.counts), usable=len(lengths), tokens=length_stats(lengths),
                   cutoff_len=config.cutoff_len, files=files, foreign_image_tags=foreign)
    return summary


def _late_bad(bad, samples, encoded, dropped):
    """Bad samples found while encoding (media errors): they were parsed, so they are already in ``samples``."""
    return len(samples) - len(encoded) - dropped.total
