"""Model families the checkpoint tools know: HF ``model_type`` → the family's name table and parallel plan.

The list of families is the models' own (``mmx.models.FAMILIES``); each family folder carries ``hf_names.py``
and ``plan.py`` beside its model.
"""
import importlib

from mmx.models import FAMILIES, foreign_config_error


class UnknownModelError(ValueError):
    """A model type mmx has no name table / plan for."""


def family(model_type, source="config.json"):
    """(hf_names module, plan module) of ``model_type``; an error listing the supported types otherwise."""
    if foreign_config_error(model_type, source):
        raise UnknownModelError(foreign_config_error(model_type, source))
    if model_type not in FAMILIES:
        raise UnknownModelError(f"{source}: model_type {model_type!r} is not supported by mmx convert; supported: "
                                f"{', '.join(FAMILIES)}")
    return (importlib.import_module(f"mmx.models.{model_type}.hf_names"),
            importlib.import_module(f"mmx.models.{model_type}.plan"))
