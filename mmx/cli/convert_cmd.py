"""``mmx convert``: HF ↔ mm checkpoints, resharding, framework-native exports.

    mmx convert hf_to_mm --hf-dir HF --mm-dir MM [--dtype keep|bf16|fp32] [--tp-size N] [--ep-size N]
                         [--llm-pp-layers 5,12,12,11] [--vit-pp-layers 24,0,0,0] [--expert-layout hub|transformers]
    mmx convert reshard  --mm-dir SRC --save-dir DST [same layout options]
    mmx convert mm_to_hf --mm-dir MM --save-hf-dir OUT [--hf-dir HF] [--merge-lora]
    mmx convert export   --mm-dir MM --save-dir OUT --format torch|mindspore [--backend ...]
    mmx convert import   --native-dir DIR --mm-dir MM --format torch|mindspore [--allow-pickle] [--backend ...]
    mmx convert lora_to_peft --mm-dir LORA_SAVE --save-dir PEFT_DIR [--base NAME]

The layer lists also take the guides' ``[[5,12,12,11]]`` spelling. Conversion needs numpy only (no framework);
export/import run the chosen backend's native writer/reader. Every command publishes its output directory whole
(mmx.checkpoint.publish) and refuses one that already holds a checkpoint (or anything) unless ``--overwrite``.
Source directories are not checked by click: a reader first recovers what a killed writer left half done.
"""
import functools

import click

from mmx.cli.common import backend_option

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _overwrite_option(command):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an output directory that already holds a checkpoint (the old one stays whole "
                             "until the new one is complete).")(command)


def _layout_options(command):
    options = [
        click.option("--tp-size", type=int, default=1, show_default=True, help="Tensor-parallel size."),
        click.option("--ep-size", type=int, default=1, show_default=True, help="Expert-parallel size."),
        click.option("--llm-pp-layers", default=None,
                     help="LLM layers per pipeline stage, e.g. 5,12,12,11 or [[5,12,12,11]] (default: one stage)."),
        click.option("--vit-pp-layers", default=None,
                     help="Vision blocks per pipeline stage, e.g. 24,0,0,0 (default: all on the first stage)."),
        click.option("--progress/--no-progress", default=True, help="Progress bar on stderr."),
        _overwrite_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _merge_lora_option(command):
    """``mm_to_hf --merge-lora``: the --mm-dir is a training.lora save; its adapters are merged into the base model
    (``--hf-dir``, default the base the run recorded) and the full HF weights written (mmx.lora.merge_lora_to_hf)."""
    @functools.wraps(command)
    def run(merge_lora=False, **options):
        if not merge_lora:
            return command(**options)
        from mmx.lora import merge_lora_to_hf
        files = _run(merge_lora_to_hf, options["mm_dir"], options["save_hf_dir"], options["hf_dir"],
                     _size(options["max_shard_size"]), options["overwrite"])
        click.echo(f"wrote {len(files)} merged weight files to {options['save_hf_dir']}")
        return None

    return click.option("--merge-lora", is_flag=True,
                        help="--mm-dir is a LoRA save: merge its adapters into the base (--hf-dir, default the one "
                             "it was trained on) and write the full HF weights.")(run)


def _run(function, *args, **kwargs):
    """Call a conversion; user errors (bad layout, missing files, wrong checkpoint) become one clean message."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as err:
        raise click.ClickException(str(err).strip("'\"")) from err


def _size(text):
    units = {"KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "B": 1}
    for unit, scale in units.items():
        if text.upper().endswith(unit):
            return int(float(text[:-len(unit)]) * scale)
    return int(text)


@click.group("convert")
def convert_group():
    """Convert checkpoints between Hugging Face and mmx's mm layout, and between parallel layouts."""


@convert_group.command("hf_to_mm")
@click.option("--hf-dir", required=True, type=click.Path(file_okay=False), help="HF model directory.")
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False), help="Output mm checkpoint directory.")
@click.option("--dtype", type=click.Choice(["keep", "bf16", "fp32"]), default="keep", show_default=True)
@click.option("--expert-layout", type=click.Choice(["hub", "transformers"]), default=None,
              help="MoE: the orientation of stacked experts whose shape fits both, hub files (E, in, out) or "
                   "transformers' save_pretrained (E, out, in); otherwise read from the shapes.")
@_layout_options
def hf_to_mm_command(hf_dir, mm_dir, dtype, expert_layout, tp_size, ep_size, llm_pp_layers, vit_pp_layers, progress,
                     overwrite):
    """HF checkpoint → mm checkpoint (release/) with the given parallel layout."""
    from mmx.convert.drivers import hf_to_mm
    final = _run(hf_to_mm, hf_dir, mm_dir, dtype, tp_size, ep_size, vit_pp_layers, llm_pp_layers, progress,
                 overwrite, expert_layout)
    click.echo(f"wrote {final}")


@convert_group.command("reshard")
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False), help="Source mm checkpoint.")
@click.option("--save-dir", required=True, type=click.Path(file_okay=False), help="Output mm checkpoint directory.")
@_layout_options
def reshard_command(mm_dir, save_dir, tp_size, ep_size, llm_pp_layers, vit_pp_layers, progress, overwrite):
    """mm checkpoint → the same weights in a new TP/PP/EP layout."""
    from mmx.convert.drivers import reshard
    final = _run(reshard, mm_dir, save_dir, tp_size, ep_size, vit_pp_layers, llm_pp_layers, progress, overwrite)
    click.echo(f"wrote {final}")


@convert_group.command("mm_to_hf")
@_merge_lora_option
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False), help="mm checkpoint.")
@click.option("--save-hf-dir", required=True, type=click.Path(file_okay=False), help="Output HF directory.")
@click.option("--hf-dir", default=None, type=click.Path(file_okay=False),
              help="Take config/tokenizer/processor files from here (default: those stored in --mm-dir).")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--iteration", default=None,
              help="Iteration of the mm checkpoint to use, e.g. 200 (default: latest_checkpointed_iteration.txt).")
@_overwrite_option
def mm_to_hf_command(mm_dir, save_hf_dir, hf_dir, max_shard_size, progress, iteration, overwrite):
    """mm checkpoint (any layout) → HF checkpoint that transformers' from_pretrained loads."""
    from mmx.convert.drivers import mm_to_hf
    files = _run(mm_to_hf, mm_dir, save_hf_dir, hf_dir, _size(max_shard_size), progress, overwrite, iteration)
    click.echo(f"wrote {len(files)} weight files to {save_hf_dir}")


@convert_group.command("export")
@backend_option
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False), help="mm checkpoint.")
@click.option("--save-dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "file_format", type=click.Choice(["torch", "mindspore"]), required=True,
              help="torch: model_optim_rng.pt per rank; mindspore: model_optim_rng.ckpt per rank.")
@click.option("--iteration", default=None,
              help="Iteration of the mm checkpoint to use, e.g. 200 (default: latest_checkpointed_iteration.txt).")
@_overwrite_option
def export_command(mm_dir, save_dir, file_format, iteration, overwrite):
    """mm checkpoint → framework-native files per rank (run with the matching --backend)."""
    from mmx.convert.native import export_native
    paths = _run(export_native, mm_dir, save_dir, file_format, overwrite, iteration)
    click.echo(f"wrote {len(paths)} {file_format} files under {save_dir}")


@convert_group.command("import")
@backend_option
@click.option("--native-dir", required=True, type=click.Path(file_okay=False),
              help="A directory written by `mmx convert export`.")
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False), help="Output mm checkpoint directory.")
@click.option("--format", "file_format", type=click.Choice(["torch", "mindspore"]), required=True)
@click.option("--allow-pickle", is_flag=True, help="torch: allow arbitrary pickled objects (trusted files only).")
@_overwrite_option
def import_command(native_dir, mm_dir, file_format, allow_pickle, overwrite):
    """Framework-native files per rank → mm checkpoint (safetensors)."""
    from mmx.convert.native import import_native
    final = _run(import_native, native_dir, mm_dir, file_format, allow_pickle, overwrite)
    click.echo(f"wrote {final}")


@convert_group.command("lora_to_peft")
@click.option("--mm-dir", required=True, type=click.Path(file_okay=False),
              help="Save directory of a finetune run with training.lora.")
@click.option("--save-dir", required=True, type=click.Path(file_okay=False), help="Output PEFT adapter directory.")
@click.option("--base", default=None, help="base_model_name_or_path to record (default: the base the run trained on).")
@_overwrite_option
def lora_to_peft_command(mm_dir, save_dir, base, overwrite):
    """mmx LoRA checkpoint → PEFT adapter (adapter_config.json + adapter_model.safetensors) for transformers."""
    from mmx.lora import lora_to_peft
    _run(lora_to_peft, mm_dir, save_dir, base, overwrite)
    click.echo(f"wrote PEFT adapter {save_dir}")
