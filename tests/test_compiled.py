"""torch.compile under torchtrace: compiled code runs eagerly while it is
recorded (and the graph says so), and runs compiled again afterwards.

On torch builds without pytorch/pytorch#190286, Dynamo marks every frame it
skips under a dispatch mode "skip" for good. Without torchtrace's stance
switch (record/compiled.py), one traced call would leave the compiled model
running eagerly for the rest of the process. That is what these tests catch.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import torchtrace
from torchtrace.store import Store


class Counted:
    """A Dynamo backend that counts how often its compiled graphs run."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            self.runs += 1
            return gm.forward(*args)

        return run

    def ran(self, fn: object, *args: object) -> bool:
        before = self.runs
        fn(*args)  # type: ignore[operator]
        return self.runs > before


class Block(nn.Module):  # defined here, not in torch.nn: Dynamo compiles user code
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _scale(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ w) * 2


def _compiled(kind: str, backend: Counted) -> tuple:
    """(callable, eager reference callable, args, traced root or None)"""
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    if kind == "function":
        w = torch.randn(4, 4)
        return torch.compile(_scale, backend=backend), _scale, (x, w), None
    m = Block()
    if kind == "wrapper":
        cm = torch.compile(m, backend=backend)
        return cm, m, (x,), cm
    m.compile(backend=backend)  # in place: nn.Module.compile()
    return m, m.forward, (x,), m


@pytest.fixture(autouse=True)
def _quiet() -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about global hooks and compiled modules
        yield


@pytest.mark.parametrize("kind", ["wrapper", "in place", "function"])
def test_compiled_code_runs_eagerly_in_a_trace_and_compiled_after_it(kind: str) -> None:
    backend = Counted()
    fn, eager, args, root = _compiled(kind, backend)
    assert backend.ran(fn, *args)  # compiled (and warm) before the trace
    expected = eager(*args)

    with torchtrace.trace(root) as t:
        before = backend.runs
        out = fn(*args)
    assert backend.runs == before  # the compiled graph did not run: the ops were recorded eagerly
    assert torch.equal(out, expected)
    assert t.graph.meta["compiled_regions_ran_eager"] is True
    assert {"aten.tanh.default", "aten.relu.default"} & {n.op for n in t.graph.nodes}

    assert backend.ran(fn, *args)  # compiled again: nothing marked it "skip" for good
    assert backend.ran(fn, *args)


def test_an_uncompiled_instance_is_not_called_compiled() -> None:
    backend = Counted()
    fn, _, args, _ = _compiled("in place", backend)
    fn(*args)  # Dynamo has compiled Block.forward's code object
    m = Block()
    with torchtrace.trace(m) as t:
        m(*args)
    assert t.graph.meta["compiled_regions_ran_eager"] is False


@pytest.mark.parametrize("kind", ["wrapper", "in place"])
def test_recorder_records_compiled_models_and_gives_them_back(tmp_path: object, kind: str) -> None:
    from torch._dynamo import eval_frame

    backend = Counted()
    fn, _, args, _ = _compiled(kind, backend)
    assert backend.ran(fn, *args)
    prior = torch.compiler.set_stance("eager_on_recompile")  # the user's own stance
    try:
        with Store(tmp_path / "t.db") as store:
            with torchtrace.Recorder(store, every=2):
                ran = [backend.ran(fn, *args) for _ in range(4)]
            assert len(store.passes()) == 2  # steps 0 and 2: every sampled pass, none missed
        assert ran == [False] * 4  # eager while the Recorder is open (its boundaries need the hooks)
        # the thread's dispatch keys agree with the (empty) mode stack: a pass boundary inside
        # Dynamo's wrapper, which restores the keys on return, once left the Python key on
        assert not torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Python)
        assert torch.empty(2).shape == (2,)  # failed: "Hit Python dispatch key but no arguments had PyInterpreter"
        assert eval_frame._stance.stance == "eager_on_recompile"
    finally:
        torch.compiler.set_stance("default")
    assert prior is not None and eval_frame._stance.stance == "default"
    assert backend.ran(fn, *args)


def test_a_recorder_marks_the_passes_that_called_the_compiled_wrapper(tmp_path: object) -> None:
    """The wrapper's hook runs before the call of the module it wraps, which
    starts the pass: the mark landed on the pass before (the plain call's)."""
    backend = Counted()
    m = Block()
    cm = torch.compile(m, backend=backend)
    x = torch.randn(3, 4)
    with Store(tmp_path / "t.db") as store:
        with torchtrace.Recorder(store):
            m(x)
            cm(x).sum().backward()
            m(x)
            cm(x)
        marks = [store.graph(p.idx).meta["compiled_regions_ran_eager"] for p in store.passes()]
    assert marks == [False, True, False, True]


def test_a_compiled_function_is_told_from_its_uncompiled_self_and_the_watch_ends() -> None:
    """A compiled function shares its code object (and Dynamo's cache) with the
    plain function: only calls through the compiled one are compiled regions.
    The wrapper on Dynamo's entry is gone after the block, also when it raised."""
    from torch._dynamo import eval_frame

    backend = Counted()
    fn, eager, args, _ = _compiled("function", backend)
    fn(*args)
    dynamo_own = eval_frame._callback_from_stance
    with torchtrace.trace() as t:
        eager(*args)
        assert eval_frame._callback_from_stance is not dynamo_own
    assert t.graph.meta["compiled_regions_ran_eager"] is False
    assert eval_frame._callback_from_stance is dynamo_own
    with pytest.raises(ZeroDivisionError):
        with torchtrace.trace():
            fn(*args)
            1 / 0
    assert eval_frame._callback_from_stance is dynamo_own
    assert backend.ran(fn, *args)


# a process where Dynamo is not loaded yet (`import torch` does not load it), a model, a backend that counts runs
_FRESH = """
import sys, torch, torchtrace
from torch import nn
assert "torch._dynamo.eval_frame" not in sys.modules
runs = []
def backend(gm, inputs):
    def run(*a):
        runs.append(1)
        return gm.forward(*a)
    return run
m = nn.Linear(4, 4)
x = torch.randn(2, 4)
def scale(t):
    return torch.tanh(t) * 2
"""


def _fresh_process(code: str) -> "subprocess.CompletedProcess[str]":
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def test_dynamo_loaded_inside_the_trace_is_guarded_from_the_next_root_call() -> None:
    """`import torch` does not load Dynamo; the first `torch.compile` inside the
    block (always so under `torchtrace run`) did, after recording started: the
    stance stayed as it was and compiled calls were not noted."""
    code = _FRESH + """with torchtrace.trace() as t:
    f = torch.compile(scale, backend=backend)
    out = f(m(x))
    before = len(runs)
    out = f(m(x))
print(t.graph.meta["compiled_regions_ran_eager"], len(runs) == before)
f(x); f(x)
print(len(runs) > before)
"""
    res = _fresh_process(code)
    assert res.stdout.split() == ["True", "True", "True"], res.stdout


def test_traces_that_end_out_of_order_give_the_users_stance_back() -> None:
    """Trace A entered, then B; A exited first. Each put back the stance it
    found, so B's exit restored "force_eager" and compiled code ran eagerly for
    the rest of the process."""
    import torch._dynamo  # noqa: F401  (loaded: the stance is set at the traces' start)
    from torch._dynamo import eval_frame

    backend = Counted()
    fn, _, args, _ = _compiled("function", backend)
    m = Block()
    a, b = torchtrace.trace(m), torchtrace.trace(m)
    a.__enter__()
    b.__enter__()
    m(torch.randn(2, 4))
    a.__exit__(None, None, None)
    assert eval_frame._stance.stance == "force_eager"  # B still records
    b.__exit__(None, None, None)
    assert eval_frame._stance.stance == "default"
    assert backend.ran(fn, *args)


def test_a_compiled_module_called_under_warnings_as_errors_runs_as_without_the_trace():
    """torch.compile's wrapper warns at each call while any global module hook is
    on, and torchtrace's are: a script (or pytest) that turns warnings into errors
    failed under the trace. The filter that quiets it is gone after the block, and
    the script's own filters are as they were."""
    torch.manual_seed(0)
    m = nn.Linear(4, 4)
    cm = torch.compile(m, backend="eager")
    x = torch.ones(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = cm(x)
        before = list(warnings.filters)
        with torchtrace.trace(m) as t:
            got = cm(x)
        assert warnings.filters == before
        handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *a: None)
        try:  # (the warning itself is torch's, and stays for hooks of the user's own)
            with pytest.raises(UserWarning, match="global hooks"):
                cm(x)
        finally:
            handle.remove()
    assert torch.equal(got, want) and [n.short_op for n in t.graph.nodes] == ["t", "addmm"]


def test_a_trace_started_at_each_step_keeps_the_warnings_said_once():
    """(A review.) The filter was put in with filterwarnings(), which resets every
    module's memory of the warnings it showed: a warning of the model's, shown
    once without tracing, came back at every traced step."""
    m = nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for _ in range(4):
            with torchtrace.trace(m):
                warnings.warn("a model's own warning")  # (one line: one warning, said once)
                m(torch.ones(1, 2))
    assert [str(w.message) for w in seen] == ["a model's own warning"]


def test_dynamo_first_loaded_after_the_root_call_is_guarded_at_once() -> None:
    """(An audit.) `torch.compile(f)` first called after the model call, with no
    root call after it: the stance was set only at root calls, so `f` ran under the
    mode unguarded. The pass said no compiled code ran, and Dynamo had skipped `f`'s
    frame for good (it ran eagerly after the block too). Likewise `torch.cond`, which
    loads Dynamo and compiles its branches."""
    code = _FRESH + """with torchtrace.trace(m) as t:
    y = m(x)
    f = torch.compile(scale, backend=backend)
    out = f(y)
print(t.graph.meta["compiled_regions_ran_eager"], runs == [], sys.meta_path[0].__class__.__name__)
f(x); f(x)
import copy, pickle
loader = sys.modules["torch._dynamo.eval_frame"].__loader__  # (ours, for good: copied and pickled as its own)
copy.copy(loader), copy.deepcopy(loader), pickle.loads(pickle.dumps(loader))
print(len(runs) == 2)
"""
    res = _fresh_process(code)
    assert res.stdout.split()[:2] + res.stdout.split()[3:] == ["True", "True", "True"], res.stdout
    assert res.stdout.split()[2] != "DynamoImport", res.stdout  # (the finder is gone after the block)


class _CondOnActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor, operand: str) -> torch.Tensor:
        h = self.lin(x)
        a = h if operand == "activation" else self.w
        return torch.cond(h.sum() > 0, lambda t: t.sin(), lambda t: t.cos() * 2, (a,))


def test_torch_cond_on_an_operand_that_needs_a_gradient_gets_the_clear_error() -> None:
    """(An audit.) With an operand that requires grad, eager `torch.cond` runs
    through its autograd Function, whose forward runs the op with grad off: the
    check of the grad mode passed, the forward was recorded, and `backward()`
    failed deep in torch ("object of type 'bool' has no len()")."""
    import torch._dynamo

    torch._dynamo.reset()
    m, x = _CondOnActivation(), torch.rand(3, 4)
    with pytest.raises(torchtrace.TorchtraceError, match="with autograd on"):
        with torchtrace.trace(m):
            m(x, "activation")
    assert torch._C._len_torch_dispatch_stack() == 0
    with torch.no_grad():  # (a parameter as the operand: needs no gradient under no_grad)
        plain = m(x, "parameter")
        with torchtrace.trace(m) as t:
            traced = m(x, "parameter")
    assert torch.equal(plain, traced)
    assert [n.op for n in t.graph.nodes][-1] in ("aten.sin.default", "aten.mul.Tensor")


def test_the_dynamo_finder_imports_nothing_itself() -> None:
    """(A review.) It found Dynamo's module by `importlib.util.find_spec`, which
    imports the package: under the import lock, while another thread held the
    package's lock, two threads loading Dynamo at once hung for good."""
    code = """
import os, sys, torch
from torchtrace.record.patches import DynamoImport, _ThenGuard
assert "torch._dynamo" not in sys.modules
finder = DynamoImport()
sys.meta_path.insert(0, finder)
try:
    spec = finder.find_spec("torch._dynamo.eval_frame", [os.path.join(torch.__path__[0], "_dynamo")])
finally:
    sys.meta_path.remove(finder)
print(type(spec.loader) is _ThenGuard, "torch._dynamo" not in sys.modules, finder.find_spec("json", None) is None)
"""
    res = _fresh_process(code)
    assert res.stdout.split() == ["True", "True", "True"], res.stdout


class _Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x * 2
        return torch.cond(y.sum() > 0, lambda t: t.sin(), lambda t: t.cos(), (y,))

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_torch_cond_in_a_function_s_own_forward_is_recorded() -> None:
    """(A review.) Grad is off in a custom Function's forward and its operands need no
    gradient there; the check for torch's own autograd Function took the user's for it
    (its `ctx.needs_input_grad` is True) and refused the pass."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    lin, x = nn.Linear(4, 4), torch.randn(3, 4)
    plain = _Gate.apply(lin(x))
    with torchtrace.trace(lin) as t:
        out = _Gate.apply(lin(x))
        out.sum().backward()
    assert torch.equal(plain, out)
    assert any(n.op in ("aten.sin.default", "aten.cos.default") for n in t.graph.nodes)


def test_a_compiled_model_built_anew_each_step_under_every_k_trains_as_without() -> None:
    """(A review.) The pass boundary at the model inside the `torch.compile` wrapper
    popped the mode inside Dynamo's frame wrapper, which put the dispatch keys back as
    they were when the call began: the step's backward failed in torch ("Hit Python
    dispatch key but no arguments had PyInterpreter"). Then only the first sampled step
    was recorded: a new wrapper's call took the unsampled step's watch, not its model's."""
    import tempfile

    def train(rec=None):
        torch.manual_seed(0)
        losses = []
        for i in range(4):
            if rec is not None:
                rec.step(i)
            m = torch.compile(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)), backend="eager")
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            loss = m(torch.randn(2, 4)).sum()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            python_key = torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Python)
            assert python_key == (torch._C._len_torch_dispatch_stack() > 0)
        return torch.stack(losses)

    plain = train()
    with tempfile.TemporaryDirectory() as d:
        with torchtrace.Recorder(f"{d}/t.db", every=3) as rec:
            traced = train(rec)
        with Store(f"{d}/t.db", readonly=True) as st:
            assert [(p.step, p.root) for p in st.passes()] == [(0, "Sequential"), (3, "Sequential")]
    assert torch.equal(plain, traced)
