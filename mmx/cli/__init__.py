"""The ``mmx`` command line (click). Each command group lives in its own module and is registered here.

Commands import models and backends inside their bodies, after ``--backend`` has been applied, so that the backend
is chosen before anything framework-specific is loaded (ARCHITECTURE rule 1).
"""
import click

import mmx
from mmx.cli.common import MmxGroup, backend_option


@click.group(cls=MmxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mmx.__version__, prog_name="mmx")
@click.option("--debug", is_flag=True, expose_value=False,
              help="Show the traceback of an error (also accepted after the command, or MMX_DEBUG=1).")
def main():
    """Fine-tune vision-language models on PyTorch or MindSpore from one model definition.

    A mistake in a command line, config or data file ends in one line naming the file / key / sample and the fix,
    with exit status 2; --debug shows the traceback.
    """


@main.command("backends")
@backend_option
def backends_command():
    """List each backend: whether it imports, its version and the devices it sees."""
    from mmx import backend

    working = 0
    for name in backend.BACKENDS:
        ok, version, devices, error = backend.probe(name)
        working += ok
        if ok:
            click.echo(f"{name:10s} ok       {version:12s} devices: {', '.join(devices)}")
        else:
            click.echo(f"{name:10s} missing  {error}\n{'':10s} install: {backend.INSTALL_HINT[name]}")
    if not working:
        raise click.ClickException("no backend imports; install one (see above)")


from mmx.cli.convert_cmd import convert_group  # noqa: E402 - command groups register after main exists

main.add_command(convert_group)

from mmx.cli.verify_cmd import verify_command  # noqa: E402

main.add_command(verify_command)

from mmx.cli.data_cmd import data_group  # noqa: E402

main.add_command(data_group)

from mmx.cli.infer_cmd import infer_command  # noqa: E402

main.add_command(infer_command)

from mmx.cli.train_cmd import demo_command, finetune_command  # noqa: E402

main.add_command(finetune_command)
main.add_command(demo_command)
