"""``mmx infer``: generate text from an mm or HF checkpoint — one prompt, a batch config, or a chat.

    mmx infer --model DIR [--image P ...] [--video P] --prompt TEXT [--max-new-tokens N] [--adapter LORA_DIR]
              [--temperature T --top-p P --top-k K --seed S | --greedy] [--stop STR ...] [--no-cache]
    mmx infer --model DIR --config inference.json [--output results.jsonl] [--batch-size N]
    mmx infer --model DIR --chat [--image P ...]

stdout carries only results (the generated text, the JSONL lines, the chat replies); logs and warnings go to stderr.
"""
import contextlib
import sys

import click

from mmx.cli.common import backend_option


def _overrides(max_new_tokens, temperature, top_p, top_k, seed, repetition_penalty, greedy, stop, no_cache):
    """Generation overrides from the options; unset options keep the checkpoint's generation config."""
    overrides = dict(max_new_tokens=max_new_tokens, top_p=top_p, top_k=top_k, seed=seed,
                     repetition_penalty=repetition_penalty, stop_strings=list(stop) or None,
                     use_cache=False if no_cache else None)
    if greedy and temperature:
        raise click.BadParameter("--greedy and --temperature > 0 contradict each other", param_hint="--greedy")
    if greedy or temperature == 0:
        overrides["do_sample"] = False
    elif temperature is not None:
        overrides.update(do_sample=True, temperature=temperature)
    return overrides


@click.command("infer")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="mm checkpoint (any TP/PP layout, merged on load) or HF checkpoint (converted in memory).")
@click.option("--iteration", default=None,
              help="With an mm checkpoint (a training save): the iteration to load, e.g. 200 (default: the latest).")
@click.option("--adapter", default=None, type=click.Path(exists=True, file_okay=False),
              help="A LoRA adapter on --model: a PEFT adapter directory or an mmx training.lora save.")
@click.option("--prompt", default=None, help="The user message.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An image for the message (repeat for several).")
@click.option("--video", "videos", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A video for the message (decoded with PyAV).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Most tokens to generate (default: generation_config.json's max_new_tokens, else 64).")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Sample with this temperature (0 = greedy). Default: the checkpoint's generation config.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None, help="Nucleus sampling.")
@click.option("--top-k", type=click.IntRange(min=0), default=None, help="Top-k sampling (0 = off).")
@click.option("--seed", type=int, default=None, help="Seed of the sampling draws (default 0).")
@click.option("--repetition-penalty", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Divide the logits of tokens already seen by this (1 = off).")
@click.option("--greedy", is_flag=True, help="Greedy decoding whatever the generation config says.")
@click.option("--stop", multiple=True,
              help="A stop string (repeat for several); replaces the generation config's stop_strings.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence each step (no KV cache).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="inference.json (infer_data_type, file_path, prompts) for batch inference, JSONL results.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="With --config: the JSONL file (default: the config's output_path, else stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="With --config: requests per batch (default: the config's batch_size, else 4).")
@click.option("--chat", is_flag=True, help="Interactive multi-turn chat on stdin; earlier images stay in context.")
@backend_option
def infer_command(model_dir, iteration, adapter, prompt, images, videos, config_path, output, batch_size, chat,
                  **generation):
    """Generate text with a vision-language model; only the generated text goes to stdout."""
    modes = sum([prompt is not None, config_path is not None, chat])
    if modes != 1:
        raise click.UsageError("give exactly one of --prompt, --config or --chat")
    if config_path and (images or videos):
        raise click.UsageError("--image/--video go with --prompt or --chat; a --config names its files itself")
    overrides = _overrides(**generation)
    results = sys.stdout
    # Anything a library prints while loading or generating goes to stderr; stdout is for results only.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            _run(model_dir, prompt, images, videos, config_path, output, batch_size, chat, overrides, results,
                 iteration, adapter)
        except ValueError as err:
            raise click.ClickException(str(err)) from err


def _run(model_dir, prompt, images, videos, config_path, output, batch_size, chat, overrides, results,
         iteration=None, adapter=None):
    from mmx import backend, infer

    requests = options = None
    if config_path:
        from mmx.infer import batch
        requests, options = batch.read_requests(config_path)   # validate before the (slow) model load
    print(f"mmx infer: loading {model_dir} on {backend.name()}", file=sys.stderr)
    pipeline = infer.load(model_dir, iteration, adapter)
    if chat:
        from mmx.infer import chat as chat_mode
        chat_mode.run(pipeline, sys.stdin, results, images, videos, **overrides)
    elif config_path:
        for key in batch.GENERATION_KEYS:       # the config's generation settings, unless an option set them
            if overrides.get(key) is None and key in options:
                overrides[key] = options[key]
        destination = output or options.get("output_path")
        size = batch_size or options.get("batch_size", 4)
        with (open(destination, "w") if destination else contextlib.nullcontext(results)) as out:
            batch.run(pipeline, requests, size, out, **overrides)
        if destination:
            print(f"mmx infer: {len(requests)} results written to {destination}", file=sys.stderr)
    else:
        reply = pipeline.generate([[infer.user_message(prompt, images, videos)]], **overrides)[0]
        results.write(reply.text + "\n")
        results.flush()
        timing = pipeline.last_result
        per_token = sum(timing.step_seconds) / max(len(timing.step_seconds), 1)
        print(f"mmx infer: {len(reply.token_ids)} tokens, stopped by {reply.finish_reason}; prefill "
              f"{timing.prefill_seconds:.2f} s, decode {1e3 * per_token:.1f} ms/token", file=sys.stderr)
