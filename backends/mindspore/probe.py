"""What MindSpore is installed and which devices it can use, for ``mmx backends`` (does not lock the backend)."""
import logging


def describe():
    """(version, devices): ``["cpu"]`` plus ``"ascend:N"`` / ``"gpu:N"`` for each device MindSpore can use."""
    import mindspore
    from mindspore import log
    devices = ["cpu"]
    # MindSpore logs a multi-line warning for every device plugin it cannot load (no CANN, no CUDA 11): an absent
    # device is a normal answer here, so the probe quiets its logger while asking.
    logger = log._get_logger()  # noqa: SLF001 - MindSpore exposes no public handle on its Python logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for target in ("Ascend", "GPU"):
            try:
                count = mindspore.hal.device_count(target) if mindspore.hal.is_available(target) else 0
            except Exception:  # noqa: BLE001 - a plugin that fails to load means "not available", not a failure
                count = 0
            devices += [f"{target.lower()}:{i}" for i in range(count)]
    finally:
        logger.setLevel(level)
    return mindspore.__version__, devices
