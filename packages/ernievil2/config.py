"""YAML configs with `-o key=value` overrides (the PaddleClas convention), checked against a schema.

A schema is a nested dict whose leaves are defaults or `Field`s.  Loading merges the file over the defaults,
applies overrides (values parsed as YAML, keys dotted: `-o data.batch_size=32`), and rejects unknown keys,
wrong types and values outside a field's choices with an error naming the file and the dotted key.

Files and override values are read with YAML 1.2's scalars: only `true`/`false` are booleans (YAML 1.1 also
turns `on/off/yes/no` into booleans, so `amp.mode: off` would not be the string "off"), `1e-3` is a float,
and integers are plain decimals.
"""
import copy
import difflib
import os
import re

import yaml

from .errors import ConfigError

REQUIRED = object()  # marks a field without a default


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 (core schema) booleans, integers and floats."""


_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver(_FLOAT, re.compile(
    r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+.0123456789"))
_Yaml12Loader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node), 10))


def load_yaml(text):
    """Parse YAML text with 1.2 scalars (see the module docstring)."""
    return yaml.load(text, Loader=_Yaml12Loader)


class Field:
    def __init__(self, default=REQUIRED, type=None, choices=None, nullable=False, doc=""):
        self.default = default
        self.type = type if type is not None else (None if default in (None, REQUIRED) else _type_of(default))
        self.choices = tuple(choices) if choices else None
        self.nullable = nullable or default is None
        self.doc = doc


def _type_of(value):
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return type(value)
    if isinstance(value, (list, tuple)):
        return list
    return type(value)


class ConfigNode(dict):
    """A dict that also allows attribute access (cfg.data.batch_size)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __deepcopy__(self, memo):
        return ConfigNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def get_path(self, dotted):
        node = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, ConfigNode) else v for k, v in self.items()}


def parse_override(text):
    """`a.b=value` -> ("a.b", parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key, value


def read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load_config(schema, path=None, overrides=(), source=None):
    """Build a ConfigNode from schema defaults, a YAML file (optional) and `key=value` overrides."""
    source = source or path or "<config>"
    values = read_yaml(path) if path else {}
    for item in overrides:
        key, value = item if isinstance(item, tuple) else parse_override(item)
        _set_dotted(values, key, value, schema, source)
    return _resolve(schema, values, source, prefix="")


def _set_dotted(values, key, value, schema, source):
    parts = key.split(".")
    node, sch = values, schema
    for i, part in enumerate(parts):
        if not isinstance(sch, dict) or part not in sch:
            _unknown(source, ".".join(parts[: i + 1]), sch if isinstance(sch, dict) else {}, ".".join(parts[:i]),
                     what="override key")
        sch = sch[part]
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


def _unknown(source, dotted, schema_level, prefix, what="key"):
    leaf = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(schema_level), n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    raise ConfigError(f"{source}: unknown {what} '{dotted}'{hint}")


def _resolve(schema, values, source, prefix):
    out = ConfigNode()
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix}' must be a mapping, got {type(values).__name__}")
    for key in values:
        if key not in schema:
            _unknown(source, f"{prefix}{key}", schema, prefix.rstrip("."))
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, dict):
            out[key] = _resolve(spec, values.get(key, {}) or {}, source, dotted + ".")
            continue
        field = spec if isinstance(spec, Field) else Field(spec)
        if key in values:
            value = values[key]
        elif field.default is REQUIRED:
            raise ConfigError(f"{source}: missing required key '{dotted}'")
        else:
            value = copy.deepcopy(field.default)
        out[key] = _check(field, value, source, dotted)
    return out


def _check(field, value, source, dotted):
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"{source}: '{dotted}' must not be empty")
    expected = field.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif expected is list and isinstance(value, tuple):
        value = list(value)
    elif expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # e.g. `-o device=0` for a string-typed key
    if expected is not None and not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ConfigError(f"{source}: '{dotted}' must be {names}, got {value!r}")
    if field.choices and value not in field.choices:
        raise ConfigError(f"{source}: '{dotted}' must be one of {', '.join(map(str, field.choices))}; got {value!r}")
    return value


def split_cli_overrides(argv):
    """Collect `-o k=v` / `-o=k=v` / `--override k=v` pairs from an argument list; return (rest, overrides)."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "--override"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a key=value argument")
            overrides.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            overrides.append(arg[2:].lstrip("="))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides
