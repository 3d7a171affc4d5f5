"""Training logs: a line every ``log_interval`` steps, a progress bar, ``metrics.jsonl``, TensorBoard events (when
``tensorboardX`` imports), and ``loss_curve.png`` (matplotlib) at the end.

MFU = the FLOPs the step executed (mmx.train.flops: vision per patch, LLM per position with the active experts,
output layer per computed position, attention's quadratic term, forward only where nothing needs a gradient) ÷ step
seconds ÷ the peak FLOP/s of all devices (mmx.train.flops.peak_flops: training.peak_tflops, a known accelerator's
data sheet, else a large matmul measured here, :func:`measure_matmul_peak`). docs/performance.md has the formula.

A run that starts at iteration ``first_step`` (a resume; 0 for a fresh run) first cuts ``metrics.jsonl`` back to the
records of steps 1..first_step, so the steps a killed run logged past its last checkpoint are not repeated; the loss
curve is drawn from those records plus this run's, and TensorBoard is told to purge events from step first_step + 1
on (``purge_step``).
"""
import json
import math
import os
import sys
import time

import numpy as np

from mmx import ops


def measure_matmul_peak(size=2048, repeats=3, dtype=None):
    """Achieved FLOP/s of a ``size``² matmul on the current backend (best of ``repeats``): MFU's denominator when the
    device has no known peak. 2048²: at 512² the rate swings 5x from run to run on a CPU, at 2048² it is stable."""
    a = ops.randn((size, size), dtype, seed=0)
    b = ops.randn((size, size), dtype, seed=1)
    ops.to_numpy(ops.matmul(a, b)[:1, :1])  # warm-up (kernel selection, lazy init)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ops.to_numpy(ops.matmul(a, b)[:1, :1])  # reading one element waits for the result
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def truncate_metrics(path, last_step):
    """Cut the JSONL file ``path`` back to its records of steps 1..``last_step`` (one atomic rewrite, only when
    something goes): (the kept step records, how many records were cut)."""
    if not os.path.exists(path):
        return [], 0
    kept_lines, kept, cut = [], [], 0
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:   # a line torn by a kill mid-write
                cut += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
                kept_lines.append(line if line.endswith("\n") else line + "\n")
                kept.append(record)
            else:
                cut += 1
    if cut:
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w") as handle:
            handle.writelines(kept_lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    return kept, cut


class MetricsLogger:
    """Collects one record per optimizer step; prints, writes JSONL/TensorBoard, draws the loss curve.

    ``output=False`` (data-parallel ranks other than 0) only collects the records: one process writes the logs.
    ``peak_flops`` is the peak of all ``devices`` together (tokens and FLOPs are counted over all ranks).
    """

    def __init__(self, log_dir, total_steps, log_interval=1, peak_flops=None, progress_bar=True, log_tps=False,
                 first_step=0, output=True, devices=1):
        self.log_dir, self.output = log_dir, output
        self.log_interval = max(int(log_interval), 1)
        self.peak_flops, self.devices = peak_flops, max(int(devices), 1)
        self.log_tps = log_tps
        self.records, self.previous, self.cut = [], [], 0
        self.eval_records = []
        self.jsonl, self.bar, self.tensorboard = None, None, None
        if not output:
            return
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, "metrics.jsonl")
        self.previous, self.cut = truncate_metrics(path, first_step)
        self.jsonl = open(path, "a")
        if progress_bar:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (log files keep the plain step lines)
            self.bar = tqdm(total=total_steps, initial=first_step, file=sys.stderr, desc="finetune",
                            dynamic_ncols=True, leave=False, disable=None)
        try:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(log_dir, "tensorboard"), purge_step=first_step + 1)
        except ImportError:
            pass
        if self.cut:
            self._print(f"metrics.jsonl: removed {self.cut} records past step {first_step} (logged after the last "
                        f"checkpoint by a run that did not finish, or by the run this one replaces)")

    def log(self, step, loss, lr, grad_norm, tokens, seconds, sample_count, extra=None, flops=None):
        """Record optimizer step ``step`` (1-based): ``tokens`` real (unpadded) tokens and ``flops`` executed FLOPs
        (mmx.train.flops, all ranks) in ``seconds``; ``extra`` fields (e.g. ``dropped_samples``) go into this step's
        record."""
        tokens_per_second = tokens / seconds if seconds > 0 else 0.0
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(tokens),
                  "seconds": round(seconds, 6), "tokens_per_s": round(tokens_per_second, 2),
                  "tokens_per_s_per_device": round(tokens_per_second / self.devices, 2),
                  "mean_seq_len": round(tokens / max(sample_count, 1), 2)}
        if flops is not None:
            record["flops"] = float(flops)
        if self.peak_flops and flops is not None and seconds > 0:
            record["mfu"] = round(flops / seconds / self.peak_flops, 6)
        record.update(extra or {})
        self.records.append(record)
        if not self.output:
            return record
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key in ("loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                if key in record:
                    self.tensorboard.add_scalar(f"train/{key}", record[key], step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        if step % self.log_interval == 0:
            line = f"step {step} | loss {loss:.6f} | "
            if "aux_loss" in record:
                line += f"aux_loss {record['aux_loss']:.6f} | "
            line += f"lr {lr:.3e} | grad_norm {grad_norm:.4f} | tokens/s {tokens_per_second:.1f}"
            if self.devices > 1:
                line += f" ({record['tokens_per_s_per_device']:.1f}/device)"
            if "mfu" in record:
                line += f" | mfu {record['mfu'] * 100:.2f}%"
            if self.log_tps:
                line += f" | mean_seq_len {record['mean_seq_len']}"
            self._print(line)
        return record

    def log_eval(self, step, loss, samples, seconds):
        """Record the eval split's loss after optimizer step ``step``: its own metrics.jsonl record (``eval_loss``,
        ``eval_samples``), TensorBoard ``eval/loss``, a log line and points on the loss curve."""
        record = {"step": step, "eval_loss": loss, "eval_samples": int(samples), "eval_seconds": round(seconds, 6)}
        self.eval_records.append(record)
        if not self.output:
            return record
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("eval/loss", loss, step)
        self._print(f"eval step {step} | eval_loss {loss:.6f} | {samples} samples | {seconds:.2f} s")
        return record

    def _print(self, line):
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def finish(self):
        """Close the files, print the tokens/s summary (log_tps) and draw ``loss_curve.png``; returns its path."""
        if not self.output:
            return None
        if self.bar is not None:
            self.bar.close()
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if not self.records:
            return None
        if self.log_tps:
            tokens = sum(r["tokens"] for r in self.records)
            seconds = sum(r["seconds"] for r in self.records)
            self._print(f"throughput: {tokens / max(seconds, 1e-9):.1f} tokens/s over {len(self.records)} steps")
        return self.plot()

    def curve(self):
        """(steps, losses) of the loss curve: the records kept from before a resume, then this run's."""
        records = [r for r in self.previous if "loss" in r] + self.records
        return [r["step"] for r in records], [r["loss"] for r in records]

    def eval_curve(self):
        """(steps, eval losses): the eval records kept from before a resume, then this run's."""
        records = [r for r in self.previous if "eval_loss" in r] + self.eval_records
        return [r["step"] for r in records], [r["eval_loss"] for r in records]

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses = self.curve()
        losses = np.array(losses, dtype=np.float64)
        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot(steps, losses, lw=1, label="loss")
        if len(losses) >= 10:
            window = max(len(losses) // 20, 2)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(steps[window - 1:], smooth, lw=2, label=f"mean of {window}")
        eval_steps, eval_losses = self.eval_curve()
        if eval_steps:
            axis.plot(eval_steps, eval_losses, "o-", lw=1.5, label="eval loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend()
        figure.tight_layout()
        path = os.path.join(self.log_dir, "loss_curve.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
