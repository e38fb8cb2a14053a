"""Render pytest-benchmark JSON (CPU or GPU) as a markdown summary.

    python benchmarks/render_summary.py BENCH.json [MORE.json ...] [--out summary.md] [--merged-json ALL.json]

One header (card, date, commit, software, measured roofline), then one table per benchmark group: the median time,
the derived figures each benchmark put in its extra_info (GB/s, TFLOP/s, fraction of roofline, clips/s, MFU, peak
memory, ...), and the speed relative to the group's baseline row (extra_info "baseline": true) measured in the same
run. Several JSON files (e.g. one per benchmark file, as benchmarks/gpu_check.sh writes them) are merged first;
--merged-json saves the merged file.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

# extra_info key(s) -> column title and format, in display order. Aliases cover the spellings benchmarks use.
FIGURES: list[tuple[tuple[str, ...], str, str]] = [
    # GPU kernels: the CUDA-event median (triton.testing.do_bench), the figure of record; `median` is wall clock
    (("median_ms",), "event median ms", "num"),
    (("batch_size",), "batch", "int"),
    (("gb_per_s", "gbps"), "GB/s", "num"),
    (("tflop_per_s", "tflops", "tflop_s"), "TFLOP/s", "num"),
    (("roofline", "roofline_fraction", "fraction_of_roofline"), "of roofline", "pct"),
    (("matmul_fraction",), "of matmul peak", "pct"),
    (("clips_per_s",), "clips/s", "num"),
    (("tokens_per_s",), "tokens/s", "num"),
    (("mfu",), "MFU", "pct"),
    (("peak_mem_gb",), "peak mem GB", "num"),
    (("fast_path_speedup",), "fast path speed-up", "x"),
    (("equal_tokens_speedup",), "equal-tokens speed-up", "x"),
]
HIDDEN = {"baseline", "description", "copy_gb_per_s"}  # shown elsewhere or per machine, not per row


def load(paths: list[str]) -> dict:
    """Read and merge pytest-benchmark JSON files: the first file's header, every file's benchmarks."""
    merged: Optional[dict] = None
    skipped = []
    for p in paths:
        # A run that selected no benchmark (e.g. PyAV missing) leaves an empty file: skip it, say so, go on.
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{p} ({e})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            skipped.append(f"{p} (not pytest-benchmark JSON: no 'benchmarks' list)")
            continue
        if merged is None:
            merged = dict(data, benchmarks=list(data["benchmarks"]))
        else:
            merged["benchmarks"].extend(data["benchmarks"])
            roof = data.get("machine_info", {}).get("roofline")
            if roof and not merged.get("machine_info", {}).get("roofline"):
                merged.setdefault("machine_info", {})["roofline"] = roof
    for line in skipped:
        print(f"render_summary: skipped {line}", file=sys.stderr)
    if merged is None:
        raise SystemExit("render_summary: no readable input files" + (f": {'; '.join(skipped)}" if skipped else ""))
    return merged


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_value(v: Any, kind: str) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "int":
        return str(int(v))
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _figure(extra: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in extra:
            return extra[k]
    return None


def _median(bench: dict) -> Optional[float]:
    stats = bench.get("stats") or {}
    return stats.get("median")


def find_baseline(bench: dict, baselines: list[dict]) -> Optional[dict]:
    """The baseline row sharing the most parameter values with `bench` (one per shape when a group has several)."""
    if not baselines:
        return None
    params = bench.get("params") or {}

    def shared(b: dict) -> int:
        return sum(1 for k, v in (b.get("params") or {}).items() if params.get(k) == v)

    return max(baselines, key=shared)  # max keeps the first of equals


def speed_ratio(bench: dict, base: dict) -> Optional[float]:
    """How many times faster than the baseline: by clips/s when both rows have it (batch sizes may differ), else
    by median time."""
    a, b = (bench.get("extra_info") or {}).get("clips_per_s"), (base.get("extra_info") or {}).get("clips_per_s")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    ma, mb = _median(bench), _median(base)
    if ma and mb:
        return mb / ma
    return None


def _groups(benchmarks: list[dict]) -> dict[str, list[dict]]:
    """Rows by benchmark group; rows without one are grouped by their test function."""
    out: dict[str, list[dict]] = {}
    for b in benchmarks:
        key = b.get("group") or (b.get("fullname") or b.get("name") or "?").split("[")[0].split("::")[-1]
        out.setdefault(key, []).append(b)
    return out


def header(data: dict) -> list[str]:
    m = data.get("machine_info") or {}
    c = data.get("commit_info") or {}
    card = m.get("card")
    if card and card != "cpu":
        extra = ", ".join(x for x in (f"{m['gpu_count']} GPU(s)" if m.get("gpu_count") else "",
                                      f"{m['gpu_memory_gb']} GiB" if m.get("gpu_memory_gb") else "") if x)
        machine = f"{card}" + (f" ({extra})" if extra else "")
    else:
        cpu = m.get("cpu") or {}
        machine = f"CPU: {cpu.get('brand_raw') or m.get('processor') or m.get('machine') or 'unknown'}" + (
            f" ({cpu['count']} cores)" if cpu.get("count") else "")
    commit = c.get("id", "unknown")[:12] if c else "unknown"
    if c.get("branch"):
        commit += f" ({c['branch']}{', uncommitted changes' if c.get('dirty') else ''})"
    soft = ", ".join(f"{k} {m[k]}" for k in ("torch", "cuda", "triton", "python_version") if m.get(k))
    lines = ["# Benchmark summary", "", f"- Machine: {machine}", f"- Date: {data.get('datetime', 'unknown')}",
             f"- Commit: {commit}"]
    if soft:
        lines.append(f"- Software: {soft}")
    roof = m.get("roofline")
    if roof:
        mm = roof.get("matmul_tflops")
        lines.append(f"- Measured roofline: copy {fmt_value(roof.get('copy_gb_per_s'), 'num')} GB/s, matmul "
                     + (f"{fmt_value(mm, 'num')} TFLOP/s ({roof.get('matmul_shape')})" if mm else "not measured"))
    lines.append("")
    return lines


def table(group: str, rows: list[dict]) -> list[str]:
    baselines = [b for b in rows if (b.get("extra_info") or {}).get("baseline") is True]
    cols = [(keys, title, kind) for keys, title, kind in FIGURES
            if any(_figure(b.get("extra_info") or {}, keys) is not None for b in rows)]
    titles = ["benchmark", "median", "rounds"] + [t for _, t, _ in cols]
    if baselines:
        titles.append("speed vs baseline")
    lines = [f"## {group}", "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for b in rows:
        extra = b.get("extra_info") or {}
        name = b.get("name") or b.get("fullname") or "?"
        cells = [f"`{name}`", fmt_time(_median(b)), str((b.get("stats") or {}).get("rounds", "-"))]
        cells += [fmt_value(_figure(extra, keys), kind) for keys, _, kind in cols]
        if baselines:
            if extra.get("baseline") is True:
                cells.append("baseline")
            else:
                base = find_baseline(b, baselines)
                cells.append(fmt_value(speed_ratio(b, base), "x") if base else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += notes(rows)
    return lines


def notes(rows: list[dict]) -> list[str]:
    """The rest of extra_info: settings every row shares once, then what is particular to each row."""
    shown = {k for keys, _, _ in FIGURES for k in keys} | HIDDEN
    rest = [{k: v for k, v in (b.get("extra_info") or {}).items() if k not in shown} for b in rows]
    common = {k: v for k, v in rest[0].items() if len(rows) > 1 and all(r.get(k, object()) == v for r in rest)}
    out = []
    if common:
        out.append("- all rows: " + ", ".join(f"{k}={v}" for k, v in common.items()))
    for b, r in zip(rows, rest):
        desc = (b.get("extra_info") or {}).get("description")
        own = [f"{k}={v}" for k, v in r.items() if k not in common]
        if own or desc:
            out.append(f"- `{b.get('name', '?')}`: " + (f"{desc}" if desc else "") + ("; " if desc and own else "")
                       + ", ".join(own))
    return out + [""] if out else []


def render(data: dict) -> str:
    lines = header(data)
    benches = data.get("benchmarks") or []
    if not benches:
        lines.append("No benchmark results in this file.")
    for group, rows in _groups(benches).items():
        lines += table(group, rows)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json output)")
    parser.add_argument("--out", help="write the markdown here (default: stdout)")
    parser.add_argument("--merged-json", help="also save the merged JSON here")
    args = parser.parse_args(argv)
    data = load(args.json)
    text = render(data)
    if args.merged_json:
        Path(args.merged_json).write_text(json.dumps(data, indent=2) + "\n")
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
