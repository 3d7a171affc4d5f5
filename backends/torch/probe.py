"""What this backend can run on, without choosing it for the process (``mmx backends``)."""
import importlib
import importlib.util

import torch


def describe():
    """(torch version, devices usable now): e.g. ``("2.14.1", ["cpu", "cuda:0"])``.

    npu devices are listed only when torch_npu is installed and imports (it is never imported otherwise).
    """
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if importlib.util.find_spec("torch_npu") is not None:
        try:
            importlib.import_module("torch_npu")
            devices += [f"npu:{index}" for index in range(torch.npu.device_count())]
        except Exception:  # noqa: BLE001 - a broken torch_npu (no CANN) means "no npu", not a crash
            pass
    return torch.__version__, devices
