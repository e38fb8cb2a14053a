"""The README's commands run exactly as written, in the README's order, from a fresh copy of the checkout after the
quick start, on the tiny default: the fenced `bash` blocks (a line joined with its `\\` continuations; `a && b` as its
parts) and the fenced `python` blocks. A few are too long or need GPUs and data: SKIP names each, with the reason, and
every entry must still match a README command, so a stale one fails here. The docs' commands (docs/*.md) mostly need
GPUs or published weights; for them every recipe (`--config`) and every file of this repository they name must exist.

The copy is a temporary folder of links to this checkout's files (its `runs/` starts empty) with `.venv` linking to
the environment running the tests, so the commands neither see nor touch a run of the user's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vjepa_fast.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

PROBES = ("5-18 minutes (three 20-epoch probes on 5000 clips); tests/test_eval.py runs the same entry point and "
          "options on short probes")
SKIP = {
    "bash scripts/setup.sh":
        "the set-up itself: CI's first step (.ci/run); the environment running these tests is the one it made",
    ".venv/bin/pytest tests": "the test command: CI (.ci/run) runs it, and this test is part of it",
    ".venv/bin/torchrun --nproc_per_node=8 vjepa_fast/train.py --config vitl16 data.path=/data/k400/train.txt":
        "8 GPUs and a Kinetics index file",
    ".venv/bin/python -m vjepa_fast.eval --checkpoint runs/tiny --label motion --seeds 3 "
    "--out runs/tiny/probe_motion.json":
        PROBES,
    ".venv/bin/python -m vjepa_fast.eval --label motion --seeds 3 --out runs/tiny/probe_motion_random.json":
        PROBES,
    ".venv/bin/python -m vjepa_fast.eval --checkpoint runs/tiny --label appearance --seeds 3 "
    "--out runs/tiny/probe_appearance.json":
        PROBES,
    ".venv/bin/python -m vjepa_fast.eval --label appearance --seeds 3 --out runs/tiny/probe_appearance_random.json":
        PROBES,
}
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1).strip().lower(), m.group(2))
            for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, flags=re.M | re.S)]


def strip_comment(line: str) -> str:
    """The command without a trailing comment (a `#` after whitespace; the README's commands quote no `#`)."""
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment lines dropped, `a && b` split in parts."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.extend(part.strip() for part in strip_comment(line).split(" && "))
    return out


def readme_commands() -> list[tuple[str, str]]:
    """("shell" | "python", command) in README order."""
    out = []
    for lang, body in fenced_blocks(README.read_text()):
        if lang in SHELL_LANGS:
            out.extend(("shell", c) for c in shell_commands(body))
        elif lang == "python":
            out.append(("python", body))
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands_and_every_skip_entry_is_one_of_them():
    shell = [c for kind, c in COMMANDS if kind == "shell"]
    assert len(shell) >= 8 and any("vjepa_fast/train.py run_dir=runs/tiny" in c for c in shell)
    stale = sorted(set(SKIP) - set(shell))
    assert not stale, f"SKIP names commands the README no longer has: {stale}"


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """A folder that looks like a fresh clone after the quick start's set-up: links to this checkout, no runs/."""
    root = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in {".venv", "runs", ".git"}:
            (root / entry.name).symlink_to(entry)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


@pytest.mark.parametrize("kind, command", COMMANDS, ids=[f"{i:02d}" for i in range(len(COMMANDS))])
def test_readme_command_runs_as_written(kind, command, fresh_copy, subprocess_env):
    if command in SKIP:
        pytest.skip(SKIP[command])
    argv = ["bash", "-c", command] if kind == "shell" else [".venv/bin/python", "-c", command]
    proc = subprocess.run(argv, cwd=fresh_copy, capture_output=True, text=True, env=subprocess_env, timeout=1200)
    assert proc.returncode == 0, f"{command}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    if "vjepa_fast/train.py run_dir=runs/tiny" in command:  # the quick start: the whole default run
        run = fresh_copy / "runs/tiny"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = load_config("tiny").train.steps  # the bare run's recipe
        assert rows[-1]["step"] == steps - 1 and (run / "plots/curves.png").is_file()
        assert (run / "checkpoints" / f"step_{steps:08d}").is_dir()
        # it learns its objective: the last tenth's mean loss well under the first five logged steps' (measured 0.775)
        first = sum(r["loss"] for r in rows[:5]) / 5
        tenth = max(1, len(rows) // 10)
        assert sum(r["loss"] for r in rows[-tenth:]) / tenth <= 0.85 * first
    if "--out " in command:  # whatever a command says it writes is there
        assert (fresh_copy / command.split("--out ", 1)[1].split()[0]).exists()


def _doc_shell_lines() -> list[tuple[str, str]]:
    out = []
    for doc in [README, *DOCS]:
        for lang, body in fenced_blocks(doc.read_text()):
            if lang in SHELL_LANGS:
                out.extend((doc.name, line) for line in re.sub(r"\\\n\s*", " ", body).splitlines()
                           if line.strip() and not line.strip().startswith("#"))
    return out


def test_docs_name_recipes_and_files_that_exist():
    from vjepa_fast.config import ConfigError, resolve_config_path

    lines = _doc_shell_lines()
    assert lines
    for doc, line in lines:
        for name in re.findall(r"--config[ =](\S+)", line):
            if name != "...":
                try:
                    resolve_config_path(name)
                except ConfigError as e:
                    pytest.fail(f"{doc}: {line.strip()}: {e}")
        for path in re.findall(r"(?<![\w/.])((?:scripts|configs|benchmarks|tests|vjepa_fast)/[\w./-]+\.\w+)", line):
            assert (ROOT / path).exists(), f"{doc}: {line.strip()}: {path} does not exist"
        first = line.split()[0]
        assert first not in {"python", "python3", "pytest", "pip"}, (
            f"{doc}: {line.strip()}: run the set-up's tools (.venv/bin/{first}) as the README does")
