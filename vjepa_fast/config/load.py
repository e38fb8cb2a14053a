"""Reading a config: defaults, then a YAML file (with its `base:` chain), then dotted `key=value` overrides, each
value coerced to its key's type and an unknown key answered with the nearest valid ones; then validated
(checks.py). Writing one back (config.yaml of a run)."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from vjepa_fast.config.checks import validate
from vjepa_fast.config.schema import Config, ConfigError, iter_keys, to_dict

PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---- reading values ------------------------------------------------------------------------------------------------
def _number(value: Any, key: str) -> float:
    """A float from a YAML value; YAML 1.1 reads `1e-4` (no dot) as a string, so numeric strings count."""
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", "")) if value.strip() else value
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's annotated type."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        return _integer(value, key)
    if typ is float:
        return _number(value, key)
    if typ is str:
        if isinstance(value, bool):  # `train.tensorboard=true`: YAML's boolean read back as the word
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typ is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(typ)[0] if typing.get_args(typ) else None
        return tuple(_coerce(v, item, key) for v in value) if item is not None else tuple(value)
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _unknown_key(dotted: str) -> ConfigError:
    """The error for a key that does not exist, naming the nearest valid keys (a typo in a key or in its section)."""
    keys = [key for key, *_ in iter_keys(Config())]
    near = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    if not near:  # a right name in the wrong section (`steps` for `train.steps`): compare the last parts only
        last = dotted.rsplit(".", 1)[-1]
        by_last = {}
        for key in keys:
            by_last.setdefault(key.rsplit(".", 1)[-1], []).append(key)
        near = [key for name in difflib.get_close_matches(last, list(by_last), n=3, cutoff=0.75)
                for key in by_last[name]][:3]
    hint = f"did you mean {' or '.join(near)}?" if near else "--help lists every key"
    return ConfigError(f"{dotted}: unknown key ({hint})")


def _set(obj: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise _unknown_key(dotted)
    target = obj
    for i, part in enumerate(parts[:-1]):
        sub = getattr(target, part, None) if dataclasses.is_dataclass(target) else None
        if sub is None or not dataclasses.is_dataclass(sub):
            if isinstance(sub, dict) and part in typing.get_type_hints(type(target)):
                sub[".".join(parts[i + 1:])] = value
                return
            raise _unknown_key(dotted)
        target = sub
    name = parts[-1]
    hints = typing.get_type_hints(type(target))
    if not dataclasses.is_dataclass(target) or name not in hints:
        raise _unknown_key(dotted)
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping of sub-keys")
        for k, v in value.items():
            _set(obj, f"{dotted}.{k}", v)
        return
    setattr(target, name, _coerce(value, hints[name], dotted))


def apply_mapping(cfg: Config, mapping: dict, prefix: str = "") -> None:
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        sub = None
        try:
            sub = _get(cfg, key)
        except ConfigError:
            pass
        if isinstance(v, dict) and dataclasses.is_dataclass(sub):
            apply_mapping(cfg, v, prefix=f"{key}.")
        else:
            _set(cfg, key, v)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"{dotted}: unknown key")
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{text[:200]!r}: overrides are key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"{text[:200]!r}: an override needs a key before '=' (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except Exception:  # not YAML (or YAML that cannot be built, such as an impossible date): the raw text
        value = raw
    return key.strip(), value


# ---- files ---------------------------------------------------------------------------------------------------------
def packaged_configs() -> list[str]:
    """Names of the recipes shipped with the package (`--config NAME`)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """`--config` takes a path, or the name of a packaged recipe (`tiny`, `vitl16`, with or without `.yaml`)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):
        packaged = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if packaged.is_file():
            return packaged
    raise ConfigError(f"--config: no such file {name} (packaged recipes: {', '.join(packaged_configs())})")


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file relative to itself), then overrides; validated."""
    cfg = Config()
    if path is not None:
        if not str(path).strip():
            raise ConfigError("--config: empty file name")
        for mapping in _yaml_chain(resolve_config_path(str(path)), ()):
            apply_mapping(cfg, mapping)
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def _yaml_chain(path: Path, seen: tuple[Path, ...]) -> list[dict]:
    if path.resolve() in seen:
        loop = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"--config: the base: chain loops ({loop})")
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}" + (f" (the base: of {seen[-1]})" if seen else ""))
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config: {path} is not a text (UTF-8) YAML file") from None
    try:
        mapping = yaml.safe_load(text) or {}
    except Exception as e:  # YAMLError, or a value PyYAML cannot build (an impossible date)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--config: {path} is not valid YAML ({first})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--config: {path} must hold a mapping")
    base = mapping.pop("base", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"--config: {path}: base: must name a YAML file, got {base!r}")
    chain = _yaml_chain(path.parent / base, (*seen, path.resolve())) if base else []
    return chain + [mapping]


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(dump_config(cfg))
