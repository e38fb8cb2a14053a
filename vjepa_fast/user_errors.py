"""Errors a user causes and can fix: the one way a run turns a failure into one of them (`translated`), and the one
way every entry point (train, export, eval, bench_quality, feature_stats) turns them into a line on stderr and an exit
code (`exit_code`): a config or command-line error prints `config error: ...` and exits with 2, any other fixable
error prints `error: <its last line>` and exits with 1; with --debug the traceback comes instead."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional

CONFIG_ERROR_EXIT_CODE = 2
USER_ERROR_EXIT_CODE = 1


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
    from vjepa_fast.config import ConfigError
    from vjepa_fast.run.preflight import one_line

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
