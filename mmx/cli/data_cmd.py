"""``mmx data``: convert public dataset layouts and check a dataset before training."""
import json

import click


@click.group("data")
def data_group():
    """Dataset conversion and validation (framework-free: no backend is loaded)."""


@data_group.command("convert")
@click.option("--from", "source", type=click.Choice(["auto", "llava", "qwen-vl"]), default="auto", show_default=True,
              help="Input layout: LLaVA-Instruct-150K, the Qwen-VL fine-tuning format, or auto (detected); a layout "
                   "that does not match the file is refused.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--output", "output_path", type=click.Path(dir_okay=False), required=True,
              help="Output .json (array) or .jsonl in the messages format.")
@click.option("--image-dir", default=None,
              help="Folder joined to each record's image path (e.g. COCO train2017); default: the input file's "
                   "folder. The output holds the images relative to its own folder (docs/data.md).")
@click.option("--target", type=click.Choice(["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]), default=None,
              help="Box convention of the model to train (qwen-vl only): qwen2_vl and qwen3_vl keep the 0-1000 "
              "relative numbers, qwen2_5_vl writes pixels of the resized image (mmx/data/convert.py). Default: "
              "--model-dir's model type, else qwen2_5_vl.")
@click.option("--model-dir", default=None, help="HF dir whose image processor sizes images (qwen2_5_vl boxes only).")
@click.option("--image-min-pixels", type=int, default=None)
@click.option("--image-max-pixels", type=int, default=None)
@click.option("--skip-bad-samples", is_flag=True, help="Skip records that cannot be converted (counted).")
def convert_command(source, input_path, output_path, image_dir, target, model_dir, image_min_pixels,
                    image_max_pixels, skip_bad_samples):
    """Convert LLaVA-Instruct or Qwen-VL data to the messages format mmx (and MindSpeed-MM) reads."""
    from mmx.data.convert import ConvertError, convert_file

    try:
        result = convert_file(source, input_path, output_path, image_dir, target, model_dir, image_min_pixels,
                              image_max_pixels, skip_bad_samples)
    except (ConvertError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for message in result["errors"]:
        click.echo(f"skipped: {message}")
    click.echo(f"wrote {result['converted']} records to {output_path} ({result['skipped']} skipped; from "
               f"{result['from']})")
    if "box_pixels" in result:
        pixels = result["box_pixels"]
        click.echo(f"note: the boxes are pixels of each image resized with min_pixels {pixels['image_min_pixels']} and "
                   f"max_pixels {pixels['image_max_pixels']}: train with data.image_min_pixels: "
                   f"{pixels['image_min_pixels']} and data.image_max_pixels: {pixels['image_max_pixels']}")
    click.echo(json.dumps(result))


@data_group.command("check")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="data.json (guides' nested layout) or a flat mmx data YAML/JSON, or a finetune config.")
@click.option("--model-name-or-path", default=None, help="Override model_name_or_path.")
def check_command(config_path, model_name_or_path):
    """Validate every sample of a dataset and print counts; the last line is a JSON summary. Exit 1 if any sample
    is bad or its text holds another format's image tags (e.g. Qwen-VL's <img>...</img>)."""
    from mmx.data.check import check_dataset
    from mmx.data.config import load_data_config

    try:
        config = load_data_config(config_path, model_name_or_path=model_name_or_path)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    for key in config.ignored:
        click.echo(f"note: {key} is not used by mmx data")
    summary = check_dataset(config, echo=click.echo)
    click.echo(json.dumps(summary))
    if summary["bad"] or summary["foreign_image_tags"]:
        raise SystemExit(1)
