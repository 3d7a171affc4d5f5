"""``mmx verify --hf-dir HF --mm-dir MM [--backend B] [--atol 1e-4]``: mmx logits vs transformers."""
import sys

import click

from mmx.cli.common import backend_option


@click.command("verify")
@click.option("--hf-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The Hugging Face checkpoint (config, weights, processor) that is the reference.")
@click.option("--mm-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The mm checkpoint to check (from `mmx convert hf_to_mm` or training).")
@click.option("--iteration", default=None, help="Iteration to load (default: latest_checkpointed_iteration.txt).")
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Largest max abs logits diff accepted.")
@backend_option
def verify_command(hf_dir, mm_dir, iteration, atol):
    """Compare mmx's float32 logits with transformers' on images of two sizes, a video and a text-only prompt.

    Prints one line per input and, last, max_abs_diff=<float>; exits 1 when it is above --atol.
    """
    from mmx import backend
    from mmx.verify import verify

    results = verify(hf_dir, mm_dir, iteration)
    for name, diff in results:
        click.echo(f"{name:12s} max_abs_diff={diff:.3e}  ({backend.name()})")
    worst = max(diff for _, diff in results)
    failed = not worst <= atol
    if failed:
        click.echo(f"FAILED: {worst:.3e} > atol {atol:g}", err=True)
    click.echo(f"max_abs_diff={worst:.6e}")      # always the last line: scripts parse it
    sys.exit(1 if failed else 0)
