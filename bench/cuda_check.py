"""torchtrace on a GPU: the checks the CPU test suite cannot make, and what
capture costs when the ops run asynchronously on a CUDA device.

Not part of the test suite (CI has no GPU). Run on a machine with CUDA::

    python bench/cuda_check.py                 # checks + timings, ~3 min on an H100
    python bench/cuda_check.py --device cpu    # the same checks on CPU (to try the script)
    python bench/cuda_check.py --json out.json

Checks (each prints PASS/FAIL, the exit status is the number of failures):

* bitwise: outputs and every gradient of transformers GPT-2, Llama (sdpa), BERT,
  ``nn.Transformer``, cuDNN LSTM, a bf16-autocast training step and a
  ``torch.cuda.Stream`` side stream, untraced vs. inside ``torchtrace.trace``
  (deterministic algorithms on; an untraced run is first repeated to show the
  baseline itself is deterministic);
* the IR: values on ``cuda:0``, the fused attention kernels and their backward
  recorded and joined to autograd Nodes, save/load/validate, text/DOT/Mermaid;
* no added synchronisation: ``torch.cuda.set_sync_debug_mode("warn")`` counts
  the syncs of the traced pass (same as untraced) and of the IR build (one per
  gradient (device, dtype) group, for the gradient norms);
* a CUDA graph captured inside a trace replays to the untraced result;
* witnesses read from GPU tensors (``if t.sum() > 0``, ``.item()``);
* ``torch.compile`` (inductor): eager while traced, compiled again after;
* ``Recorder`` over 6 AdamW steps: one structure, parameters bitwise equal.

Timings (interleaved, medians, every sample ends with ``torch.cuda.synchronize()``):
plain / empty ``TorchDispatchMode`` / capture / ``trace()`` end to end, for GPT-2
tiny and GPT-2 small, forward and forward+backward.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import torchtrace  # noqa: E402
import zoo  # noqa: E402
from harness import Empty, Stats, Variant, interleave  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402

RESULTS: Dict[str, Any] = {"checks": {}, "timings": {}}
DEV = torch.device("cpu")


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def wrap(fn: Callable[[], str]) -> Callable[[], str]:
        def run() -> str:
            if ONLY and not any(k in name for k in ONLY):
                return ""
            t0 = time.perf_counter()
            try:
                detail, ok = fn(), True
            except Exception as e:  # a check that raises is a failure, reported with its traceback
                detail, ok = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}", False
            dt = time.perf_counter() - t0
            RESULTS["checks"][name] = {"ok": ok, "detail": detail, "s": round(dt, 2)}
            print(f"{'PASS' if ok else 'FAIL'} {name} ({dt:.1f} s): {detail}", flush=True)
            return detail
        CHECKS.append(run)
        return run
    return wrap


CHECKS: List[Callable[[], str]] = []
ONLY: List[str] = []


def _step(model: nn.Module, run: Callable[[], torch.Tensor]) -> List[torch.Tensor]:
    """One forward + backward: the output and every gradient (cloned)."""
    model.zero_grad(set_to_none=True)
    out = run()
    loss = out.float().square().mean()
    loss.backward()
    return [out.detach().clone()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def bitwise(model: nn.Module, run: Callable[[], torch.Tensor], what: str) -> torchtrace.Graph:
    torch.manual_seed(0)
    base = _step(model, run)
    torch.manual_seed(0)
    again = _step(model, run)
    assert _same(base, again), f"{what}: two untraced runs differ (nondeterministic baseline)"
    torch.manual_seed(0)
    with torchtrace.trace(model) as t:
        traced = _step(model, run)
    assert _same(base, traced), f"{what}: traced output/gradients differ from untraced"
    g = t.graph.validate()
    assert "record_errors" not in g.meta, g.meta["record_errors"]
    want = f"{DEV.type}:0" if DEV.type == "cuda" else "cpu"
    held = [v for v in g.values if v.role in ("param", "input")]
    assert held and all(v.device == want for v in held), {(v.name, v.device) for v in held}
    made = g.producers()
    elsewhere = sorted({g.node(made[v.id]).short_op for v in g.values if v.device != want and v.id in made})
    assert g.autograd.grads and all(isinstance(gi.norm, float) for gi in g.autograd.grads), "grad norms"
    assert any(n.phase == "backward" for n in g.nodes), "no backward op recorded"
    RESULTS.setdefault("not_on_device", {})[what] = elsewhere
    return g


def _ids(n: int = 16, batch: int = 2) -> torch.Tensor:
    return zoo.token_ids(n, batch).to(DEV)


@check("bitwise_gpt2")
def _() -> str:
    m = zoo.gpt2().to(DEV).train()
    x = _ids()
    g = bitwise(m, lambda: m(x).logits, "GPT-2")
    return f"{len(g.nodes)} ops, {len(g.autograd.nodes)} autograd nodes, {len(g.autograd.grads)} grads"


@check("bitwise_llama_sdpa_fused_attention_recorded")
def _() -> str:
    t = zoo._hf()
    cfg = t.LlamaConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
                        attn_implementation="sdpa")
    torch.manual_seed(0)
    m = t.LlamaForCausalLM(cfg).to(DEV, torch.bfloat16 if DEV.type == "cuda" else torch.float32).train()
    x = _ids(32)
    g = bitwise(m, lambda: m(x).logits, "Llama sdpa")
    fwd = {n.op for n in g.nodes if n.phase == "forward" and "scaled_dot_product" in n.op}
    bwd = {n.op for n in g.nodes if n.phase == "backward" and "attention" in n.op and "backward" in n.op}
    assert fwd, "no fused attention op recorded"
    joined = [n for n in g.nodes if n.op in fwd and n.grad_fn is not None]
    unjoined = sorted({a.name for a in g.autograd.nodes if a.op is None and "Attention" in a.name})
    assert joined, f"{fwd} not joined to an autograd Node; unjoined attention Nodes: {unjoined}"
    if DEV.type == "cuda":
        assert bwd, "no fused attention backward recorded"
    return f"forward {sorted(fwd)}, backward {sorted(bwd)}, joined {g.autograd_node(joined[0].grad_fn).name}"


@check("bitwise_bert")
def _() -> str:
    m = zoo.bert().to(DEV).train()
    x = _ids()
    g = bitwise(m, lambda: m(x).last_hidden_state, "BERT")
    return f"{len(g.nodes)} ops"


@check("bitwise_nn_transformer")
def _() -> str:
    torch.manual_seed(0)
    m = nn.Transformer(32, 2, 2, 2, 64, batch_first=True, dropout=0.0).to(DEV)
    src, tgt = torch.randn(2, 10, 32, device=DEV), torch.randn(2, 7, 32, device=DEV)
    mask = nn.Transformer.generate_square_subsequent_mask(7, device=DEV)
    g = bitwise(m, lambda: m(src, tgt, tgt_mask=mask), "nn.Transformer")
    return f"{len(g.nodes)} ops"


@check("bitwise_lstm_cudnn")
def _() -> str:
    m = zoo.lstm().to(DEV)
    x = torch.randn(3, 12, 8, device=DEV)
    g = bitwise(m, lambda: m(x)[0], "LSTM")
    return f"ops {sorted({n.short_op for n in g.nodes if 'lstm' in n.op or 'rnn' in n.op})}"


@check("bitwise_autocast_bf16_training_step")
def _() -> str:
    m = zoo.gpt2().to(DEV).train()
    x = _ids()

    def run() -> torch.Tensor:
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            return m(x).logits

    g = bitwise(m, run, "autocast")
    dtypes = {v.dtype for v in g.values if v.role == "activation"}
    assert "bfloat16" in dtypes, dtypes
    return f"activation dtypes {sorted(dtypes)}"


@check("bitwise_side_stream")
def _() -> str:
    m = zoo.MLP(64, 128).to(DEV)
    x = torch.randn(8, 64, device=DEV)
    if DEV.type != "cuda":
        g = bitwise(m, lambda: m(x), "MLP")
        return f"{len(g.nodes)} ops (no streams on CPU)"
    s = torch.cuda.Stream()

    def run() -> torch.Tensor:
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            y = m(x)
        torch.cuda.current_stream().wait_stream(s)
        y.record_stream(torch.cuda.current_stream())
        return y

    g = bitwise(m, run, "side stream")
    return f"{len(g.nodes)} ops"


@check("no_added_synchronisation")
def _() -> str:
    if DEV.type != "cuda":
        return "skipped on CPU (no device synchronisations)"
    m = zoo.gpt2().to(DEV).train()
    x = _ids()

    def syncs(fn: Callable[[], Any]) -> int:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(x.message) for x in w)

    plain = syncs(lambda: m(x).logits.sum().backward())
    tr = torchtrace.trace(m)
    tr.__enter__()
    try:
        traced = syncs(lambda: m(x).logits.sum().backward())
    finally:
        build = syncs(lambda: tr.__exit__(None, None, None))
    groups = len({(p.device, p.dtype) for p in m.parameters()})
    assert traced == plain, f"the pass synchronises {traced} times traced, {plain} untraced"
    assert build <= groups, f"the IR build synchronised {build} times (gradient groups: {groups})"
    return f"pass: {plain} untraced, {traced} traced; IR build: {build} (gradient groups {groups})"


@check("cuda_graph_captured_inside_a_trace")
def _() -> str:
    if DEV.type != "cuda":
        return "skipped on CPU"
    m = zoo.MLP(64, 128).to(DEV).eval()
    x = torch.randn(8, 64, device=DEV)
    want = m(x).detach().clone()
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            m(x)  # warm-up on a side stream, as CUDA graphs require
        torch.cuda.current_stream().wait_stream(s)
        cg = torch.cuda.CUDAGraph()
        with torchtrace.trace(m) as t:
            with torch.cuda.graph(cg):
                y = m(x)
        cg.replay()
        torch.cuda.synchronize()
    assert torch.equal(y, want), "replay differs"
    return f"{len(t.graph.nodes)} ops recorded during capture; replay equal"


@check("witnesses_from_gpu_tensors")
def _() -> str:
    m = zoo.Branchy().to(DEV)
    a, b = torch.full((2, 4), 3.0, device=DEV), torch.full((2, 4), -3.0, device=DEV)
    graphs = []
    for x in (a, b):
        with torchtrace.trace(m) as t:
            m(x)
        graphs.append(t.graph)
    w = [[n.witness.value for n in g.witnesses() if n.witness.value is not None] for g in graphs]
    d = torchtrace.diff(*graphs)
    why = " ".join(d.why())
    assert not d.is_empty and f"zoo.py:{zoo.marker_line('if')}" in why, why
    return f"values A {w[0]}, B {w[1]}; why: {why}"


@check("torch_compile_inductor_eager_while_traced")
def _() -> str:
    import torch._dynamo

    torch._dynamo.reset()
    calls = []
    from torch._inductor.compile_fx import compile_fx

    def backend(gm: Any, ex: Any) -> Any:
        calls.append(len(gm.graph.nodes))
        return compile_fx(gm, ex)

    m = zoo.MLP(64, 128).to(DEV)
    cm = torch.compile(m, backend=backend)
    x = torch.randn(8, 64, device=DEV)
    cm(x)
    n0 = len(calls)
    with torchtrace.trace(cm) as t:
        y = cm(x)
    eager = m(x)
    assert torch.equal(y, eager), "traced compiled module is not the eager result"
    cm(torch.randn(8, 64, device=DEV))
    assert len(calls) == n0, "recompiled after the trace"
    assert t.graph.meta.get("compiled_regions_ran_eager"), t.graph.meta
    # the compiled code runs again afterwards: the same frame goes through the cache
    before = torch._dynamo.utils.counters["stats"]["calls_captured"]
    return f"{len(t.graph.nodes)} eager ops traced; compiled graph kept (compiles {n0}, captured {before})"


@check("recorder_adamw_steps")
def _() -> str:
    def train(rec: Any) -> List[torch.Tensor]:
        m = zoo.gpt2().to(DEV).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x = _ids()
        for step in range(6):
            if rec is not None:
                rec.step(step)
            loss = m(x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in m.parameters()]

    base = train(None)
    with tempfile.TemporaryDirectory() as d:
        with torchtrace.Recorder(os.path.join(d, "t.db"), every=1) as rec:
            got = train(rec)
        from torchtrace.store import Store

        with Store(os.path.join(d, "t.db")) as st:
            passes = st.passes()
            # (step 0 creates AdamW's state; the last pass also holds train()'s final clones)
            structures = {p.structure_fp for p in passes[1:-1]}
    assert _same(base, got), "parameters after 6 recorded AdamW steps differ"
    assert len(passes) == 6 and len(structures) == 1, (len(passes), structures)
    return f"{len(passes)} passes, steps 1-4 one structure"


@check("checkpoint_recompute_in_the_engine_thread")
def _() -> str:
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self, reentrant: bool) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
            self.head = nn.Linear(8, 1)
            self.reentrant = reentrant

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))

    def scopes(dev: torch.device, reentrant: bool) -> List[tuple]:
        torch.manual_seed(0)
        m = Net(reentrant).to(dev)
        x = torch.randn(4, 8, device=dev, requires_grad=True)
        with torchtrace.trace(m) as t:
            m(x).sum().backward()
        g = t.graph
        assert "record_errors" not in g.meta, g.meta["record_errors"]
        return sorted({(n.phase, g.module_path(n.module)) for n in g.nodes if n.phase != "forward"})

    out = []
    for reentrant in (False, True):
        here, cpu = scopes(DEV, reentrant), scopes(torch.device("cpu"), reentrant)
        assert here == cpu, f"reentrant={reentrant}: {here} on {DEV}, {cpu} on cpu"
        out.append(f"reentrant={reentrant}: {[s for s in here if s[0] == 'recompute']}")
    return "; ".join(out)


@check("save_load_render")
def _() -> str:
    m = zoo.gpt2().to(DEV).train()
    x = _ids()
    with torchtrace.trace(m) as t:
        m(x, labels=x).loss.backward()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.json.gz")
        torchtrace.save(t.graph, p)
        g = torchtrace.load(p)
    assert g == t.graph
    sizes = {fmt: len(torchtrace.render(g, fmt, phase="both")) for fmt in ("text", "dot", "mermaid")}
    return f"{sizes}"


# ---------------------------------------------------------------------------------------------
# timings
# ---------------------------------------------------------------------------------------------
class Sync(Variant):
    """A timed pass that ends with ``torch.cuda.synchronize()``: the pass's
    device work counts, as a training step's would."""

    def __init__(self, name: str, fn: Callable[[], Any], wrap: Callable[[], Any]) -> None:
        self.name, self.fn, self.wrap = name, fn, wrap

    def run(self) -> float:
        _sync()
        t0 = time.perf_counter()
        with self.wrap() as ctx:
            self.out = self.fn()
        _sync()
        self.ctx = ctx
        return time.perf_counter() - t0

    def after(self) -> None:
        self.out = self.ctx = None


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _capture(model: nn.Module) -> Any:
    c = Capture(model)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def timings(budget_reps: int) -> None:
    import transformers

    for name, (layers, embd, heads, vocab, seq) in {"gpt2-tiny": (2, 128, 4, 1000, 32),
                                                    "gpt2-small": (12, 768, 12, 50257, 64)}.items():
        cfg = transformers.GPT2Config(n_layer=layers, n_embd=embd, n_head=heads, vocab_size=vocab,
                                      n_positions=max(seq, 64))
        torch.manual_seed(0)
        m = transformers.GPT2LMHeadModel(cfg).to(DEV).train()
        x = torch.randint(0, vocab, (1, seq), device=DEV)
        for phase, fn in (("fwd", lambda: m(x)), ("fwd+bwd", lambda: m(x, labels=x).loss.backward())):
            variants = [Sync("plain", fn, contextlib.nullcontext), Sync("empty", fn, Empty),
                        Sync("capture", fn, lambda: _capture(m)), Sync("trace", fn, lambda: torchtrace.trace(m))]
            stats: Dict[str, Stats] = interleave(variants, budget_reps, warmup=3)
            med = {k: s.median for k, s in stats.items()}
            row = {k: round(v * 1e3, 3) for k, v in med.items()}
            row.update({"capture_x_plain": round(med["capture"] / med["plain"], 2),
                        "capture_x_empty": round(med["capture"] / med["empty"], 2),
                        "empty_x_plain": round(med["empty"] / med["plain"], 2),
                        "trace_x_plain": round(med["trace"] / med["plain"], 2)})
            RESULTS["timings"][f"{name} {phase}"] = row
            print(f"TIME {name} {phase}: ms {dict((k, row[k]) for k in med)}; capture ×plain "
                  f"{row['capture_x_plain']}, ×empty {row['capture_x_empty']}; empty ×plain "
                  f"{row['empty_x_plain']}; trace() ×plain {row['trace_x_plain']}", flush=True)
            m.zero_grad(set_to_none=True)


def main() -> int:
    global DEV
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30, help="interleaved rounds per timing")
    ap.add_argument("--no-timings", action="store_true")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--only", default="", help="comma-separated parts of check names to run")
    opts = ap.parse_args()
    ONLY[:] = [k for k in opts.only.split(",") if k]
    DEV = torch.device(opts.device)
    torch.use_deterministic_algorithms(True, warn_only=True)  # (the repeated baseline shows nondeterminism)
    torch.backends.cudnn.benchmark = False
    desc = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    RESULTS["device"] = f"{desc}, torch {torch.__version__}"
    print(f"device: {RESULTS['device']}", flush=True)
    for run in CHECKS:
        run()
    if not opts.no_timings:
        torch.use_deterministic_algorithms(False)
        timings(opts.reps)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    print(f"values not on {DEV}, by the op that made them: {RESULTS.get('not_on_device')}")
    failed = [k for k, v in RESULTS["checks"].items() if not v["ok"]]
    print(f"{len(RESULTS['checks']) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
