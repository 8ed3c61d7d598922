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
from typing import Any, Callable, Dict, List, Optional

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


def describe(x: Any) -> str:
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
                   found=describe(found),
                   fix="re-export the graph with torchtrace.save(), or correct this field by hand")


def _error(schema: Dict[str, Any], data: Any, where: str, root: Dict[str, Any]) -> Optional[IRError]:
    """Return the first mismatch as an IRError, or None."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _error(root["$defs"][name], data, where, root)
    if "anyOf" in schema:
        errors = [_error(s, data, where, root) for s in schema["anyOf"]]
        if all(errors):
            # a branch whose type matched and that failed further in (an object's field) says where
            inner = [e for e in errors if e is not None and e.where != where]
            if inner:
                return inner[0]
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


def _compile(schema: Dict[str, Any], ref: Callable[[str], Callable[[Any], bool]]) -> Callable[[Any], bool]:
    """``schema`` as one predicate that accepts exactly what ``_error`` accepts:
    the loader's fast path (``_error`` builds an IRError for every branch of an
    ``anyOf`` that fails: 8x slower on a valid file, measured); ``_error`` then runs only
    for data that fails, to say where and why."""
    if "$ref" in schema:
        return ref(schema["$ref"].rsplit("/", 1)[-1])
    if "anyOf" in schema:
        subs = schema["anyOf"]
        alts = [_compile(s, ref) for s in subs]
        if len(subs) == 2 and {"type": "null"} in subs:  # "X or null", the common case
            alt = alts[1 - subs.index({"type": "null"})]
            return lambda x: x is None or alt(x)
        return lambda x: any(a(x) for a in alts)
    checks: List[Callable[[Any], bool]] = []
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda x: x == const)
    if "enum" in schema:
        enum = schema["enum"]
        checks.append(lambda x: x in enum)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types
    if types is not None and types not in (["object"], ["array"]):  # those two are checked below
        preds = [_TYPES[t] for t in types]
        checks.append(preds[0] if len(preds) == 1 else lambda x: any(p(x) for p in preds))
    if "pattern" in schema:
        match = re.compile(schema["pattern"]).match
        checks.append(lambda x: not isinstance(x, str) or match(x) is not None)
    if "minimum" in schema:
        low = schema["minimum"]
        checks.append(lambda x: not isinstance(x, (int, float)) or isinstance(x, bool) or x >= low)
    if types == ["object"] or "required" in schema or "properties" in schema:
        checks.append(_object(schema, types == ["object"], ref))
    if types == ["array"] or "items" in schema or "minItems" in schema or "maxItems" in schema:
        checks.append(_array(schema, types == ["array"], ref))
    return _all(checks)


def _object(schema: Dict[str, Any], typed: bool, ref: Callable[[str], Callable[[Any], bool]]) -> Callable[[Any], bool]:
    required = tuple(schema.get("required", ()))
    props = [(k, _compile(sub, ref)) for k, sub in schema.get("properties", {}).items()]

    def obj(x: Any) -> bool:
        if not isinstance(x, dict):
            return not typed
        for key in required:
            if key not in x:
                return False
        for key, ok in props:
            if key in x and not ok(x[key]):
                return False
        return True
    return obj


def _array(schema: Dict[str, Any], typed: bool, ref: Callable[[str], Callable[[Any], bool]]) -> Callable[[Any], bool]:
    low, high = schema.get("minItems", 0), schema.get("maxItems")
    item_ok = _compile(schema["items"], ref) if "items" in schema else None

    def arr(x: Any) -> bool:
        if not isinstance(x, list):
            return not typed
        if len(x) < low or (high is not None and len(x) > high):
            return False
        return item_ok is None or all(map(item_ok, x))
    return arr


def _all(checks: List[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda x: a(x) and b(x)
    return lambda x: all(c(x) for c in checks)


@lru_cache(maxsize=None)
def _fast() -> Callable[[Any], bool]:
    root = graph_schema()
    done: Dict[str, Callable[[Any], bool]] = {}

    def ref(name: str) -> Callable[[Any], bool]:
        if name not in done:
            done[name] = lambda x: done[name](x)  # a cycle gets this late-bound stand-in
            done[name] = _compile(root["$defs"][name], ref)
        return done[name]
    return _compile(root, ref)


def check_field(name: str, value: Any) -> Optional[IRError]:
    """Where ``value`` breaks the schema of the graph's top-level field ``name``, if it does."""
    root = graph_schema()
    return _error(root["properties"][name], value, name, root)


def check(data: Any, where: str = "graph") -> None:
    """Raise IRError for the first place where ``data`` breaks the schema."""
    if _fast()(data):
        return
    root = graph_schema()
    err = _error(root, data, where, root)
    if err is not None:
        raise err
