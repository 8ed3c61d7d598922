"""Check JSON data against the committed graph schema (the subset it uses).

The schema file is the single description of the file structure: the loader
checks against it here (no third-party dependency at run time) and the test
suite checks the same file with the ``jsonschema`` package as an oracle.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, Optional

from .errors import IRError

_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


@lru_cache(maxsize=None)
def graph_schema() -> Dict[str, Any]:
    text = resources.files("torchtrace").joinpath("schema/graph.v1.json").read_text("utf-8")
    return json.loads(text)


def _describe(x: Any) -> str:
    if x is None:
        return "null"
    kind = {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(x))
    if kind is None:
        kind = "integer" if isinstance(x, int) else "number" if isinstance(x, float) else type(x).__name__
    text = json.dumps(x, default=str) if not isinstance(x, (dict, list)) else kind
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}" if kind != text else kind


def _fail(where: str, expected: str, found: Any) -> IRError:
    return IRError("does not match the torchtrace.graph schema", where=where, expected=expected,
                   found=_describe(found),
                   fix="re-export the graph with torchtrace.save(), or correct this field by hand")


def _error(schema: Dict[str, Any], data: Any, where: str, root: Dict[str, Any]) -> Optional[IRError]:
    """Return the first mismatch as an IRError, or None."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _error(root["$defs"][name], data, where, root)
    if "anyOf" in schema:
        errors = [_error(s, data, where, root) for s in schema["anyOf"]]
        if all(errors):
            wanted = " or ".join(e.expected or "?" for e in errors if e is not None)
            return _fail(where, wanted, data)
        return None
    if "const" in schema and data != schema["const"]:
        return _fail(where, json.dumps(schema["const"]), data)
    if "enum" in schema and data not in schema["enum"]:
        return _fail(where, "one of " + ", ".join(json.dumps(e) for e in schema["enum"]), data)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](data) for t in types):
            return _fail(where, " or ".join(types), data)
    if isinstance(data, str) and "pattern" in schema and not re.match(schema["pattern"], data):
        return _fail(where, f"a string matching {schema['pattern']}", data)
    if isinstance(data, (int, float)) and not isinstance(data, bool) and data < schema.get("minimum", data):
        return _fail(where, f"a number >= {schema['minimum']}", data)
    if isinstance(data, dict):
        for key in schema.get("required", ()):
            if key not in data:
                return IRError("missing field", where=where, expected=f"a field {key!r}",
                               found="fields " + ", ".join(repr(k) for k in data) if data else "an empty object",
                               fix="re-export the graph with torchtrace.save(), or add the field")
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                err = _error(sub, data[key], f"{where}.{key}", root)
                if err is not None:
                    return err
    if isinstance(data, list):
        if len(data) < schema.get("minItems", 0) or len(data) > schema.get("maxItems", len(data)):
            return _fail(where, f"{schema.get('minItems', 0)}..{schema.get('maxItems', 'n')} items", data)
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(data):
                err = _error(items, item, f"{where}[{i}]", root)
                if err is not None:
                    return err
    return None


def check(data: Any, where: str = "graph") -> None:
    """Raise IRError for the first place where ``data`` breaks the schema."""
    root = graph_schema()
    err = _error(root, data, where, root)
    if err is not None:
        raise err

