"""Drawing a run's pictures, RUN_DIR/plots/{curves,masks}.png; what each shows and the command that draws them:
vjepa_fast/plots.py. TensorBoard (tb_log.py) shows the same mask overlays."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vjepa_fast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# (metrics.jsonl keys drawn together, panel title); a panel is drawn when the run recorded any of its keys.
CURVES = ((("loss",), "loss"), (("lr",), "learning rate"), (("ema_momentum",), "EMA momentum"),
          (("clips_per_s",), "clips/s"), (("mfu",), "MFU"),
          (("target_std", "pred_std"), "feature spread in a clip (collapse: towards 0)"),
          (("target_rank", "context_rank"), "effective rank of the features"))
# Target tokens get diagonal black-and-white hatching over the frame: the synthetic videos use every hue (saturated
# objects over muted backgrounds of any colour), so a colour tint can always be mistaken for some clip's content, a
# stripe pattern of both extremes cannot.
HATCH_PERIOD = 6  # pixels between stripes of one colour, along the diagonal
DIM = 0.25  # brightness kept by tokens that are in neither set
MISSING = "matplotlib is not installed: pip install -e .[plots] (or pip install matplotlib)"


class PlotError(RuntimeError):
    """A one-line reason the pictures cannot be drawn."""


def to_rgb(video: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] (ImageNet-normalised) -> float [T, H, W, 3] in [0, 1]."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (video.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 3, 0).numpy()


def overlay(frames: np.ndarray, ctx: np.ndarray, tgt: np.ndarray, grid: Sequence[int], tubelet: int) -> np.ndarray:
    """One picture per token time step (its first frame): [T', H, W, 3] with the tokens of `tgt` hatched (a white and a
    black diagonal line every HATCH_PERIOD pixels, the frame visible between them) and tokens in neither set dimmed.
    ctx / tgt: flat token indices t' * H'W' + h' * W' + w'."""
    Tg, Hg, Wg = grid
    kind = np.zeros(Tg * Hg * Wg, dtype=np.int8)  # 0: neither, 1: context, 2: target
    kind[np.asarray(ctx, dtype=np.int64)] = 1
    kind[np.asarray(tgt, dtype=np.int64)] = 2
    kind = kind.reshape(Tg, Hg, Wg)
    pics = frames[::tubelet][:Tg].copy()
    ph, pw = pics.shape[1] // Hg, pics.shape[2] // Wg
    cells = np.repeat(np.repeat(kind, ph, axis=1), pw, axis=2)[..., None]  # token kind per pixel
    diag = (np.arange(pics.shape[1])[:, None] + np.arange(pics.shape[2])[None, :]) % HATCH_PERIOD
    stripe = np.where(diag == 0, 1.0, np.where(diag == HATCH_PERIOD // 2, 0.0, np.nan))[None, ..., None]  # [1, H, W, 1]
    hatched = np.where(np.isnan(stripe), pics, stripe)
    pics = np.where(cells == 2, hatched, pics)
    pics = np.where(cells == 0, DIM * pics, pics)
    return pics


def sample_masks(packed, b: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(context, target) token indices of clip b for each mask configuration of a PackedMasks batch."""
    B, N = packed.batch_size, packed.num_tokens
    out = []
    for m in range(packed.num_masks):
        s = m * B + b
        ctx = packed.ctx_rows[packed.ctx_cu[s]:packed.ctx_cu[s + 1]].cpu().numpy() - b * N
        tgt = packed.tgt_rows[packed.tgt_cu[s]:packed.tgt_cu[s + 1]].cpu().numpy() - b * N
        out.append((ctx, tgt))
    return out


def mask_names(cfg) -> list[str]:
    k = cfg.masks
    if cfg.method == "videomae":
        return [f"tubes, {k.tube_ratio:.0%} masked"]
    return [f"short range: {k.short_blocks} blocks x {k.short_scale:g}", f"long range: {k.long_blocks} blocks x "
            f"{k.long_scale:g}"]


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING) from None
    return Figure


def _mask_legend() -> list:
    from matplotlib.patches import Patch

    return [Patch(facecolor="white", edgecolor="black", hatch="////", label="target: the predictor fills these in"),
            Patch(facecolor="0.6", edgecolor="black", label="context: what the encoder sees (as is)"),
            Patch(facecolor=str(0.6 * DIM), edgecolor="black", label="neither (dimmed)")]


def draw_masks(cfg, out: Path, step: int = 0) -> Path:
    """masks.png for the first clip of the run's data, with the masks the run draws for it at `step`."""
    from vjepa_fast.data.loader import build_dataset
    from vjepa_fast.masks import pack_masks
    from vjepa_fast.models.build import build_masker

    Figure = _figure()
    m, d = cfg.model, cfg.data
    grid = (d.num_frames // m.tubelet_size, d.crop_size // m.patch_size, d.crop_size // m.patch_size)
    video = build_dataset(d, cfg.train.seed)[0]["video"]
    if video.dim() == 5:  # several clips per video: the first
        video = video[0]
    packed = pack_masks(build_masker(cfg, grid).sample(step, [0]), grid[0] * grid[1] * grid[2])
    frames = to_rgb(video)
    rows = [overlay(frames, ctx, tgt, grid, m.tubelet_size) for ctx, tgt in sample_masks(packed)]
    cols = min(4, grid[0])
    fig = Figure(figsize=(2.2 * cols, 2.7 * len(rows) + 0.3))
    names = mask_names(cfg)
    for r, (pics, (ctx, tgt)) in enumerate(zip(rows, sample_masks(packed))):
        for c in range(cols):
            t = c * grid[0] // cols
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(pics[t], interpolation="nearest")  # crisp pixels: the stripes and token edges stay sharp
            # token boundaries as thin lines: the grid the masks are drawn on
            ax.set_xticks(np.arange(0, pics.shape[2] + 1, m.patch_size) - 0.5)
            ax.set_yticks(np.arange(0, pics.shape[1] + 1, m.patch_size) - 0.5)
            ax.tick_params(length=0, labelbottom=False, labelleft=False)
            ax.grid(color="white", linewidth=0.3, alpha=0.6)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=8)
            ax.set_title(f"frame {t * m.tubelet_size}" + (f"\n{len(ctx)} context, {len(tgt)} target tokens"
                                                         if c == 0 else ""), fontsize=7)
    fig.suptitle(f"{cfg.method} masks of one clip", fontsize=9)
    fig.legend(handles=_mask_legend(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = out / "masks.png"
    fig.savefig(path, dpi=110)
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a kill
    return rows


def curve_panels(rows: list[dict]) -> list[tuple[str, list[tuple[str, list]]]]:
    """(title, [(key, [(step, value), ...]), ...]) of every panel with data, in CURVES order."""
    panels = []
    for keys, title in CURVES:
        lines = [(key, [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
                        and not isinstance(r.get(key), bool)]) for key in keys]
        lines = [(key, pts) for key, pts in lines if pts]
        if lines:
            panels.append((title, lines))
    return panels


def curves_figure(rows: list[dict], collapse_std: Optional[float] = None):
    """The curves as a matplotlib Figure (three panels a row); `collapse_std` draws the collapse warning line."""
    Figure = _figure()
    if not rows:
        raise PlotError("metrics.jsonl has no rows yet: nothing to plot")
    panels = curve_panels(rows)
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.7 * cols, 3.0 * nrows))
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for key, pts in lines:
            ax.plot(*zip(*pts), lw=1.2, label=key)
        keys = [key for key, _ in lines]
        if "target_std" in keys and collapse_std:
            ax.axhline(collapse_std, color="0.4", lw=0.8, ls="--", label=f"train.collapse_std={collapse_std:g}")
        if len(lines) > 1 or "target_std" in keys:
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if keys == ["loss"]:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def draw_curves(rows: list[dict], out: Path, collapse_std: Optional[float] = None) -> Path:
    path = out / "curves.png"
    curves_figure(rows, collapse_std).savefig(path, dpi=110)
    return path


def draw_run(run_dir: Path) -> list[Path]:
    from vjepa_fast.config import ConfigError, load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise PlotError(f"{run_dir} is not a run directory (no config.yaml)")
    try:
        cfg = load_config(str(run_dir / "config.yaml"))
    except ConfigError as e:
        raise PlotError(f"{run_dir / 'config.yaml'}: {e}") from None
    _figure()
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [draw_masks(cfg, out)]
    rows = read_metrics(run_dir)
    if rows:
        paths.append(draw_curves(rows, out, getattr(cfg.train, "collapse_std", None)))
    return paths


def finish_outputs(run_dir: Path, plots: bool) -> list[str]:
    """What a finished run left in its run dir (for the end summary), drawing plots/ first when asked and possible."""
    outputs = [str(run_dir / n) for n in ("config.yaml", "metrics.jsonl", "checkpoints") if (run_dir / n).exists()]
    if (run_dir / "tb").is_dir():
        outputs.append(str(run_dir / "tb"))
    if plots:
        try:
            draw_run(run_dir)
            outputs.append(str(run_dir / "plots"))
        except PlotError as e:
            log.info("no plots: %s", e)
        except Exception as e:  # pictures are a bonus: never fail a finished run over them
            log.warning("plots failed (%s: %s); draw them later with python -m vjepa_fast.plots %s",
                        type(e).__name__, e, run_dir)
    return outputs
