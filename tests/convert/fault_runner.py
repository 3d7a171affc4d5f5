"""Kill a checkpoint writer (SIGKILL) just before each file-system step of its publish, then check what readers see.

``python fault_runner.py SPEC.json OUT.json`` (SPEC.json: one spec or a list). A spec: ``writer`` (a name in WRITERS) and its ``args``, ``target``
(the directory it publishes), ``old`` (a pristine copy of the target before the write, or null: no target),
``reader`` (a name in READERS), ``modes`` ("exchange": renameat2 swaps; "rename": the two-rename fallback) and
``states`` (a folder that gets one copy of every distinct directory a reader was shown, for transformers).

Per mode: one clean run counts the steps N (mmx.checkpoint.publish.step) and gives the "new" state; then for
n = 1 .. N a forked child runs the writer with ``MMX_FAULT_AT=n`` (the parent has imported only numpy and mmx's
checkpoint code: no framework threads to inherit), the target having been reset to the old copy; the parent runs the
reader (which recovers first, as every mmx start does) and classifies what it loaded: "old", "new" or "error: ...",
by a digest of every tensor byte (and config.json). OUT: {mode: {old_tree, new_tree, rows: [{n, kind, killed, state,
leftovers, tree}]}}; ``tree`` digests every file name and byte under the target (what any other reader, e.g.
transformers, would read).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from mmx.checkpoint import publish


def _digest(arrays, extra=b""):
    hasher = hashlib.sha256(extra)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode() + array.tobytes())
    return hasher.hexdigest()


def _file(path):
    return open(path, "rb").read() if os.path.exists(path) else b""


def read_mm(target):
    from mmx.checkpoint.store import load_mm
    metadata, tensors = load_mm(target)
    config = json.loads(_file(os.path.join(target, "config.json")) or b"{}")
    if config and config.get("model_type") != metadata["model_type"]:
        raise ValueError(f"config.json says {config.get('model_type')}, the weights {metadata['model_type']}")
    return _digest(tensors, _file(os.path.join(target, "config.json")))


def read_hf(target):
    from mmx.convert.drivers import read_hf_as_mm
    _, tensors = read_hf_as_mm(target)
    return _digest(tensors, _file(os.path.join(target, "config.json")))


def read_train(target):
    from mmx.train.checkpoint import load_checkpoint
    loaded = load_checkpoint(target)
    arrays = dict(loaded["model"])
    for kind in ("exp_avg", "exp_avg_sq"):
        arrays.update({f"{kind}/{k}": v for k, v in ((loaded["optimizer"] or {}).get(kind) or {}).items()})
    arrays.update({f"rng/{k}": v for k, v in (loaded["rng"] or {}).items()})
    state = json.dumps([loaded["iteration"], loaded["trainer_state"]], sort_keys=True).encode()
    return _digest(arrays, state)


def read_native(target):
    """What ``mmx convert import`` would read: the iteration the pointer names (after recovery), its metadata and
    every rank's native file, as bytes (deserialising them here would start a framework in the forking parent)."""
    from mmx.checkpoint.layout import Layout
    from mmx.checkpoint.store import META_FILE, resolve_iteration
    source = resolve_iteration(target)
    metadata = json.loads(_file(source / META_FILE))
    arrays = {}
    for rank in Layout.from_dict(metadata["parallel"]).ranks():
        folder = source / Layout.from_dict(metadata["parallel"]).rank_dir(*rank)
        (native,) = [name for name in os.listdir(folder) if name.startswith("model_optim_rng")]
        arrays[f"{folder.name}/{native}"] = np.frombuffer(_file(folder / native), np.uint8)
    return _digest(arrays, _file(source / META_FILE) + _file(os.path.join(target, "config.json")))


READERS = {"mm": read_mm, "hf": read_hf, "train": read_train, "native": read_native}


def write_train(save, payload, iteration):
    from mmx.train.checkpoint import load_checkpoint, save_checkpoint
    loaded = load_checkpoint(payload, iteration)
    save_checkpoint(save, iteration, loaded["model"], loaded["metadata"], loaded["trainer_state"],
                    loaded["optimizer"], loaded["rng"])


def _writer(name):
    if name == "train_save":
        return write_train
    if name in ("export_native", "import_native"):
        from mmx.convert import native
        return getattr(native, name)
    if name == "save_mm":
        def write(mm_dir, source, iteration):
            from mmx.checkpoint import Layout, load_mm, save_mm
            metadata, tensors = load_mm(source)
            return save_mm(mm_dir, iteration, tensors, metadata, Layout.from_dict(metadata["parallel"]))
        return write
    from mmx.convert import drivers
    return getattr(drivers, name)


def tree(target):
    """Relative file names and sha256 of everything under ``target`` (None when missing): what any reader sees."""
    if not os.path.exists(target):
        return None
    listing = []
    for folder, _, files in os.walk(target):
        for name in files:
            path = os.path.join(folder, name)
            listing.append([os.path.relpath(path, target), hashlib.sha256(_file(path)).hexdigest()])
    return hashlib.sha256(json.dumps(sorted(listing)).encode()).hexdigest()


def leftovers(target):
    parent, name = os.path.dirname(target), os.path.basename(target)
    found = [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]
    if os.path.isdir(target):
        for folder, dirs, files in os.walk(target):
            found += [os.path.relpath(os.path.join(folder, e), target) for e in dirs + files if e.startswith(".")]
    return sorted(found)


def reset(target, old):
    for entry in os.listdir(os.path.dirname(target)):
        if entry.startswith(f".{os.path.basename(target)}."):
            shutil.rmtree(os.path.join(os.path.dirname(target), entry), ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    if old:
        shutil.copytree(old, target, symlinks=True)


def run_child(writer, args, fault_at, count_file, trace=None):
    """Fork, run the writer with the fault armed in the child; (killed by SIGKILL, steps the child counted)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            publish._steps = 0
            os.environ[publish.FAULT_ENV] = str(fault_at)
            if trace:
                os.environ[publish.TRACE_ENV] = trace
            writer(**args)
            with open(count_file, "w") as handle:
                handle.write(str(publish._steps))
        except BaseException as err:  # noqa: BLE001 - reported to the parent through the exit code
            sys.stderr.write(f"writer failed: {type(err).__name__}: {err}\n")
            code = 3
        os._exit(code)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"writer hung at fault step {fault_at}")
        time.sleep(0.005)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status):
        raise RuntimeError(f"writer exited {os.WEXITSTATUS(status)} at fault step {fault_at}")
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    steps = int(open(count_file).read()) if os.path.exists(count_file) else None
    if os.path.exists(count_file):
        os.remove(count_file)
    return killed, steps


def classify(reader, target, old_digest, new_digest):
    try:
        publish.recover(target)   # what the next mmx start does (the readers recover too)
        digest = reader(target) if os.path.exists(target) else None
    except Exception as err:  # noqa: BLE001 - any failure to load is an outcome to report
        return f"error: {type(err).__name__}: {err}"
    return {old_digest: "old", new_digest: "new"}.get(digest, f"error: loaded neither ({digest})")


def main(spec_path, out_path):
    """SPEC.json holds one spec or a list of them (run in order in this one process); OUT.json the same shape."""
    specs = json.load(open(spec_path))
    results = [run_spec(spec) for spec in (specs if isinstance(specs, list) else [specs])]
    json.dump(results if isinstance(specs, list) else results[0], open(out_path, "w"), indent=1)


def run_spec(spec):
    writer, reader = _writer(spec["writer"]), READERS[spec["reader"]]
    target, old = spec["target"], spec.get("old")
    os.makedirs(spec["states"], exist_ok=True)
    if spec.get("preload"):   # a backend's native io, imported before any fork (the children only call it)
        __import__(spec["preload"])
    reset(target, old)
    old_digest = reader(target) if old else None
    results, kept = {}, set()
    for mode in spec["modes"]:
        os.environ[publish.EXCHANGE_ENV] = "1" if mode == "exchange" else "0"
        trace = os.path.join(spec["states"], f"trace-{mode}.txt")
        count = os.path.join(spec["states"], "count.txt")
        reset(target, old)
        old_tree = tree(target)
        killed, total = run_child(writer, spec["args"], 0, count, trace)
        assert not killed and total, (killed, total)
        new_digest, new_tree = reader(target), tree(target)
        shutil.copytree(target, os.path.join(spec["states"], f"{mode}-new"))
        kinds = [line.split()[1] for line in open(trace)]
        os.remove(trace)
        rows = []
        for n in range(1, total + 1):
            reset(target, old)
            killed, _ = run_child(writer, spec["args"], n, count)
            state = classify(reader, target, old_digest, new_digest)
            fingerprint = tree(target)
            if fingerprint not in kept:
                kept.add(fingerprint)
                if fingerprint is not None:
                    shutil.copytree(target, os.path.join(spec["states"], f"{mode}-{n}-{state.split(':')[0]}"))
            rows.append({"n": n, "kind": kinds[n - 1], "killed": killed, "state": state,
                         "leftovers": leftovers(target), "tree": fingerprint})
        results[mode] = {"old_tree": old_tree, "new_tree": new_tree, "rows": rows}
    reset(target, old)
    return results


# -- the test side: run this file on specs, check its results ---------------------------------------------------------

def fault_spec(states, writer, args, target, old, reader, preload=None, modes=("exchange", "rename")):
    return {"writer": writer, "args": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in args.items()},
            "target": str(target), "old": str(old) if old else None, "reader": reader, "modes": list(modes),
            "states": str(states), "preload": preload}


def run_faults(tmp_path, *args, **kwargs):
    """fault_runner.py on one spec (fault_spec's arguments) or, given ``specs=[...]``, several in one process."""
    spec = kwargs.pop("specs", None) or fault_spec(tmp_path / "states", *args, **kwargs)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path / "spec.json"),
                          str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def assert_old_or_new(results, needs=("write", "fsync", "remove"), whole=True):
    """Every kill left exactly the old or exactly the new checkpoint and no leftover. ``whole`` (a publish of the
    whole directory): byte for byte the old or the new directory, whoever reads it. Otherwise (an iteration added to
    a directory) the reader's digest decides: a complete iteration the pointer does not name yet may stay."""
    for mode, result in results.items():
        rows = result["rows"]
        assert rows and all(row["killed"] for row in rows), mode
        assert {row["state"] for row in rows} == {"old", "new"}, [(r["n"], r["kind"], r["state"]) for r in rows]
        assert all(row["leftovers"] == [] for row in rows), [(r["n"], r["leftovers"]) for r in rows if r["leftovers"]]
        trees = {row["tree"]: row["state"] for row in rows}
        assert not whole or trees == {result["old_tree"]: "old", result["new_tree"]: "new"}, trees
        kinds = {row["kind"] for row in rows}
        assert set(needs) <= kinds and kinds & {"exchange", "rename"}, kinds
    return {mode: len(result["rows"]) for mode, result in results.items()}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
