"""What MindSpore is installed and which devices it can use, for ``mmx backends`` (does not lock the backend)."""


def describe():
    """(version, devices): ``["cpu"]`` plus ``"ascend:N"`` / ``"gpu:N"`` for each device MindSpore can use."""
    import mindspore
    devices = ["cpu"]
    for target in ("Ascend", "GPU"):
        try:
            available = mindspore.hal.is_available(target)
            count = mindspore.hal.device_count(target) if available else 0
        except Exception:  # noqa: BLE001 - a missing device plugin means "not available", not a failure
            count = 0
        devices += [f"{target.lower()}:{i}" for i in range(count)]
    return mindspore.__version__, devices
