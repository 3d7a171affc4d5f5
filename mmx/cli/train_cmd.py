"""``mmx finetune`` and ``mmx demo``."""
import os
import sys

import click

from mmx.cli.common import backend_option


def _echo(text):
    click.echo(text, err=True)


@click.command("finetune", context_settings={"ignore_unknown_options": False})
@backend_option
@click.option("--config", "config_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML or JSON file with model / data / training sections (or give it first, without --config).")
@click.option("--allow-changed", "allow_changed", multiple=True, metavar="KEY",
              help="Resume although KEY (e.g. lr, seed, data.cutoff_len) differs from the checkpoint's run; "
                   "repeatable (same as training.allow_changed=[KEY,...]).")
@click.argument("overrides", nargs=-1)
def finetune_command(config_path, allow_changed, overrides):
    """Fine-tune a model: mmx finetune [--config] FILE [section.key=value ...].

    Overrides use dotted keys, e.g. training.lr=1e-4 training.train_iters=500 model.text_decoder.freeze=true.
    Model structure always comes from the checkpoint (model.init_from_hf_path); training.load resumes a save.
    """
    from mmx.checkpoint.publish import PublishError
    from mmx.checkpoint.store import CheckpointError
    from mmx.train.config import ConfigError, load_config
    from mmx.train.finetune import finetune
    from mmx.train.loop import NonFiniteLossError

    config_path, overrides = _config_argument(config_path, overrides)
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


def _config_argument(config_path, overrides):
    """(config file, overrides): the file is --config, else the first argument (``mmx finetune x.yaml k=v``)."""
    if config_path is None:
        if not overrides or "=" in overrides[0]:
            raise click.UsageError("give the config file: mmx finetune x.yaml [section.key=value ...] (or --config "
                                   "x.yaml)")
        config_path, overrides = overrides[0], overrides[1:]
        if not os.path.isfile(config_path):
            raise click.BadParameter(f"{config_path}: no such file", param_hint="CONFIG")
    bare = [item for item in overrides if "=" not in item]
    if bare:
        raise click.UsageError(f"{bare[0]!r}: after the config file only section.key=value overrides follow "
                               f"(e.g. training.lr=1e-4)")
    return config_path, overrides


@click.command("demo")
@backend_option
@click.option("--out", "out_dir", default="mmx_demo", show_default=True, type=click.Path(file_okay=False),
              help="Working directory for the tiny checkpoint, the digits, checkpoints and the HF export.")
@click.option("--steps", type=int, default=None, help="Training steps (default: the demo recipe's).")
def demo_command(out_dir, steps):
    """Fine-tune a tiny Qwen2.5-VL to read handwritten digits, offline; prints accuracy=<float> last."""
    from mmx.train.demo import run_demo

    run_demo(out_dir, steps, echo=click.echo)
