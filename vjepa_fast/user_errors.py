"""Errors a user causes and can fix: `RunError` (one line naming the problem and the fix; every floor may raise it,
so this module imports nothing of the project but the config schema), the one way a run turns a failure into one of
them (`translated`), and the one way every entry point (train, export, eval, bench_quality, feature_stats) turns them
into a line on stderr and an exit code (`exit_code`): a config or command-line error prints `config error: ...` and
exits with 2, any other fixable error prints `error: <its last line>` and exits with 1; with --debug the traceback
comes instead."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional

from vjepa_fast.config.schema import ConfigError, single_line

CONFIG_ERROR_EXIT_CODE = 2
USER_ERROR_EXIT_CODE = 1


class RunError(RuntimeError):
    """A failure the user can fix; the message is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(single_line(str(message)))


def one_line(e: BaseException) -> str:
    """The last non-empty line of an error (a loader worker's error carries the worker's traceback before it)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return single_line(lines[-1]) if lines else type(e).__name__


@contextlib.contextmanager
def translated(catch: tuple[type[BaseException], ...], translate: Callable[[BaseException], Optional[Exception]],
               keep: tuple[type[BaseException], ...] = (), chain: bool = False) -> Iterator[None]:
    """Run the body; an error of `catch` leaves as the one-line error `translate` makes of it (None: not one it
    knows, re-raised as it was). Errors of `keep` are already the user's and pass unchanged. `chain` keeps the
    original as the cause (shown by --debug), otherwise the one line replaces it."""
    try:
        yield
    except keep:
        raise
    except catch as e:
        err = translate(e)
        if err is None:
            raise
        raise err from (e if chain else None)


def exit_code(body: Callable[[], int], fixable: tuple[type[BaseException], ...] = (), debug: bool = False,
              config_errors: Optional[tuple[type[BaseException], ...]] = None) -> int:
    """body()'s exit code, or the code of the fixable error it raised, after printing that error's line.
    `config_errors` (default: ConfigError) are the config's or the command line's; a ConfigError raised once the
    config was accepted (e.g. a mesh that does not fit the processes) belongs in `fixable` with config_errors=()."""
    config = (ConfigError,) if config_errors is None else config_errors
    try:
        return body()
    except config as e:
        if debug:
            raise
        print(f"config error: {e}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    except fixable as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
