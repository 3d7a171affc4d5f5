"""TensorBoard events (tensorboardX, installed by the test extra) carry the same step values as metrics.jsonl."""
import glob
import json
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from mmx.train.config import load_config
from mmx.train.loop import Trainer
from train_reference import collate, make_dataset, make_model
from train_runner import BASE

TAGS = ("loss", "lr", "grad_norm")


def read_scalars(event_dir):
    """{tag: {step: value}} from the TFRecord event files in ``event_dir`` (8-byte length, 4-byte CRC, Event
    proto, 4-byte CRC per record)."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        data, offset = open(path, "rb").read(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_scalars_match_metrics_jsonl(tmp_path):
    training = load_config(base={"training": dict(BASE, train_iters=3, lr_warmup_iters=1)})["training"]
    trainer = Trainer(make_model(), make_dataset(12), collate, training, log_dir=str(tmp_path))
    trainer.run()
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    scalars = read_scalars(str(tmp_path / "tensorboard"))
    assert [record["step"] for record in records] == [1, 2, 3]
    for tag in TAGS:
        logged = scalars[f"train/{tag}"]
        assert sorted(logged) == [1, 2, 3]
        for record in records:  # TensorBoard stores float32
            assert logged[record["step"]] == np.float32(record[tag]), (tag, record["step"])
    assert len(set(scalars["train/loss"].values())) == 3
