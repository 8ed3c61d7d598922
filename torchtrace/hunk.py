"""A hunk of a ``GraphDiff``: one run of ops only in A or B (or of changed
ops), what explains it, and the sentence that says so.

The cause, most specific first: a loop whose condition read other data; the
witness before the hunk whose value differs; the pass on the other side
having ended with an exception first; the traced call's inputs having other
types (``if x.shape[0] > 4``); a Python-level loop; else Python state.
(``sided.py`` finds the causes only one side's ops have.) A hunk that follows
from another takes its cause: the backward of its ops, ops that read what its
ops made (``backwardcause.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

from .classify import ArgChange, OpPair
from .inputchange import InputChange
from .rewires import Rewire
from .explain import ARROW, LoopChange, WitnessChange, plural, where
from .textform import dtype_short
from .ir import Graph, Node
from .typechange import TypeChange


PHASE_WORDS = {"backward": "backward", "optimizer": "an optimizer step"}


@dataclass(frozen=True)
class Hunk:
    """A run of differences. ``kind`` "structural": ops only in A and/or B
    (``witness``/``loop`` say why; else ``stopped``, the other side's pass
    having raised before them, or ``inputs``, the traced call's inputs whose
    types differ); "changed": aligned ops whose tensors or
    args differ (``types``/``args`` summarise how; ``witness`` is the
    data-dependent shape read behind them, if one differs). ``module`` is the module
    path the hunk sits in (``""`` = the root); ``span`` its rows in
    ``GraphDiff.ops``."""

    index: int
    kind: str
    module: str
    only_a: Tuple[Node, ...]
    only_b: Tuple[Node, ...]
    changed: Tuple[OpPair, ...]
    span: Tuple[int, int]
    witness: Optional[WitnessChange] = None
    loop: Optional[LoopChange] = None
    types: Tuple[TypeChange, ...] = ()
    args: Tuple[ArgChange, ...] = ()
    inputs: Tuple[InputChange, ...] = ()
    rewires: Tuple[Rewire, ...] = ()  # changed ops that read other named inputs (``m(x, x)`` vs ``m(x, y)``)
    stopped: Optional[str] = None  # "B's pass ended with ValueError": the hunk is what the other side ran after
    grads: Tuple[str, ...] = ()  # the hunk is AccumulateGrad adding into these .grads, which existed on one side
    recompute: bool = False  # the hunk is activation checkpointing's recompute (phase ``recompute``), on one side
    casts: Tuple[TypeChange, ...] = ()  # the hunk is dtype casts (``.float()``) only on one side: the dtype changes
    backward_of: Optional[int] = None  # the hunk is the backward of that (forward) hunk's ops: its cause
    ran: Optional[Tuple[str, Tuple[str, ...]]] = None  # (side, phases): only that side's pass ran those phases
    trained: Optional[str] = None  # the side whose module calls ran in training mode (the other's in eval)
    fed: Tuple[InputChange, ...] = ()  # inputs only one side passed that some of its ops were computed from
    needs_grad: Optional[Tuple[str, Tuple[str, ...]]] = None  # (side, params): backward for params only it trains
    unused: Optional[Tuple[str, Tuple[str, ...]]] = None  # (side, params): stepped there, no gradient on the other
    state: Optional[Tuple[str, Tuple[str, ...]]] = None  # (side, ops): the optimizer made its state there
    last: Optional[str] = None  # the side whose pass was the Recorder's last: it ran on to the block's end
    grad_modes: Optional[Tuple[str, str]] = None  # the passes' grad modes, when they differ (A's, B's)
    torch_versions: Optional[Tuple[str, str]] = None  # the torch versions that recorded them, when they differ
    moved: Tuple[str, ...] = ()  # its ops ran on the other side too, elsewhere (``classify.moved``): their names
    read_first: bool = False  # ``witness`` is a read right before it (no op between): said before ``trained``
    caught: Optional[OpPair] = None  # an op before it raised on one side, and that pass went on (``except``)
    short: Optional[str] = None  # the side whose pass was the Recorder's last: it ended before these ops
    # when ``inputs`` changed shape: ``file:line`` of the `if` around it that tests one, "" when none does
    shape_if: Optional[str] = None
    grad_if: Optional[str] = None  # `file:line` of the user's `if` on grad mode whose branch one pass ran
    retyped: Optional[Tuple[str, str, str]] = None  # (module path, class in A, in B): another module there
    # (module path, params in A, in B): ops only that side ran read params of that module the other never read
    params: Optional[Tuple[str, Tuple[str, ...], Tuple[str, ...]]] = None
    late: bool = False  # ``inputs`` are all tensors from outside the pass that ops only after it read
    summed: Optional[Tuple[str, int, int]] = None  # (param, its forward readers in A, in B): the engine's grad sum
    # a piece of that backward hunk, cut in pieces (``backwardcause.cut_diff``)
    whole: Optional["Hunk"] = field(default=None, repr=False, compare=False)

    @property
    def own_cause(self) -> bool:
        """The hunk has a cause of its own, not a witness's: AccumulateGrad, a
        recompute, a pass that stopped, ran more phases, trained, froze or made
        optimizer state, or ran on past its last step."""
        return bool(self.grads or self.recompute or self.stopped or self.ran or self.trained or self.needs_grad
                    or self.unused or self.state or self.last or self.short or self.retyped
                    or self.params or self.summed)

    @property
    def cause(self) -> str:
        """The first half of :attr:`explanation`: why, without the counts."""
        text = self._cause()
        if not self.moved:
            return text
        return f"{text}; {_listed(self.moved)} ran in both, in another order"

    def _cause(self) -> str:
        if self.kind == "changed":
            said = [self.witness.describe()] if self.witness is not None else []
            said += [self._trained()] if self.trained is not None else []  # (BatchNorm's `training` arg)
            w = self.witness
            if self.loop is not None and (w is None or (self.loop.file, self.loop.line) != (w.file, w.line)):
                said.append(self.loop.describe())  # (changed ops that read a loop's extra results)
            return "; ".join([*said, self.detail()])
        side = " and ".join(x for x, ops in (("A", self.only_a), ("B", self.only_b)) if ops)
        if self.grads:
            return f"gradient accumulated into an existing .grad in {side} " \
                   "(AccumulateGrad: autograd state, not a branch)"
        if self.recompute:
            return f"activation checkpointing in {side} recomputed the forward during backward " \
                   "(phase recompute; backward reads the recomputed tensors)"
        if self.ran is not None and self.stopped is None:  # (not when the other pass raised before its backward)
            side, phases = self.ran
            text = f"only {side}'s pass ran {' and '.join(PHASE_WORDS.get(p, p) for p in phases)}"
            # (a read just before that went the other way: `if torch.isnan(loss).any(): return`)
            return f"{self.witness.describe()}: {text}" if self.witness is not None else text
        if self.state is not None:
            side, ops = self.state
            other_ops = self.only_b if side == "A" else self.only_a
            updated = f", {other_side(side)} updated it" if other_ops else ""
            return f"the optimizer made its state in {side} ({', '.join(f'`{o}`' for o in ops)}: " \
                   f"its first step for these parameters){updated}"
        if self.casts:
            return f"dtype casts run only in {side}: .to()/.float()/autocast copy only when the dtype differs " \
                   f"(tensors {', '.join(f'{dtype_short(t.a)} {ARROW} {dtype_short(t.b)}' for t in self.casts)})"
        if self.needs_grad is not None:
            side, names = self.needs_grad
            one = len(names) == 1
            them = "it" if one else "them"
            phases = {n.phase for n in (*self.only_a, *self.only_b)}
            what = {frozenset({"optimizer"}): f"the optimizer steps {them}",
                    frozenset({"backward"}): f"backward computes the gradients that reach {them}"}.get(
                frozenset(phases), f"backward computes the gradients that reach {them} and the optimizer steps {them}")
            return f"{_listed(names)} require{'s' if one else ''} grad only in {side} (`requires_grad_`): " \
                   f"{what} only there"
        if self.unused is not None:
            side, names = self.unused
            return f"{_listed(names)} got no gradient in {other_side(side)} (no op of its pass used "\
                   f"{'it' if len(names) == 1 else 'them'}): the optimizer steps them only in {side}"
        if self.short is not None:
            return f"{self.short}'s pass is the last one recorded: it ends before what {other_side(self.short)}'s " \
                   "pass ran after its step (the next step's first ops)"
        if self.last is not None:
            return f"{self.last}'s pass is the last one recorded: it ran on to the end of the script " \
                   "(or of the Recorder block), past its last step"
        if self.retyped is not None:
            path, a, b = self.retyped
            return f"the traced model is `{a}` in A, `{b}` in B" if not path else \
                f"`{path}` is `{a}` in A, `{b}` in B (another module class)"
        if self.summed is not None:
            param, ra, rb = self.summed
            return f"param `{param}` is read by {plural(ra, 'forward op')} in A, {rb} in B: " \
                   "autograd sums the gradients of its readers"
        if self.params is not None:
            path, in_a, in_b = self.params
            many = "s" if len(in_a or in_b) > 1 else ""
            said = " and ".join(f"{_listed(names)} only in {side}" for side, names in (("A", in_a), ("B", in_b))
                                if names)
            return f"{f'`{path}`' if path else 'the traced model'} reads param{many} {said}, called in both " \
                   "passes (its parameters differ, or which of them it uses)"
        if self.trained is not None:
            if self.read_first and self.witness is not None:  # (`if x.mean() > 0:` in a model run in eval mode)
                return f"{self.witness.describe()} (modules also in training mode in {self.trained}, " \
                       f"eval mode in {other_side(self.trained)})"
            return self._trained()
        if self.loop is not None and self.loop.via == "witness":
            if not self.loop.readable and self.witness is not None:  # (its count is told by the read's line)
                return f"{self.witness.describe()}; {self.loop.describe()}"
            at_loop = self.witness is None or (self.witness.file, self.witness.line) == (self.loop.file, self.loop.line)
            if at_loop and self.witness is None:  # (`while n < cap and x.norm() > 1:` left by `n` on one side)
                return f"{self.loop.describe()} (no tensor read differs: decided by Python state)"
            if at_loop:  # (a helper's `while`, called from several lines: which call)
                return self.loop.describe(self.witness.called_from())
            # and the `if` inside it that went the other way
            return f"{self.loop.describe()}; {self.witness.describe()}"
        if self.witness is not None:
            text = self.witness.describe()
            return f"{text}; {self.loop.describe()}" if self.loop is not None else text
        if self.caught is not None:
            return f"{_raised(self.caught)} (caught: the program went on, down another path)"
        if self.stopped is not None:
            return f"{self.stopped} before them"
        if self.grad_modes is not None and not self.inputs and self.grad_if:  # (`if torch.is_grad_enabled():`)
            a, b = self.grad_modes
            return f"grad mode {a} in A, {b} in B: the `if` at {self.grad_if} tests it"
        if self.grad_modes is not None and not self.inputs and all(  # (nn.TransformerEncoderLayer's fast path)
                n.module is not None for n in (*self.only_a, *self.only_b)):  # (not the user's own code)
            a, b = self.grad_modes
            return f"grad mode {a} in A, {b} in B: torch takes other paths (fused kernels) where no gradient is needed"
        if self.inputs:  # `if x.shape[0] > 4`, `x.float()`: Python looked at the inputs' types, not their data
            what = "; ".join(i.describe() for i in self.inputs[:2])
            what += f"; {len(self.inputs) - 2} more" if len(self.inputs) > 2 else ""
            if self.fed and self.loop is None:  # (`labels` given in A: the ops computed from it)
                return "; ".join(f"{i.describe()} ({self._fed_ops(i)})" for i in self.fed)
            if all(i.made for i in self.inputs) and self.loop is None and any(  # (`m(x, mask=torch.ones(2, 4))`)
                    n.id in i.makers for i in self.inputs for n in (self.only_a if i.a is None else self.only_b)):
                return what
            seen = "Python saw other inputs" if any(i.a is None or i.b is None for i in self.inputs) \
                else "Python saw another shape or dtype"
            if self.loop is not None:
                return f"{self.loop.describe()} ({self._undecided()}; {what}: {seen})"
            if self.shape_if:
                return f"the `if` at `{self.shape_if}` tests {_tested(self.inputs)}; {what} ({seen})"
            if self.late:  # (a strategy's own state, read after the branch it took)
                return f"no tensor read differs before it: decided by Python state; the inputs differ too, " \
                       f"read only after these ops: {what}"
            if self.shape_if == "" and all(i.a is not None and i.b is not None for i in self.inputs):
                return f"no tensor read differs before it: decided by Python state (no `if` around these ops " \
                       f"tests a shape); the inputs differ too: {what}"
            return f"no tensor read differs before it; {what} ({seen})"
        if self.loop is not None:
            return f"{self.loop.describe()} ({self._undecided()})"
        if self.torch_versions is not None:  # (an upgrade: torch's own Python and kernels chose the ops)
            a, b = self.torch_versions
            return f"torch {a} in A, {b} in B: torch's own code may run other ops (no tensor read differs before it)"
        return "no tensor read differs before it: decided by Python state (arguments, flags, caches)"

    def _undecided(self) -> str:
        """Why no read is named for a loop: a ``while`` named by its header reads at each test (a float
        that converges: which read ended it is not told), other loops read nothing."""
        loop = self.loop
        return "its condition reads tensor data at each test" if loop is not None and loop.via == "repeat" and \
            loop.keyword == "while" else "no tensor read decided it"

    def _trained(self) -> str:
        text = f"modules in training mode in {self.trained}, eval mode in {other_side(self.trained)} " \
               "(`.train()`/`.eval()`)"
        return text + "".join(f"; {i.describe()} (ops computed from it)" for i in self.fed)  # (the rest: the modes)

    def _fed_ops(self, i: InputChange) -> str:
        """What an input one side passed did: that side's ops were computed from it; the other
        side's ops ran without it (transformers' checks when no `attention_mask` is given)."""
        given = "A" if i.a is not None else "B"
        if not (self.only_b if given == "A" else self.only_a):
            return "ops computed from it"
        return f"{given}'s ops computed from it, {other_side(given)}'s run without it"

    @property
    def counts(self) -> str:
        if self.kind == "changed":
            return plural(len(self.changed), "op") + " changed"
        parts = []
        if self.only_a:
            parts.append(plural(len(self.only_a), "op") + " only in A")
        if self.only_b:
            parts.append(plural(len(self.only_b), "op") + " only in B")
        return ("their backward: " if self.backward_of is not None else "") + ", ".join(parts)

    @property
    def explanation(self) -> str:
        """"`model.py:42` read True in A, False in B → 14 ops only in B (in `encoder.layer.3`)"."""
        return f"{self.cause} \u2192 {self.counts} (in `{self.module or '<root>'}`)"

    def detail(self) -> str:
        parts = [_raised(p) for p in self.changed if p.raised][:2]
        parts += [t.describe() for t in self.types[:3]]
        parts += [a.describe() for a in self.args[:3]]
        parts += [r.describe() for r in self.rewires]
        # (an op given one more input says so in ``types``; its wiring is that input)
        rest = sum("wiring" in p.what and _arity(p) for p in self.changed) - len(self.rewires)
        if rest > 0:
            parts.append(f"{plural(rest, 'more op')} read from other ops" if self.rewires
                         else "inputs come from other ops")
        more = len(self.types) + len(self.args) - min(3, len(self.types)) - min(3, len(self.args))
        if more > 0:
            parts.append(f"{more} more")
        return "; ".join(parts) or "changed"

    def mirror(self) -> "Hunk":
        return replace(self, only_a=self.only_b, only_b=self.only_a,
                       changed=tuple(p.mirror() for p in self.changed),
                       witness=self.witness.mirror() if self.witness else None,
                       loop=self.loop.mirror() if self.loop else None,
                       types=tuple(t.mirror() for t in self.types), args=tuple(a.mirror() for a in self.args),
                       inputs=tuple(i.mirror() for i in self.inputs), fed=tuple(i.mirror() for i in self.fed),
                       rewires=tuple(r.mirror() for r in self.rewires), stopped=_swap_sides(self.stopped),
                       casts=tuple(t.mirror() for t in self.casts),
                       ran=_swap_first(self.ran),
                       trained=_swap_sides(self.trained), last=_swap_sides(self.last), short=_swap_sides(self.short),
                       grad_modes=(self.grad_modes[1], self.grad_modes[0]) if self.grad_modes else None,
                       torch_versions=self.torch_versions[::-1] if self.torch_versions else None,  # type: ignore
                       state=_swap_first(self.state), needs_grad=_swap_first(self.needs_grad),
                       unused=_swap_first(self.unused), caught=self.caught.mirror() if self.caught else None,
                       retyped=(self.retyped[0], self.retyped[2], self.retyped[1]) if self.retyped else None,
                       summed=(self.summed[0], self.summed[2], self.summed[1]) if self.summed else None,
                       params=(self.params[0], self.params[2], self.params[1]) if self.params else None,
                       whole=None)  # (a piece's hunk is A's: ``GraphDiff.mirror`` cuts the mirror again)

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "module": self.module,
                "only_a": [n.id for n in self.only_a], "only_b": [n.id for n in self.only_b],
                "changed": [p.to_dict() for p in self.changed], "span": list(self.span),
                "witness": self.witness.to_dict() if self.witness else None,
                "loop": self.loop.to_dict() if self.loop else None,
                "types": [t.to_dict() for t in self.types], "args": [a.to_dict() for a in self.args],
                "inputs": [i.to_dict() for i in self.inputs], "rewires": [r.to_dict() for r in self.rewires],
                "stopped": self.stopped, "grads": list(self.grads), "recompute": self.recompute,
                "casts": [t.to_dict() for t in self.casts], "backward_of": self.backward_of,
                "ran": {"side": self.ran[0], "phases": list(self.ran[1])} if self.ran else None,
                "trained": self.trained, "read_first": self.read_first, "fed": [i.to_dict() for i in self.fed],
                "last": self.last, "short": self.short, "moved": list(self.moved), "shape_if": self.shape_if,
                "caught": self.caught.to_dict() if self.caught else None,
                "retyped": dict(zip(("module", "a", "b"), self.retyped)) if self.retyped else None,
                "summed": dict(zip(("param", "a", "b"), self.summed)) if self.summed else None,
                "params": {"module": self.params[0], "a": list(self.params[1]), "b": list(self.params[2])}
                if self.params else None, "late": self.late,
                "state": {"side": self.state[0], "ops": list(self.state[1])} if self.state else None,
                "unused": {"side": self.unused[0], "params": list(self.unused[1])} if self.unused else None,
                "needs_grad": {"side": self.needs_grad[0], "params": list(self.needs_grad[1])} if self.needs_grad
                else None,
                "explanation": self.explanation}


def ended(side: str, g: Graph, detail: bool = False) -> str:
    """"B's pass ended with RuntimeError"; with ``detail``, and when an op raised
    it (``meta.raised``), the op, its line and the error's text too."""
    error = g.meta.get("error")
    text = f"{side}'s pass ended with {error}"
    raised = list(g.raised().items()) if detail else []
    nid, message = raised[-1] if raised else (None, "")
    if nid is None or not message.startswith(f"{error}: "):
        return text
    n = g.node(nid)
    at = f" at {where(n.source.file, n.source.line)}" if n.source is not None else ""
    return f"{text} in `{n.short_op}`{at} ({message[len(error) + 2:]})"


def cut_off(side: str, g: Graph) -> str:
    """"B's pass was cut off after 1000 ops (max_ops)": recording stopped there."""
    return f"{side}'s pass was cut off after {plural(len(g.nodes), 'op')} (max_ops)"


def _arity(p: OpPair) -> bool:
    """The op has as many inputs on both sides."""
    return p.a is not None and p.b is not None and len(p.a.inputs) == len(p.b.inputs)


def _listed(names: Sequence[str]) -> str:
    """"`a`, `b`, `c` and 2 more"."""
    return ", ".join(f"`{x}`" for x in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def other_side(side: str) -> str:
    return "B" if side == "A" else "A"


def _swap_first(t: Optional[Tuple[str, Any]]) -> Optional[Tuple[str, Any]]:
    """(side, what) with the side swapped."""
    return None if t is None else (other_side(t[0]), t[1])


def _swap_sides(text: Optional[str]) -> Optional[str]:
    if text is None:
        return None
    return ("B" if text[0] == "A" else "A") + text[1:]


def _raised(p: OpPair) -> str:
    """"`index` raised in B: IndexError: index 9 is out of bounds..." (its error's first line)."""
    assert p.raised is not None
    side, error = p.raised
    n = p.a if side == "A" else p.b
    lines = error.strip().splitlines()
    first = lines[0] if lines else "an error"
    return f"`{n.short_op if n else '?'}` raised in {side}: {first if len(first) <= 120 else first[:117] + '...'}"


def _tested(inputs: Sequence["InputChange"]) -> str:
    """What an ``if`` that saw these input changes tests: "a dtype" when only
    dtypes changed (``if not x.is_floating_point():``), "a shape" when only shapes."""
    pairs = [(i.a, i.b) for i in inputs if i.a is not None and i.b is not None]
    dtype = any(a.split("[")[0] != b.split("[")[0] for a, b in pairs)
    shape = len(pairs) < len(inputs) or any(a[a.find("["):] != b[b.find("["):] for a, b in pairs)
    return "a dtype" if dtype and not shape else "a shape or dtype" if dtype else "a shape"
