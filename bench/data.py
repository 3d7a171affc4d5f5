"""Data pipeline throughput against what the trainer consumes, on the demo (digits VQA + tiny Qwen2.5-VL).

    MMX_BACKEND=torch python bench/data.py [--samples 256] [--micro-batch 4] [--steps 4] [--workers 1]

Reports samples/s of: preprocessing (chat template + processor, cold: no cache), a warm start from the cache,
collation (padded and packed), the streaming loader (preprocess + collate on the fly), and the trainer's
consumption (forward + backward + AdamW on the tiny model, ``Trainer.run``'s logged step times). The data pipeline keeps up when its
samples/s exceeds the trainer's. The last line is a JSON summary.
"""
import argparse
import json
import os
import tempfile
import time


def _rate(count, seconds):
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from mmx import backend
    from mmx.data import build
    from mmx.data.collate import Collator
    from mmx.data.config import load_data_config
    from mmx.data.dataset import build_dataset
    from mmx.data.digits import make_digits_vqa
    from mmx.tiny import make_tiny_checkpoint

    root = tempfile.mkdtemp(prefix="mmx-bench-data-")
    model_dir = make_tiny_checkpoint(os.path.join(root, "hf"), family="qwen2_5_vl")
    digits = make_digits_vqa(os.path.join(root, "digits"), max_samples=args.samples, held_out=0.0)
    config = {"model_name_or_path": model_dir, "dataset": digits["train"], "dataset_dir": digits["dataset_dir"],
              "cache_dir": os.path.join(root, "cache"), "cutoff_len": 256,
              "preprocessing_num_workers": args.workers}
    results = {"backend": backend.name(), "samples": args.samples, "workers": args.workers}

    pipeline = build(dict(config, cache_dir=None, max_samples=2))   # loads the processor; warms it up
    start = time.perf_counter()
    dataset = build_dataset(load_data_config(config), pipeline.preprocessor)
    results["preprocess_cold"] = _rate(len(dataset), time.perf_counter() - start)
    start = time.perf_counter()
    warm = build_dataset(load_data_config(config), pipeline.preprocessor)
    assert warm.stats["cache_hits"] == 1
    results["cache_warm_start"] = _rate(len(warm), time.perf_counter() - start)
    pipeline.dataset = dataset

    samples = [pipeline.dataset[i] for i in range(len(pipeline.dataset))]
    for name, collate in (("collate_padded", pipeline.collate),
                          ("collate_packed", Collator(pipeline.preprocessor, packing=True))):
        start = time.perf_counter()
        for i in range(0, len(samples), args.micro_batch):
            collate(samples[i:i + args.micro_batch])
        results[name] = _rate(len(samples), time.perf_counter() - start)

    streaming = build(dict(config, streaming=True, buffer_size=64))
    loader = streaming.streaming_loader(args.micro_batch)
    batches = max(1, args.samples // args.micro_batch // 2)
    start = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    results["streaming_preprocess_collate"] = _rate(batches * args.micro_batch, time.perf_counter() - start)

    results["trainer_consumption"] = _trainer_rate(model_dir, root, pipeline, args)
    results["data_over_trainer"] = round(results["preprocess_cold"] / results["trainer_consumption"], 2)
    width = max(len(k) for k in results)
    for key, value in results.items():
        unit = " samples/s" if isinstance(value, float) and key != "data_over_trainer" else ""
        print(f"{key:{width}s}  {value}{unit}")
    print(json.dumps(results))


def _trainer_rate(model_dir, root, pipeline, args):
    """Samples/s of the trainer's steps on the tiny model (the step time the trainer logs; the first step is a
    warm-up and not counted)."""
    from mmx import models
    from mmx.checkpoint.store import load_mm
    from mmx.convert.drivers import hf_to_mm
    from mmx.train.config import load_config
    from mmx.train.loop import Trainer

    mm_dir = os.path.join(root, "mm")
    hf_to_mm(model_dir, mm_dir)
    model = models.load_mm_state(models.build(model_dir), load_mm(mm_dir)[1])
    training = load_config(base={"training": {
        "train_iters": 1 + args.steps, "micro_batch_size": args.micro_batch, "global_batch_size": args.micro_batch,
        "lr": 1e-4, "log_interval": 1000, "progress_bar": False, "peak_tflops": 1.0,
        "log_dir": os.path.join(root, "log")}})["training"]
    records = Trainer(model, pipeline.dataset, pipeline.collate, training, {"model_type": "qwen2_5_vl"}).run()
    return _rate(args.steps * args.micro_batch, sum(r["seconds"] for r in records[1:]))


if __name__ == "__main__":
    main()
