"""Dataclass configs: defaults (the tiny synthetic run), YAML files, dotted `key=value` overrides, validation.

schema.py: the dataclasses (a leaf); load.py: YAML, `base:`, overrides; checks.py: validation (above models/);
help.py: the --help table. This package re-exports what the rest of the code reads.

Every error is a `ConfigError` whose message is one line naming the field, so the entry points can exit non-zero
with exactly that line.
"""
from vjepa_fast.config.help import help_table
from vjepa_fast.config.load import dump_config, load_config, packaged_configs, parse_override, resolve_config_path, \
    save_config
from vjepa_fast.config.schema import METHODS, Config, ConfigError, iter_keys, single_line, to_dict

__all__ = ["METHODS", "Config", "ConfigError", "dump_config", "help_table", "iter_keys", "load_config",
           "packaged_configs", "parse_override", "resolve_config_path", "save_config", "single_line", "to_dict"]
