"""docs/config.md documents every key the config code reads, and only those: the keys come from the code's own
schemas (TRAINING_DEFAULTS, MODEL_DEFAULTS, LORA_DEFAULTS, mmx.data.config.KEYS, mmx.infer.batch.USED_KEYS), the
documented ones from the first column of the doc's tables. A key added to the code without a docs line fails here,
naming the key."""
import os
import re

from mmx.data.config import KEYS as DATA_KEYS
from mmx.infer.batch import USED_KEYS as INFERENCE_KEYS
from mmx.train import config as train_config

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "config.md")
INFERENCE_HEADING = "## inference.json"


def _flatten(defaults, prefix):
    for key, value in defaults.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def code_keys():
    """{dotted key} of the finetune config, and {key} of inference.json, as the code defines them."""
    import mmx.lora

    nested = {"lora": mmx.lora.LORA_DEFAULTS}   # training keys whose value is a section with its own schema
    keys = set(_flatten(train_config.MODEL_DEFAULTS, "model."))
    keys |= {f"data.{key}" for key in DATA_KEYS}
    keys |= {f"training.{key}" for key in train_config.TRAINING_DEFAULTS}
    keys |= {f"training.{section}.{key}" for section, schema in nested.items() for key in schema}
    return keys, set(INFERENCE_KEYS)


def documented_keys():
    """(dotted finetune keys, inference.json keys) named in the first column of docs/config.md's tables."""
    finetune, inference, section = set(), set(), None
    for line in open(DOC, encoding="utf-8"):
        if line.startswith("## "):
            section = line.strip()
        found = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if found:
            (inference if section and section.startswith(INFERENCE_HEADING) else finetune).add(found.group(1))
    return finetune, inference


def test_every_config_key_is_documented_and_every_documented_key_exists():
    code_finetune, code_inference = code_keys()
    doc_finetune, doc_inference = documented_keys()
    undocumented = sorted(code_finetune - doc_finetune) + sorted(code_inference - doc_inference)
    assert not undocumented, (f"config keys read by the code but missing from docs/config.md: {undocumented}; add a "
                              f"table row | `key` | default | meaning | in its section")
    stale = sorted(doc_finetune - code_finetune) + sorted(doc_inference - code_inference)
    assert not stale, f"docs/config.md documents keys the code does not read: {stale}; remove or rename them"
    assert len(doc_finetune) >= 70 and {"data.val_size", "training.eval_interval", "training.num_train_epochs",
                                        "training.save_total_limit"} <= doc_finetune


def test_documented_defaults_match_the_code():
    """The default column of the training / data / model rows is the code's default (YAML spelling)."""
    def spelled(value):
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        if value == ():
            return "—"
        return str(value)

    defaults = {f"training.{key}": value for key, value in train_config.TRAINING_DEFAULTS.items()}
    defaults.update({f"data.{key}": value for key, (value, _) in DATA_KEYS.items()})
    rows = {}
    for line in open(DOC, encoding="utf-8"):
        found = re.match(r"\|\s*`([^`]+)`\s*\|\s*([^|]*?)\s*\|", line)
        if found:
            rows[found.group(1)] = found.group(2)
    wrong = {key: (rows[key], spelled(value)) for key, value in defaults.items()
             if key in rows and rows[key] != spelled(value)}
    assert not wrong, f"docs/config.md default column differs from the code (doc, code): {wrong}"
