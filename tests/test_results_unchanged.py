"""What a trace must not change or leave behind (a 2026-11-28 audit): version
counters after in-place foreach ops, ops run while the recording mode stays on the
stack recording nothing (past `max_ops`), a warning filter put back by a
`catch_warnings()`, and a Ctrl-C during the teardown. Each failed before its fix."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchtrace


def _stale_weight_backward() -> str:
    """A GAN-style bug: backward through an output whose weight `opt.step()`
    (foreach) has updated since. Eager raises; the message is returned."""
    torch.manual_seed(0)
    d = nn.Linear(4, 1)
    opt = torch.optim.SGD(d.parameters(), lr=0.5, foreach=True)
    x = torch.randn(8, 4, requires_grad=True)
    out = d(x)
    out.mean().backward(retain_graph=True)
    opt.step()
    try:
        (-out.mean()).backward()
    except RuntimeError as e:
        return str(e).split(":")[0]
    return "no error"


def test_a_foreach_step_bumps_versions_so_autograd_still_sees_the_stale_weight():
    plain = _stale_weight_backward()
    assert plain == "one of the variables needed for gradient computation has been modified by an inplace operation"
    with torchtrace.trace():
        traced = _stale_weight_backward()
    assert traced == plain  # (before: "no error", and x.grad came from the updated weight)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_foreach_optimizer_steps_leave_the_versions_eager_leaves(opt_cls):
    def run():
        torch.manual_seed(0)
        m = nn.Linear(3, 2)
        opt = opt_cls(m.parameters(), lr=0.1, foreach=True)
        for _ in range(2):
            m(torch.randn(4, 3)).sum().backward()
            opt.step()
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
        return [p._version for p in m.parameters()], [t._version for t in state], [p.detach() for p in m.parameters()]

    versions, state_versions, params = run()
    with torchtrace.trace():
        t_versions, t_state_versions, t_params = run()
    assert min(versions) > 0
    assert (t_versions, t_state_versions) == (versions, state_versions)
    assert all(torch.equal(a, b) for a, b in zip(params, t_params))


def _autocast_and_inference_work():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True)
    theta, a, b = torch.randn(2, 2, 3), torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = F.affine_grid(theta, (2, 1, 4, 4), align_corners=False)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = lstm(a)[0]
        prod = torch.einsum("bij,bjk->bik", a, b)
    return grid, out, prod


def test_ops_past_max_ops_run_as_in_eager():
    """Past `max_ops` the mode stays on the stack, recording nothing; it ran each op
    plainly, without the autocast and composite handling eager needs: `affine_grid`,
    an LSTM and `einsum` under autocast came out float32 instead of bfloat16."""
    ref = _autocast_and_inference_work()
    assert [t.dtype for t in ref] == [torch.bfloat16] * 3
    with pytest.warns(RuntimeWarning, match="max_ops=3"):
        with torchtrace.trace(max_ops=3) as t:
            for _ in range(3):
                torch.ones(2) + 1
            got = _autocast_and_inference_work()
    assert t.graph.meta["truncated"] and len(t.graph.nodes) == 3
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and torch.equal(g, r)


def test_a_foreach_write_past_max_ops_bumps_versions_too():
    p = [torch.zeros(3), torch.zeros(2)]
    with pytest.warns(RuntimeWarning, match="max_ops=1"):
        with torchtrace.trace(max_ops=1):
            torch.ones(2) + 1
            torch._foreach_add_(p, 1.0)
    assert [t._version for t in p] == [1, 1]


def test_a_trace_ended_inside_catch_warnings_leaves_no_working_filter():
    """torchtrace silences torch.compile's "global hooks" warning while it holds its
    hooks. A trace ended inside a `warnings.catch_warnings()` entered after it (pytest
    wraps each test so) left the filter in for good: the block put back the list it
    had saved. The entry it puts back is inert, and the next trace takes it out."""
    import warnings

    before = list(warnings.filters)
    t = torchtrace.trace()
    t.__enter__()
    torch.ones(2) + 1
    with warnings.catch_warnings():
        t.__exit__(None, None, None)
    message = "Using `torch.compile(module)` when there are global hooks on modules (a test)"
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn(message, UserWarning)
    assert [str(w.message) for w in seen] == [message]
    with torchtrace.trace():
        torch.ones(2) + 1
    assert warnings.filters == before


def test_a_catch_warnings_left_in_a_later_trace_leaves_no_filter_behind():
    """(A review.) A `catch_warnings()` entered in one trace and left in the next puts
    back a list holding the first trace's filter; the sweep of such copies was skipped
    from then on, and one more stayed at each repetition."""
    import warnings

    from torchtrace.record.patches import _WhileHeld

    before = list(warnings.filters)
    for _ in range(3):
        first = torchtrace.trace()
        first.__enter__()
        caught = warnings.catch_warnings()
        caught.__enter__()
        first.__exit__(None, None, None)
        second = torchtrace.trace()
        second.__enter__()
        caught.__exit__(None, None, None)
        second.__exit__(None, None, None)
        with torchtrace.trace():
            torch.ones(2) * 2
    assert not [f for f in warnings.filters if isinstance(f[1], _WhileHeld)]
    assert warnings.filters == before


@pytest.fixture
def ctrl_c_in_teardown(monkeypatch):
    """A SIGINT sent while the capture takes its global module hooks out, with
    Python's own SIGINT handler in place (as in a script)."""
    import os
    import signal

    from torchtrace.record.capture import Capture

    remove = Capture._remove_hooks

    def interrupted(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands here
        for _ in range(10000):  # (Python runs the handler at the next bytecodes)
            pass
        remove(self)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(Capture, "_remove_hooks", interrupted)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_during_the_teardown_leaves_nothing_installed(ctrl_c_in_teardown):
    """A SIGINT that lands while a trace takes its hooks out (here: in the middle
    of removing the global module hooks) raised KeyboardInterrupt there, and the
    hooks stayed in for good (a 2026-11-28 audit). The interrupt is held back until
    the teardown is whole, then raised."""
    import signal

    from torch.nn.modules import module as M

    m = nn.Linear(4, 2)
    with pytest.raises(KeyboardInterrupt):
        with torchtrace.trace(m):
            m(torch.randn(3, 4))
    assert not M._global_forward_pre_hooks and not M._global_forward_hooks
    assert "data" not in torch.Tensor.__dict__
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_trace_puts_its_patches_in_leaves_none_behind(monkeypatch):
    """A SIGINT that lands while a trace's start puts its class patches in (here:
    right after `torch.Tensor.data`'s): the patch stayed in for good, counted by no
    capture. The start runs whole, the interrupt comes after it, and the trace's
    failed start takes everything out."""
    import os
    import signal
    import warnings

    from torch.nn.modules import module as M

    from torchtrace.record import patches

    data = next(p for p in patches.PATCHES if p.name == "data")
    put = type(data)._put

    def interrupted(self):
        done = put(self)
        if self is data:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands here
            for _ in range(10000):  # (Python runs the handler at the next bytecodes)
                pass
        return done

    filters = list(warnings.filters)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(type(data), "_put", interrupted)
    try:
        m = nn.Linear(4, 2)
        with pytest.raises(KeyboardInterrupt):
            with torchtrace.trace(m):
                m(torch.randn(3, 4))
    finally:
        signal.signal(signal.SIGINT, old)
    assert "data" not in torch.Tensor.__dict__ and "as_subclass" not in torch.Tensor.__dict__
    assert not M._global_forward_pre_hooks and not M._global_forward_hooks and warnings.filters == filters
    monkeypatch.undo()
    x = torch.randn(3, 4)
    with torchtrace.trace(m) as t:  # (and the next trace puts them in and takes them out again)
        m(x)
    assert [n.short_op for n in t.graph.nodes] == ["t", "addmm"] and "data" not in torch.Tensor.__dict__


def test_ctrl_c_during_a_recorders_teardown_lets_all_of_it_run(ctrl_c_in_teardown, tmp_path):
    """The same in `Recorder.__exit__`: the held-back interrupt, raised at the end of
    the capture's stop, skipped what the Recorder's exit does after it (letting the
    model go, putting compiled models back, closing the store) (a review)."""
    from torchtrace.store import Store

    m = nn.Linear(4, 2)
    rec = torchtrace.Recorder(tmp_path / "t.db")
    with pytest.raises(KeyboardInterrupt):
        with rec:
            m(torch.randn(3, 4)).sum().backward()
    assert not rec.capture.names  # (dispose() ran: the model is let go)
    with pytest.raises(Exception, match="closed"):  # (the store was closed)
        rec.store.db.execute("select 1")
    with Store(tmp_path / "t.db", readonly=True) as st:
        assert len(st.passes()) == 1
