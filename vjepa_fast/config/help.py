"""The `--help` table of a config: every key with its type, default and meaning (schema.py's field comments)."""
from __future__ import annotations

import typing
from typing import Any, Optional

import yaml

from vjepa_fast.config.schema import Config, iter_keys, to_dict_value


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(typ))
    if typ is tuple or typing.get_origin(typ) is tuple:
        return "list"
    return {dict: "mapping"}.get(typ, getattr(typ, "__name__", str(typ)))


def help_table(cfg: Optional[Config] = None) -> str:
    """Every key with its type, default and meaning (for `--help`); `backends.<op>` lists each op's choices."""
    from vjepa_fast.ops import _backend

    rows = []
    for key, value, typ, meaning in iter_keys(cfg or Config()):
        op = key.removeprefix("backends.")
        if key.startswith("backends.") and op in _backend.op_names():
            meaning += ": auto, " + ", ".join(_backend.backend_names(op))
        shown = "null" if value is None else yaml.safe_dump(to_dict_value(value), default_flow_style=True).strip()
        rows.append((key, _type_name(typ), shown.removesuffix("\n..."), meaning))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {k:<{width[0]}}  {t:<{width[1]}}  {d:<{width[2]}}  {m}".rstrip() for k, t, d, m in rows)
