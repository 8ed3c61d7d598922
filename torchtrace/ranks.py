"""Compare the ranks of a distributed run, pass by pass.

Ranks that build different graphs, or call collectives in a different order
or on different shapes, are what hangs NCCL jobs. ``rank_report(store)``
finds the first pass where the ranks part ways, the first collective where
their sequences differ, and the witness (the ``if`` that read tensor data)
that sent one rank elsewhere. Works on a store; never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .compare import diff
from .ir import Graph, Node
from .store import PassRecord, Store

Collective = Tuple[str, str, str]  # (op, group and the other args that must match, input types)
# functional collectives' own bookkeeping (no communication), point-to-point ops (a send on one rank
# pairs with a recv on another: not the same call on every rank), and args each rank may set its own way
_LOCAL = ("wait_tensor", "_wrap_tensor_autograd", "send", "recv_", "recv_any_source_")
_PER_RANK = ("async_op", "timeout", "device_ids", "dstRank", "srcRank", "tag")  # (a send's peer, a barrier's GPU)


def collectives(g: Graph) -> List[Tuple[Collective, Node]]:
    """The collective calls of a pass, in order, with what must match across
    ranks: the op, the input types, the process group (size, and name unless it
    is the default group's) and the other args (reduce op, root rank)."""
    out = []
    for n in g.nodes:
        if "collective" not in n.tags or n.short_op.split(".")[0] in _LOCAL:
            continue
        said = []
        for k, v in n.args.items():
            if isinstance(v, dict) and "group_size" in v:  # (not its name: tensor- and pipeline-parallel ranks
                said.insert(0, f"group of {v['group_size']}")  # call the same collective in groups of their own)
            elif k not in _PER_RANK:
                said.append(f"{k}={v}")
        types = ", ".join(f"{g.value(v).dtype}{list(g.value(v).shape)}" for v in n.inputs)
        out.append(((n.op, ", ".join(said), types), n))
    return out


def _where(n: Node) -> str:
    return f" at {n.source.short()}" if n.source is not None else ""


def _call(c: Collective, n: Node) -> str:
    op = c[0][:-len(".default")] if c[0].endswith(".default") else c[0]
    name = next((v.get("group_name") for v in n.args.values() if isinstance(v, dict) and "group_size" in v), None)
    said = c[1].replace("group of", f"group {name!r} of", 1) if name not in (None, "", "0") else c[1]
    return f"{op}({c[2]}{', ' + said if said else ''}){_where(n)}"


@dataclass
class Divergence:
    """Where rank ``other`` parts from rank ``ref``."""

    idx: int
    step: Optional[int]
    ref: int
    other: int
    kind: str                      # "structure", "collectives", "missing"
    collective: str = ""           # the first differing collective call, described
    why: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # "rank 1's pass ended with RuntimeError"
    other_idx: Optional[int] = None  # the other rank's pass compared, where its number differs

    def lines(self) -> List[str]:
        at = f"pass {self.idx}" + (f" (step {self.step})" if self.step is not None else "")
        if self.other_idx is not None and self.other_idx != self.idx:
            at += f" (rank {self.other}'s pass {self.other_idx})"
        head = {"missing": f"rank {self.other} has no {at}: it stopped (crashed or hung) before rank {self.ref}",
                "structure": f"ranks {self.ref} and {self.other} built different graphs in {at} "
                             "(same collectives)",
                "collectives": f"ranks {self.ref} and {self.other} called different collectives in {at}: "
                               "this is where a job hangs"}[self.kind]
        out = [head]
        if self.collective:
            out.append(f"  first differing collective: {self.collective}")
        out.extend(f"  {e}" for e in self.errors)
        out.extend(f"  why: {w}" for w in self.why)
        return out


@dataclass
class RankReport:
    ranks: List[int]
    passes: Dict[int, int]
    divergences: List[Divergence]
    by_collectives: bool = False  # the ranks recorded other numbers of passes: those calling collectives compared

    @property
    def agree(self) -> bool:
        return not self.divergences

    def __str__(self) -> str:
        if not self.ranks:
            return "no rank recorded a pass"
        counts = ", ".join(f"rank {r}: {self.passes[r]}" for r in self.ranks)
        lines = [f"{len(self.ranks)} rank{'s' if len(self.ranks) != 1 else ''}; passes recorded: {counts}"]
        if self.agree and len(self.ranks) < 2:
            lines.append("one rank only (not a distributed run, or the others recorded nothing): nothing to compare")
        elif self.agree and self.by_collectives:
            lines.append("the passes that call collectives agree on every rank (the same graphs, the same "
                         "collectives); the ranks' other passes, which call none, are not compared")
        elif self.agree:
            lines.append("every rank built the same graphs and called the same collectives")
        for d in self.divergences:
            lines.extend(d.lines())
        return "\n".join(lines)


def _first_difference(a: Sequence[Tuple[Collective, Node]], b: Sequence[Tuple[Collective, Node]],
                      ra: int, rb: int) -> str:
    for k in range(max(len(a), len(b))):
        ca = a[k] if k < len(a) else None
        cb = b[k] if k < len(b) else None
        if ca is None or cb is None or ca[0] != cb[0]:
            sa = _call(*ca) if ca else "nothing more"
            sb = _call(*cb) if cb else "nothing more"
            return f"#{k + 1}: rank {ra} calls {sa}; rank {rb} calls {sb}"
    return ""


def rank_report(store: Store) -> RankReport:
    """Each rank against the lowest rank, pass by pass: the first pass it is
    missing, the first pass whose collectives differ (what hangs a job), and
    the first pass whose graph differs with the same collectives."""
    ranks = store.ranks()
    by_rank: Dict[int, Dict[int, PassRecord]] = {r: {p.idx: p for p in store.passes(r)} for r in ranks}
    counts = {r: len(by_rank[r]) for r in ranks}
    divergences: List[Divergence] = []
    reported: set = set()
    if ranks:  # ranks of the run that recorded no pass at all (died before their first forward)
        first = min(by_rank[ranks[0]].values(), key=lambda p: p.idx)
        world = store.graph(first.idx, ranks[0]).meta.get("world_size")
        for r in (range(world) if isinstance(world, int) and 0 < world <= 1 << 16 else ()):
            if r not in by_rank:
                counts[r] = 0
                reported.add(("missing", r))
                divergences.append(Divergence(first.idx, first.step, ranks[0], r, "missing"))
        ranks = sorted(counts)
    slots, by_collectives = _slots(store, by_rank)
    for slot in slots:
        present = [r for r in ranks if r in slot]
        ref = present[0]
        idx = slot[ref]
        for r in ranks:
            if r not in present and ("missing", r) not in reported:
                reported.add(("missing", r))
                last = max(by_rank[r].values(), key=lambda p: p.idx) if by_rank.get(r) else None
                errors = [f"rank {r}'s pass {last.idx} ended with {last.error}"] if last and last.error else []
                divergences.append(Divergence(idx, by_rank[ref][idx].step, ref, r, "missing", errors=errors,
                                              why=_since_last(store, ref, idx, r, last)))
        for r in present[1:]:
            a, b = by_rank[ref][idx], by_rank[r][slot[r]]
            if a.shapes_fp == b.shapes_fp or {("collectives", r), ("structure", r)} <= reported:
                continue
            ga, gb = store.graph(idx, ref), store.graph(b.idx, r)
            first = _first_difference(collectives(ga), collectives(gb), ref, r)
            kind = "collectives" if first else "structure" if a.structure_fp != b.structure_fp else ""
            if not kind or (kind, r) in reported:
                continue
            reported.add((kind, r))
            why = [w.replace(" in A and B", f" on ranks {ref} and {r}")
                   .replace(" in A", f" on rank {ref}").replace(" in B", f" on rank {r}")
                   .replace("A's ", f"rank {ref}'s ").replace("B's ", f"rank {r}'s ")
                   for w in diff(ga, gb).why(errors=False)]  # said below, by rank
            errors = [f"rank {p.rank}'s pass ended with {p.error}" for p in (a, b) if p.error]
            divergences.append(Divergence(idx, a.step, ref, r, kind, first, why, errors, b.idx))
    divergences.sort(key=lambda d: (d.kind != "collectives", d.idx))
    return RankReport(ranks, counts, divergences, by_collectives)


def _since_last(store: Store, ref: int, idx: int, r: int, last: Optional[PassRecord]) -> List[str]:
    """A rank that stopped mid-run (gloo aborts a rank whose collective meets another
    size): what rank ``ref`` called in the pass ``r`` has not, against the last pass ``r``
    recorded, where both begin with the same collective (the same step of a loop, which
    parted inside; not an evaluation against a training step)."""
    if last is None or last.error:
        return []
    was, now = collectives(store.graph(last.idx, r)), collectives(store.graph(idx, ref))
    first = _first_difference(was, now, r, ref)
    if not first or not was or not now or was[0][0] != now[0][0]:  # (another kind of pass: an evaluation)
        return []
    return [f"rank {ref}'s pass {idx} called other collectives than rank {r}'s last pass, {last.idx}: {first} "
            f"(a rank stopped by a collective the other skipped or changed)"]


def _slots(store: Store, by_rank: Dict[int, Dict[int, PassRecord]]) -> Tuple[List[Dict[int, int]], bool]:
    """The passes compared across ranks: {rank: its pass idx} per slot, and whether
    only those calling collectives are. Pass by pass where every rank recorded as many
    passes; else the passes that call collectives, in order (what the ranks must do
    alike: an evaluation under `if rank == 0` calls none, and is no divergence)."""
    by_idx = [{r: i for r, p in by_rank.items() if i in p} for i in sorted({i for p in by_rank.values() for i in p})]
    if len({len(p) for p in by_rank.values()}) <= 1:
        return by_idx, False
    synced = {r: [i for i in sorted(p) if collectives(store.graph(i, r))] for r, p in by_rank.items()}
    if not any(synced.values()):  # (no collective at all: ranks that run alone, pass by pass)
        return by_idx, False
    n = max(len(s) for s in synced.values())
    return [{r: s[k] for r, s in synced.items() if k < len(s)} for k in range(n)], True
