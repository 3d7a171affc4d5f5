"""``mmx finetune`` and ``mmx demo``."""
import sys

import click

from mmx.cli.common import backend_option


def _echo(text):
    click.echo(text, err=True)


@click.command("finetune", context_settings={"ignore_unknown_options": False})
@backend_option
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file with model / data / training sections.")
@click.option("--allow-changed", "allow_changed", multiple=True, metavar="KEY",
              help="Resume although KEY (e.g. lr, seed, data.cutoff_len) differs from the checkpoint's run; "
                   "repeatable (same as training.allow_changed=[KEY,...]).")
@click.argument("overrides", nargs=-1)
def finetune_command(config_path, allow_changed, overrides):
    """Fine-tune a model: mmx finetune --config FILE [section.key=value ...].

    Overrides use dotted keys, e.g. training.lr=1e-4 training.train_iters=500 model.text_decoder.freeze=true.
    Model structure always comes from the checkpoint (model.init_from_hf_path); training.load resumes a save.
    """
    from mmx.checkpoint.publish import PublishError
    from mmx.checkpoint.store import CheckpointError
    from mmx.train.config import ConfigError, load_config
    from mmx.train.finetune import finetune
    from mmx.train.loop import NonFiniteLossError

    try:
        config = load_config(config_path, overrides)
        if allow_changed:   # added to what the file and the overrides allow
            merged = list(dict.fromkeys([*config["training"]["allow_changed"], *allow_changed]))
            config = load_config(config_path, (*overrides, f"training.allow_changed=[{','.join(merged)}]"))
        trainer = finetune(config, echo=_echo)
    except (ConfigError, FileNotFoundError, CheckpointError, PublishError) as err:
        raise click.ClickException(str(err)) from err
    except NonFiniteLossError as err:
        _echo(f"error: {err}")
        sys.exit(2)
    if trainer.history and trainer.rank == 0:  # data parallel: one process prints
        click.echo(f"final_loss={trainer.history[-1]:.6f}")


@click.command("demo")
@backend_option
@click.option("--out", "out_dir", default="mmx_demo", show_default=True, type=click.Path(file_okay=False),
              help="Working directory for the tiny checkpoint, the digits, checkpoints and the HF export.")
@click.option("--steps", type=int, default=None, help="Training steps (default: the demo recipe's).")
def demo_command(out_dir, steps):
    """Fine-tune a tiny Qwen2.5-VL to read handwritten digits, offline; prints accuracy=<float> last."""
    from mmx.train.demo import run_demo

    run_demo(out_dir, steps, echo=click.echo)
