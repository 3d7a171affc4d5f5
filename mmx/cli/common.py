"""Options shared by every ``mmx`` command."""
import click


def _apply_backend(ctx, param, value):
    if value is not None:
        from mmx import backend
        try:
            backend.set_backend(value)
        except backend.BackendError as err:
            raise click.BadParameter(str(err), ctx=ctx, param=param) from err
    return value


def backend_option(command):
    """``--backend {torch,mindspore}``: overrides MMX_BACKEND for this process; applied before the command runs."""
    return click.option("--backend", type=click.Choice(["torch", "mindspore"]), default=None, expose_value=False,
                        is_eager=True, callback=_apply_backend,
                        help="Framework to run on (default: $MMX_BACKEND or torch).")(command)
