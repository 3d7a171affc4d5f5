"""One publish discipline for every checkpoint writer: conversions, exports, imports and training saves.

A writer never touches what readers see until its output is complete:

1. everything is written into a fresh hidden sibling of the final path (``.NAME.tmp-PID``), every file and directory
   of it fsynced;
2. one swap makes it visible: a rename when nothing is there yet; over an existing directory, an atomic exchange
   (Linux ``renameat2(RENAME_EXCHANGE)``: the path names the old, then the new directory, never nothing), after
   which the old one (now under the hidden name) is removed. Where the file system has no exchange (or
   ``MMX_PUBLISH_EXCHANGE=0``) the old directory is renamed aside to ``.NAME.old-PID`` first, then the new one is
   renamed in, then the old one removed;
3. an mm directory's ``latest_checkpointed_iteration.txt`` is replaced last (:func:`write_text_atomic`), so it only
   ever names an iteration directory that is complete.

:func:`recover` runs when a writer or an mmx reader starts: a ``.NAME.old-PID`` whose ``NAME`` is missing (a process
killed between the two renames of step 2) is renamed back (the old checkpoint returns); every other leftover of a
dead process (``.NAME.tmp-PID``, a retired ``.NAME.old-PID``, pointer temporaries, the names older mmx versions
used) is removed. Entries of live processes are left alone (process ids are checked on this host only).

Targets: :func:`check_target` refuses a non-empty directory unless ``overwrite`` (converters' ``--overwrite``), naming
the checkpoint it holds; with ``overwrite`` the old directory stays whole until the new one is swapped in.

Fault injection (tests): every file-system step of a publish first calls :func:`step`; with ``MMX_FAULT_AT=n`` the
process SIGKILLs itself just before its n-th step, and ``MMX_FAULT_TRACE=FILE`` appends ``n kind path`` per step.
"""
import ctypes
import errno
import os
import re
import shutil
import signal
from pathlib import Path

FAULT_ENV, TRACE_ENV, EXCHANGE_ENV = "MMX_FAULT_AT", "MMX_FAULT_TRACE", "MMX_PUBLISH_EXCHANGE"
LATEST_FILE = "latest_checkpointed_iteration.txt"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HIDDEN = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")
_LEGACY = (re.compile(r"\.tmp_(?:iter_\d+|release)\.(?P<pid>\d+)"),        # mmx.train.checkpoint before the publisher
           re.compile(r"\.(?:iter_\d+|release)\.import"),                   # convert import before the publisher
           re.compile(re.escape(LATEST_FILE) + r"\.tmp-(?P<pid>\d+)"))      # write_text_atomic before the publisher
_RENAME_EXCHANGE = 2
_steps = 0


class PublishError(ValueError):
    """A target that would lose or mix a checkpoint; the message names the directory, what it holds and the fix."""


def step(kind, path):
    """Count one file-system step of a publish (fault injection and tracing; see the module docstring)."""
    global _steps
    _steps += 1
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{_steps} {kind} {path}\n")
    if os.environ.get(FAULT_ENV) == str(_steps):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path):
    """fsync a directory, so that renames and new entries in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file(path):
    """``path`` (a file about to be written inside a staging directory), its parent directories made."""
    path = Path(path)
    step("write", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path, text):
    """Replace the file ``path`` by ``text`` in one rename (hidden temporary, fsync, rename, fsync of the parent)."""
    path = Path(path)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
    step("write", temporary)
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        step("fsync", temporary)
        os.fsync(handle.fileno())
    _rename(temporary, path)
    step("fsync", path.parent)
    fsync_dir(path.parent)


def copy_file_atomic(source, destination):
    """Copy ``source`` over ``destination`` the way write_text_atomic writes (a reader never sees half a file)."""
    destination = Path(destination)
    temporary = destination.parent / f".{destination.name}.tmp-{os.getpid()}"
    step("write", temporary)
    shutil.copy2(source, temporary)
    step("fsync", temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    _rename(temporary, destination)


def fsync_tree(root):
    """fsync every file, then every directory (deepest first) under ``root``."""
    directories = []
    for folder, _, files in os.walk(root):
        directories.append(folder)
        for name in files:
            path = os.path.join(folder, name)
            step("fsync", path)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in reversed(directories):
        step("fsync", folder)
        fsync_dir(folder)


def remove(path):
    """Remove a file or a directory tree (one publish step)."""
    step("remove", path)
    _remove(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _rename(source, destination):
    step("rename", destination)
    os.replace(source, destination)


def _exchange(first, second):
    """Atomically swap two existing paths; False where the system has no RENAME_EXCHANGE (or it is switched off)."""
    if os.environ.get(EXCHANGE_ENV, "1") == "0":
        return False
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    step("exchange", second)
    if renameat2(-100, os.fsencode(first), -100, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(error, f"renameat2(RENAME_EXCHANGE) {first} <-> {second}: {os.strerror(error)}")


_LIBC = []


def _libc():
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def temporary_sibling(final, kind="tmp"):
    """The hidden sibling of ``final`` this process writes (``tmp``) or retires (``old``) it under."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{os.getpid()}"


def swap_in(staging, final):
    """Make the complete, fsynced directory ``staging`` appear as ``final`` (module docstring, step 2)."""
    staging, final = Path(staging), Path(final)
    retired = None
    if not os.path.lexists(final):
        _rename(staging, final)
    elif _exchange(staging, final):
        retired = staging    # it now holds the old directory
    else:
        retired = temporary_sibling(final, "old")
        _rename(final, retired)
        _rename(staging, final)
    step("fsync", final.parent)
    fsync_dir(final.parent)
    if retired is not None:
        remove(retired)


class Staging:
    """``with Staging(final) as stage:`` write under ``stage.path``, then ``stage.publish()``; an exception (or a
    return without publish) removes the staging directory, so a failed or refused writer leaves nothing behind."""

    def __init__(self, final):
        self.final = Path(final)
        self.path = temporary_sibling(self.final)
        self.published = False

    def __enter__(self):
        self.final.parent.mkdir(parents=True, exist_ok=True)
        _remove(self.path)
        step("mkdir", self.path)
        self.path.mkdir()
        return self

    def publish(self):
        fsync_tree(self.path)
        swap_in(self.path, self.final)
        self.published = True

    def __exit__(self, kind, value, traceback):
        if not self.published:
            _remove(self.path)
        return False


def _alive(pid):
    if pid == os.getpid():
        return True    # this process's own staging (e.g. a training run's set-aside checkpoint)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(folder, only=None):
    """[(entry name, kind 'tmp'/'old', final name or None)] of dead processes' publish leftovers in ``folder``
    (those of the final name ``only``, when given)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        match = _HIDDEN.fullmatch(name)
        if match:
            if (only is None or match["name"] == only) and not _alive(int(match["pid"])):
                found.append((name, match["kind"], match["name"]))
            continue
        if only is not None:
            continue
        for legacy in _LEGACY:
            match = legacy.fullmatch(name)
            if match and not (match.groupdict().get("pid") and _alive(int(match["pid"]))):
                found.append((name, "tmp", None))
    return sorted(found, key=lambda item: item[1] != "old")   # roll back before removing temporaries


def _recover_folder(folder, only=None):
    for name, kind, final in _leftovers(folder, only):
        path = os.path.join(folder, name)
        target = os.path.join(folder, final) if final else None
        try:
            if kind == "old" and target:
                if os.path.lexists(target) and _unfinished(target):
                    _remove(target)           # a dead training run's replacement that never saved a checkpoint
                if not os.path.lexists(target):
                    os.replace(path, target)  # killed between the two renames of a swap: the old one returns
                    fsync_dir(folder)
                    continue
            _remove(path)
        except OSError:
            pass   # another process recovered it first


def _unfinished(target):
    """A directory put in place of a set-aside checkpoint (training.overwrite) that no reader would load yet: no
    pointer file, no weights. An iteration directory is never unfinished: it is only ever renamed in complete."""
    name = os.path.basename(target)
    if name == "release" or re.fullmatch(r"iter_\d+", name) or not os.path.isdir(target):
        return False
    return not any(entry == LATEST_FILE or entry.endswith(WEIGHT_SUFFIXES) or entry in WEIGHT_INDEXES
                   for entry in os.listdir(target))


def recover(path):
    """Finish or roll back a dead process's half-done publish of ``path`` (its hidden siblings) and of anything
    inside it (iteration directories, the pointer file); remove stale temporaries. Returns whether ``path`` exists."""
    path = Path(os.path.abspath(path))
    _recover_folder(path.parent, path.name)
    if path.is_dir():
        _recover_folder(path)
    return path.exists()


def checkpoint_files(path):
    """The names in directory ``path`` that make it a checkpoint: pointer, iteration directories, weight files and
    indexes (first few, sorted)."""
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name in names if name == LATEST_FILE or name == "release" or re.fullmatch(r"iter_\d+", name)
            or name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES]


def holds_checkpoint(path):
    return bool(checkpoint_files(path))


def describe(path):
    """What checkpoint directory ``path`` holds, in words (for refusals)."""
    found = checkpoint_files(path)
    latest = Path(path) / LATEST_FILE
    if latest.is_file():
        others = [name for name in found if name != LATEST_FILE]
        return (f"an mm checkpoint at iteration {latest.read_text().strip()} ({LATEST_FILE}"
                f"{'; ' if others else ''}{', '.join(others[:4])}{', ...' if len(others) > 4 else ''})")
    return f"a checkpoint ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})"


def check_target(target, overwrite, source=None):
    """Refuse to publish into ``target`` when that would replace something, unless ``overwrite``.

    ``target`` may be missing or empty. ``source`` (a directory the writer reads) may not be the target: the swap
    would replace what is being read.
    """
    target = Path(target)
    if source is not None and Path(source).resolve() == target.resolve():
        raise PublishError(f"{target} is both the source and the output; write to another directory")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise PublishError(f"{target} exists and is not a directory; choose another output directory")
    entries = sorted(name for name in os.listdir(target) if not _HIDDEN.fullmatch(name))
    if not entries or overwrite:
        return
    if holds_checkpoint(target):
        raise PublishError(f"{target} already holds {describe(target)}; pass --overwrite to replace it (the old one "
                           f"stays whole until the new one is complete) or choose another directory")
    raise PublishError(f"{target} is not empty ({len(entries)} entries: {', '.join(entries[:4])}"
                       f"{', ...' if len(entries) > 4 else ''}) and the output replaces the whole directory; choose "
                       f"a new or empty directory, or pass --overwrite to replace it")


def publish_dir(target, build, overwrite=False, source=None):
    """Write a whole directory with ``build(staging_path)`` and swap it in as ``target`` (refused as check_target
    says). Returns what ``build`` returned."""
    target = Path(target)
    recover(target)
    check_target(target, overwrite, source)
    with Staging(target) as stage:
        result = build(stage.path)
        stage.publish()
    return result


def publish_iteration(mm_dir, name, build, pointer=None):
    """Add (or replace) the iteration directory ``mm_dir/name`` written by ``build(staging_path)``, then point
    ``latest_checkpointed_iteration.txt`` at ``pointer`` (the iteration's text; None leaves the pointer). Returns the
    iteration directory."""
    mm_dir = Path(mm_dir)
    mm_dir.mkdir(parents=True, exist_ok=True)
    recover(mm_dir)
    final = mm_dir / name
    with Staging(final) as stage:
        build(stage.path)
        stage.publish()
    if pointer is not None:
        write_text_atomic(mm_dir / LATEST_FILE, f"{pointer}\n")
    return final


def set_aside(path):
    """Rename directory ``path`` to this process's ``.NAME.old-PID`` sibling and leave ``path`` empty: the old
    checkpoint stays whole until :func:`drop_set_aside` (after the replacement is complete), and :func:`recover`
    brings it back if this process dies first. Returns the set-aside path."""
    path = Path(path)
    retired = temporary_sibling(path, "old")
    _rename(path, retired)
    step("mkdir", path)
    path.mkdir()
    step("fsync", path.parent)
    fsync_dir(path.parent)
    return retired


def drop_set_aside(path):
    """Remove what :func:`set_aside` kept of ``path`` (the replacement is complete now); False if nothing was."""
    retired = temporary_sibling(path, "old")
    if not os.path.lexists(retired):
        return False
    remove(retired)
    return True
