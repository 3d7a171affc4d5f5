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


# ---------------------------------------------------------------------------------------------------------------
# One error path: a user mistake ends in one line (``Error: <file / key / sample>: <problem>; <fix>``) and exit
# status 2, never a traceback; ``--debug`` (anywhere on the command line) or MMX_DEBUG=1 shows the traceback instead.
# ---------------------------------------------------------------------------------------------------------------

USER_ERROR_EXIT = 2
# OSError numbers that are the user's environment, not a bug: a full disk or quota, no permission, a read-only file
# system, a missing file, a file where a directory was expected (and the reverse)
USER_OS_ERRORS = {"ENOSPC": "the disk is full: free space (or write somewhere else) and run again",
                  "EDQUOT": "the disk quota is exceeded: free space (or write somewhere else) and run again",
                  "EACCES": "permission denied: choose a path you can write (or fix its permissions)",
                  "EPERM": "permission denied: choose a path you can write (or fix its permissions)",
                  "EROFS": "the file system is read-only: write somewhere else",
                  "ENOENT": "no such file or directory: check the path",
                  "ENOTDIR": "a file is in the way where a directory is expected: check the path",
                  "EISDIR": "a directory was given where a file is expected: check the path"}


def user_error_message(err):
    """The one-line message of a user mistake ``err``, or None when ``err`` is not one (a bug: traceback)."""
    import errno

    from mmx.backend import BackendError

    if isinstance(err, UnicodeDecodeError):   # a ValueError that names no file: the readers name it where they can
        return (f"a file is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 "
                f"(e.g. iconv -f latin1 -t utf-8)")
    if isinstance(err, OSError) and errno.errorcode.get(err.errno) in USER_OS_ERRORS:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{USER_OS_ERRORS[errno.errorcode[err.errno]]} ({err.strerror or err})"
    if isinstance(err, (ValueError, KeyError, FileNotFoundError, BackendError)):
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        return " ".join(text.split())   # one line
    return None


def debug_requested(args):
    """(args without ``--debug``, whether it was given or MMX_DEBUG is set)."""
    import os

    args = list(args)
    debug = "--debug" in args or os.environ.get("MMX_DEBUG", "") not in ("", "0")
    return [arg for arg in args if arg != "--debug"], debug


class MmxGroup(click.Group):
    """The ``mmx`` group: every command's user mistakes leave through :func:`user_error_message` (exit 2)."""

    def parse_args(self, ctx, args):
        args, ctx.meta["mmx_debug"] = debug_requested(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.UsageError):
            raise
        except click.ClickException as err:
            cause = err.__cause__
            if ctx.meta.get("mmx_debug") and cause is not None:
                raise cause
            err.exit_code = USER_ERROR_EXIT
            raise
        except Exception as err:  # noqa: BLE001 - sorted into user mistakes (one line) and bugs (traceback)
            message = None if ctx.meta.get("mmx_debug") else user_error_message(err)
            if message is None:
                raise
            raise UserError(message) from err


class UserError(click.ClickException):
    """A user mistake: ``Error: <message>`` on stderr, exit status 2."""

    exit_code = USER_ERROR_EXIT
