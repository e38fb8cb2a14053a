"""Export weights: `python -m vjepa_fast.export RUN_OR_FILE --format {safetensors,reference,hf} --out PATH
[--online] [--predictor] [key=value ...]`.

RUN_OR_FILE is anything vjepa_fast.weights reads (a run directory, a training checkpoint, a reference file, a
Hugging Face directory, a safetensors file). The target (EMA) encoder is exported unless --online; --predictor adds
the predictor (always included for hf, whose VJEPA2Model holds one). Formats (docs/weights.md):
- safetensors: one file, the model config in its metadata (vjepa_fast.load_encoder reads it back alone);
- reference: the original code's layout (encoder / target_encoder / predictor dicts, module.backbone. prefixes);
- hf: a directory transformers' VJEPA2Model.from_pretrained loads (rotary models, model.pos_embed=rope, only:
  VJEPA2Model has no position table), or VideoMAEModel for the VideoMAE baseline.
Overrides (anywhere on the line) name ModelArch fields for files that cannot tell them, e.g. num_heads=16.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from vjepa_fast.config import parse_override

FORMATS = ("safetensors", "reference", "hf")


def parse_args(argv: Optional[list[str]]):
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run dir, checkpoint, reference file, Hugging Face dir or safetensors file")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (safetensors, reference) or directory (hf)")
    p.add_argument("--online", action="store_true", help="export the online encoder, not the EMA target")
    p.add_argument("--predictor", action="store_true", help="include the predictor")
    p.add_argument("overrides", nargs="*", help="ModelArch fields the file cannot tell, e.g. num_heads=16")
    return p.parse_intermixed_args(argv)  # key=value overrides anywhere, as train takes them


def export(source: str, fmt: str, out: str, online: bool = False, predictor: bool = False,
           overrides: Optional[dict] = None) -> str:
    """Write the export; returns a one-line summary."""
    from vjepa_fast.weights import read_weights
    from vjepa_fast.models.arch import CheckpointFormatError
    from vjepa_fast.weights.load import pick_encoder, resolve_arch
    from vjepa_fast.weights.write import write_hf, write_reference, write_safetensors

    if fmt == "safetensors" and not out.endswith(".safetensors"):  # refused before any work
        raise CheckpointFormatError(f"--out {out}: a safetensors export is read back by its name, so it must end in "
                                    f".safetensors")
    w = read_weights(source)
    which, encoder = pick_encoder(w, online)
    arch = resolve_arch(w, encoder, None, overrides)[0]
    enc_part = "encoder" if which == "online" else "target_encoder"
    videomae = arch.method == "videomae"
    pred_part = "decoder" if videomae else "predictor"
    want_predictor = predictor or (fmt == "hf" and not videomae)  # VJEPA2Model holds a predictor, VideoMAEModel not
    pred = w.parts.get(pred_part) if want_predictor else None
    if predictor and pred is None:
        raise CheckpointFormatError(f"{w.format} {w.source}: has no {pred_part} to export")
    if videomae and fmt == "hf" and pred is not None:
        raise CheckpointFormatError("--predictor: the Hugging Face VideoMAEModel holds the encoder only")
    if arch.pos_embed == "rope":  # a rotary model has no position table: a stray one (formats.py warned) stays out
        encoder = {k: v for k, v in encoder.items() if k != "pos_embed"}
        pred = {k: v for k, v in pred.items() if k != "predictor_pos_embed"} if pred is not None else None
    parts = {enc_part: encoder, **({pred_part: pred} if pred is not None else {})}
    if fmt == "safetensors":
        write_safetensors(parts, arch, out)
    elif fmt == "reference":
        write_reference(parts, out)
    else:
        write_hf(encoder, pred, arch, out)
    what = f"the {which} encoder" + (f" and the {pred_part}" if pred is not None else "")
    return f"exported {what} of {w.format} {w.source} as {fmt} to {out}"


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    from vjepa_fast.user_errors import exit_code
    from vjepa_fast.models.arch import CheckpointFormatError

    def body() -> int:
        overrides = dict(parse_override(o) for o in a.overrides)
        print(export(a.source, a.format, a.out, a.online, a.predictor, overrides))
        return 0

    return exit_code(body, (CheckpointFormatError, FileNotFoundError, OSError))


if __name__ == "__main__":
    sys.exit(main())
