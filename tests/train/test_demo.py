"""The embedded demo (the README's first command) on this backend: a tiny Qwen2.5-VL fine-tuned on the digits
reaches the issue's bar (accuracy >= 0.90 on held-out digits), and the checkpoint `mmx finetune` wrote, exported by
`mm_to_hf`, gives transformers the same greedy answers as mmx.infer (run_demo raises on any disagreement)."""
import json
import os

from mmx.train.demo import HF_CHECK_SAMPLES, run_demo


def test_demo_reaches_the_bar_and_the_export_answers_like_mmx(tmp_path):
    lines = []
    accuracy = run_demo(str(tmp_path), echo=lines.append)
    assert accuracy >= 0.90, lines[-12:]
    assert lines[-1] == f"accuracy={accuracy:.4f}"
    agreement = next(line for line in lines if "transformers answers" in line)
    assert agreement.endswith(f"{HF_CHECK_SAMPLES}/{HF_CHECK_SAMPLES} equal"), agreement
    # MFU counts executed FLOPs (mmx.train.flops) against a 2048² matmul measured at the start: a step of this tiny
    # model cannot run its matmuls faster than one large matmul does, so every logged MFU is below 1
    with open(os.path.join(tmp_path, "finetuned", "logs", "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    assert records and max(r["mfu"] for r in records) < 1.0, max(r["mfu"] for r in records)
    assert all(r["flops"] > 0 for r in records)
