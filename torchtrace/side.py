"""One graph as the diff sees it (``Side``): its ops in execution order
without bookkeeping, each op's signature (what the alignment pairs by: phase,
module path, op, source line, a helper read's call site, the parameters it
reads; never ids or shapes) and witness key (what a read returned)."""
from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from .sourceloops import exits_loop, in_loop, loop_span, while_end, yields
from .textform import ordinal

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Graph, Node, Source, Value

Sig = Tuple[Any, ...]  # (phase, module path, op, file, line[, a helper read's caller file, line][, params read])
Loop = Tuple[str, str, int, int, str, bool]  # file, function, header line, last line, keyword, header calls the read

BOOKKEEPING = "autograd_internal"


def is_bookkeeping(n: "Node") -> bool:
    """Autograd bookkeeping (detach of saved outputs) and profiler markers
    (``record_function``, e.g. ``Optimizer.zero_grad#SGD.zero_grad``): they
    compute nothing, so they are left out of diffs and fingerprints."""
    return BOOKKEEPING in n.tags or "annotation" in n.tags


def is_engine_sum(n: "Node") -> bool:
    """The autograd engine adding two gradients of one tensor between Nodes (no Node ran
    it): its line is a reader's, and it runs once per extra reader of that tensor."""
    return n.phase == "backward" and n.op == "aten.add.Tensor" and n.autograd_node is None


def base_name(file: str) -> str:
    """The file name of a path (as signatures hold it: `model.py`, on any OS)."""
    return file.replace("\\", "/").rsplit("/", 1)[-1]


STATE = ("param", "buffer")
CASTS = ("aten._to_copy", "aten.to", "aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout",
         "prims.convert_element_type", "prims.convert_element_type.default")


def signature(g: "Graph", n: "Node", cast_of: Optional[Dict[str, str]] = None,
              one_site: FrozenSet[Tuple[str, int]] = frozenset()) -> Sig:
    src = n.source
    sig: Sig = (n.phase, g.module_path(n.module), n.op, base_name(src.file) if src is not None else "",
                src.line if src is not None else 0)
    site = call_site(n)
    if site is not None and (src is None or (src.file, src.line) not in one_site):
        sig += site  # (a helper's read: one per call site, not a loop)
    # the parameters it reads: a Linear's backward computes the grad of its input from its weight,
    # the grad of its weight from activations, with the same ops at the same line
    state = tuple(v.name or "" for v in (_base_value(g, vid, cast_of or {}) for vid in n.inputs) if v.role in STATE)
    return sig + (state,) if state else sig


def at_line(sig: Sig, line: Tuple[str, int]) -> Sig:
    """``sig`` with another (file name, line) in place of its own."""
    return (*sig[:3], *line, *sig[5:])


def call_site(n: "Node") -> Optional[Tuple[Any, ...]]:
    """(file name, line) of the user's line that called the helper function in
    which ``n`` read tensor data; None for other ops and reads. (Not the frames
    above it: a loop whose helper is reached from other lines on some iterations
    -- recursion, a peeled first step -- is one loop.)"""
    w = n.witness
    if w is None or not w.called_from:
        return None
    return base_name(w.called_from[0].file), w.called_from[0].line


def _caller(n: "Node") -> Optional[Tuple[str, str]]:
    """(file, function) of the user frame that called the helper in which read
    ``n`` ran (not ``call_site``: the function, not the line); None when there is
    none, or it is the helper itself (recursion: its caller's ops are its own)."""
    c = n.witness.called_from[0] if n.witness is not None and n.witness.called_from else None
    if c is None or n.source is None or (c.file, c.function) == (n.source.file, n.source.function):
        return None
    return c.file, c.function


def call_sites(nodes: Iterable["Node"]) -> Dict[Tuple[str, int], FrozenSet[Tuple[Any, ...]]]:
    """(file, line) of each read in a helper -> the lines that called the helper."""
    sites: Dict[Tuple[str, int], Set[Tuple[Any, ...]]] = {}
    for n in nodes:
        site = call_site(n)
        if site is not None and n.source is not None:
            sites.setdefault((n.source.file, n.source.line), set()).add(site)
    return {k: frozenset(v) for k, v in sites.items()}


def _base_value(g: "Graph", vid: str, cast_of: Dict[str, str]) -> "Value":
    """The value ``vid`` is a view or a cast of (``W.t()`` saved for backward,
    autocast's ``W.to(bf16)``: ``W``), or itself."""
    v = g.value(vid)
    for _ in range(8):
        up = v.alias_of or cast_of.get(v.id)
        if up is None:
            break
        v = g.value(up)
    return v


_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a path component that is a number: a ModuleList item


def loop_signature(sig: Sig) -> Sig:
    """``sig`` with the ModuleList indices of its module path made one (``h.0.attn``
    and ``h.1.attn`` -> ``h.#.attn``): the ops of ``for block in self.h`` repeat
    under this signature from one block to the next."""
    if not any(c.isdigit() for c in sig[1]):
        return sig
    return (sig[0], _INDEX.sub("#", sig[1]), *sig[2:5],
            *(tuple(_INDEX.sub("#", x or "") for x in e) if isinstance(e, tuple) else e for e in sig[5:]))


def witness_key(n: "Node") -> Any:
    """What a witness read, as a comparable key; ``None`` for other ops."""
    w = n.witness
    if w is None:
        return None
    if w.shape is not None:
        return ("shape", tuple(w.shape))
    v = w.value
    if isinstance(v, float) and v != v:  # NaN reads equal NaN
        return ("nan",)
    return (type(v).__name__, v)


class Side:
    """One graph as the diff sees it: its ops in order without bookkeeping
    ops, their signatures and witness keys."""

    def __init__(self, g: "Graph", one_site: FrozenSet[Tuple[str, int]] = frozenset(),
                 relined: Optional[Dict[str, Tuple[str, int]]] = None) -> None:
        """``one_site``: lines of helpers' reads whose call site is left out of
        their signatures (``one_call_site``); ``relined``: op id -> the line its
        loop signature takes (``entrylines.relined``)."""
        self.graph = g
        self._relined = relined or {}
        self.nodes: List["Node"] = [n for n in g.nodes if not is_bookkeeping(n)]
        cast_of = {n.outputs[0]: n.inputs[0] for n in g.nodes if n.op in CASTS and n.inputs and n.outputs}
        self.sigs: List[Sig] = [signature(g, n, cast_of, one_site) for n in self.nodes]
        self.wkeys: List[Any] = [witness_key(n) for n in self.nodes]
        self.ignored = len(g.nodes) - len(self.nodes)
        self.reads: Dict[Sig, List[int]] = {}
        for i, k in enumerate(self.wkeys):
            if k is not None:
                self.reads.setdefault(self.sigs[i], []).append(i)

    def line(self, n: "Node") -> Tuple[str, int]:
        """(file name, line) of op ``n``, as the other pass's would read (``relined``; a
        backward op's as its forward op's, whose line it carries)."""
        got = self._relined.get(n.id)
        if got is None and n.autograd_node is not None and self._relined:
            got = self._relined.get(self.graph.autograd_node(n.autograd_node).op or "")
        return got or ((base_name(n.source.file), n.source.line) if n.source else ("", 0))

    @cached_property
    def loop_keys(self) -> List[Any]:
        """``wkeys`` as loops read them: a number read at a ``while`` line
        (``while n.item() > 0``: 3, 2, 1, 0) becomes whether the loop went on."""
        keys = list(self.wkeys)
        ends: Dict[Tuple[str, int], int] = {}
        for i, n in enumerate(self.nodes):
            w, src = n.witness, n.source
            if w is None or src is None or w.shape is not None or isinstance(w.value, bool):
                continue
            last = ends.setdefault((src.file, src.line), while_end(src.file, src.line))
            if last:
                keys[i] = ("bool", self._went_on(i, last))  # (last == the line: `while c: body` on one line)
                continue
            loop = self.loop_of(i)  # (`go = n.item() > 0` in the body of `while go:`, `if n.item() == 0: break`)
            if loop is not None and not loop[5] and (loop[4] == "while" or exits_loop(src.file, src.line)):
                keys[i] = ("bool", not self.left_loop(i, loop))
        return keys

    def loop_of(self, i: int) -> Optional[Loop]:
        """The loop whose count read ``i`` may decide, when the read is not at that
        loop's own header: the loop around it in its function (``done = bool(...)``
        in the body of ``while not done:``), else the loop around the line that
        called the helper it is in (``if stop(n): break``), or at that line
        (``while unfinished():``, the last field True)."""
        n = self.nodes[i]
        src, w = n.source, n.witness
        if src is None or w is None:
            return None
        own = loop_span(src.file, src.line)
        if own is not None:
            return None if own[0] == src.line else (src.file, src.function, *own, False)
        c = w.called_from[0] if w.called_from else None
        span = loop_span(c.file, c.line) if c is not None else None
        return None if span is None else (c.file, c.function, *span, span[0] == c.line)

    def left_loop(self, i: int, loop: Loop) -> bool:
        """After read ``i``, did ``loop`` end (``_ends_loop``) before a read at
        ``i``'s signature came again?"""
        sig = self.sigs[i]
        for k in range(i + 1, len(self.nodes)):
            if self.wkeys[k] is not None and self.sigs[k] == sig:
                return False
            if self._ends_loop(i, k, loop):
                return True
        return True

    def one_run(self, reads: Sequence[int], loop: Loop) -> bool:
        """Are ``reads`` (of one signature, in order) in one run of ``loop``: it did
        not end between two of them (a `for` that ran out, a helper that returned)?"""
        return not any(self._ends_loop(r, k, loop) for r, s in zip(reads, reads[1:]) for k in range(r + 1, s))

    def _ends_loop(self, i: int, k: int, loop: Loop) -> bool:
        """Does op ``k``, after read ``i``, show that ``loop`` ended: an op of the
        loop's function (in ``i``'s module call) at a line outside the loop; or,
        for a loop in the helper that read ``i`` is in, an op of the function that
        called the helper (it returned)?"""
        at, n = self.nodes[k].source, self.nodes[i]
        if at is None:
            return False
        file, function, first, last = loop[:4]
        if (at.file, at.function) == (file, function):
            mk = self.nodes[k].module
            if mk != n.module:  # (another call of the loop's module: a run of its own; not a call inside
                # this one, a recursion or a submodule called at the loop's lines, nor the one around it)
                return not (self._called_in(mk, n.module) or self._called_in(n.module, mk))
            return not first <= at.line <= last
        return _caller(n) == (at.file, at.function) and (n.source.file, n.source.function) == (file, function) \
            and not yields(file, first)

    def module_depth(self, nid: str) -> int:
        """How many module calls hold op ``nid``."""
        return sum(1 for _ in self.graph.calls_around(self.graph.node(nid).module))

    def _called_in(self, inner: Optional[str], outer: Optional[str]) -> bool:
        """Is module call ``inner`` made inside module call ``outer`` (None: outside any)?"""
        return outer is None or any(m.id == outer for m in self.graph.calls_around(inner))

    def _went_on(self, i: int, last: int) -> bool:
        """Did the ``while`` whose condition read op ``i`` run its body again? The
        next op of that function's call (same file, function, module call; the
        condition's own ops passed over) is in its body; or it is that ``while``'s
        read again, from the same call site, with ops run between (the body
        called out; a loop entered anew reads at once: an outer loop's next run),
        none of them in the function that called the helper (its next call)."""
        n = self.nodes[i]
        src, key, caller = n.source, (n.source.file, n.source.function, n.module), _caller(n)
        between = False
        for m in self.nodes[i + 1:]:
            at = m.source
            if caller is not None and at is not None and (at.file, at.function) == caller:
                return False  # (back in the caller: the helper returned)
            if at is None or (at.file, at.function, m.module) != key:
                between = True
                continue
            if src.line < at.line <= last:
                return True
            if at.line != src.line:
                return False
            if m.witness is not None:
                return between and call_site(m) == call_site(n)
            if last == src.line:  # (a body on the `while` line itself: its ops come before the next read)
                return True
        return False

    @cached_property
    def source_of_call(self) -> Dict[str, "Source"]:
        """Module call id -> the source of its first op (a line of its forward)."""
        out: Dict[str, "Source"] = {}
        for n in self.nodes:
            if n.module is not None and n.source is not None:
                out.setdefault(n.module, n.source)
        return out

    @cached_property
    def call_sites(self) -> Dict[Tuple[str, int], FrozenSet[Tuple[Any, ...]]]:
        """(file, line) of a read in a helper -> the lines that called the helper (``call_sites``)."""
        return call_sites(self.nodes)

    @cached_property
    def _lines_run(self) -> Dict[Tuple[str, str], List[int]]:
        """(file, function) -> the source lines of the ops the pass ran there."""
        out: Dict[Tuple[str, str], List[int]] = {}
        for n in self.nodes:
            if n.source is not None:
                out.setdefault((n.source.file, n.source.function), []).append(n.source.line)
        return out

    @cached_property
    def looped(self) -> List[bool]:
        """Per op: is its line inside a ``for``/``while`` of its function (``align._two_loops``)?"""
        memo: Dict[Tuple[str, int], bool] = {}
        out = []
        for n in self.nodes:
            key = (n.source.file, n.source.line) if n.source is not None else ("", 0)
            if key not in memo:
                memo[key] = n.source is not None and in_loop(*key) is True
            out.append(memo[key])
        return out

    @cached_property
    def call_lines(self) -> Set[Tuple[str, int, str, int, str]]:
        """(module path, call, file, line, phase) of every op with a source line."""
        calls = {m.id: (m.path, m.call) for m in self.graph.modules}
        return {(*calls.get(n.module, ("", -1)), n.source.file, n.source.line, n.phase)
                for n in self.nodes if n.source is not None}

    def ran(self, file: str, function: str) -> bool:
        """Did the pass run an op in that function?"""
        return (file, function) in self._lines_run

    def ran_lines(self, file: str, function: str, lo: int, hi: int, but: Tuple[int, int] = (0, -1)) -> bool:
        """Did the pass run an op at a line ``lo``..``hi`` of that function, outside ``but``
        (a branch of an ``if``: did it run there, or the ``if``'s block around it)?"""
        return any(lo <= x <= hi and not but[0] <= x <= but[1] for x in self._lines_run.get((file, function), ()))

    @cached_property
    def named(self) -> Dict[str, "Value"]:
        """Parameters and inputs by name, first versions; a name the pass gave
        twice (two models' inputs both called `input`) gets its ordinal after
        the first: `input (2nd)`."""
        out: Dict[str, "Value"] = {}
        for v in self.graph.values:
            if v.role in ("param", "input") and v.name and v.version_of is None:
                name, k = v.name, 1
                while name in out:
                    k += 1
                    name = f"{v.name} ({ordinal(k)})"
                out[name] = v
        return out

    @cached_property
    def aliases(self) -> Dict[str, str]:
        """An input's other name -> its name, for a tensor passed as two inputs
        (``model(input_ids=x, labels=x)``: ``labels`` -> ``input_ids``)."""
        found = self.graph.meta.get("input_aliases")
        return {k: v for k, v in found.items() if v in self.named} if isinstance(found, dict) else {}

    def downstream_of(self, names: Iterable[str], through: Optional[Set[str]] = None) -> Set[str]:
        """The value ids computed (forward) from the named inputs ``names``, the
        inputs included; with ``through`` (node ids), by those ops and at most one
        op outside it on the way (``labels`` -> one_hot -> a ``sub`` both sides ran ->
        the loss only one side ran; not a KV cache through a whole layer)."""
        hops = {self.named[x].id: 0 for x in names if x in self.named}
        if hops:
            for n in self.graph.nodes:
                got = [hops[v] for v in n.inputs if v in hops] if n.phase == "forward" else ()
                h = min(got) + (0 if through is None or n.id in through else 1) if got else 2
                if h <= 1:
                    for v in n.outputs:
                        hops[v] = min(h, hops.get(v, h))
        return set(hops)

    @cached_property
    def trainable(self) -> Dict[str, bool]:
        """Parameter (and input) name -> whether it required grad in the pass."""
        return {name: v.requires_grad for name, v in self.named.items()}

    @cached_property
    def training(self) -> Dict[Tuple[str, int], Optional[bool]]:
        """(module path, call index) -> ``module.training`` at that call."""
        return {(m.path, m.call): m.training for m in self.graph.modules}

    @cached_property
    def types(self) -> Dict[str, str]:
        """Module path -> the class of its first call."""
        out: Dict[str, str] = {}
        for m in self.graph.modules:
            out.setdefault(m.path, m.type)
        return out

    @cached_property
    def calls(self) -> Dict[str, int]:
        """How many times the pass called each module path."""
        out: Dict[str, int] = {}
        for m in self.graph.modules:
            out[m.path] = out.get(m.path, 0) + 1
        return out

    @cached_property
    def sources(self) -> Dict[str, str]:
        """value id -> the value bookkeeping ops (a chain of detaches) passed
        through to it: checkpoint's recompute reads ``detach(weight)``."""
        out: Dict[str, str] = {}
        for n in self.graph.nodes:
            if is_bookkeeping(n) and n.inputs:
                src = out.get(n.inputs[0], n.inputs[0])
                out.update((v, src) for v in n.outputs)
        return out

    @cached_property
    def weaker(self) -> Tuple[List[Sig], List[Sig]]:
        """Weaker signatures, for ops the alignment left unpaired (``refine``):
        without a helper read's call site, then without the source line too."""
        return [s[:5] for s in self.sigs], [s[:3] for s in self.sigs]

    @cached_property
    def loop_sigs(self) -> List[Sig]:
        """The signatures as loops repeat them (``loop_signature``), made on first use."""
        moved = self._relined
        return [loop_signature(s if n.id not in moved else at_line(s, moved[n.id]))
                for s, n in zip(self.sigs, self.nodes)]


def one_call_site(a: "Graph", b: "Graph") -> FrozenSet[Tuple[str, int]]:
    """Lines of reads in a helper that each pass called from one line, another
    in each (the model's forward called from a training step's line and from an
    evaluation's): the call site tells no calls apart there, and would keep
    the reads from pairing up."""
    sa, sb = call_sites(a.nodes), call_sites(b.nodes)
    return frozenset(k for k in sa.keys() & sb.keys() if len(sa[k]) == len(sb[k]) == 1 and sa[k] != sb[k])
