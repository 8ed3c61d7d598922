"""Causes a diff names before the nearest read or `.train()`/`.eval()`: an input
only one pass was given (also as a second name of one tensor: `labels=input_ids`),
another module class at one path, another model; and training mode, where a loop
count or other input shapes explain the ops, only with a sign that it decided them."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchtrace


class Routed(nn.Module):
    """An MoE-like routing read in the forward, then a loss from `labels` when given."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.b, self.head = nn.Embedding(16, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 16)

    def forward(self, ids, labels=None):
        h = self.emb(ids)
        hit = (h.sum(-1) > 0).nonzero()  # (a read: its shape differs with the ids)
        h = h + self.a(h)[hit[:, 0], hit[:, 1]].sum() * self.b(h)
        logits = self.head(h)
        if labels is None:
            return logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 16), labels[:, 1:].reshape(-1))


def _why(m, a_kwargs, b_kwargs):
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(**a_kwargs)
        with torchtrace.trace(m) as tb:
            m(**b_kwargs)
    return torchtrace.diff(ta.graph, tb.graph)


def _ids(seed):
    return torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(seed))


def test_a_loss_from_labels_only_one_pass_got_is_the_inputs_not_an_earlier_read():
    """(Audit: GraniteMoe's loss was put down to the last expert's routing read.)"""
    torch.manual_seed(0)
    m = Routed()
    xa, xb = _ids(1), _ids(2)
    d = _why(m, {"ids": xa, "labels": xa.clone()}, {"ids": xb})
    assert any(w.file.endswith("test_diff_other_causes.py") for w in d.witnesses)  # (the routing read differs)
    [h] = [h for h in d.structural_hunks if h.only_a and not h.only_b]
    assert "cross_entropy" in "".join(n.op for n in h.only_a) or any("log_softmax" in n.op for n in h.only_a)
    assert h.witness is None and h.explanation.startswith(
        "input `labels` only in A (i64[2,6]) (ops computed from it)"), h.explanation


def test_labels_passed_as_the_same_tensor_as_the_ids_are_an_input_only_one_pass_got():
    """`model(input_ids=x, labels=x)`, HF's causal-LM call, against `model(input_ids=x)`:
    one tensor under two names (`meta.input_aliases`); was "Python state"."""
    torch.manual_seed(0)
    m = Routed()
    x = _ids(1)
    d = _why(m, {"ids": x, "labels": x}, {"ids": x})
    [h] = d.structural_hunks
    assert h.explanation.startswith("input `labels` only in A (i64[2,6]) (ops computed from it)"), h.explanation


class Stack(nn.Module):
    def __init__(self, n: int, act: type = nn.GELU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), act(), nn.Dropout(0.0)) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def _pair(ma, mb, xa, xb, train_a=True):
    with torchtrace.trace(ma.train(train_a)) as ta:
        ma(xa)
    with torchtrace.trace(mb.eval()) as tb:
        mb(xb)
    return torchtrace.diff(ta.graph, tb.graph).why()


def test_train_against_eval_of_one_more_layer_is_the_loop_count():
    """(Audit: Dinov2, 2 layers in train mode against 3 in eval, was put down to the mode.)"""
    x = torch.randn(2, 8)
    why = _pair(Stack(2), Stack(3), x, x)
    assert why == _pair(Stack(2), Stack(3), x, x, train_a=False)
    assert len(why) == 1 and "ran 2× in A, 3× in B (no tensor read decided it)" in why[0], why


def test_another_module_class_at_one_path_is_named():
    """A config that swaps one block for another (Dinov2's `use_swiglu_ffn`): the class at
    that path, in train against eval (was the mode) and in eval against eval (was Python state)."""
    x = torch.randn(2, 8)
    torch.manual_seed(0)
    for train_a in (True, False):
        why = _pair(Stack(1, nn.GELU), Stack(1, nn.SiLU), x, x, train_a=train_a)
        assert why == ["`layers.0.1` is `GELU` in A, `SiLU` in B (another module class) "
                       "\u2192 1 op only in A, 1 op only in B (in `layers.0.1`)"], why


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv1d(1, 4, 3), nn.Linear(24, 4)

    def forward(self, x):
        return self.head(F.gelu(self.conv(x)).flatten(1))


def test_two_models_are_named_as_two_models():
    """Passes of two unrelated models (`trace()` graphs carry no label): was the mode
    (train against eval) or Python state."""
    for train_a in (True, False):
        why = _pair(MLP(), CNN(), torch.randn(2, 8), torch.randn(2, 1, 8), train_a=train_a)
        assert len(why) == 1 and why[0].startswith("the traced model is `MLP` in A, `CNN` in B \u2192"), why
        mirrored = _pair(CNN(), MLP(), torch.randn(2, 1, 8), torch.randn(2, 8), train_a=train_a)
        assert mirrored[0].startswith("the traced model is `CNN` in A, `MLP` in B \u2192"), mirrored


def test_train_against_eval_of_another_image_size_is_the_input():
    """(Audit: Dinov2's interpolated position embeddings for a 24-pixel image, in eval,
    against 32 in training, were put down to the mode.) The mode stays the cause of
    training's own ops: its dropout."""
    torch.manual_seed(0)
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=16, patch_size=8)
    m = Dinov2Model(cfg)
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 24, 24)
    why = _pair(m, m, a, b)
    assert why == _pair(m, m, a, b, train_a=False), why
    assert any("input `pixel_values` f32[1,3,16,16] \u2192 f32[1,3,24,24]" in w for w in why), why
    assert not any("training mode" in w for w in why), why


class Scaled(nn.Module):
    """A read right before ops only one pass ran, then a loss from `labels`."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head, self.scale = nn.Embedding(16, 8), nn.Linear(8, 16), nn.Linear(8, 16)

    def forward(self, ids, labels=None):
        h = self.emb(ids)
        logits = self.head(h)
        if h.sum() > 0:  # LINE:scaled_read
            logits = logits * self.scale(h).sigmoid()
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, 16), labels.reshape(-1))


def test_a_read_right_before_a_hunk_stays_its_cause_when_an_input_only_one_pass_got_follows():
    """(A review: the read's branch and the loss from `labels` make one hunk; the whole
    hunk was put down to `labels`, and the read that chose the branch was named nowhere.)"""
    import zoo

    torch.manual_seed(0)
    m = Scaled()
    ids = [_ids(s) for s in range(40)]
    with torch.no_grad():
        pos = next(x for x in ids if m.emb(x).sum() > 0)
        neg = next(x for x in ids if m.emb(x).sum() <= 0)
    d = _why(m, {"ids": pos, "labels": pos}, {"ids": neg})
    line = zoo.marked_line(__file__, "scaled_read")
    assert d.why()[0].startswith(f"`test_diff_other_causes.py:{line}` read True in A, False in B"), d.why()


class NoisyByMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 4)

    def _noisy(self) -> bool:
        return self.training

    def forward(self, x):
        x = self.l(x)
        if self._noisy():
            x = x + 0.1 * torch.tanh(x)
        return x.relu()


def test_training_read_through_a_method_is_the_mode_when_the_batch_size_differs_too():
    """(A review: with other input shapes only a sign counted, and an `if` that calls a
    method is none: "decided by Python state".)"""
    m = NoisyByMethod()
    why = _pair(m, m, torch.randn(2, 4), torch.randn(3, 4))
    assert len(why) == 1 and why[0].startswith("modules in training mode in A, eval mode in B"), why


def _as_recorded_by(graph, version, rename):
    """``graph`` as another torch would have recorded it: ``meta.torch`` and some ops' names."""
    import dataclasses

    from torchtrace.fingerprint import fingerprints
    nodes = [dataclasses.replace(n, op=rename.get(n.op, n.op)) for n in graph.nodes]
    other = dataclasses.replace(graph, nodes=nodes, meta={**graph.meta, "torch": version})
    return dataclasses.replace(other, fingerprints=fingerprints(other))


def test_another_torch_version_is_named_not_python_state():
    """Two passes recorded by two torch versions (an upgrade): an op that changed
    with torch was put down to "decided by Python state" and the versions were
    never mentioned (a 2026-11-28 audit)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 1))
    with torchtrace.trace(m) as t:
        m(torch.randn(2, 4))
    a = t.graph
    b = _as_recorded_by(a, "2.4.0+cu121", {"aten.gelu.default": "aten.gelu_v2.default"})
    d = torchtrace.diff(a, b)
    mine = a.meta["torch"]
    assert [h.cause for h in d.hunks] == [f"torch {mine} in A, 2.4.0+cu121 in B: torch's own code may run other "
                                         "ops (no tensor read differs before it)"]
    assert "Python state" not in str(d)
    same = torchtrace.diff(a, _as_recorded_by(a, "2.4.0+cu121", {}))
    assert same.summary() == f"identical (recorded by torch {mine} in A, 2.4.0+cu121 in B)"


def test_an_input_one_side_passed_is_no_cause_of_what_it_reaches_only_through_ops_both_ran():
    """(A 2026-11-28 audit.) Llama with grouped-query attention, prefill against a
    decode step: both layers' attention takes the same other branch, and layer 1's
    hunk was put down to `cache.layers[0].values`, which reaches layer 1 only through
    ops both passes ran (the residual stream). Both layers now read alike."""
    from zoo import llama

    model = llama()
    ids = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    am = torch.ones(2, 6, dtype=torch.long)
    am[1, :2] = 0
    with torch.no_grad():
        with torchtrace.trace(model) as t0:
            out = model(ids, attention_mask=am, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        with torchtrace.trace(model) as t1:
            model(tok, attention_mask=torch.cat([am, torch.ones(2, 1, dtype=torch.long)], 1),
                  past_key_values=out.past_key_values, use_cache=True)
    hunks = [h for h in torchtrace.diff(t0.graph, t1.graph).hunks if h.module.endswith("self_attn")]
    by_layer = {}
    for h in hunks:
        by_layer.setdefault(h.module.split(".")[2], []).append(h.explanation.replace(h.module, "<attn>"))
    assert sorted(by_layer) == ["0", "1"] and by_layer["0"] == by_layer["1"], by_layer
    assert not any("cache" in e and "computed from it" in e for e in by_layer["1"]), by_layer


class _Labelled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.fc(x)
        t = F.one_hot(labels, 3).float() if labels is not None else torch.zeros_like(logits)
        d = logits - t  # (both passes run this op)
        if labels is not None:
            return (d ** 2).mean()
        return d


def test_an_input_one_side_passed_still_feeds_ops_one_op_both_ran_away():
    """(Review of the fix above.) `labels` reach the loss only A ran through one
    `sub` both ran: still "ops computed from it", not "Python saw other inputs"."""
    m, x = _Labelled(), torch.randn(3, 4)
    graphs = []
    for kw in ({"labels": torch.tensor([0, 2, 1])}, {}):
        with torchtrace.trace(m) as t:
            m(x, **kw)
        graphs.append(t.graph)
    why = torchtrace.diff(*graphs).why()
    assert why and all("input `labels` only in A" in w and "computed from it" in w for w in why), why


FLAG = False


class _ElifShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        h = self.lin(x)
        q_length = x.shape[1]
        if FLAG:
            h = h * 2
        elif q_length == 1:  # LINE:elif
            h = h.reshape(h.shape[0], -1)
        else:
            h = h.unsqueeze(2).expand(-1, -1, 2, -1).reshape(h.shape[0], -1)
        return h


def test_a_shape_test_in_an_elif_is_named_by_the_elif_s_line():
    """(A 2026-11-28 audit.) The op in the `else` took the line of the chain's
    `if FLAG:`, which tests no shape."""
    import zoo

    m = _ElifShape().eval()
    graphs = []
    for x in (torch.randn(2, 6, 8), torch.randn(2, 1, 8)):
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    why = torchtrace.diff(*graphs).why()
    line = zoo.marked_line(__file__, "elif")
    assert why and why[0].startswith(f"the `if` at `test_diff_other_causes.py:{line}` tests a shape"), why


class Headed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(16, 32), nn.Linear(32, 8, bias=False)
        self.noise = nn.Parameter(torch.ones(8))

    def forward(self, x):
        h = self.head(torch.relu(self.body(x)))
        if self.training:
            h = h + self.noise
        return h


def test_a_head_swapped_for_one_with_a_bias_is_its_parameters_not_training_mode():
    """(Audit: `m.head = nn.Linear(..., bias=True)` on a model in eval mode -- a fresh
    module is in training mode -- was put down to `.train()`/`.eval()`; with the head
    in eval too, to Python state.) Linear's ops do not depend on the mode."""
    torch.manual_seed(0)
    m, x = Headed().eval(), torch.randn(4, 16)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m.head = nn.Linear(32, 8, bias=True)
        assert m.head.training and [n for n, _ in m.head.named_parameters()] == ["weight", "bias"]
        with torchtrace.trace(m) as tb:
            m(x)
        m.head.eval()
        with torchtrace.trace(m) as tc:
            m(x)
    for b in (tb, tc):
        d = torchtrace.diff(ta.graph, b.graph)
        [h] = d.structural_hunks
        assert [n.op for n in h.only_a] == ["aten.mm.default"] and [n.op for n in h.only_b] == ["aten.addmm.default"]
        assert h.params == ("head", (), ("head.bias",)), h.explanation
        assert h.explanation.startswith("`head` reads param `head.bias` only in B, called in both passes"), \
            h.explanation
        assert "training mode" not in str(d) and d.mirror().structural_hunks[0].params == ("head", ("head.bias",), ())


def test_a_parameter_read_under_if_self_training_stays_the_modes():
    torch.manual_seed(0)
    m, x = Headed(), torch.randn(4, 16)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m.eval()
        with torchtrace.trace(m) as tb:
            m(x)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params is None and h.trained == "A", h.explanation


class TiedLM(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(64, 32), nn.Linear(32, 64, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


def test_tied_weights_extra_gradient_sum_is_put_down_to_the_parameters_readers():
    """(Audit: the engine's add of the head's and the embedding's gradients for one
    tied weight was "decided by Python state".) Checked against a counting mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    graphs, adds = [], []
    for tie in (True, False):
        torch.manual_seed(0)
        m = TiedLM(tie)
        with torchtrace.trace(m) as t:
            F.cross_entropy(m(ids).flatten(0, 1), ids.flatten()).backward()
        graphs.append(t.graph)
        m.zero_grad(set_to_none=True)
        with Count() as c:
            F.cross_entropy(m(ids).flatten(0, 1), ids.flatten()).backward()
        adds.append(c.ops.count("aten.add.Tensor"))
    assert adds[0] == adds[1] + 1  # (the oracle: one more add when tied)
    d = torchtrace.diff(*graphs)
    [h] = [h for h in d.structural_hunks if all(n.phase == "backward" for n in (*h.only_a, *h.only_b))]
    assert [n.op for n in h.only_a] == ["aten.add.Tensor"] and not h.only_b
    assert h.summed == ("emb.weight", 2, 1), h.explanation
    assert h.explanation.startswith("param `emb.weight` is read by 2 forward ops in A, 1 in B"), h.explanation
    assert d.mirror().structural_hunks[-1].summed == ("emb.weight", 1, 2)


def test_a_tensor_from_outside_read_only_after_the_ops_is_no_shape_cause_of_them():
    """(Audit: `generate(num_beams=2)` against greedy decoding: each strategy's own state
    tensor, read after the branch the Python argument chose, was named as the shape
    Python saw.)"""
    torch.manual_seed(0)
    m, x = nn.Linear(8, 16).eval(), torch.randn(2, 8)
    state = {1: torch.ones(2, dtype=torch.long), 2: torch.ones(1, 1, dtype=torch.bool)}

    def run(num_beams, read=False):
        with torch.no_grad(), torchtrace.trace(m) as t:
            logits = m(x)
            if num_beams == 1:
                logits.argmax(-1) * (state[1] if read else 1)
            else:
                logits.log_softmax(-1).view(1, -1).topk(2)
            (logits[:, 0] > 100) & state[num_beams]
        return t.graph

    [h] = torchtrace.diff(run(1), run(2)).structural_hunks
    assert h.late and h.explanation.startswith(
        "no tensor read differs before it: decided by Python state; the inputs differ too, read only after "
        "these ops: 1 constant i64[2] → b8[1,1]"), h.explanation
    [h] = torchtrace.diff(run(1, read=True), run(2, read=True)).structural_hunks  # (read in the hunk too)
    assert not h.late and h.explanation.startswith(
        "no tensor read differs before it: decided by Python state (no `if` around these ops tests a shape); the "
        "inputs differ too: 1 constant i64[2] → b8[1,1]"), h.explanation


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Linear(8, 8)

    def forward(self, x, attention_mask):
        return self.p(x) * attention_mask[..., None]


def test_a_mask_made_inside_the_block_is_no_input_only_the_other_pass_had():
    """(Audit: `m(x, attention_mask=torch.ones(2, 4))` inside the block against a mask made
    before it read "input `attention_mask` only in A": both passes passed one.)"""
    torch.manual_seed(0)
    m, x = Masked().eval(), torch.randn(2, 4, 8)
    pad = torch.ones(2, 4)
    pad[1, :2] = 0
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x, attention_mask=pad)
        with torchtrace.trace(m) as tb:
            m(x, attention_mask=torch.ones(2, 4))
    d = torchtrace.diff(ta.graph, tb.graph)
    [h] = d.structural_hunks
    assert [n.op for n in h.only_b] == ["aten.ones.default"] and not h.only_a
    assert h.explanation.startswith(
        "input `attention_mask` passed in to A's pass (f32[2,4]), made inside B's by `ones` → 1 op only in B"), \
        h.explanation
    assert [i.made for i in d.inputs] == ["ones"] and "`attention_mask` only in A" not in str(d)
    back = torchtrace.diff(tb.graph, ta.graph)
    assert back.structural_hunks[0].explanation.startswith(
        "input `attention_mask` passed in to B's pass (f32[2,4]), made inside A's by `ones` → 1 op only in A")


class CacheIf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(1, 4))

    def forward(self, x):
        h = x * 2
        if self.cache.shape[0] > 1:  # LINE:cache_if
            h = h.flip(0)
        return h + self.cache.sum(0)


class Windowed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p, self.window, self.pos = nn.Linear(8, 8), 6, nn.Parameter(torch.zeros(6, 8))

    def forward(self, x):
        h = self.p(x)
        if x.shape[1] > self.window:  # LINE:window_if
            h = h[:, -self.window:] + self.pos
        return h.sum(1)


def _line(marker):
    import zoo
    return zoo.marked_line(__file__, marker)


def test_a_shape_test_of_a_buffer_or_the_input_stays_named_over_a_parameter_or_a_later_read():
    """(Review: the two new causes hid an `if` that tests a buffer's shape, read again
    after it, and an `if` on the input's shape whose branch reads a parameter.)"""
    m, x = CacheIf().eval(), torch.randn(3, 4)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m.cache = torch.zeros(3, 4)
        with torchtrace.trace(m) as tb:
            m(x)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.explanation.startswith(  # (the `if` tests it: a read after is no sign that Python state decided)
        f"the `if` at `test_diff_other_causes.py:{_line('cache_if')}` tests a shape; buffer `cache` f32[1,4] → "
        "f32[3,4]"), h.explanation
    torch.manual_seed(0)
    w, short, long = Windowed().eval(), torch.randn(2, 4, 8), torch.randn(2, 10, 8)
    with torch.no_grad():
        with torchtrace.trace(w) as ta:
            w(short)
        with torchtrace.trace(w) as tb:
            w(long)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params is None and h.explanation.startswith(
        f"the `if` at `test_diff_other_causes.py:{_line('window_if')}` tests a shape; input `x` f32[2,4,8] → "
        "f32[2,10,8]"), h.explanation


class Alt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2, self.alt = nn.Parameter(torch.ones(8)), nn.Parameter(torch.ones(8) * 2), False

    def forward(self, x):
        h = x.relu()
        h = h * self.w2 if self.alt else h + self.w1
        return h.sum()


def test_parameters_only_each_side_read_are_both_named():
    m, x = Alt().eval(), torch.randn(2, 8)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m.alt = True
        with torchtrace.trace(m) as tb:
            m(x)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params == ("", ("w1",), ("w2",)) and h.explanation.startswith(
        "the traced model reads param `w1` only in A and `w2` only in B, called in both passes"), h.explanation


class Penalized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w, self.reg = nn.Parameter(torch.randn(8, 8)), True

    def forward(self, x):
        y = (x @ self.w).sum()
        if self.reg:
            y = y + (self.w ** 2).sum()
        return y


def test_the_gradient_sum_of_a_parameters_extra_reader_takes_that_readers_cause():
    """(Review: a penalty under a flag read the parameter once more; the engine's add of
    its two gradients was a why-line of its own.)"""
    torch.manual_seed(0)
    m, x = Penalized(), torch.randn(2, 8)
    with torchtrace.trace(m) as ta:
        m(x).backward()
    m.zero_grad(set_to_none=True)
    m.reg = False
    with torchtrace.trace(m) as tb:
        m(x).backward()
    d = torchtrace.diff(ta.graph, tb.graph)
    assert all(h.summed is None for h in d.structural_hunks) and len(d.why()) == 1, d.why()


def test_only_the_hunk_that_made_the_mask_is_put_down_to_it():
    torch.manual_seed(0)
    m, x = Masked().eval(), torch.randn(2, 4, 8)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x, attention_mask=torch.ones(2, 4) if False else _PAD)
        with torchtrace.trace(m) as tb:
            a = torch.ones(2, 4)
            a[1, :2] = 0
            m(x, attention_mask=a).softmax(-1)
    d = torchtrace.diff(ta.graph, tb.graph)
    made, other = d.structural_hunks
    assert made.explanation.startswith("input `attention_mask` passed in to A's pass (f32[2,4]), made inside B's by "
                                       "`ones` → 5 ops only in B"), made.explanation
    assert [n.op for n in other.only_b] == ["aten._softmax.default"] and not other.explanation.startswith("input")


_PAD = torch.ones(2, 4)


class ScaledLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l, self.scale = nn.Linear(8, 8), nn.Parameter(torch.ones(8))
        self.act = False

    def forward(self, x, labels=None):
        if self.act:
            x = torch.tanh(x)
        h = self.l(x)
        if labels is not None or x.shape[0] > 2:
            h = h * self.scale
            return (h - labels).pow(2).mean() if labels is not None else h
        return h


def test_a_parameter_only_one_pass_read_gives_way_to_inputs_made_tensors_and_other_lines():
    """(Second review: the parameter cause took the loss branch of `labels` given only in B,
    a `tanh` of another `if` in its module, and a branch on a tensor `torch.cat` made only
    in B; a buffer of another type read only after the head hid it.)"""
    torch.manual_seed(0)
    m, x, y = ScaledLoss().eval(), torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        with torchtrace.trace(m) as tb:
            m(x, labels=y)
        with torchtrace.trace(m) as tc:
            m(torch.cat([x, x]))
        m.act = True
        with torchtrace.trace(m) as td:
            m(x, labels=y)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params is None and h.explanation.startswith("input `labels` only in B (f32[2,8]) (ops computed from it)")
    assert all(h.params is None for h in torchtrace.diff(ta.graph, tc.graph).structural_hunks)
    hunks = torchtrace.diff(tb.graph, td.graph).structural_hunks
    assert [n.op for h in hunks for n in h.only_b] == ["aten.tanh.default"] and hunks[0].params is None

    class Stats(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 4, bias=False)
            self.register_buffer("stats", torch.zeros(1, 4))

        def forward(self, x):
            return self.head(torch.relu(self.body(x))) + self.stats.mean(0)

    s = Stats().eval()
    with torch.no_grad():
        with torchtrace.trace(s) as ta:
            s(x)
        s.head, s.stats = nn.Linear(16, 4, bias=True).eval(), torch.zeros(3, 4)
        with torchtrace.trace(s) as tb:
            s(x)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params == ("head", (), ("head.bias",)), h.explanation


def test_a_bias_set_to_none_in_a_torch_container_called_from_two_lines_is_its_parameter():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m[2].bias = None
        with torchtrace.trace(m) as tb:
            m(x)
    [h] = torchtrace.diff(ta.graph, tb.graph).structural_hunks
    assert h.params == ("2", ("2.bias",), ()), h.explanation


class BodyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_a_swapped_module_is_its_parameter_after_other_swaps_and_unrelated_ops_and_from_two_lines():
    """(Third review: any op only one pass ran before the module -- another swapped
    module's `addmm`, an unrelated `x.norm()` -- took the parameter cause away; and
    backward ops of torch's own container called from two lines missed it, so that
    `diff(b, a)` was no mirror of `diff(a, b)`.)"""
    torch.manual_seed(0)
    m, x = BodyHead().eval(), torch.randn(2, 8)
    with torch.no_grad():
        with torchtrace.trace(m) as ta:
            m(x)
        m.head = nn.Linear(16, 4).eval()
        with torchtrace.trace(m) as tb:
            x.norm()
            m(x)
        m.body = nn.Linear(8, 16).eval()
        with torchtrace.trace(m) as tc:
            m(x)
    assert [h.params for h in torchtrace.diff(ta.graph, tb.graph).structural_hunks] == [
        None, ("head", (), ("head.bias",))]
    assert [h.params for h in torchtrace.diff(ta.graph, tc.graph).structural_hunks] == [
        ("body", (), ("body.bias",)), ("head", (), ("head.bias",))]

    seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4, bias=False))
    seq(x).sum().backward()  # (the .grads exist in both passes)
    with torchtrace.trace(seq) as ta:
        seq(x).sum().backward()
    seq[2] = nn.Linear(8, 4)
    seq[2].weight.grad, seq[2].bias.grad = torch.zeros(4, 8), torch.zeros(4)
    with torchtrace.trace(seq) as tb:
        out = seq(x)
        out.sum().backward()
    d = torchtrace.diff(ta.graph, tb.graph)
    mine = [h for h in d.structural_hunks if h.module == "2"]
    assert len(mine) == 3 and all(h.params == ("2", (), ("2.bias",)) for h in mine), [h.explanation for h in mine]
    assert torchtrace.diff(tb.graph, ta.graph).why() == d.mirror().why()


def test_modules_in_a_row_that_each_took_a_bias_are_each_their_parameter():
    """(Fourth review: the first module's one-sided `addmm` made what the second reads, of
    the same type in both passes, and took the second's cause away; so did a `roll` against
    a `flip` of the same shape before the second call of a head.)"""
    torch.manual_seed(0)
    seq, x = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False)).eval(), torch.randn(2, 8)

    def traced(m):
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x)
        return t.graph

    before = traced(seq)
    seq[0], seq[1] = nn.Linear(8, 16).eval(), nn.Linear(16, 4).eval()
    assert [h.params for h in torchtrace.diff(before, traced(seq)).structural_hunks] == [
        ("0", (), ("0.bias",)), ("1", (), ("1.bias",))]

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head, self.roll = nn.Linear(8, 4, bias=False), False

        def forward(self, x):
            return self.head(x) + self.head(x.roll(1, 0) if self.roll else x.flip(0))

    m = Twice().eval()
    before = traced(m)
    m.head, m.roll = nn.Linear(8, 4).eval(), True
    hunks = torchtrace.diff(before, traced(m)).structural_hunks
    assert hunks[-1].params == ("head", (), ("head.bias",)), [h.explanation for h in hunks]
    assert all(h.params is None for h in hunks if any(n.op == "aten.roll.default" for n in h.only_b))


class InnerIf(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.l, self.w = nn.Linear(8, n), nn.Parameter(torch.ones(n))

    def forward(self, x):
        h = self.l(x)
        if x.shape[0] > 2:
            h = h * self.w
        return h


def test_a_tensor_made_in_one_pass_blocks_the_parameter_cause_by_what_the_paired_op_read():
    """(Fifth review: a `torch.cat` only B made, of the shape of A's square weight, got
    through because A's module read that type somewhere; and a second call's made input
    took the first call's cause away.)"""
    x = torch.randn(2, 8)

    class Outer(nn.Module):
        def __init__(self, dup: bool) -> None:
            super().__init__()
            self.inner, self.dup = InnerIf(8), dup

        def forward(self, x):
            return self.inner(torch.cat([x, x, x, x]) if self.dup else x)

    assert all(h.params is None for h in torchtrace.diff(*_both(Outer, x, seed=1)).structural_hunks)

    class TwoCalls(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.head, self.bias = nn.Linear(8, 5, bias=bias), bias

        def forward(self, x):
            return self.head(x).sum() + self.head(x.repeat(2, 1) if self.bias else x.flip(0)).sum()

    hunks = [h for h in torchtrace.diff(*_both(TwoCalls, x)).structural_hunks if h.module == "head"]
    assert [h.params for h in hunks] == [("head", (), ("head.bias",)), None], [h.explanation for h in hunks]


def test_a_modules_extra_first_call_and_swapped_inputs_leave_the_shared_calls_parameter_named():
    """(Sixth review: B's extra first call of `head`, on a made tensor, blocked the call
    both passes made -- call 0 in A, 1 in B; `torch.add(e, x)` against `torch.add(x, e)`
    with a made `x` was read as a buffer against another tensor.)"""
    x = torch.randn(2, 8)

    class Extra(nn.Module):
        def __init__(self, b: bool) -> None:
            super().__init__()
            self.head, self.b = nn.Linear(8, 8, bias=b), b

        def forward(self, x):
            r = self.head(x.repeat(2, 1)).sum() if self.b else 0
            return self.head(x).sum() + r

    class Swapped(nn.Module):
        def __init__(self, b: bool) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 8))
            self.bias = nn.Parameter(torch.zeros(4)) if b else None
            self.register_buffer("e", torch.ones(2, 8))

        def forward(self, x):
            t = torch.add(x, self.e) if self.bias is not None else torch.add(self.e, x)
            return F.linear(t, self.weight, self.bias)

    class Outer(nn.Module):
        def __init__(self, b: bool) -> None:
            super().__init__()
            self.head, self.b = Swapped(b), b

        def forward(self, x):
            return self.head(x.flip(0) if self.b else x)

    for make, module in ((Extra, "head"), (Outer, "head")):
        graphs = _both(make, x)
        d = torchtrace.diff(*graphs)
        mine = [h for h in d.structural_hunks if h.module == module]
        assert mine and all(h.params == (module, (), (f"{module}.bias",)) for h in mine), [h.explanation for h in mine]
        assert torchtrace.diff(graphs[1], graphs[0]).why() == d.mirror().why()


def _both(make, x, seed=0):
    """The graphs of ``make(False)(x)`` and ``make(True)(x)``, each model built from ``seed``."""
    graphs = []
    for flag in (False, True):
        torch.manual_seed(seed)
        m = make(flag)
        with torch.no_grad(), torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    return graphs


class Extended(nn.Module):
    def __init__(self, b: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(8))
        self.extra = nn.Parameter(torch.ones(1, 8)) if b else None

    def forward(self, x, z):
        h = x * self.w
        if self.extra is not None:
            h = torch.cat([h, self.extra])
        return torch.cat([h, z])


def test_a_tensor_whose_shape_the_parameter_changed_inside_the_call_does_not_block_it():
    """(Seventh review: the `cat` after the parameter's own `cat` read `h` of another shape,
    inside the call, beside a made `z` of the same type in both passes: blocked.)"""
    class Outer(nn.Module):
        def __init__(self, b: bool) -> None:
            super().__init__()
            self.head, self.b = Extended(b), b

        def forward(self, x):
            return self.head(x, x.amax(0, keepdim=True) if self.b else x.sum(0, keepdim=True))

    [h] = [h for h in torchtrace.diff(*_both(Outer, torch.randn(2, 8))).structural_hunks if h.module == "head"]
    assert h.params == ("head", (), ("head.extra",)), h.explanation
