"""The ``mmx`` command line (click). Each command group lives in its own module and is registered here.

Commands import models and backends inside their bodies, after ``--backend`` has been applied, so that the backend
is chosen before anything framework-specific is loaded (ARCHITECTURE rule 1).
"""
import click

import mmx
from mmx.cli.common import backend_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mmx.__version__, prog_name="mmx")
def main():
    """Fine-tune vision-language models on PyTorch or MindSpore from one model definition."""


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
