"""Bad input: one error type that names the dataset file, the sample and the problem, and a tally of skipped samples.

With ``skip_bad_samples: false`` (the default) the first bad sample raises :class:`DataError`. With ``true`` the
sample is dropped and :class:`BadSampleLog` counts it by kind, keeping the first few messages for the summary.
"""
from collections import Counter

# Kinds of problems, the keys of the summary counts.
MALFORMED_JSON = "malformed_json"
BAD_RECORD = "bad_record"              # not an object, no conversation, unknown role, empty message ...
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
MISSING_MEDIA = "missing_media"
CORRUPT_MEDIA = "corrupt_media"
CUT_THROUGH_IMAGE = "cut_through_image"  # cutoff_len would cut an image's / video's tokens: dropped, never cut
NO_LABELS = "no_supervised_tokens"       # nothing left to learn after masking / truncation
DROPPED_KINDS = (CUT_THROUGH_IMAGE, NO_LABELS)   # always dropped and counted, whatever skip_bad_samples says


class DataError(ValueError):
    """A bad sample or dataset file. ``str(err)`` reads ``<file>[:line] sample <id>: <problem>``."""

    def __init__(self, kind, file, sample_id, problem, line=None):
        self.kind, self.file, self.sample_id, self.problem, self.line = kind, file, sample_id, problem, line
        where = f"{file}:{line}" if line is not None else f"{file}"
        who = f" sample {sample_id!r}" if sample_id is not None else ""
        super().__init__(f"{where}{who}: {problem}")

    def __reduce__(self):   # picklable across preprocessing worker processes
        return DataError, (self.kind, self.file, self.sample_id, self.problem, self.line)


class BadSampleLog:
    """Counts of skipped samples by kind, with the first ``keep`` messages, for ``skip_bad_samples: true``."""

    def __init__(self, skip, keep=20):
        self.skip, self.keep = skip, keep
        self.counts = Counter()
        self.messages = []

    def report(self, error):
        """Raise ``error`` unless skipping; otherwise count it."""
        if not self.skip:
            raise error
        self.counts[error.kind] += 1
        if len(self.messages) < self.keep:
            self.messages.append(str(error))

    def merge(self, other):
        self.counts.update(other.counts)
        self.messages.extend(other.messages[:max(0, self.keep - len(self.messages))])

    @property
    def total(self):
        return sum(self.counts.values())

    def summary(self):
        """``{"bad": n, "by_kind": {...}, "examples": [...]}`` (JSON-ready)."""
        return {"bad": self.total, "by_kind": dict(sorted(self.counts.items())), "examples": list(self.messages)}
