"""The torchtrace IR: one recorded pass as small frozen dataclasses.

Schema ``torchtrace.graph``, version ``VERSION``. The JSON field names are a
contract other tools read (see ``schema/graph.v1.json``): add fields freely with
defaults and bump the minor version; renaming or removing one bumps the major.

Vocabulary (closed; ``Graph.validate`` checks it):

* ``Value.role``: ``input`` (argument of the traced call), ``param``,
  ``buffer``, ``constant`` (a tensor from outside the pass that is none of the
  former), ``activation`` (produced by an op of the pass).
* ``Node.kind``: ``op`` (one aten/prims/c10d overload that ran).
* ``Node.phase``: ``forward``, ``backward`` (run by the autograd engine),
  ``recompute`` (forward ops re-run by activation checkpointing during
  backward), ``optimizer`` (inside ``Optimizer.step``, and ops computed from
  the gradients outside any module after backward: ``clip_grad_norm_``).
* ``Node.tags``: see ``TAGS``.

Ids are ``v<k>``, ``n<k>``, ``m<k>``, ``a<k>`` in order of first appearance.
Nothing in here imports torch.

Records are read-only by convention. ``Graph``, ``Source`` and ``Witness``
are frozen; the records the builder makes per op or per module call
(``Node``, ``Value``, ``AutogradNode``, ``GradInfo``, ``ModuleCall``) are
plain slotted dataclasses, hashable and compared by value like the frozen
ones, because a frozen dataclass's ``__init__`` costs ~3-5x more (1.3 µs
against 0.28 µs for a ``Node``, 0.73 against 0.2 for a ``ModuleCall``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Mapping, Optional, Set, Tuple

from .errors import IRError, NewerVersionError, NotInGraphError, UsageError

FORMAT = "torchtrace.graph"
VERSION: Tuple[int, int] = (1, 2)

ROLES = ("input", "param", "buffer", "constant", "activation")
PHASES = ("forward", "backward", "recompute", "optimizer")
GRAD_MODES = ("train", "no_grad", "inference")
TAGS = {
    "view": "the output aliases an input's storage without writing it",
    "inplace": "writes an input in place (its outputs are new versions of it)",
    "out": "an out= variant: writes the tensor passed as out",
    "random": "draws from an RNG (nondeterministic_seeded)",
    "factory": "creates a tensor from no tensor input",
    "collective": "a c10d / functional collective",
    "autograd_internal": "autograd bookkeeping (detach of saved outputs, AccumulateGrad)",
    "accumulate_grad": "AccumulateGrad's own work: adding a gradient into a .grad that already existed, or copying "
                       "one it cannot take over as it is into a new .grad",
    "witness": "hands tensor data to Python or has a data-dependent output shape",
    "annotation": "a torch.profiler.record_function marker",
    "recompute": "forward code that activation checkpointing re-runs in backward (also its phase)",
}


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see the module docstring
class ModuleCall:
    """One call of an ``nn.Module``: ``path`` is its name under the traced
    root (``""`` is the root), ``call`` counts calls of that module object
    (0 for the first), ``parent`` is the enclosing module call id."""

    id: str
    path: str
    type: str
    call: int = 0
    parent: Optional[str] = None
    phase: str = "forward"
    training: Optional[bool] = None  # ``module.training`` at the call (None: not recorded, IR 1.0)


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see the module docstring
class Value:
    """A tensor (one version of it): metadata copied when it was seen.

    ``alias_of`` names the value whose storage a view shares (its base);
    ``version_of`` names the value an in-place write replaced."""

    id: str
    shape: Tuple[int, ...]
    dtype: str
    device: str = "cpu"
    requires_grad: bool = False
    role: str = "activation"
    name: Optional[str] = None
    alias_of: Optional[str] = None
    version_of: Optional[str] = None


@dataclass(frozen=True, slots=True)
class Source:
    file: str
    line: int
    function: str

    def short(self) -> str:
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line}"


@dataclass(frozen=True, slots=True)
class Witness:
    """What Python read from tensor data: a scalar ``value`` (bool/int/float,
    the result of ``.item()``/``bool(t)``; text for a ``tolist()``/``numpy()`` of
    more than one number: ``"[3, 1, 2]"``) or a data-dependent output ``shape``;
    ``called_from``: up to two user frames above the node's source, innermost
    first (which call of a helper function read it)."""

    value: Any = None
    shape: Optional[Tuple[int, ...]] = None
    called_from: Tuple[Source, ...] = ()  # the user frames that called the one at the node's source

    def describe(self) -> str:  # (a text value -- a tolist() read, a NaN -- as it reads, unquoted)
        if self.shape is not None:
            return f"shape {list(self.shape)}"
        return self.value if isinstance(self.value, str) else repr(self.value)

    def read(self) -> Dict[str, Any]:
        """What was read, as JSON: ``{"shape": [...]}`` or ``{"value": ...}``."""
        return {"shape": list(self.shape)} if self.shape is not None else {"value": self.value}


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see the module docstring
class Node:
    id: str
    op: str
    inputs: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ()
    phase: str = "forward"
    module: Optional[str] = None
    args: Mapping[str, Any] = field(default_factory=dict)
    source: Optional[Source] = None
    tags: Tuple[str, ...] = ()
    witness: Optional[Witness] = None
    grad_fn: Optional[str] = None
    kind: str = "op"
    autograd_node: Optional[str] = None  # a backward op's: the autograd Node whose backward ran it

    @property
    def short_op(self) -> str:
        """``aten.addmm.default`` -> ``addmm``; ``aten.add.Tensor`` -> ``add.Tensor``."""
        parts = self.op.split(".")
        if len(parts) >= 3:
            name, overload = parts[1], ".".join(parts[2:])
            return name if overload == "default" else f"{name}.{overload}"
        return parts[-1]


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see the module docstring
class AutogradNode:
    """An autograd graph Node reachable from the pass: ``op`` is the forward
    node that created it, ``next`` its ``next_functions`` (non-None) in order,
    ``param`` the qualified name of the tensor an ``AccumulateGrad`` feeds."""

    id: str
    name: str
    op: Optional[str] = None
    next: Tuple[str, ...] = ()
    saved_bytes: int = 0
    param: Optional[str] = None
    value: Optional[str] = None


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see the module docstring
class GradInfo:
    """The gradient a tensor held after the backward of this pass."""

    value: str
    name: Optional[str]
    shape: Tuple[int, ...]
    dtype: str
    norm: Optional[float]  # NaN/inf as floats (strings in JSON); None: the gradient holds no numbers (meta)


def is_norm(x: Any) -> bool:
    """A gradient norm as ``GradInfo.norm`` holds it: a number >= 0 (NaN and inf too), or None."""
    return x is None or (type(x) in (int, float) and not x < 0)


@dataclass(frozen=True, slots=True)
class Autograd:
    nodes: Tuple[AutogradNode, ...] = ()
    executed: Tuple[str, ...] = ()
    grads: Tuple[GradInfo, ...] = ()
    no_grad_params: Tuple[str, ...] = ()


_FIELDS = (("meta", None), ("modules", ModuleCall), ("values", Value), ("nodes", Node), ("outputs", str),
           ("autograd", None))
_EXPECTED = {"meta": "a dict", "modules": "a tuple of ModuleCall", "values": "a tuple of Value",
             "nodes": "a tuple of Node", "outputs": "a tuple of value ids (str)", "autograd": "an Autograd record"}


@dataclass(frozen=True, slots=True, eq=False)
class Graph:
    """One recorded pass. ``str(graph)`` is the canonical text form."""

    meta: Mapping[str, Any] = field(default_factory=dict)
    modules: Tuple[ModuleCall, ...] = ()
    values: Tuple[Value, ...] = ()
    nodes: Tuple[Node, ...] = ()
    outputs: Tuple[str, ...] = ()
    autograd: Autograd = field(default_factory=Autograd)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    _index: Dict[str, Dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {})
        for name, kind in _FIELDS:  # (a hand-built Graph: say which field holds what, not an AttributeError later)
            got = getattr(self, name)
            if (not isinstance(got, Autograd) if name == "autograd" else not isinstance(got, Mapping)
                    if name == "meta" else not isinstance(got, (tuple, list)) or any(not isinstance(x, kind)
                                                                                     for x in got)):
                raise UsageError(f"Graph({name}=...) holds something else than it takes",
                                 expected=_EXPECTED[name], found=repr(got)[:80],
                                 fix="build graphs with torchtrace.trace, torchtrace.load or Graph.from_dict")
        if not self.fingerprints:
            from .fingerprint import fingerprints

            object.__setattr__(self, "fingerprints", fingerprints(self))

    # -- lookups ---------------------------------------------------------
    def _table(self, name: str) -> Dict[str, Any]:
        table = self._index.get(name)
        if table is None:
            items = {"values": self.values, "nodes": self.nodes, "modules": self.modules,
                     "autograd": self.autograd.nodes}[name]
            table = self._index[name] = {x.id: x for x in items}
        return table

    def value(self, vid: str) -> Value:
        return self._get("values", vid)

    def node(self, nid: str) -> Node:
        return self._get("nodes", nid)

    def module(self, mid: str) -> ModuleCall:
        return self._get("modules", mid)

    def autograd_node(self, aid: str) -> AutogradNode:
        return self._get("autograd", aid)

    def _get(self, table: str, key: str) -> Any:
        try:
            return self._table(table)[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            raise self._missing(table, key) from None

    def _missing(self, table: str, key: object) -> NotInGraphError:
        ids = list(self._table(table))
        sample = ", ".join(ids[:3]) + (f" … {ids[-1]}" if len(ids) > 3 else "")
        return NotInGraphError(f"no such id in {table}", expected=f"one of this graph's ids ({sample or 'none'})",
                               found=repr(key), fix="take ids from the graph itself (node.inputs, node.module, …)")

    def producers(self) -> Dict[str, str]:
        """value id -> id of the node that produced it."""
        table = self._index.get("producers")
        if table is None:
            table = self._index["producers"] = {v: n.id for n in self.nodes for v in n.outputs}
        return table

    def raised(self) -> Dict[str, str]:
        """node id -> error, in order, of the ops that raised (``meta.raised``)."""
        table = self._index.get("raised")
        if table is None:
            nodes = self._table("nodes")
            raised = self.meta.get("raised")
            table = self._index["raised"] = {r["node"]: str(r.get("error")) for r in
                                             (raised if isinstance(raised, list) else ())
                                             if isinstance(r, dict) and r.get("node") in nodes}
        return table

    def module_path(self, mid: Optional[str]) -> str:
        return "" if mid is None else self.module(mid).path

    def calls_around(self, mid: Optional[str]) -> Iterator[ModuleCall]:
        """Module call ``mid`` and the calls it ran inside, innermost first (a
        valid graph's parents come before their children: no cycle)."""
        while mid is not None:
            m = self.module(mid)
            yield m
            mid = m.parent

    def calls_under(self, mid: str) -> Set[str]:
        """The ids of module call ``mid`` and of every call inside it."""
        out = {self.module(mid).id}  # (an unknown id: NotInGraphError, as the other lookups)
        for m in self.modules:  # (parents come before their children)
            if m.parent in out:
                out.add(m.id)
        return out

    def witnesses(self) -> Iterator[Node]:
        return (n for n in self.nodes if n.witness is not None)

    # -- equality and text -----------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __str__(self) -> str:
        from .textform import format_graph

        return format_graph(self)

    def __repr__(self) -> str:
        label = self.meta.get("label")
        return (f"<torchtrace.Graph{' ' + repr(label) if label else ''}: {len(self.nodes)} ops, "
                f"{len(self.values)} values, {len(self.modules)} module calls>")

    # -- (de)serialisation ----------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        from .serialize import graph_to_dict

        return graph_to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "graph") -> "Graph":
        from .serialize import graph_from_dict

        return graph_from_dict(data, where=where)

    def validate(self) -> "Graph":
        """Check the invariants the schema cannot express (ids, references,
        order, vocabulary). Raises ``IRError`` naming the first problem."""
        from .validate import validate_graph

        validate_graph(self)
        return self

    # -- Jupyter -----------------------------------------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Dict[str, Any]:
        from .renderers.notebook import mimebundle

        return mimebundle(self)


def check_version(version: Any, where: str) -> Tuple[int, int]:
    """Accept ``[major, minor]`` with a known major; say how to fix anything else."""
    if (not isinstance(version, (list, tuple)) or len(version) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in version)):
        raise IRError("bad version", where=f"{where}.version", expected="[major, minor] integers",
                      found=repr(version), fix="write the version as a two-integer list such as [1, 0]")
    if version[0] != VERSION[0]:
        newer = version[0] > VERSION[0]
        raise (NewerVersionError if newer else IRError)(
            "unsupported major version", where=f"{where}.version",
            expected=f"major version {VERSION[0]} (this torchtrace reads {FORMAT} {VERSION[0]}.x)",
            found=f"{version[0]}.{version[1]}",
            fix="upgrade torchtrace to read newer files, or re-record the graph with this version" if newer else
            "re-record the graph: no torchtrace writes that version (the file was edited or damaged)")
    return (version[0], version[1])
