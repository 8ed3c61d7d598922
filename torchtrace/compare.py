"""``torchtrace.diff(a, b)``: two recorded passes aligned op by op, every op
classified, and each run of differences (a hunk) explained by the witness
that decided it.

    d = torchtrace.diff(a, b)
    d.is_empty, d.kind              # "identical" | "shapes" | "structural"
    for h in d.hunks:
        h.only_a, h.only_b, h.changed, h.module, h.explanation
    print(d)                        # unified-diff-like text, explanation first

Ops are aligned by signature (``align.py``); autograd bookkeeping ops are
left out. An aligned op is ``changed`` when its tensors' shapes or dtypes,
its non-tensor args, or where its inputs come from differ; a witness that
read another value is ``changed`` with ``what == ("value",)`` and explains
hunks rather than forming one (so is an op called from another source line,
``"line"``). The result is symmetric: ``diff(b, a)`` is
``diff(a, b).mirror()``. Works on loaded graphs, without torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .align import align
from .entrylines import relined
from .side import Side, one_call_site
from .classify import (STATUSES, ArgChange, OpPair, Row, a_first, arg_changes, args_only, classify, hunk_runs,
                       moved, producers, reshaped, significant)
from .inputchange import InputChange, input_changes, read_after
from .errors import UsageError
from .explain import ARROW, Causes, LoopChange, WitnessChange, common_module, plural
from .backwardcause import backward_like_forward, cut_diff, fed_by_one_sided, uncut
from .guardcause import grad_mode_if
from .hunk import Hunk, cut_off, ended
from .sided import (accumulated, casts, differing_grad_modes, differing_meta, differing_training, ended_before, fed_by,
                    fed_not_read, fed_values, in_modal_modules, needs_grad, optimizer_state, ran_on, ran_only,
                    recomputed, retyped, shape_if, stopped, trained, unused)
from .ir import Graph
from .paramcause import blocks_params, own_params, params_of
from .loopchange import runs_said
from .returned import returned_change
from .rewires import rewires
from .textform import listed
from .typechange import TypeChange, changed_what, type_changes, value_pairs

__all__ = ["diff", "GraphDiff", "Hunk", "OpPair"]

CONTEXT = 3  # unchanged ops shown around a hunk; changed runs closer than 2x this merge


@dataclass(frozen=True, eq=False)
class GraphDiff:
    """Two passes compared. ``ops`` is the whole alignment in merged
    execution order; ``hunks`` the runs of differences. ``types``/``args``/
    ``inputs`` summarise every shape, dtype, argument and input change;
    ``witnesses`` every aligned read that returned other data; ``ignored``
    the bookkeeping ops left out on each side."""

    a: Graph
    b: Graph
    ops: Tuple[OpPair, ...]
    hunks: Tuple[Hunk, ...]
    witnesses: Tuple[WitnessChange, ...] = ()
    types: Tuple[TypeChange, ...] = ()
    args: Tuple[ArgChange, ...] = ()
    inputs: Tuple[InputChange, ...] = ()
    ignored: Tuple[int, int] = (0, 0)
    _counts: Dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = {s: 0 for s in STATUSES}
        for p in self.ops:
            counts[p.status] += 1
        object.__setattr__(self, "_counts", counts)

    # -- verdicts --------------------------------------------------------
    @property
    def structure_equal(self) -> bool:
        return self.a.fingerprints.get("structure") == self.b.fingerprints.get("structure")

    @property
    def shapes_equal(self) -> bool:
        return self.a.fingerprints.get("shapes") == self.b.fingerprints.get("shapes")

    @property
    def is_empty(self) -> bool:
        """No op differs and both fingerprints match (witness reads may differ)."""
        return not self.hunks and self.structure_equal and self.shapes_equal

    @property
    def kind(self) -> str:
        """``identical``; ``shapes`` (same program, other shapes/dtypes/args);
        or ``structural`` (ops added, removed or rewired)."""
        if self.structural_hunks or not self.structure_equal or any(
                "wiring" in p.what for p in self.ops if p.status == "changed"):
            return "structural"
        return "identical" if self.is_empty else "shapes"

    @property
    def structural_hunks(self) -> Tuple[Hunk, ...]:
        return tuple(h for h in self.hunks if h.kind == "structural")

    @property
    def changed_hunks(self) -> Tuple[Hunk, ...]:
        return tuple(h for h in self.hunks if h.kind == "changed")

    @property
    def only_a(self) -> int:
        return self._counts["only_a"]

    @property
    def only_b(self) -> int:
        return self._counts["only_b"]

    @property
    def changed(self) -> int:
        """Aligned ops whose tensors, args or inputs differ."""
        return sum(1 for p in self.ops if significant(p))

    @property
    def moved(self) -> int:
        """Aligned ops recorded at another source line."""
        return sum(1 for p in self.ops if "line" in p.what)

    @property
    def loops(self) -> Tuple[LoopChange, ...]:
        return tuple(h.loop for h in self.hunks if h.loop is not None)

    def summary(self) -> str:
        """One line: what kind of difference, and how big."""
        if self.kind == "identical":
            notes = [f"{plural(len(self.witnesses), 'witness')} read other data"] if self.witnesses else []
            notes += [f"{plural(self.moved, 'op')} at other source lines"] if self.moved else []
            # (train, no_grad and inference_mode run the same ops; only the autograd graph differs)
            notes += [self.grad_modes] if self.grad_modes else []
            notes += [t for t in [differing_training(self.a, self.b)] if t]  # (no dropout: the same ops)
            notes += [self.torch_versions] if self.torch_versions else []
            return "identical" + (f" ({'; '.join(notes)})" if notes else "")
        if self.kind == "shapes":
            what = "; ".join(listed(self.types, 2, "type change") or listed(self.args, 2, "arg change") or
                             listed(self.inputs, 2, "input change"))  # (inputs only: an identity's)
            differ = f"{changed_what(self.types, self.inputs)} differ" if self.types or self.inputs else \
                "args differ"  # (Adam's lr)
            return f"same structure, {differ}: {plural(self.changed, 'op')} changed" + (f" ({what})" if what else "")
        if not self.structural_hunks:
            other = "other returned values" if not self.changed and self.returned else "other dataflow"
            return f"structure differs: same ops, {other}: {plural(self.changed, 'op')} changed"
        hunks = plural(len(self.hunks), "hunk")  # as many as the text numbers: "# 1." .. "# 5."
        if self.changed_hunks:
            hunks += f" ({len(self.structural_hunks)} structural, {len(self.changed_hunks)} changed)"
        return f"structure differs: {hunks}; {plural(self.only_a, 'op')} only in A, {self.only_b} only in B, " \
               f"{self.changed} changed"

    @property
    def grad_modes(self) -> str:
        """"grad mode train in A, no_grad in B" when the passes ran under different ones."""
        modes = differing_grad_modes(self.a, self.b)
        return f"grad mode {modes[0]} in A, {modes[1]} in B" if modes else ""

    @property
    def torch_versions(self) -> str:
        """"recorded by torch 2.13.0 in A, 2.4.0 in B" when the passes' torch versions differ."""
        v = differing_meta(self.a, self.b, "torch")
        return f"recorded by torch {v[0]} in A, {v[1]} in B" if v else ""

    @property
    def errors(self) -> Tuple[str, ...]:
        """"B's pass ended with AssertionError": each pass that the code ended by raising
        (with the op, line and message when an op raised it)."""
        return tuple(ended(side, g, detail=True) for side, g in (("A", self.a), ("B", self.b))
                     if g.meta.get("error"))

    def why(self, *, errors: bool = True) -> List[str]:
        """The explanation, one line per distinct cause: hunks that share a
        cause and a count are grouped ("... → 12 hunks, each 3 ops only in B (in `h.0.attn`, ...)").
        A shapes-only diff gets one line saying what changed. A pass that ended
        with an exception is said first (``errors=False`` leaves that out)."""
        groups: Dict[Tuple[str, str], List[Hunk]] = {}
        # ops only in A or B; else (the same ops, another dataflow) the ops that read from elsewhere
        for h in self.structural_hunks or (self.changed_hunks if self.kind == "structural" else ()):
            # (dtype casts, one op here and three there, are one cause: counted together; so are
            # the ops of modules in training mode on one side, and the backward of frozen parameters)
            # (and the runs of one loop statement that changed alike: one line that names them)
            run_free = h if h.loop is None or h.loop.run is None else replace(h, loop=replace(h.loop, run=None))
            cause = run_free.cause
            groups.setdefault((cause, "their backward" if h.backward_of is not None else ""), []).append(h)
        said = {h.stopped for h in self.hunks if h.stopped and h.cause.startswith(h.stopped)}  # (a hunk says it)
        lines = [f"{e}: the ops after the raise are missing" for e in self.errors if e not in said] if errors else []
        lines += [f"{cut_off(side, g)}: the ops after it were not recorded"
                  for side, g in (("A", self.a), ("B", self.b)) if g.meta.get("truncated")]
        trained = any(n.phase in ("backward", "optimizer") for g in (self.a, self.b) for n in g.nodes)
        if self.grad_modes and trained:  # (a validation pass against a training one)
            lines.append(f"{self.grad_modes}: backward and optimizer ops run only under train")
        if self.torch_versions and not any(h.cause.startswith("torch ") for h in self.hunks):  # (an upgrade can
            # change any op: said also where a read explains each hunk)
            lines.append(f"{self.torch_versions}: torch's own code may run other ops")
        if not groups and self.kind == "shapes":
            found = [h.witness for h in self.changed_hunks if h.witness is not None]
            reads = dict.fromkeys(w.describe() for w in found if w.a.shape is not None)
            arms = dict.fromkeys(w.describe() for w in found if w.a.shape is None and not (w.passed or w.steered))
            passed = dict.fromkeys(w.describe() for w in found if w.passed or w.steered)  # (passed_on, steered)
            what = list(reads) + listed(self.inputs, 2, "input change") + listed(self.types, 3, "type change") + \
                listed(self.args, 2, "arg change")
            other = f"other {changed_what(self.types, self.inputs)}" if self.types or self.inputs else "other args"
            if passed and self.inputs:  # (the inputs changed too: the read explains its args, not all)
                what, passed = list(passed) + what, {}
            lead = f"{'; '.join(arms)} {ARROW} the same ops, from other lines, with {other}" if arms \
                else f"{'; '.join(passed)} {ARROW} the same ops with {other}" if passed else f"same ops, {other}"
            lines.append(f"{lead} ({plural(self.changed, 'op')} changed): {'; '.join(what)}")
        for (cause, counts), hunks in groups.items():
            cause = runs_said(cause, [h.loop for h in hunks if h.loop is not None])
            names = list(dict.fromkeys(h.module or "<root>" for h in hunks))
            where = ", ".join(f"`{m}`" for m in names[:4])
            where += f" and {len(names) - 4} more" if len(names) > 4 else ""
            each = {h.counts for h in hunks}
            if len(each) == 1:  # one hunk, or hunks alike: "12 hunks, each 3 ops only in B"
                counts = f"{len(hunks)} hunks, each {hunks[0].counts}" if len(hunks) > 1 else hunks[0].counts
            else:  # (casts, train/eval, a cause behind hunks of several sizes: the ops of all of them)
                a, b = sum(len(h.only_a) for h in hunks), sum(len(h.only_b) for h in hunks)
                counts = (f"{counts}: " if counts else "") + ", ".join(
                    plural(k, "op") + f" only in {s}" for k, s in ((a, "A"), (b, "B")) if k) + f" in {len(hunks)} hunks"
            lines.append(f"{cause} \u2192 {counts} (in {where})")
        return lines or ([] if self.is_empty else [self.returned or self.summary()])

    @cached_property
    def returned(self) -> Optional[str]:
        """How the values the traced call returned differ ("only B returned 2 values: ..."), or None."""
        return returned_change(self.a, self.b, self.ops)

    def other_reads(self) -> List[str]:
        """The reads that differ and explain no hunk, each text once with a count
        (one line read alike in a loop, Adam's step count per parameter: "(4×)")."""
        explained = {(h.witness.node_a, h.witness.node_b) for h in self.hunks  # (a hunk whose cause is
                     if h.witness is not None and h.witness.where in h.cause}     # another's keeps it unsaid)
        other: Dict[str, int] = {}
        for w in self.witnesses:
            if (w.node_a, w.node_b) not in explained:
                other[w.describe()] = other.get(w.describe(), 0) + 1
        return [f"{text} ({n}\u00d7)" if n > 1 else text for text, n in other.items()]

    def mirror(self) -> "GraphDiff":
        """The same comparison seen from B: ``diff(b, a)``."""
        hunks = uncut(self.hunks)  # (pieces of a backward hunk: cut again in B's row order)
        if len(hunks) != len(self.hunks):
            return cut_diff(replace(self, hunks=tuple(hunks)).mirror())
        return GraphDiff(self.b, self.a, a_first([p.mirror() for p in self.ops]),
                         tuple(h.mirror() for h in self.hunks),
                         tuple(w.mirror() for w in self.witnesses), tuple(t.mirror() for t in self.types),
                         tuple(x.mirror() for x in self.args), tuple(i.mirror() for i in self.inputs),
                         (self.ignored[1], self.ignored[0]))

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "summary": self.summary(),
                "a": {"label": self.a.meta.get("label"), "ops": len(self.a.nodes), **dict(self.a.fingerprints)},
                "b": {"label": self.b.meta.get("label"), "ops": len(self.b.nodes), **dict(self.b.fingerprints)},
                "counts": {"only_a": self.only_a, "only_b": self.only_b, "changed": self.changed,
                           "same": self._counts["same"]},
                "hunks": [h.to_dict() for h in self.hunks], "ops": [p.to_dict() for p in self.ops],
                "witnesses": [w.to_dict() for w in self.witnesses], "types": [t.to_dict() for t in self.types],
                "args": [x.to_dict() for x in self.args], "inputs": [i.to_dict() for i in self.inputs],
                "ignored": list(self.ignored), "returned": self.returned}

    def __iter__(self) -> Iterator[Hunk]:
        return iter(self.hunks)

    def __len__(self) -> int:
        return len(self.hunks)

    def __str__(self) -> str:
        from .renderers.diffs import render_diff

        return str(render_diff(self, "text"))

    def __repr__(self) -> str:
        return f"<torchtrace.GraphDiff {self.summary()}>"

    def __rich__(self) -> Any:
        """``rich.print(diff)``: the text rendering, in colour."""
        from .renderers.difftext import render_rich

        return render_rich(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Dict[str, Any]:
        """Jupyter: the explained diff as Markdown (with its Mermaid drawing) and as text."""
        from .renderers.diffs import render_diff

        return {"text/plain": str(self), "text/markdown": render_diff(self, "markdown")}


GraphLike = Union[Graph, Dict[str, Any], str, "os.PathLike[str]"]


def diff(a: GraphLike, b: GraphLike) -> GraphDiff:
    """Compare two passes (``Graph``, IR dicts or file paths); see :class:`GraphDiff`."""
    ga, gb = _graph(a, "a"), _graph(b, "b")
    one_site = one_call_site(ga, gb)  # (reads in a helper called from one line in each pass, another in each)
    sa, sb = Side(ga, one_site), Side(gb, one_site, relined(ga, gb))  # (B's loops: A's lines, see entrylines)
    return cut_diff(_diff(sa, sb) if _orientation(sa) <= _orientation(sb) else _diff(sb, sa).mirror())


def _orientation(s: Side) -> Tuple[Any, ...]:
    return (s.sigs, s.graph.fingerprints.get("shapes", ""), s.graph.fingerprints.get("structure", ""))


def _graph(x: GraphLike, name: str) -> Graph:
    if isinstance(x, Graph):
        return x
    if isinstance(x, dict):
        return Graph.from_dict(x, where=name)
    if isinstance(x, (str, os.PathLike)):
        from .serialize import load

        return load(x)
    raise UsageError(f"diff() got {type(x).__name__} for {name}", expected="a torchtrace.Graph, an IR dict or a path",
                     found=type(x).__name__, fix="pass t.graph from torchtrace.trace() or a saved .json file")


def _diff(A: Side, B: Side) -> GraphDiff:
    if A.sigs != B.sigs and [s[:3] for s in A.sigs] == [s[:3] for s in B.sigs]:
        # the same ops in the same modules, from other source lines (the code was edited): pair them
        pairs: List[Row] = [(k, k) for k in range(len(A.sigs))]
    else:
        pairs = align(A.sigs, B.sigs, A.wkeys, B.wkeys, tuple(zip(A.weaker, B.weaker)), (A.looped, B.looped))
    made = (producers(A, pairs, 0), producers(B, pairs, 1))
    ops = a_first([classify(A, B, pairs[e], made) for e in range(len(pairs))])
    causes = Causes(A, B, pairs)
    matched = [p for p in ops if p.a is not None and p.b is not None]
    inputs = input_changes(A, B, ops)
    types = type_changes(value_pairs(A, B, matched))
    hunks: List[Hunk] = []
    modes = differing_grad_modes(A.graph, B.graph)
    fed = fed_values(A, B, inputs, ops)
    params = own_params(A, B, ops)
    # (after the last op both passes ran: what a Recorder's last pass ran past its step, the other's next step)
    end = 1 + max((k for k, p in enumerate(ops) if p.status not in ("only_a", "only_b")), default=-1)
    for kind, k0, k1 in hunk_runs(ops, CONTEXT):
        rows = ops[k0:k1]
        recompute = kind == "structural" and recomputed(A, B, rows)
        # (a checkpointed block's own ops are recomputed outside any module call: not the root's)
        module = common_module(path for p in rows for g, n in ((A.graph, p.a), (B.graph, p.b))
                               if n is not None for path in [g.module_path(n.module)] if path or not recompute)
        if kind == "structural":
            witness, loop = causes.explain(k0, k1)
            caught = causes.caught(k0, k1)  # (what an `except` ran: said before reads made earlier)
            if caught is not None and loop is None:
                witness = None
            ran, adjacent = ran_only(A, B, rows), causes.adjacent(k0)
            if ran is not None:  # only a read right before it is said with it, or the cause of the ops only
                # that side ran right before it (`if loss > best: break` ... `best = loss.item()`, then backward)
                before = hunks[-1] if hunks and hunks[-1].span[1] == k0 and _one_side(hunks[-1]) == ran[0] else None
                carried = before.witness if before is not None and before.witness is not None and (
                    not before.witness.weak) else None
                witness, loop = adjacent or carried, None
            if loop is None and ran is None and adjacent is None and fed_not_read(A, B, rows, fed, witness):
                witness = None  # (`labels` passed only in A: its loss is the input's, not an earlier read's)
            swapped = retyped(A, B, rows) if loop is None else None
            reparams = params_of(A, B, rows, params, ops, k0) if loop is None and swapped is None and \
                witness is None and not blocks_params(inputs, k1) and not fed_by(rows, fed) else None
            # (training mode needs a sign that it decided these ops when a loop count, other input types,
            # another module class or other parameters can explain them)
            mode = trained(A, B, rows, fed, strict=loop is not None or swapped is not None or reparams is not None
                           or any(i.a is not None and i.b is not None for i in inputs))
            reparams = None if mode is not None else reparams  # (`if self.training:` around them: the mode's)
            first = adjacent if mode is not None and loop is None and not in_modal_modules(A, B, rows) else None
            witness = first or witness  # (a read right before the ops says more than the modes of all of them)
            tested = shape_if(A, B, rows, inputs) if witness is None or (
                witness.weak and not witness.named and loop is None and ran is None) else None
            if tested and witness is not None and tested == f"{os.path.basename(witness.file)}:{witness.line}":
                tested = None  # (the `if` tests the read too: `if x.shape[0] > 2 and h.mean().item() > 0.5:`)
            witness = None if tested else witness
            hunks.append(Hunk(len(hunks), kind, module, tuple(p.a for p in rows if p.status == "only_a"),
                              tuple(p.b for p in rows if p.status == "only_b"), (), (k0, k1), witness, loop,
                              inputs=inputs if witness is None else (), shape_if=tested,
                              late=read_after(A, B, rows, inputs, k1),
                              stopped=stopped(A, B, rows) if k1 == len(ops) or causes.past_end(k0) else None,
                              last=ran_on(A, B, rows) if k1 >= end else None,
                              short=ended_before(A, B, rows) if k1 >= end and (
                                  witness is None or witness.weak) else None,
                              grads=accumulated(A, B, rows) if ran is None else (), recompute=recompute,
                              ran=ran, trained=mode, retyped=swapped, params=reparams,
                              read_first=first is not None,
                              fed=fed_by(rows, fed),
                              needs_grad=needs_grad(A, B, rows), unused=unused(A, B, rows),
                              state=optimizer_state(rows), grad_modes=modes,
                              grad_if=grad_mode_if(A, B, rows) if modes else None,
                              torch_versions=differing_meta(A.graph, B.graph, "torch"),
                              caught=ops[caught] if caught is not None and loop is None else None,
                              casts=casts(A, B, rows, types) if witness is None else ()))
        else:
            changed = tuple(p for p in rows if significant(p))
            steerable = not inputs and all({"wiring", "args"} & set(p.what) and not {"shape", "dtype"} & set(p.what)
                                           for p in changed)  # (other tensors read, or other args: no type change)
            witness = causes.shape_read(k0, k1) or causes.passed_on(k0, changed) or (causes.arm(k0) if any(
                {"args", "line"} <= set(p.what) for p in changed) else None) or (
                causes.steered(k0, changed) if steerable else None)
            # (integer args of resized ops are sizes that follow the shapes, unless no input changed and
            # no read of data explains them: then an argument decided the new shapes, `topk(self.k)`, k 2 -> 3)
            args = arg_changes(args_only(changed), reshaped(changed) if inputs or witness is not None else None)
            hunks.append(Hunk(len(hunks), kind, module, (), (), changed, (k0, k1), witness,
                              types=type_changes(value_pairs(A, B, changed)), args=args, rewires=rewires(A, B, changed),
                              trained=trained(A, B, changed, fed, by_args=True) if any(  # (BatchNorm's batch
                                  a.key in ("training", "train") for a in args) else None))  # statistics, an LSTM's)
    witnesses = tuple(causes.witness_change(i, j) for i, j in (pairs[e] for e in causes.differing))
    hunks = moved(A, B, fed_by_one_sided(A, B, backward_like_forward(A.graph, B.graph, hunks, witnesses)))
    return GraphDiff(A.graph, B.graph, ops, tuple(hunks), witnesses,
                     types, arg_changes(args_only(matched), reshaped(matched) if inputs or witnesses else None),
                     inputs, (A.ignored, B.ignored))


def _one_side(h: Hunk) -> Optional[str]:
    """"A" or "B" for a structural hunk of ops only that side ran."""
    if h.kind != "structural" or bool(h.only_a) == bool(h.only_b):
        return None
    return "A" if h.only_a else "B"
