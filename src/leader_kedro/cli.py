"""Project CLI: ``kedro run`` (and ``python -m leader_kedro``) with one clear message per known error.

Kedro lets a project's ``cli.py`` override its commands. This ``run`` is Kedro's own, with the same
options, wrapped so that the project's own error types (:data:`leader_kedro.contracts.USER_ERRORS`:
bad raw input, a bad parameter, a missing, damaged or stale artifact) end the command with their
message on stderr and exit code 1, instead of a 300-line traceback. Their message already names
the file, column, parameter or artifact and the command that fixes it. The full traceback goes
to the log file (``conf/logging.yml``: ``logs/info.log``). Any other exception is a bug: it is
logged the same way and then raised as before, traceback and all.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as _kedro_run

from leader_kedro.contracts import USER_ERRORS

logger = logging.getLogger(__name__)


@click.group(name="leader_kedro")
def cli() -> None:
    """leader_kedro project commands."""


def _run(**kwargs: Any) -> Any:
    assert _kedro_run.callback is not None
    try:
        return _kedro_run.callback(**kwargs)
    except USER_ERRORS as exc:
        where = log_traceback(exc)
        click.secho(f"Error: {exc}", err=True, fg="red")
        click.echo(f"The full traceback is in {where}.", err=True)
        sys.exit(1)
    except Exception as exc:
        log_traceback(exc)
        raise


run = click.Command(
    name="run",
    callback=_run,
    params=list(_kedro_run.params),
    help=_kedro_run.help,
    short_help=_kedro_run.short_help,
)
cli.add_command(run)


def log_traceback(exc: BaseException) -> str:
    """Write ``exc`` with its traceback to every log file of the root logger; returns where.

    Only file handlers get the record: the console keeps the one-line message. Without a file
    handler (a logging config without one), the traceback goes to ``logs/last_error.log``.
    """
    record = logging.LogRecord(
        name=__name__,
        level=logging.ERROR,
        pathname=__file__,
        lineno=0,
        msg="kedro run failed: %s",
        args=(exc,),
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
        handler.flush()
    if files:
        return _relative(Path(files[0].baseFilename))
    fallback = Path.cwd() / "logs" / "last_error.log"
    fallback.parent.mkdir(parents=True, exist_ok=True)
    fallback.write_text("".join(traceback.format_exception(exc)))
    return _relative(fallback)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
