"""YAML configs with `-o key=value` overrides (the PaddleClas convention), checked against a schema.

Every config section (the inference YAML, the training YAML and its `loss:` section, the model towers) is a
`Section` of `Field`s: each key's type, default, choices or range, whether it changes the outputs, and its doc.
That one declaration is what loading checks, what `describe_schema` writes into docs/configuration.md and what
`output_only_keys` gives the chunk fingerprint.  Loading merges the file over the defaults, applies overrides
(values parsed as YAML, keys dotted: `-o data.batch_size=32`), and rejects unknown keys, wrong types and values
outside a field's choices or range with an error naming the file and the dotted key; a section's `check` then
looks at keys together (e.g. "not every loss weight may be 0").

Files and override values are read with YAML 1.2's scalars: only `true`/`false` are booleans (YAML 1.1 also
turns `on/off/yes/no` into booleans, so `amp.mode: off` would not be the string "off"), `1e-3` is a float,
and integers are plain decimals.
"""
import copy
import difflib
import math
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
    """One config key.  type: a type or tuple of types (default: the default's type); choices: the allowed
    values; minimum / maximum: an inclusive range, below: an exclusive upper bound (numbers); items: the allowed
    values of a list's elements; affects_output: whether changing the key can change what a run computes (False
    for keys about where outputs go or how work is spread); doc: one line for the reference.
    keys: for a key that may be a name or a mapping (a model preset or its keys), the mapping's keys (a Section),
    so that `-o key.sub=value` reaches into it; string_key: the mapping key a string value stands for (a preset
    name: {"preset": name}); without it a string value cannot take `-o key.sub` overrides."""

    def __init__(self, default=REQUIRED, type=None, choices=None, nullable=False, minimum=None, maximum=None,
                 below=None, items=None, affects_output=True, doc="", keys=None, string_key=None):
        self.default = default
        self.type = type if type is not None else (None if default in (None, REQUIRED) else _type_of(default))
        self.choices = tuple(choices) if choices else None
        self.nullable = nullable or default is None
        self.minimum, self.maximum, self.below = minimum, maximum, below
        self.items = tuple(items) if items else None
        self.affects_output = affects_output
        self.doc = doc
        self.keys = keys
        self.string_key = string_key

    @property
    def required(self):
        return self.default is REQUIRED

    def range_text(self):
        """The allowed values in words, e.g. ">= 1", "in [0, 1)", "one of a, b"; "" when any value of the type."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.items:
            return "a list of " + ", ".join(map(str, self.items))
        low = f"[{self.minimum}" if self.minimum is not None else None
        high = f"{self.maximum}]" if self.maximum is not None else f"{self.below})" if self.below is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {self.minimum}"
        if high:
            return f"<= {self.maximum}" if self.maximum is not None else f"< {self.below}"
        return ""


class Section(dict):
    """A group of keys: a mapping of names to `Field`s and nested `Section`s (plain defaults and plain dicts are
    wrapped).  check(node) looks at the resolved keys together and raises `ConfigError(message, where=key)`
    with the key relative to the section; doc: one line for the reference."""

    def __init__(self, fields, check=None, doc=""):
        super().__init__({key: _as_schema(spec) for key, spec in fields.items()})
        self.check = check
        self.doc = doc


def _as_schema(spec):
    if isinstance(spec, (Field, Section)):
        return spec
    if isinstance(spec, dict):
        return Section(spec)
    return Field(spec)


def iter_fields(schema, prefix=""):
    """(dotted key, Field) for every key of a schema, depth first in declaration order."""
    for key, spec in _as_schema(schema).items():
        if isinstance(spec, Section):
            yield from iter_fields(spec, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", spec


def output_only_keys(schema):
    """The keys whose values cannot change a run's numbers (Field.affects_output is False)."""
    return tuple(key for key, field in iter_fields(schema) if not field.affects_output)


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
    schema = _as_schema(schema)
    source = source or path or "<config>"
    values = read_yaml(path) if path else {}
    for item in overrides:
        key, value = item if isinstance(item, tuple) else parse_override(item)
        _set_dotted(values, key, value, schema, source)
    return resolve(schema, values, source)


def resolve(schema, values, source=None, prefix=""):
    """Check a mapping against a schema and fill in the defaults; errors say `source: 'prefix.key' ...` (without
    `source: ` when it is None)."""
    return _resolve(_as_schema(schema), {} if values is None else values, source, prefix)


def _set_dotted(values, key, value, schema, source):
    parts = key.split(".")
    node, sch = values, schema
    for i, part in enumerate(parts):
        if isinstance(sch, Field) and sch.keys is not None:  # a name-or-mapping key: reach into its mapping
            sch = sch.keys
        if not isinstance(sch, dict) or part not in sch:
            _unknown(source, ".".join(parts[: i + 1]), sch if isinstance(sch, dict) else {}, ".".join(parts[:i]),
                     what="override key")
        sch = sch[part]
        if i == len(parts) - 1:
            node[part] = value
            return
        current = node.get(part)
        if isinstance(current, str) and isinstance(sch, Field) and sch.keys is not None:
            if sch.string_key is None:
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is {current!r} in the config, not a mapping: "
                                  f"override it whole, or write its keys in the YAML to override one",
                                  where=source)
            current = node[part] = {sch.string_key: current}
        if not isinstance(current, dict):
            node[part] = {}
        node = node[part]


def _unknown(source, dotted, schema_level, prefix, what="key"):
    leaf = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(schema_level), n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    raise ConfigError(f"unknown {what} '{dotted}'{hint}", where=source)


def _resolve(schema, values, source, prefix):
    out = ConfigNode()
    if not isinstance(values, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a mapping, got {type(values).__name__}", where=source)
    for key in values:
        if key not in schema:
            _unknown(source, f"{prefix}{key}", schema, prefix.rstrip("."))
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, Section):
            out[key] = _resolve(spec, values.get(key, {}) or {}, source, dotted + ".")
            continue
        if key in values:
            value = values[key]
        elif spec.required:
            raise ConfigError(f"missing required key '{dotted}'", where=source)
        else:
            value = copy.deepcopy(spec.default)
        out[key] = _check(spec, value, source, dotted)
    if schema.check:
        try:
            schema.check(out)
        except ConfigError as e:
            # a key relative to this section, or a message that names its key already (from a nested resolve)
            key = f"{prefix}{e.where}" if e.where else None
            raise ConfigError(f"'{key}' {e.message}" if key else e.message, where=source) from None
    return out


def _check(field, value, source, dotted):
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"'{dotted}' must not be empty", where=source)
    expected = field.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif expected is list and isinstance(value, tuple):
        value = list(value)
    elif expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # e.g. `-o device=0` for a string-typed key
    if expected is not None and not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ConfigError(f"'{dotted}' must be {names}, got {value!r}", where=source)
    if field.choices and value not in field.choices:
        raise ConfigError(f"'{dotted}' must be one of {', '.join(map(str, field.choices))}; got {value!r}",
                          where=source)
    if field.items and isinstance(value, list):
        for item in value:
            if item not in field.items:
                raise ConfigError(f"'{dotted}' may hold only {', '.join(map(str, field.items))}; "
                                  f"got {item!r}", where=source)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _out_of_range(field, value):
        raise ConfigError(f"'{dotted}' must be {field.range_text()}, got {value!r}", where=source)
    return value


def _out_of_range(field, value):
    if field.minimum is None and field.maximum is None and field.below is None:
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return ((field.minimum is not None and value < field.minimum) or
            (field.maximum is not None and value > field.maximum) or
            (field.below is not None and value >= field.below))


def describe_schema(schema, prefix=""):
    """A Markdown table of every key of a schema: key, type, default, allowed values, affects output, doc."""
    lines = ["| key | type | default | allowed | affects output | meaning |", "|---|---|---|---|---|---|"]
    for key, field in iter_fields(schema, prefix):
        types = field.type if isinstance(field.type, tuple) else (field.type,)
        type_text = " or ".join(t.__name__ for t in types if t is not None) or "any"
        if field.nullable and not field.required:
            type_text += " or null"
        default = "required" if field.required else f"`{_yaml_text(field.default)}`"
        cells = [f"`{key}`", type_text, default, field.range_text(), "yes" if field.affects_output else "no",
                 field.doc]
        cells = [cell.replace("|", "\\|").replace("<", "\\<").replace("\n", " ") for cell in cells]  # Markdown
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _yaml_text(value):
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1000).strip().removesuffix(
        "\n...").strip()


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
