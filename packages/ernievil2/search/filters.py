"""Metadata filters: which rows of an index a query may return.

A filter is a dict {field: condition}; every condition must hold.  A condition is a value (equality), a list of
values (membership) or a dict of bounds {"gt", "gte", "lt", "lte"} (numeric fields only).  The fields of a row
are its metadata object (folder galleries synced by `index sync`: path, folder, size, mtime, plus the user's
`--metadata` fields) and always "id".  The CLI and the HTTP query string write one condition as text:
`FIELD=V`, `FIELD=V1|V2|V3`, `FIELD>=V`, `FIELD>V`, `FIELD<=V`, `FIELD<V` (see parse_where).
"""
import re

import numpy as np

from ..errors import ConfigError

BOUNDS = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
_TERM = re.compile(r"^\s*([^=<>!\s]+)\s*(>=|<=|=|>|<)\s*(.*?)\s*$", re.DOTALL)
MILVUS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_where(terms):
    """Conditions written as text (`folder=cats`, `size>=1000`, `folder=cats|dogs`) -> a filter dict of strings;
    FieldTable.check converts them to the field's type."""
    where = {}
    for term in terms or ():
        match = _TERM.match(term)
        if not match or not match.group(3):
            raise ConfigError(f"--where {term!r}: expected FIELD=VALUE, FIELD=V1|V2, FIELD>=N, FIELD>N, FIELD<=N "
                              f"or FIELD<N")
        field, op, value = match.groups()
        if op == "=":
            if field in where:
                raise ConfigError(f"--where {term!r}: {field} already has a condition")
            where[field] = value.split("|") if "|" in value else value
        else:
            bounds = where.setdefault(field, {})
            if not isinstance(bounds, dict):
                raise ConfigError(f"--where {term!r}: {field} already has an equality condition")
            bounds[BOUNDS[op]] = value
    return where


def _kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


class FieldTable:
    """The filterable fields of an index's rows: `rows(where)` -> sorted row numbers that match."""

    def __init__(self, ids, metadata):
        self.ids = ids
        self.columns = {"id": list(ids)}
        for row, meta in enumerate(metadata or ()):
            if isinstance(meta, dict):
                for name, value in meta.items():
                    self.columns.setdefault(name, [None] * len(ids))[row] = value
        self._number_cache, self._posting_cache = {}, {}
        self.kinds = {}
        for name, values in self.columns.items():
            kinds = {_kind(v) for v in values if v is not None}
            self.kinds[name] = kinds.pop() if len(kinds) == 1 else ("none" if not kinds else "mixed")

    def describe(self):
        return {name: kind for name, kind in sorted(self.kinds.items())}

    def check(self, where):
        """The filter with values converted to its fields' types; an unknown field or a value of the wrong type
        is a ConfigError naming it."""
        if not isinstance(where, dict):
            raise ConfigError(f"a filter must be an object of field: condition, got {type(where).__name__}")
        out = {}
        for field, condition in where.items():
            if field not in self.kinds:
                raise ConfigError(f"unknown filter field {field!r}; this index has: {', '.join(sorted(self.kinds))}")
            kind = self.kinds[field]
            if isinstance(condition, dict):
                if kind != "number" or not condition or set(condition) - set(BOUNDS.values()):
                    raise ConfigError(f"filter {field}: ranges (gt, gte, lt, lte) need a numeric field and at least "
                                      f"one bound; {field} is {kind}" if kind != "number" else
                                      f"filter {field}: a range takes gt, gte, lt, lte, got {sorted(condition)}")
                out[field] = {op: self._value(field, kind, v) for op, v in condition.items()}
            elif isinstance(condition, (list, tuple)):
                if not condition:
                    raise ConfigError(f"filter {field}: an empty set of values matches nothing")
                out[field] = [self._value(field, kind, v) for v in condition]
            else:
                out[field] = self._value(field, kind, condition)
        return out

    @staticmethod
    def _value(field, kind, value):
        if kind == "number" and isinstance(value, str):  # text from the CLI or a query string
            try:
                value = float(value) if any(c in value for c in ".eE") or value.lower() in ("inf", "-inf") \
                    else int(value)
            except ValueError:
                raise ConfigError(f"filter {field}: {value!r} is not a number ({field} is numeric)") from None
        elif kind == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif kind == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"filter {field}: {value!r} is a number but {field} holds text")
        if kind in ("number", "string", "bool") and _kind(value) != kind:
            raise ConfigError(f"filter {field}: {value!r} is not a {kind} value")
        if _kind(value) == "other":
            raise ConfigError(f"filter {field}: {value!r} is not a string, number or boolean")
        return value

    def rows(self, where):
        """Sorted int64 row numbers matching a checked filter."""
        keep = np.ones(len(self.ids), bool)
        for field, condition in where.items():
            if isinstance(condition, dict):
                numbers = self._numbers(field)
                ok = ~np.isnan(numbers)
                for op, bound in condition.items():
                    ok &= {"gt": numbers > bound, "gte": numbers >= bound, "lt": numbers < bound,
                           "lte": numbers <= bound}[op]
            else:
                postings = self._postings(field)
                ok = np.zeros(len(self.ids), bool)
                for value in condition if isinstance(condition, list) else [condition]:
                    ok[postings.get((_kind(value), value), [])] = True  # (kinds too: 1 == True == 1.0)
            keep &= ok
        return np.flatnonzero(keep).astype(np.int64)

    def _numbers(self, field):
        """A numeric column as float64 (NaN where a row has no number); computed once."""
        if field not in self._number_cache:
            self._number_cache[field] = np.array([v if _kind(v) == "number" else np.nan
                                                  for v in self.columns[field]], np.float64)
        return self._number_cache[field]

    def _postings(self, field):
        """{(kind, value): rows holding it} of a column; computed once."""
        if field not in self._posting_cache:
            postings = {}
            for row, value in enumerate(self.columns[field]):
                if value is not None and _kind(value) != "other":
                    postings.setdefault((_kind(value), value), []).append(row)
            self._posting_cache[field] = {key: np.array(rows, np.int64) for key, rows in postings.items()}
        return self._posting_cache[field]

    def milvus_expression(self, where):
        """The Milvus boolean expression of a checked filter (fields are the collection's dynamic fields)."""
        parts = []
        for field, condition in where.items():
            if not MILVUS_NAME.match(field):
                raise ConfigError(f"filter {field!r}: Milvus filters need field names of letters, digits and _")
            if isinstance(condition, dict):
                ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
                parts += [f"{field} {ops[op]} {_literal(v)}" for op, v in condition.items()]
            elif isinstance(condition, list):
                parts.append(f"{field} in [{', '.join(_literal(v) for v in condition)}]")
            else:
                parts.append(f"{field} == {_literal(condition)}")
        return " and ".join(f"({p})" for p in parts)


def _literal(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
