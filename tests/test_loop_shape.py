"""The training loop stays readable (no function in train.py over 50 lines, no manual profiler enter/exit), and the
shared error helpers (vjepa_fast/user_errors.py) map and translate errors as every entry point relies on."""
import ast
import errno
from pathlib import Path

import pytest

from vjepa_fast import train
from vjepa_fast.config import ConfigError
from vjepa_fast.user_errors import CONFIG_ERROR_EXIT_CODE, USER_ERROR_EXIT_CODE, exit_code, translated

TRAIN = Path(train.__file__)
MAX_FUNCTION_LINES = 50


def test_no_function_in_train_py_is_longer_than_50_lines():
    tree = ast.parse(TRAIN.read_text())
    lengths = {f"{n.name}:{n.lineno}": n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert len(lengths) > 10  # the scan sees the module's functions and methods
    too_long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines in {TRAIN.name}: {too_long}"


def test_train_py_enters_no_context_by_hand():
    calls = [n.func.attr for n in ast.walk(ast.parse(TRAIN.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert "__enter__" not in calls and "__exit__" not in calls


def _raising(e: BaseException):
    def body() -> int:
        raise e
    return body


def test_exit_code_maps_config_and_user_errors(capsys):
    assert exit_code(lambda: 7) == 7
    assert exit_code(_raising(ConfigError("train.steps: must be >= 1")), (FileNotFoundError,)) == CONFIG_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "config error: train.steps: must be >= 1\n"
    worker = RuntimeError("Traceback (most recent call last):\n  File x\nDataLoadError: clip.mp4 unreadable")
    assert exit_code(_raising(worker), (RuntimeError,)) == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "error: DataLoadError: clip.mp4 unreadable\n"  # the last line only
    # after the config was accepted, a ConfigError is one of the run's errors
    assert exit_code(_raising(ConfigError("mesh")), (ConfigError,), config_errors=()) == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "error: mesh\n"
    with pytest.raises(ValueError):  # not a fixable error: the traceback
        exit_code(_raising(ValueError("bug")), (FileNotFoundError,))
    with pytest.raises(ConfigError):  # --debug: the traceback instead of the line
        exit_code(_raising(ConfigError("x")), debug=True)


class Translated(RuntimeError):
    pass


def _to_translated(e):
    return Translated(f"one line for {e}") if isinstance(e, OSError) and e.errno == errno.ENOSPC else None


def test_translated_replaces_known_errors_and_passes_the_rest():
    with pytest.raises(Translated, match="one line for") as info:
        with translated((OSError,), _to_translated):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(Translated) as info:
        with translated((OSError,), _to_translated, chain=True):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(PermissionError):  # translate gives None: the original
        with translated((OSError,), _to_translated):
            raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(FileNotFoundError):  # kept: already the user's error
        with translated((OSError,), lambda e: Translated("no"), keep=(FileNotFoundError,)):
            raise FileNotFoundError("missing")
    with translated((OSError,), _to_translated):
        pass
