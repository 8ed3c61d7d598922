"""The autograd half: Nodes and edges against an independent grad_fn walk,
op links, saved bytes computed by hand, and the backward that ran."""
from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import torchtrace
import zoo
from torchtrace.memory import saved_bytes_by_module

ROOT = Path(__file__).resolve().parents[1]


def _oracle_pairs(graph, outs):
    """Walk grad_fn.next_functions from the live outputs and pair each Node with
    the graph's autograd node reached by the same path; return both counts."""
    producer = graph.producers()
    pairs = {}
    stack = []
    for out in outs:
        vid = next(v for v in graph.outputs if graph.value(v).shape == tuple(out.shape))
        root_aid = graph.node(producer[vid]).grad_fn
        assert root_aid is not None
        stack.append((out.grad_fn, root_aid))
    while stack:
        node, aid = stack.pop()
        key = id(node)
        if key in pairs:
            assert pairs[key][1] == aid, f"{node.name()} reached as two different graph nodes"
            continue
        a = graph.autograd_node(aid)
        assert a.name == node.name()
        nexts = [n for n, _ in node.next_functions if n is not None]
        assert len(nexts) == len(a.next), f"{a.id} {a.name}: edges differ"
        pairs[key] = (node, aid)
        stack.extend(zip(nexts, a.next))
    return len(pairs), len({aid for _, aid in pairs.values()})


MODELS = {
    "gpt2": lambda: (zoo.gpt2(), (zoo.token_ids(),), lambda o: [o.logits]),
    "bert": lambda: (zoo.bert(), (zoo.token_ids(),), lambda o: [o.last_hidden_state, o.pooler_output]),
    "resnet_block": lambda: (zoo.resnet_block().train(), (torch.randn(2, 8, 16, 16),), lambda o: [o]),
    # in-place gates: autograd clones an input between the Node and the op
    "gru": lambda: (torch.nn.GRU(8, 16, 2, batch_first=True), (torch.randn(2, 5, 8),), lambda o: list(o)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_autograd_graph_equals_grad_fn_walk(name):
    model, args, pick = MODELS[name]()
    with torchtrace.trace(model) as t:
        out = pick(model(*args))
    g = t.graph
    walked, distinct = _oracle_pairs(g, out)
    assert walked == distinct == len(g.autograd.nodes)
    # every forward op that created a Node is linked to it
    non_leaf = [a for a in g.autograd.nodes if not a.name.endswith("AccumulateGrad")]
    linked = [a for a in non_leaf if a.op is not None]
    assert len(linked) / len(non_leaf) >= 0.99, [a.name for a in non_leaf if a.op is None]
    for a in linked:
        assert g.node(a.op).grad_fn == a.id
    leaves = [a for a in g.autograd.nodes if a.name.endswith("AccumulateGrad")]
    assert leaves and all(a.param and g.value(a.value).role == "param" for a in leaves)


@pytest.mark.parametrize("name", ["gru", "resnet_block"])
def test_the_graph_is_reached_from_a_loss_when_the_output_is_dropped(name):
    """`loss = model(x).sum()` in the block: the model's output dies at once, the
    loss keeps the autograd graph alive, and the trace walks it from the loss
    (it recorded no autograd node at all before). The GRU also keeps clones
    alive as saved tensors, on branches no output leads to: they stay out."""
    model, args, pick = MODELS[name]()
    with torchtrace.trace(model) as t:
        loss = pick(model(*args))[0].sum()
    g = t.graph
    seen, stack = {}, [loss.grad_fn]
    while stack:  # the oracle: every Node reachable from the loss, once
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = node  # (held: torch 2.4 makes a new wrapper per read, and a freed one's id is reused)
            stack.extend(n for n, _ in node.next_functions)
    assert len(g.autograd.nodes) == len(seen) > 10
    [sum_op] = [n for n in g.nodes if n.op == "aten.sum.default" and g.module_path(n.module) == ""]
    assert g.autograd_node(sum_op.grad_fn).name == loss.grad_fn.name() == "SumBackward0"


def test_saved_bytes_exact_for_an_mlp():
    m = zoo.MLP(256, 1024)
    x = torch.randn(64, 256)
    with torchtrace.trace(m) as t:
        out = m(x)  # kept: the autograd graph lives as long as its outputs
    g = t.graph
    by_name = {a.name: a.saved_bytes for a in g.autograd.nodes if a.op and g.node(a.op).module}
    per_module = {g.module(m_id).path: b for m_id, b in saved_bytes_by_module(g, inclusive=False).items()}
    # fc1 saves x; GELU saves its input (fc1's output); fc2 saves GELU's output; weights are params
    assert per_module == {"fc1": 64 * 256 * 4, "act": 64 * 1024 * 4, "fc2": 64 * 1024 * 4}
    assert by_name["GeluBackward0"] == 64 * 1024 * 4
    total = sum(a.saved_bytes for a in g.autograd.nodes)
    assert total == 589_824 == saved_bytes_by_module(g)[g.modules[0].id]
    assert out.grad_fn.name() == "AddmmBackward0"


def test_saved_bytes_leave_out_buffers():
    """A Node that saves a view of a buffer (a causal mask) or BatchNorm's running
    stats holds state that lives whether or not backward runs: it was counted as
    activation memory (the mask's whole 64 KiB storage for 64 bytes of scores)."""
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("causal", torch.ones(256, 256, dtype=torch.bool).tril())
            self.q = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.q(x) @ x.transpose(1, 2)
            return torch.where(self.causal[:4, :4], s, -1e4)

    m = nn.Sequential(Masked(), nn.Flatten(), nn.BatchNorm1d(16))
    x = torch.randn(2, 4, 8)
    with torchtrace.trace(m) as t:
        out = m(x)
    g = t.graph
    buffers = {st.data_ptr() for st in (b.untyped_storage() for b in m.buffers())}
    # an independent count: every storage the Nodes save, each once, without parameters and buffers
    held, seen, stack = {}, set(), [out.grad_fn]
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
        for attr in dir(node):
            if attr.startswith("_saved_") and isinstance(getattr(node, attr), torch.Tensor):
                st = getattr(node, attr).untyped_storage()
                held[st.data_ptr()] = st.nbytes()
    assert buffers & set(held)  # the mask and the running stats are saved by Nodes
    expected = sum(n for ptr, n in held.items() if ptr not in params and ptr not in buffers)
    assert sum(a.saved_bytes for a in g.autograd.nodes) == expected
    assert expected < 256 * 256


def test_storage_shared_by_two_nodes_counts_once():
    x = torch.randn(16, 16, requires_grad=True)
    with torchtrace.trace() as t:
        h = x.exp()          # ExpBackward saves its result h
        y = (h * h).sum()    # MulBackward saves h twice: the same storage
    total = sum(a.saved_bytes for a in t.graph.autograd.nodes)
    assert total == 16 * 16 * 4
    assert y.requires_grad


def test_backward_ops_join_their_forward_op_module_and_line():
    m = zoo.MLP(8, 16)
    x = torch.randn(4, 8)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    g = t.graph
    bwd = [n for n in g.nodes if n.phase == "backward"]
    mm = [n for n in bwd if n.op == "aten.mm.default"]
    assert {g.module_path(n.module) for n in mm} == {"fc1", "fc2"}
    fwd_line = next(n.source for n in g.nodes if n.op == "aten.addmm.default")
    assert mm[0].source.file == fwd_line.file == zoo.__file__
    gelu_bwd = next(n for n in bwd if n.op == "aten.gelu_backward.default")
    assert g.module_path(gelu_bwd.module) == "act"


def test_engine_ops_of_two_backward_calls_keep_their_own_lines():
    # AccumulateGrad's ops belong to no forward op: they get the line that called backward
    m = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torchtrace.trace(m) as t:
        y = m(x)
        y.sum().backward(retain_graph=True)
        first = sys._getframe().f_lineno - 1
        y.mean().backward()
        second = sys._getframe().f_lineno - 1
    accumulate = [n for n in t.graph.nodes if n.phase == "backward" and n.op in
                  ("aten.detach.default", "aten.add_.Tensor")]
    assert [n.op for n in accumulate] == ["aten.detach.default"] * 2 + ["aten.add_.Tensor"] * 2
    assert [n.source.line for n in accumulate] == [first, first, second, second]
    assert all(n.source.file == __file__ for n in accumulate)


def test_executed_order_matches_prehooks_and_grads_are_reported():
    m = zoo.MLP(8, 16)
    x = torch.randn(4, 8)
    seen = []
    with torchtrace.trace(m) as t:
        loss = m(x).pow(2).mean()
        # an independent record of the order: our own pre-hooks on every Node
        handles = [n.register_prehook(lambda g, n=n: seen.append(n.name())) for n in zoo.autograd_nodes(loss.grad_fn)]
        loss.backward()
        for h in handles:
            h.remove()
    g = t.graph
    assert [g.autograd_node(a).name for a in g.autograd.executed] == seen
    grads = {gi.name: gi for gi in g.autograd.grads}
    assert set(grads) == {n for n, _ in m.named_parameters()}
    for name, p in m.named_parameters():
        assert grads[name].shape == tuple(p.grad.shape) and grads[name].dtype == "float32"
        assert grads[name].norm == pytest.approx(p.grad.double().norm().item(), rel=1e-6)  # computed in fp32
    assert g.autograd.no_grad_params == ()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_grad_norms_of_every_dtype_and_of_sparse_grads(dtype):
    """Gradient norms are numbers for fp64 (they were "unknown": an fp32 reduction
    refuses fp64 input), bf16 (summed in fp32) and a sparse embedding's gradient."""
    torch.manual_seed(0)
    m = nn.ModuleDict({"emb": nn.Embedding(10, 4, sparse=True), "lin": nn.Linear(4, 3)}).to(dtype)
    with torchtrace.trace(m) as t:
        m["lin"](m["emb"](torch.tensor([1, 2, 2, 7]))).sum().backward()
    grads = {gi.name: gi for gi in t.graph.autograd.grads}
    assert set(grads) == {"emb.weight", "lin.weight", "lin.bias"}
    assert m["emb"].weight.grad.is_sparse
    for name, p in m.named_parameters():
        want = p.grad.to_dense().double().norm().item()  # (uncoalesced: index 2 twice)
        assert grads[name].dtype == str(dtype).replace("torch.", "")
        assert grads[name].norm == pytest.approx(want, rel=1e-6 if dtype == torch.float64 else 1e-2)


def test_a_nan_or_inf_gradient_norm_is_a_float_in_memory_and_after_a_round_trip(tmp_path):
    """The check a user writes for an exploding layer, `math.isnan(gi.norm)`,
    raised TypeError: the norm was the string 'nan'. JSON has no NaN: strings there."""
    import json
    import math

    from torchtrace.store import Store
    m = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})
    x = torch.tensor([[1.0, float("nan"), 0.0]])
    with torchtrace.trace(m) as t:
        (m["a"](x) + m["b"](torch.full((1, 3), 1e38)) * 1e38).sum().backward()
    with Store(tmp_path / "t.db") as store:
        store.add(t.graph)
    path = torchtrace.save(t.graph, tmp_path / "g.json")
    stored = json.loads(path.read_text())["autograd"]["grads"]
    assert {x["name"]: x["norm"] for x in stored}["a.weight"] == "nan"
    with Store(tmp_path / "t.db", readonly=True) as store:
        from_store = store.graph(0)
    for g in (t.graph, torchtrace.load(path), from_store):
        norms = {gi.name: gi.norm for gi in g.autograd.grads}
        assert all(isinstance(v, float) for v in norms.values()), norms
        assert math.isnan(norms["a.weight"]) and norms["b.weight"] == math.inf
        assert norms["a.bias"] == pytest.approx(m["a"].bias.grad.norm().item())


def test_functional_call_parameters_keep_their_names_and_grads():
    """torch.func.functional_call swaps the module's parameters for the call
    (ensembles, meta-learning): the swapped-in tensors are the parameters of that
    pass, with the names a plain call gives, their gradients are reported, and
    the module's own parameters are not listed as having got no gradient."""
    from torch.func import functional_call

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    params = {k: v.detach().clone().requires_grad_() for k, v in m.named_parameters()}
    x = torch.randn(2, 3)
    with torchtrace.trace(m) as plain:
        m(x).sum().backward()
    with torchtrace.trace(m) as t:
        functional_call(m, params, (x,)).sum().backward()

    def named(g):
        return sorted((v.role, v.name, v.shape) for v in g.values if v.role == "param")

    g = t.graph
    assert named(g) == named(plain.graph) and len(named(g)) == 4
    grads = {gi.name: gi.norm for gi in g.autograd.grads}
    assert grads.keys() == params.keys() and g.autograd.no_grad_params == ()
    for k, p in params.items():
        assert grads[k] == pytest.approx(p.grad.double().norm().item(), rel=1e-6)


def test_the_backward_end_callback_never_raises_into_the_users_backward():
    """The gradients are taken by an engine callback inside the user's backward:
    a leaf whose .grad cannot be read there is skipped (the build reads it later)."""
    from types import SimpleNamespace

    from torchtrace.record.autograd import AutogradTracker

    class Exotic(nn.Parameter):
        @property
        def grad(self):
            raise RuntimeError("no gradient to read here")

    t = AutogradTracker()
    p = nn.Parameter(torch.zeros(2))
    p.grad = good = torch.ones(2)
    leaf = torch.zeros(2, requires_grad=True)
    leaf.grad = torch.ones(2)
    t.entries.update({("acc", 1): SimpleNamespace(variable=Exotic(torch.zeros(1))),
                      ("acc", 2): SimpleNamespace(variable=p), ("acc", 3): SimpleNamespace(variable=leaf)})
    t.executed += [("acc", 1), ("acc", 2), ("acc", 3)]
    t._at_backward_end(task=-1)
    assert t.grads == {("acc", 2): good}  # parameters only: another leaf's .grad may flow on


def test_nodes_another_thread_made_stay_their_own_and_the_graph_stays_acyclic():
    """Sequence numbers count per thread: features computed in a worker thread
    have Nodes with the same numbers and names as the pass's own. They were
    merged into one Node whose `next` held itself."""
    import threading

    torch.manual_seed(0)
    enc, head = nn.Linear(4, 4), nn.Linear(4, 2)
    x, box = torch.randn(2, 4), {}
    worker = threading.Thread(target=lambda: box.update(feat=enc(x)))
    worker.start()
    worker.join()
    with torchtrace.trace(head) as t:
        y = head(box["feat"])
    nodes = zoo.autograd_nodes(y.grad_fn)  # the oracle: torch's own graph
    g = t.graph
    assert sorted(a.name for a in g.autograd.nodes) == sorted(n.name() for n in nodes)
    assert sum(len(a.next) for a in g.autograd.nodes) == sum(
        sum(f is not None for f, _ in n.next_functions) for n in nodes)
    assert not any(a.id in a.next for a in g.autograd.nodes)
    addmm = [a for a in g.autograd.nodes if a.name == "AddmmBackward0"]
    assert [a.op for a in addmm].count(None) == 1  # the worker's: no op of this pass made it
    [own] = [a for a in addmm if a.op is not None]
    assert g.node(own.op).op == "aten.addmm.default" and g.node(own.op).grad_fn == own.id
    # (a review) with the pass's results dead by the build (only a loss kept), its own Nodes stay linked
    deep = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    worker = threading.Thread(target=lambda: box.update(feat=nn.Sequential(nn.Linear(4, 4), nn.Tanh())(x)))
    worker.start()
    worker.join()
    with torchtrace.trace(deep) as t:
        deep(box["feat"]).sum().backward()
    g = t.graph
    made = [n for n in g.nodes if n.phase == "forward" and n.short_op in ("addmm", "tanh", "t", "sum")]
    assert made and all(n.grad_fn is not None for n in made), [(n.id, n.op) for n in made if n.grad_fn is None]
    assert sum(a.op is None and not a.name.endswith("AccumulateGrad") for a in g.autograd.nodes) == 3  # the worker's


def test_each_backward_op_names_the_autograd_node_that_ran_it(tmp_path):
    """Issue 3: backward ops "each attributed to its autograd node". The oracle:
    our own pre-hook on every Node and a dispatch mode, logging into one list,
    so each op belongs to the Node whose pre-hook fired last."""
    from torch.utils._python_dispatch import TorchDispatchMode

    log: list = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            log.append(("op", str(func)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    with torchtrace.trace(m) as t:
        loss = m(x).sum()
        handles = [n.register_prehook(lambda g, n=n: log.append(("node", n.name())))
                   for n in zoo.autograd_nodes(loss.grad_fn)]
        with Ops():
            loss.backward()
        for h in handles:
            h.remove()
    want, current = [], None
    for kind, name in log:
        if kind == "node":
            current = name
        else:  # (the gradient seed, `ones_like`, is made before the engine runs: in no Node)
            want.append((name, current))
    g = t.graph
    backward = [n for n in g.nodes if n.phase == "backward"]
    got = [(n.op, g.autograd_node(n.autograd_node).name if n.autograd_node else None) for n in backward]
    assert got == want and got[0] == ("aten.ones_like.default", None)
    assert all(n.autograd_node is None for n in g.nodes if n.phase != "backward")
    for a in {n.autograd_node for n in backward if n.autograd_node}:  # and through the Node, the op that made it
        node = g.autograd_node(a)
        assert (node.op is None) == node.name.endswith("AccumulateGrad") and (
            node.op is None or g.node(node.op).phase == "forward")
    path = torchtrace.save(g, tmp_path / "g.json")
    assert [n.autograd_node for n in torchtrace.load(path).nodes] == [n.autograd_node for n in g.nodes]
    # (a review) an optimizer step in a post-accumulate-grad hook is phase optimizer: no backward op
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    handles = [p.register_post_accumulate_grad_hook(lambda p: (opt.step(), opt.zero_grad(), None)[2])
               for p in m.parameters()]
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    for h in handles:
        h.remove()
    assert any(n.phase == "optimizer" for n in t.graph.nodes)
    assert all(n.autograd_node is None for n in t.graph.nodes if n.phase != "backward")


def test_an_in_place_op_on_an_outside_tensor_keeps_the_pass_s_own_nodes_linked():
    """(A review.) Nodes reachable from an outside tensor's grad_fn are older than
    the pass; read at build time, after `e.mul_(2)` in the pass, that grad_fn was
    the pass's own MulBackward0, which then lost its op."""
    torch.manual_seed(0)
    enc, head = nn.Linear(4, 4), nn.Linear(4, 2)
    e = enc(torch.randn(2, 4))
    with torchtrace.trace(head) as t:
        e.mul_(2)
        head(e)
    g = t.graph
    linked = {a.name: g.node(a.op).op if a.op is not None else None for a in g.autograd.nodes
              if not a.name.endswith("AccumulateGrad")}
    assert linked["MulBackward0"] == "aten.mul_.Tensor"
    assert [a.op for a in g.autograd.nodes if a.name == "AddmmBackward0"].count(None) == 1  # enc's, made before


def test_unused_parameter_is_reported():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.used(x))

    m = WithUnused()
    x = torch.randn(2, 4)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    assert t.graph.autograd.no_grad_params == ("unused.weight", "unused.bias")
    # torch.autograd.grad returns the gradients and accumulates none: every parameter was listed. The
    # oracle: torch's own answer, for all parameters, some of them, and the input alone (a saliency map)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    xg = x.clone().requires_grad_()
    for asked in (named, named[:1], []):
        with torchtrace.trace(m) as t:
            got = torch.autograd.grad(m(xg).sum(), [p for _, p in asked] + [xg], allow_unused=True)
        want = tuple(n for n, p in named if n not in {a for (a, _), g in zip(asked, got) if g is not None})
        assert t.graph.autograd.no_grad_params == want, (len(asked), want)


def test_checkpoint_recompute_is_tagged_with_right_scopes():
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = inner
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=False))

    m = Outer()
    x = torch.randn(2, 4, requires_grad=True)
    with torchtrace.trace(m) as t:
        m(x).sum().backward()
    g = t.graph
    fwd = [(n.op, g.module_path(n.module)) for n in g.nodes if n.phase == "forward"
           and "autograd_internal" not in n.tags and g.module_path(n.module).startswith("block")]
    rec = [(n.op, g.module_path(n.module)) for n in g.nodes if n.phase == "recompute"
           and "autograd_internal" not in n.tags]
    # re-run in block.0/1/2 until every saved tensor is back (checkpoint stops early)
    assert rec == fwd[:len(rec)] and len(rec) >= 4
    assert {p for _, p in rec} == {"block.0", "block.1", "block.2"}
    assert all(g.module(n.module).phase == "recompute" for n in g.nodes if n.phase == "recompute")
    assert torch.equal(x.grad, x.grad)  # backward completed


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_module_checkpoint_recomputes_is_no_output_of_the_traced_call(reentrant):
    """Checkpoint's recompute calls ``b`` outside any module call, inside the
    backward: not a call the user made, so what it returns is no output."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(checkpoint(lambda h: self.b(h).tanh(), self.a(x), use_reentrant=reentrant))

    torch.manual_seed(0)
    m = Net()
    with torchtrace.trace(m) as t:
        y = m(torch.randn(3, 4))
        y.sum().backward()
    g = t.graph
    made = g.producers()
    assert any(n.phase == "recompute" and g.module_path(n.module) == "b" for n in g.nodes)
    assert [(g.node(made[v]).short_op, g.node(made[v]).phase, g.module_path(g.node(made[v]).module))
            for v in g.outputs] == [("addmm", "forward", "c")]
    assert g.value(g.outputs[0]).shape == tuple(y.shape)


def test_reentrant_checkpoint_grads_are_the_named_tensors_only():
    """Reentrant checkpoint runs backward on detached copies of its inputs: leaves
    nothing names. The gradients listed are the parameters' and the input's."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(2, 4, requires_grad=True)
    with torchtrace.trace(m) as t:
        checkpoint(m, x, use_reentrant=True).sum().backward()
    names = [gi.name for gi in t.graph.autograd.grads]
    assert None not in names  # three detached copies were listed as None
    assert set(names) == {"0.weight", "0.bias", "2.weight", "2.bias", "input"}  # x, as the model calls it
    assert {n.phase for n in t.graph.nodes} >= {"forward", "backward", "recompute"}


def test_reentrant_checkpoint_runs_the_ops_it_runs_untraced():
    """Reentrant checkpoint returns its detached inputs' .grad as the input's
    gradient; AccumulateGrad takes that tensor when nothing else holds it. Held
    (through the Nodes the recorder kept), it was copied: two extra ops, tagged
    as accumulating into a .grad that did not exist."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    def step(traced: bool) -> tuple:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
        x = torch.randn(2, 4, requires_grad=True)
        with Ops() as seen:
            if traced:
                with torchtrace.trace(m) as t:
                    checkpoint(m, x, use_reentrant=True).sum().backward()
            else:
                checkpoint(m, x, use_reentrant=True).sum().backward()
        return seen.ops, x.grad, [p.grad for p in m.parameters()], t.graph if traced else None

    plain_ops, plain_x, plain_p, _ = step(False)
    ops, gx, gp, g = step(True)
    assert ops == plain_ops  # (the recorder's own reads are not ops: the outer mode sees what the user ran)
    assert torch.equal(gx, plain_x) and all(torch.equal(a, b) for a, b in zip(gp, plain_p))
    assert not [n.op for n in g.nodes if "accumulate_grad" in n.tags]
    assert {"0.weight", "2.bias", "input"} <= {gi.name for gi in g.autograd.grads}
    backward = [n for n in g.nodes if n.phase == "backward" and n.short_op == "mm"]
    assert backward and all(n.module is not None for n in backward)  # still joined to their forward ops


def test_checkpointing_the_whole_model_is_still_a_training_pass():
    """Reentrant checkpoint runs the root's forward under no_grad: the pass's
    grad mode was read there ("no_grad"), and diff blamed the grad mode for the
    backward ops it then showed."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(6, 4, requires_grad=True)
    graphs = []
    for reentrant in (False, True):
        with torchtrace.trace(net) as t:
            checkpoint(net, x, use_reentrant=reentrant).sum().backward()
        graphs.append(t.graph)
    assert [g.meta["grad_mode"] for g in graphs] == ["train", "train"]
    assert not any("grad mode" in w for w in torchtrace.diff(*graphs).why())
    with torch.no_grad(), torchtrace.trace(net) as t:
        net(x)
    assert t.graph.meta["grad_mode"] == "no_grad"


def test_autograd_grad_and_double_backward():
    x = torch.randn(3, requires_grad=True)
    with torchtrace.trace() as t:
        y = (x ** 3).sum()
        (gx,) = torch.autograd.grad(y, x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.sum(), x)
    assert torch.allclose(ggx, 6 * x)
    g = t.graph
    assert sum(n.phase == "backward" for n in g.nodes) > 3
    assert len(g.autograd.executed) >= 2
    # the Nodes the first backward made (create_graph) are joined to the backward ops that made them
    made_in_backward = [a for a in g.autograd.nodes if a.op is not None and g.node(a.op).phase == "backward"]
    assert sorted(a.name for a in made_in_backward) == ["MulBackward0", "MulBackward1", "PowBackward0"]
    assert all(a.op is not None for a in g.autograd.nodes if not a.name.endswith("AccumulateGrad"))
    g.validate()


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * g  # user code the engine runs, with grad on under create_graph


@pytest.mark.parametrize("create_graph", [False, True])
def test_backward_code_of_the_users_in_a_graph_building_backward_is_no_recompute(create_graph):
    """A custom Function's backward and a tensor hook run with grad enabled when
    the backward builds a graph (a gradient penalty): backward phase, as without
    create_graph; only checkpoint's re-run of forward code is recompute."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)
    with torchtrace.trace(lin) as t:
        y = _Cube.apply(lin(x)).sum()
        x.register_hook(lambda g: g * 2)
        (gx,) = torch.autograd.grad(y, x, create_graph=create_graph)
    phases = {n.phase for n in t.graph.nodes}
    assert phases == {"forward", "backward"}
    assert sum(n.phase == "backward" and n.short_op == "pow.Tensor_Scalar" for n in t.graph.nodes) == 1
    # a plain backward first, then a graph-building one whose first hook runs before any Node of its
    # own: what the engine's grad mode was is the new task's, not the last one's
    with torchtrace.trace(lin) as t:
        lin(x).sum().backward()
        out = lin(x)
        out.register_hook(lambda g: g * 0.5)
        torch.autograd.grad(out.sum(), x, create_graph=create_graph)
    assert {n.phase for n in t.graph.nodes} == {"forward", "backward"}


class _CheckpointFunction(torch.autograd.Function):
    """Megatron-LM's / DeepSpeed's activation checkpointing: a Function whose
    backward re-runs the forward with grad turned on."""

    @staticmethod
    def forward(ctx, run, x):
        ctx.run = run
        ctx.save_for_backward(x)
        with torch.no_grad():
            return run(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            y = ctx.run(x)
        torch.autograd.backward(y, g)
        return None, x.grad


def test_a_checkpoint_function_of_the_users_recomputes():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4, requires_grad=True)
    with torchtrace.trace(lin) as t:
        _CheckpointFunction.apply(lambda h: lin(h).tanh(), x).sum().backward()
    recomputed = [n.short_op for n in t.graph.nodes if n.phase == "recompute"]
    assert {"addmm", "tanh"} <= set(recomputed)


class _Reversible(torch.autograd.Function):
    """Reformer's reversible layers, in short: the forward keeps no activation, the
    backward re-runs each block with grad on and backpropagates through it (a
    nested backward per block)."""

    @staticmethod
    def forward(ctx, x, blocks):
        ctx.blocks = blocks
        with torch.no_grad():
            for b in blocks:
                x = b(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        for b in reversed(ctx.blocks):
            with torch.enable_grad():
                x = y.detach().requires_grad_()
                out = b(x)
            torch.autograd.backward(out, g)
            g, y = x.grad, x.detach()
        return g, None


def test_each_block_a_reversible_layer_re_runs_is_recompute():
    """(A 2026-11-28 audit, on Reformer.) The first block's re-run was recompute and
    every later one backward: the nested backward of the first made the engine's
    last Node another graph task's."""
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
    x = torch.randn(2, 8, requires_grad=True)
    with torchtrace.trace(blocks) as t:
        _Reversible.apply(x, list(blocks)).sum().backward()
    g = t.graph
    rerun = [n for n in g.nodes if n.short_op in ("addmm", "tanh") and n.phase != "forward"]
    assert [n.phase for n in rerun] == ["recompute"] * 6
    assert [g.module(n.module).path for n in rerun] == [f"{k}.{j}" for k in (2, 1, 0) for j in (0, 1)]


def test_an_optimizer_step_run_in_backward_is_optimizer_phase():
    """PyTorch's "optimizer step in backward" recipe: each parameter's step runs
    from its post-accumulate-grad hook, inside backward."""
    torch.manual_seed(0)
    m = nn.Linear(3, 2)
    opts = {p: torch.optim.SGD([p], lr=0.1) for p in m.parameters()}
    for p in m.parameters():
        p.register_post_accumulate_grad_hook(lambda p: opts[p].step())
    with torchtrace.trace(m) as t:
        m(torch.randn(4, 3)).sum().backward()
    nodes = t.graph.nodes
    marks = [k for k, n in enumerate(nodes) if "annotation" in n.tags]
    assert len(marks) == 4 and nodes[marks[0]].args["name"].startswith("Optimizer.step#")
    inside = {k for a, b in zip(marks[::2], marks[1::2]) for k in range(a, b + 1)}
    assert [n.phase for k, n in enumerate(nodes) if k in inside] == ["optimizer"] * len(inside)
    assert [n.short_op for k, n in enumerate(nodes) if k in inside and "annotation" not in n.tags] == ["add_.Tensor"] * 2
    assert {n.phase for k, n in enumerate(nodes) if k not in inside} == {"forward", "backward"}


def test_trace_keeps_no_node_or_saved_tensor_alive():
    m = zoo.MLP(8, 16)
    kept = []
    m.fc1.register_forward_hook(lambda mod, i, o: kept.append(weakref.ref(o)))
    x = torch.randn(4, 8)
    with torchtrace.trace(m) as t:
        out = m(x)          # fc1's output is saved for backward by GELU
    assert kept[0]() is not None
    del out
    gc.collect()
    assert kept[0]() is None, "the trace still holds the autograd graph"
    assert len(t.graph.autograd.nodes) > 0


def test_prehooks_are_removed_after_the_block():
    x = torch.randn(3, requires_grad=True)
    y = (x * 2).sum()
    with torchtrace.trace():
        y.backward(retain_graph=True)
    calls = []
    h = y.grad_fn.register_prehook(lambda g: calls.append(1))
    x.grad = None
    y.backward()  # would raise or record if our pre-hooks were left behind
    h.remove()
    assert calls == [1] and torch.equal(x.grad, torch.full((3,), 2.0))


def test_seed_example_prints_true_gradients():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "seed_linear.py")], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    for word in ("aten.mul.Tensor", "aten.add.Tensor", "MulBackward0", "AddBackward0",
                 "feeds w", "feeds b", "w.grad = 1.0 (== x = 1.0)", "b.grad = 1.0"):
        assert word in out, word


def test_sequence_numbers_of_two_threads_are_joined_apart():
    """Each thread has its own autograd sequence counter. On CUDA backward (and
    checkpoint's recompute) runs in the engine's device thread, whose events hold
    ~seq: the recording thread's events stay sorted for the join (the device
    thread's small numbers appended after forward broke the bisection, and fused
    attention went unjoined), and a Node made on the device thread joins its op there."""
    from types import SimpleNamespace

    from torchtrace.record import linking
    from torchtrace.record.enginephase import BACKWARD, FORWARD, RECOMPUTE
    from torchtrace.record.mode import E_PHASE, E_SEQ

    def ev(seq, phase):
        e = [None] * 14
        e[E_SEQ], e[E_PHASE] = seq, phase
        return tuple(e)

    names = ["aten.mm.default", "aten.relu.default", "aten.mm.default", "aten.relu.default",
             "aten.mm.default", "aten.mm.default"]
    # forward on the recording thread (counter 100..), recompute + backward on a device thread (5..)
    events = [ev(101, FORWARD), ev(102, FORWARD), ev(~6, RECOMPUTE), ev(~7, RECOMPUTE), ev(~7, BACKWARD),
              ev(103, FORWARD)]
    infos = [SimpleNamespace(name=n) for n in names]
    mode = SimpleNamespace(start_seq=100, inplace_on_view=set())
    created, _ = linking._created(mode, events)
    assert created == {0, 1, 3, 5}  # the switch of threads is no Node; 4 made none
    threads = linking._counters(events)
    assert linking._op_of(101, "ReluBackward0", threads, events, infos, {}) == 1
    assert linking._op_of(102, "MmBackward0", threads, events, infos, {}) == 5
    assert linking._op_of(6, "ReluBackward0", threads, events, infos, {}) == 3  # made on the device thread
    assert linking._op_of(5, "MmBackward0", threads, events, infos, {}) == 2
    assert linking._op_of(100, "MmBackward0", threads, events, infos, {}) == 0


def test_inplace_on_a_view_is_linked_to_copyslices():
    x = torch.randn(4, 4, requires_grad=True)
    with torchtrace.trace() as t:
        y = x * 1          # a non-leaf
        y[0].mul_(2)       # in-place on a view: autograd wraps its Node in CopySlices
        z = y.sum()
    g = t.graph
    walked, distinct = _oracle_pairs(g, [z])
    assert walked == distinct == len(g.autograd.nodes)
    cs = next(a for a in g.autograd.nodes if a.name.endswith("CopySlices"))
    assert g.node(cs.op).op == "aten.mul_.Tensor" and "inplace" in g.node(cs.op).tags
    assert g.node(cs.op).grad_fn == cs.id
    non_leaf = [a for a in g.autograd.nodes if not a.name.endswith("AccumulateGrad")]
    assert all(a.op is not None for a in non_leaf)


def test_ops_that_create_no_node_are_not_linked():
    x = torch.randn(3, requires_grad=True)
    with torchtrace.trace() as t:
        y = x * 2
        z = y.detach() + 1       # detach and what follows build no Node
        w = (y * z).sum()
    g = t.graph
    linked_ops = {g.node(a.op).op for a in g.autograd.nodes if a.op}
    assert "aten.add.Tensor" not in linked_ops  # z = detach + 1 has no Node
    add = next(n for n in g.nodes if n.op == "aten.add.Tensor")
    assert add.grad_fn is None and not g.value(add.outputs[0]).requires_grad
    assert w.requires_grad and g.value(g.outputs[-1]).requires_grad


def test_a_custom_function_node_is_not_guessed():
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    x = torch.randn(3, requires_grad=True)
    with torchtrace.trace() as t:
        y = Double.apply(x).sin()
    g = t.graph
    names = {a.name: a for a in g.autograd.nodes}
    # no aten op of its name made it: not guessed by name, but joined to the op its forward issued
    # that made its output (see test_a_custom_function_s_node_is_linked_to_the_op_that_made_its_output)
    assert g.node(names["DoubleBackward"].op).op == "aten.mul.Tensor"
    assert g.node(names["SinBackward0"].op).op == "aten.sin.default"
    assert [n.op for n in g.nodes] == ["aten.mul.Tensor", "aten.sin.default"]
    assert y.requires_grad


def test_a_vmapped_forward_keeps_its_autograd_graph():
    """Under torch.func.vmap the caller holds the batched results, not tensors the
    pass saw: the autograd graph was empty (no backward in the block)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4, requires_grad=True)
    with torchtrace.trace(lin) as t:
        out = torch.func.vmap(lin)(x)
    walk, stack = set(), [out.grad_fn]  # oracle: torch's own graph from the result
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in walk:
            walk.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    assert sorted(a.name for a in t.graph.autograd.nodes) == sorted(fn.name() for fn in walk)


@pytest.mark.parametrize("transform", ["vmap", "grad"])
def test_a_root_called_under_torch_func_returns_and_reads_the_values_the_pass_made(transform):
    """(An audit.) Under torch.func a root call's arguments and results are wrappers
    around the tensors the dispatch mode sees: the graph returned a "constant" no op
    made (vmap: with the per-example shape [2] of a [5, 2] result) and the input
    came in as a constant."""
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(0)
    m, x = nn.Linear(4, 2), torch.randn(5, 4)
    with torchtrace.trace(m) as t:
        if transform == "vmap":
            vmap(m)(x)
        else:
            grad(lambda p, x: functional_call(m, p, (x,)).sum())(dict(m.named_parameters()), x)
    g = t.graph
    [out] = g.outputs
    assert g.value(out).shape == (5, 2) and g.node(g.producers()[out]).op == (
        "aten.addmm.default" if transform == "grad" else "aten.add.Tensor")
    assert [(v.role, v.name, v.shape) for v in g.values if v.role == "input"] == [("input", "input", (5, 4))]
    g.validate()


def test_a_users_leaf_hooks_are_not_autograds_accumulation():
    """Hooks on a parameter run inside its AccumulateGrad Node: their ops were
    tagged `accumulate_grad`, and a diff against the hook-free pass said
    "gradient accumulated into an existing .grad" on the first backward."""
    def run(hooked: bool):
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        if hooked:
            m.bias.register_hook(lambda g: g * 4)
            m.weight.register_post_accumulate_grad_hook(lambda p: p.grad.mul_(0.5).__class__ and None)
        with torchtrace.trace(m) as t:
            m(torch.ones(3, 4)).sum().backward()
        return t.graph, m

    (a, _), (b, m) = run(False), run(True)
    assert not [n for g in (a, b) for n in g.nodes if "accumulate_grad" in n.tags]
    hooks = [n for n in b.nodes if n.phase == "backward" and n.op in ("aten.mul.Tensor", "aten.mul_.Tensor")]
    assert len(hooks) == 2 and torch.equal(m.bias.grad, torch.full((2,), 12.0))
    hunks = torchtrace.diff(a, b).structural_hunks
    assert len(hunks) == 2 and not any(h.grads for h in hunks)
    # a second backward without zero_grad: AccumulateGrad's own add is still tagged
    with torchtrace.trace(m) as t:
        m(torch.ones(3, 4)).sum().backward()
    assert [n.op for n in t.graph.nodes if "accumulate_grad" in n.tags] == ["aten.add_.Tensor"] * 2


def test_saved_bytes_on_the_meta_device_and_of_a_free_parameter():
    """Storages were told apart by data pointer, which is 0 for every storage on
    the meta device (all of them merged with the parameters': 0 bytes saved); a
    parameter no module holds was counted as activation memory."""
    def saved(device: str) -> int:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Sigmoid()).to(device)
        x = torch.randn(32, 64, device=device)
        with torchtrace.trace(m) as t:
            out = m(x)
        assert out.device.type == device
        return sum(a.saved_bytes for a in t.graph.autograd.nodes)

    assert saved("meta") == saved("cpu") == 3 * 32 * 64 * 4  # x, tanh's output, sigmoid's output
    w = nn.Parameter(torch.randn(64, 64))
    x = torch.randn(32, 64, requires_grad=True)
    with torchtrace.trace() as t:
        y = (x @ w).sum()
    [mm] = [a for a in t.graph.autograd.nodes if a.name == "MmBackward0"]
    assert mm.saved_bytes == 32 * 64 * 4 and y.requires_grad  # x only: w is a parameter


def test_a_block_that_runs_only_backward_records_the_gradients():
    """Forward outside the block, `loss.backward()` inside: every AccumulateGrad
    ran, but no op read a parameter, so no gradient was recorded."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    loss = m(torch.randn(5, 4)).sum()
    with torchtrace.trace(m) as t:
        loss.backward()
    g = t.graph
    grads = {gi.name: gi for gi in g.autograd.grads}
    assert set(grads) == {name for name, _ in m.named_parameters()} and not g.autograd.no_grad_params
    for name, p in m.named_parameters():
        assert grads[name].norm == pytest.approx(p.grad.norm().item(), rel=1e-6)
        assert g.value(grads[name].value).name == name and g.value(grads[name].value).role == "param"


class LoggingMode(torch.utils._python_dispatch.TorchDispatchMode):
    """A user's own dispatch mode that hands every op on (as DebugMode or a FLOP counter does)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class RedispatchMode(torch.utils._python_dispatch.TorchDispatchMode):
    """One that hands ops on by the overload's C++ call (no torch/_ops.py frame between)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func._op(*args, **(kwargs or {}))


@pytest.mark.parametrize("user_mode", ["logging", "flops", "redispatch"])
def test_a_users_dispatch_mode_around_backward_changes_nothing_recorded(user_mode):
    """With the user's mode above ours, backward's seed `ones_like` came from the
    mode's frame: it was recorded as forward, the root Node (which runs no op) was
    missing from `executed`, and every op's line was the mode's own."""
    from torch.utils.flop_counter import FlopCounterMode

    lin, x = nn.Linear(4, 3), torch.randn(2, 4)
    graphs = []
    modes = {"logging": LoggingMode, "redispatch": RedispatchMode, "flops": lambda: FlopCounterMode(display=False)}
    for mode in (None, modes[user_mode]()):
        lin.zero_grad(set_to_none=True)
        with torchtrace.trace(lin) as t:
            with mode if mode is not None else torch.enable_grad():
                a = lin(x)  # LINE:fwd
                (a.sum() + a.mean()).backward()  # LINE:bwd
        graphs.append(t.graph)
    plain, moded = graphs
    executed = lambda g: [{a.id: a.name for a in g.autograd.nodes}[k] for k in g.autograd.executed]  # noqa: E731
    assert executed(moded) == executed(plain) and executed(plain)[0] == "AddBackward0", executed(moded)
    rows = lambda g: [(n.op, n.phase, n.source.line if n.source else None) for n in g.nodes]  # noqa: E731
    assert rows(moded) == rows(plain)
    assert {r[2] for r in rows(plain) if r[1] == "forward"} == {zoo.marked_line(__file__, "fwd"),
                                                               zoo.marked_line(__file__, "bwd")}


def test_a_gradient_sum_the_engine_runs_between_nodes_is_no_node_s():
    """``a`` read twice: the engine adds the second Node's gradient for it into
    ExpBackward0's input buffer while that Node is still the current one; the
    add was said to be MulBackward0's backward. Oracle: which Node's pre/post
    hooks it ran between, under a logging dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def oracle_nodes(x):
        a = x.exp()
        y = (a * 2 + a * 3).sum()
        current, seen = [], []

        class Log(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                seen.append((func.__name__, current[-1] if current else None))
                return func(*args, **(kwargs or {}))

        for fn in zoo.autograd_nodes(y.grad_fn):
            fn.register_prehook(lambda go, fn=fn: current.append(fn.name()))
            fn.register_hook(lambda gi, go: current.pop() and None)
        with Log():
            y.backward()
        return seen

    x = torch.randn(4, requires_grad=True)
    with torchtrace.trace() as t:
        a = x.exp()
        (a * 2 + a * 3).sum().backward()
    g = t.graph.validate()
    got = [(n.op.split(".")[1], g.autograd_node(n.autograd_node).name if n.autograd_node else None)
           for n in g.nodes if n.phase == "backward" and n.op != "aten.ones_like.default"]
    want = [(op.split(".")[0], node) for op, node in oracle_nodes(x.detach().requires_grad_())
            if not op.startswith("ones_like")]
    assert [w for o, w in got if o == "add"] == [None]
    assert [w for _, w in got][:-1] == [w for _, w in want][:-1]  # (the last: a first .grad or an accumulation)


class Rectify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        y = x * 1.0
        return y.clamp(min=0)  # LINE:custom-clamp

    @staticmethod
    def backward(ctx, go):
        (x,) = ctx.saved_tensors
        return go * (x > 0)


def test_a_custom_function_s_node_is_linked_to_the_op_that_made_its_output():
    """A custom ``autograd.Function``'s Node (``RectifyBackward``) has no aten op
    of its name: it was linked to none, and its output's op had no grad_fn. The
    op is the one that made the output (alive or not): the last op its
    ``forward`` issued. Oracle: ``y.grad_fn``."""
    x = torch.randn(4, requires_grad=True)
    for keep in (True, False):
        with torchtrace.trace() as t:
            y = Rectify.apply(x * 2)
            z = y.exp().sum()
            if not keep:
                del y
            z.backward()
        g = t.graph.validate()
        [node] = [a for a in g.autograd.nodes if a.name == "RectifyBackward"]
        op = g.node(node.op)
        assert op.short_op == "clamp" and op.grad_fn == node.id, (keep, op)
        assert op.source.line == zoo.marked_line(__file__, "custom-clamp")
        mine = [n for n in g.nodes if n.autograd_node == node.id]
        assert mine and all(n.source.function.endswith("backward") for n in mine)  # (its own code, own lines)
    assert Rectify.apply(x).grad_fn.name() == "RectifyBackward"


def _gelu(x: torch.Tensor) -> torch.Tensor:  # (a helper the Function's forward calls, as transformers' Bloom does)
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


class HelperGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 0.5 + x * 0


class HelperGeluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(HelperGelu.apply(self.a(x)))


@pytest.mark.parametrize("reentrant_checkpoint", [False, True])
def test_a_custom_function_whose_forward_calls_a_helper_keeps_its_op_after_backward(reentrant_checkpoint):
    """(An audit.) The Function's ops are the helper's (not `forward`'s own lines)
    and its output died with backward (a saved input of `b`, freed): the Node was
    linked to no op, and its backward ops ran in no module call. So was reentrant
    checkpoint's (transformers' gradient checkpointing). The link is read when
    backward begins, while the output lives. Oracle: `grad_fn` of the output."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net, x = HelperGeluNet(), torch.randn(3, 4)
    mid = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with torchtrace.trace(net) as t:
        if reentrant_checkpoint:
            y = checkpoint(mid, net.a(x), use_reentrant=True)
            name = y.grad_fn.name()
            net.b(y).sum().backward()
            del y
        else:
            name = "HelperGeluBackward"
            net(x).sum().backward()
    g = t.graph.validate()
    [node] = [a for a in g.autograd.nodes if a.name == name]
    assert node.op is not None and g.node(node.op).grad_fn == node.id
    assert g.node(node.op).short_op == ("tanh" if reentrant_checkpoint else "mul.Tensor")
    if not reentrant_checkpoint:  # (its backward ops run in the module call of its forward)
        mine = [n for n in g.nodes if n.autograd_node == node.id]
        assert mine and {g.module_path(n.module) for n in mine} == {""} and all(n.module for n in mine)


class Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        return h * 1.0

    @staticmethod
    def backward(ctx, g):
        return g + 0.01  # (its own add)


class ShiftNet(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(4, 8))
        self.reentrant = reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        h = Shift.apply(self.inp(x)) + self.pos  # (AddBackward0 hands the gradient on without an op)
        return self.out(checkpoint(self.mid, h, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_node_s_own_adds_are_not_taken_for_the_engine_s_sums(reentrant):
    """(A review.) After a reentrant checkpoint the walked Nodes are held by key:
    every add that read another Node's gradient was taken for an engine sum
    (AccumulateGrad's into a kept .grad, a custom backward's own); and a Node
    that hands a gradient on without an op (`x + pos`) hid the real parent."""
    m = ShiftNet(reentrant)
    x = torch.randn(4, 8)
    m(x).sum().backward()
    m.zero_grad(set_to_none=False)  # (.grad kept: AccumulateGrad adds into it)
    with torchtrace.trace(m) as t:
        m(x).pow(2).sum().backward()
    g = t.graph.validate()
    adds = [(n.short_op, g.autograd_node(n.autograd_node).name if n.autograd_node else None)
            for n in g.nodes if n.phase == "backward" and n.op.startswith("aten.add")]
    assert ("add.Tensor", "ShiftBackward") in adds
    assert all(name == "torch::autograd::AccumulateGrad" for op, name in adds if op == "add_.Tensor")
    assert len([a for a in adds if a[0] == "add_.Tensor"]) == len(list(m.parameters()))


def test_a_torch_without_saved_tensor_data_is_warned_about_once(monkeypatch):
    """torch 2.4 and 2.6 have no ``SavedTensor.data``: saved_bytes read 0 there (measured),
    and 2.6 crashed in a reentrant checkpoint's custom Function. A trace says so, once."""
    import warnings

    from torchtrace.record import autograd as rec_autograd
    assert rec_autograd._OLD_TORCH is not hasattr(torch._C._autograd.SavedTensor, "data")
    monkeypatch.setattr(rec_autograd, "_OLD_TORCH", True)
    monkeypatch.setattr(rec_autograd, "_warned_old", [])
    m = torch.nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            with torchtrace.trace(m):
                m(torch.ones(1, 2))
    said = [str(w.message) for w in seen if "SavedTensor.data" in str(w.message)]
    assert len(said) == 1 and torch.__version__ in said[0] and "saved_bytes read 0" in said[0], said


def test_the_engines_sums_of_a_cats_and_a_stacks_n_inputs_are_found_in_linear_work(monkeypatch):
    """(Audit: N tensors that feed both a `torch.cat` and a `torch.stack`: each of the N
    gradient sums walked all N children of the CatBackward Node: the build took 10 s at
    N=4,000.) Counted, not timed: the Node keys looked up grow as N, not N squared."""
    from torchtrace.record.autograd import AutogradTracker

    calls = [0]
    key_of = AutogradTracker.key_of

    def counted(self, node):
        calls[0] += 1
        return key_of(self, node)

    monkeypatch.setattr(AutogradTracker, "key_of", counted)

    class Parts(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n, self.w = n, nn.Parameter(torch.randn(4))

        def forward(self, x):
            parts = [x * self.w for _ in range(self.n)]
            return torch.cat(parts).sum() + torch.stack(parts).sum()

    looked_up = []
    for n in (100, 400):
        m = Parts(n)
        calls[0] = 0
        with torchtrace.trace(m) as t:  # (the pass is built as the block ends)
            m(torch.randn(4)).backward()
        g = t.graph
        looked_up.append(calls[0])
        sums = [x for x in g.nodes if x.phase == "backward" and x.op == "aten.add.Tensor" and x.autograd_node is None]
        # (the oracle: each part's two gradients, the cat's and the stack's, summed once; `w`'s n gradients n-1 times)
        assert len(sums) == 2 * n - 1
    assert looked_up[1] < 6 * looked_up[0], looked_up  # (4x the parts: 16x when quadratic)
