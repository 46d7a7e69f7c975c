"""Loading ml_collections config files and applying `--config.a.b=value` overrides.

A config file is a Python file with `get_config(arg=None)`; `FILE:ARG` passes ARG. A resolved
config saved as JSON (`config.json` of a run or checkpoint) loads too. Overrides are
checked against the loaded config: an unknown key or a value of the wrong type is refused with a
message that names the key and what was expected.
"""

import ast
import importlib.util
import json
import os

import ml_collections

from difffccf_jax import config_versions, files
from difffccf_jax.errors import UserError

OVERRIDE_PREFIX = "--config."
SLURM_PREFIX = "--slurm."  # `difffccf sweep`: any sbatch field submitit sets
SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs")


def shipped_config(name):
    """The path of a config file shipped in the repository's configs/ folder ('paper', 'tiny')."""
    return os.path.join(SHIPPED_CONFIGS, f"{name}.py")


def _tuples(value):
    """JSON lists back to the tuples that config files use."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def load_json_config(path):
    """Returns the ConfigDict saved as JSON at `path` (see `save_json_config`), brought up to the
    current layout if older code saved it (`config_versions.migrate`)."""
    try:
        with open(path, encoding="utf-8") as file:
            config = ml_collections.ConfigDict(_tuples(json.load(file)))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"config file {path!r} is not readable JSON: {error}") from error
    return config_versions.migrate(config, path)


def save_json_config(config, path):
    """Writes the resolved config as JSON, atomically (temporary name, then rename)."""
    files.write_text(path, config.to_json(indent=2, sort_keys=True))


def load_python_file(path):
    """Executes the Python file at `path` (a config or sweep file) and returns it as a module."""
    name = "difffccf_file_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config_file(spec):
    """Returns the ConfigDict of `path[:arg]` (a Python config file) or of a `.json` file."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} does not exist")
    if path.endswith(".json"):
        return load_json_config(path)
    module = load_python_file(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path!r} has no get_config(arg=None) function")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"get_config() in {path!r} returned {type(config).__name__}, "
                        "expected an ml_collections.ConfigDict")
    return config


def _parse_value(text):
    """A Python literal when it is one (numbers, tuples, booleans, None), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key, old, new):
    """Converts `new` to the type of the existing value `old`, or raises UserError."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        if str(new).lower() in ("true", "false", "1", "0"):
            return str(new).lower() in ("true", "1")
    elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
        return new
    elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
        return float(new)
    elif isinstance(old, str):
        return str(new)
    elif isinstance(old, (tuple, list)):
        items = new if isinstance(new, (tuple, list)) else (new,)
        if old and all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in old):
            if not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
                raise UserError(f"config field {key!r} expects a tuple of numbers like "
                                f"{tuple(old)!r}, got {new!r}")
        return type(old)(items)
    raise UserError(f"config field {key!r} expects {type(old).__name__} "
                    f"(current value {old!r}), got {new!r}")


def apply_override(config, dotted_key, text):
    """Sets `config.<dotted_key>` from the command-line text `text`, checking key and type."""
    parts = dotted_key.split(".")
    node = config
    for depth, name in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if not isinstance(node, ml_collections.ConfigDict):
            raise UserError(f"config field {where!r} is a value, not a group; "
                            f"cannot set {dotted_key!r}")
        if name not in node:
            valid = ", ".join(sorted(node.keys()))
            raise UserError(f"unknown config key {dotted_key!r}: {where} has no field {name!r} "
                            f"(valid: {valid})")
        if depth < len(parts) - 1:
            node = node[name]
    leaf = parts[-1]
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
        raise UserError(f"config field {dotted_key!r} is a group; set one of its fields: "
                        + ", ".join(sorted(old.keys())))
    node[leaf] = _coerce(dotted_key, old, _parse_value(text))


def split_overrides(argv, prefix=OVERRIDE_PREFIX):
    """Separates `--config.key=value` (or `--config.key value`) items, or those of another
    `prefix`, from the rest of argv."""
    overrides, rest = [], []
    items = list(argv)
    while items:
        item = items.pop(0)
        if item.startswith(prefix):
            key, eq, value = item[len(prefix):].partition("=")
            if not eq:
                if not items:
                    raise UserError(f"{item} needs a value ({item}=VALUE)")
                value = items.pop(0)
            overrides.append((key, value))
        else:
            rest.append(item)
    return overrides, rest


def load_config(spec, overrides=()):
    """Loads `spec` and applies the (key, text) overrides in order."""
    config = load_config_file(spec)
    for key, text in overrides:
        apply_override(config, key, text)
    return config
