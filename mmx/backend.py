"""Backend selection: fixed once per process (ARCHITECTURE rule 1).

The backend comes from ``set_backend(name)`` (the CLI's ``--backend``) or the ``MMX_BACKEND`` environment variable,
default ``torch``. The first call of :func:`get` imports it and locks the choice: asking for another backend later
in the same process is an error, because tensors and modules already built belong to the first framework.

A backend module (``mmx.backends.torch`` / ``mmx.backends.mindspore``) exposes the same submodules with the same
public functions: ``ops`` (the contract in :mod:`mmx.ops`), ``nn`` (Module/Parameter/containers), ``kernels``
(attention and MoE implementations looked up by name), ``train`` (grad step and optimizer), ``io`` (native files).
"""
import importlib
import os

BACKENDS = ("torch", "mindspore")
DEFAULT = "torch"
INSTALL_HINT = {
    "torch": 'pip install -e ".[torch]" -c constraints.txt   (torch==2.14.1, torchvision==0.29.1)',
    "mindspore": 'pip install -e ".[mindspore]" -c constraints.txt   (mindspore==2.10.0, needs numpy<2)',
}

_requested = None
_loaded = None


class BackendError(RuntimeError):
    """The backend asked for is unknown, not installed, or differs from the one this process already uses."""


def _check_name(name):
    if name not in BACKENDS:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), BACKENDS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackendError(f"unknown backend {name!r}{hint}: choose one of {', '.join(BACKENDS)} "
                           f"(MMX_BACKEND env or --backend)")
    return name


def set_backend(name):
    """Choose the backend for this process; an error once another backend has been loaded."""
    global _requested
    name = _check_name(name)
    if _loaded is not None and _loaded.NAME != name:
        raise BackendError(
            f"the {_loaded.NAME} backend is already in use in this process (tensors or models were built with it); "
            f"cannot switch to {name}. Start a new process with MMX_BACKEND={name} or --backend {name}.")
    _requested = name
    os.environ["MMX_BACKEND"] = name


def name():
    """The backend this process uses (or will use once something is built)."""
    if _loaded is not None:
        return _loaded.NAME
    return _check_name(_requested or os.environ.get("MMX_BACKEND") or DEFAULT)


def get():
    """The backend module, imported on first use; locks the choice for the rest of the process."""
    global _loaded
    if _loaded is None:
        chosen = name()
        try:
            _loaded = importlib.import_module(f"mmx.backends.{chosen}")
        except ImportError as err:
            raise BackendError(f"backend {chosen!r} cannot be imported ({err}). Install it with: "
                               f"{INSTALL_HINT[chosen]}, or pick another with MMX_BACKEND / --backend.") from err
    return _loaded


def probe(backend_name):
    """Import ``backend_name``'s framework without locking: (ok, version, devices, error) for `mmx backends`."""
    try:
        module = importlib.import_module(f"mmx.backends.{backend_name}.probe")
        version, devices = module.describe()
        return True, version, devices, ""
    except Exception as err:  # noqa: BLE001 - any failure means "not usable", reported to the user
        return False, "", [], f"{type(err).__name__}: {err}"
