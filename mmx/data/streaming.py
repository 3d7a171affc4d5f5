"""``streaming: true``: read the dataset files lazily, shard them, shuffle in a buffer, and resume exactly.

Records are numbered in file order within an epoch (``k = 0, 1, ...`` over all files). Shard ``s = rank *
num_workers + worker`` of ``world_size * num_workers`` owns the records with ``k % (world_size * num_workers) == s``,
so ranks and workers never see the same record. Each shard keeps a shuffle buffer of ``buffer_size`` raw records
and a seeded ``numpy`` generator (``seed``, shard): a full buffer yields a random record and takes the next one in
its place. The stream is endless (epochs follow each other; the buffer carries over).

Batches: batch ``i`` of a rank is ``batch_size`` consecutive samples of worker ``i % num_workers`` (the order a
DataLoader with workers gives), collated by :class:`mmx.data.collate.Collator`. Workers are logical streams in this
process; preprocessing runs where the batch is built.

State (``state_dict()``, JSON-ready, saved by ``finetune`` with the checkpoint): per worker the file, byte offset
(``.jsonl``; record index for ``.json`` arrays, which are read whole), line, epoch, record counter, the raw records
in the buffer and the generator state; plus the next worker. ``load_state_dict`` seeks to the saved offsets, so a
resumed run yields exactly the batches an uninterrupted run yields next, without re-reading consumed records.
"""
import json

import numpy as np

from mmx.data.dataset import drop_counts
from mmx.data.errors import DROPPED_KINDS, BadSampleLog, DataError
from mmx.data.formats import iter_jsonl_lines, iter_records, parse_jsonl_line, to_sample


class _Files:
    """Positioned reads of the dataset files: (next position, line, raw record text) at a position."""

    def __init__(self, files):
        self.files, self._arrays = list(files), {}

    def read(self, file_index, position, line):
        """The next record at/after ``position`` in file ``file_index``: (next_position, line, raw) or None."""
        path = self.files[file_index]
        if path.endswith(".jsonl"):
            for start, line_number, raw in iter_jsonl_lines(path, position, line):
                return start + len(raw), line_number, raw.decode("utf-8", errors="replace")
            return None
        if path not in self._arrays:   # a JSON array cannot be read lazily; records are kept as text
            self._arrays[path] = [json.dumps(record) for _, _, record in iter_records(path)]
        records = self._arrays[path]
        return (position + 1, None, records[position]) if position < len(records) else None


class _Shard:
    """One worker's stream of raw records (module doc); its state is plain JSON."""

    def __init__(self, files, shard, num_shards, buffer_size, seed, max_samples):
        self.files, self.shard, self.num_shards = files, shard, num_shards
        self.buffer_size, self.max_samples = max(1, buffer_size), max_samples
        self.rng = np.random.Generator(np.random.PCG64([seed, shard]))
        self.state = {"epoch": 0, "file": 0, "position": 0, "line": 0, "record": 0, "in_file": 0, "buffer": []}

    def _next_owned(self):
        """The next raw record of this shard (file, line, record index in file, text), advancing the cursor."""
        state, passes = self.state, 0
        while True:
            if state["file"] >= len(self.files.files):
                state.update(epoch=state["epoch"] + 1, file=0, position=0, line=0, record=0, in_file=0)
                passes += 1
                if passes > 1:
                    raise ValueError("the streaming dataset has no record for this rank/worker shard "
                                     f"({self.shard} of {self.num_shards}); use fewer ranks/workers or more data")
            capped = self.max_samples is not None and state["in_file"] >= self.max_samples
            item = None if capped else self.files.read(state["file"], state["position"], state["line"])
            if item is None:
                state.update(file=state["file"] + 1, position=0, line=0, in_file=0)
                continue
            state["position"], line, raw = item
            state["line"] = line or 0
            record, index = state["record"], state["in_file"]
            state["record"] += 1
            state["in_file"] += 1
            if record % self.num_shards == self.shard:
                return [state["file"], line, index, raw]

    def next_record(self):
        buffer = self.state["buffer"]
        while len(buffer) < self.buffer_size:
            buffer.append(self._next_owned())
        pick = int(self.rng.integers(len(buffer)))
        chosen = buffer[pick]
        buffer[pick] = self._next_owned()
        return chosen

    def state_dict(self):
        return {"cursor": json.loads(json.dumps(self.state)), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, saved):
        self.state = json.loads(json.dumps(saved["cursor"]))
        self.rng.bit_generator.state = saved["rng"]


class StreamingLoader:
    """Endless batches of a streaming dataset for one rank (module doc): ``next_batch()``, ``state_dict()``,
    ``load_state_dict()``; ``bad`` and ``dropped`` are the :class:`BadSampleLog` tallies so far."""

    def __init__(self, config, preprocessor, collator, batch_size, rank=0, world_size=1, num_workers=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size {world_size})")
        self.config, self.preprocessor, self.collator, self.batch_size = config, preprocessor, collator, batch_size
        self.num_workers = max(1, num_workers if num_workers is not None else config.preprocessing_num_workers)
        files = _Files(config.dataset)
        num_shards = world_size * self.num_workers
        self.shards = [_Shard(files, rank * self.num_workers + w, num_shards, config.buffer_size, config.seed,
                              config.max_samples) for w in range(self.num_workers)]
        self.next_worker = 0
        self.bad, self.dropped = BadSampleLog(config.skip_bad_samples), BadSampleLog(skip=True)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def next_batch(self):
        shard = self.shards[self.next_worker]
        samples = []
        while len(samples) < self.batch_size:
            file_index, line, index, raw = shard.next_record()
            encoded = self._encode(self.config.dataset[file_index], line, index, raw)
            if encoded is not None:
                samples.append(encoded)
        self.next_worker = (self.next_worker + 1) % self.num_workers
        return self.collator(samples)

    def _encode(self, file, line, index, raw):
        try:
            record = parse_jsonl_line(file, line, raw) if line is not None else json.loads(raw)
            sample = to_sample(record, file, index, line, self.config.attr, self.config.dataset_dir)
            return self.preprocessor.encode(sample)
        except DataError as err:
            (self.dropped if err.kind in DROPPED_KINDS else self.bad).report(err)
            return None

    def drop_counts(self):
        """{kind: count} of the samples this loader dropped so far (bad ones skipped, cut or unsupervised ones)."""
        return drop_counts(self.bad, self.dropped)

    def state_dict(self):
        return {"next_worker": self.next_worker, "shards": [s.state_dict() for s in self.shards],
                "num_workers": self.num_workers, "files": list(self.config.dataset)}

    def load_state_dict(self, state):
        if state["num_workers"] != self.num_workers or len(state["shards"]) != len(self.shards):
            raise ValueError(f"the saved data state has {state['num_workers']} workers but this run has "
                             f"{self.num_workers}; resume with the same preprocessing_num_workers")
        if state["files"] != list(self.config.dataset):
            raise ValueError(f"the saved data state was for dataset files {state['files']} but this run reads "
                             f"{list(self.config.dataset)}; resume with the same dataset list")
        self.next_worker = state["next_worker"]
        for shard, saved in zip(self.shards, state["shards"]):
            shard.load_state_dict(saved)
