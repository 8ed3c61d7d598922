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
* checkpoint's recompute and CUDA's backward in the engine's device thread;
* (``cuda_lifecycle.py``) no device memory left by a traced step; ``Recorder(every=3)``
  bitwise; the same ops, phases, modules and lines under ``FlopCounterMode`` or a
  Recorder above ``trace()``; ``torchtrace run`` of a CUDA script; a CPU pass
  against a GPU pass of one model diffs as identical.

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
import warnings
from typing import Any, Callable, Dict, List

import cudakit as kit  # (first: it sets the environment and sys.path)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import torchtrace  # noqa: E402
import zoo  # noqa: E402
from harness import Empty, Stats, Variant, interleave  # noqa: E402
from torchtrace.record.capture import Capture  # noqa: E402

@kit.check("bitwise_gpt2")
def _() -> str:
    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()
    g = kit.bitwise(m, lambda: m(x).logits, "GPT-2")
    return f"{len(g.nodes)} ops, {len(g.autograd.nodes)} autograd nodes, {len(g.autograd.grads)} grads"


@kit.check("bitwise_llama_sdpa_fused_attention_recorded")
def _() -> str:
    t = zoo._hf()
    cfg = t.LlamaConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
                        attn_implementation="sdpa")
    torch.manual_seed(0)
    m = t.LlamaForCausalLM(cfg).to(kit.DEV, torch.bfloat16 if kit.DEV.type == "cuda" else torch.float32).train()
    x = kit.ids(32)
    g = kit.bitwise(m, lambda: m(x).logits, "Llama sdpa")
    fwd = {n.op for n in g.nodes if n.phase == "forward" and "scaled_dot_product" in n.op}
    bwd = {n.op for n in g.nodes if n.phase == "backward" and "attention" in n.op and "backward" in n.op}
    assert fwd, "no fused attention op recorded"
    joined = [n for n in g.nodes if n.op in fwd and n.grad_fn is not None]
    unjoined = sorted({a.name for a in g.autograd.nodes if a.op is None and "Attention" in a.name})
    assert joined, f"{fwd} not joined to an autograd Node; unjoined attention Nodes: {unjoined}"
    if kit.DEV.type == "cuda":
        assert bwd, "no fused attention backward recorded"
    return f"forward {sorted(fwd)}, backward {sorted(bwd)}, joined {g.autograd_node(joined[0].grad_fn).name}"


@kit.check("bitwise_bert")
def _() -> str:
    m = zoo.bert().to(kit.DEV).train()
    x = kit.ids()
    g = kit.bitwise(m, lambda: m(x).last_hidden_state, "BERT")
    return f"{len(g.nodes)} ops"


@kit.check("bitwise_nn_transformer")
def _() -> str:
    torch.manual_seed(0)
    m = nn.Transformer(32, 2, 2, 2, 64, batch_first=True, dropout=0.0).to(kit.DEV)
    src, tgt = torch.randn(2, 10, 32, device=kit.DEV), torch.randn(2, 7, 32, device=kit.DEV)
    mask = nn.Transformer.generate_square_subsequent_mask(7, device=kit.DEV)
    g = kit.bitwise(m, lambda: m(src, tgt, tgt_mask=mask), "nn.Transformer")
    return f"{len(g.nodes)} ops"


@kit.check("bitwise_lstm_cudnn")
def _() -> str:
    m = zoo.lstm().to(kit.DEV)
    x = torch.randn(3, 12, 8, device=kit.DEV)
    g = kit.bitwise(m, lambda: m(x)[0], "LSTM")
    return f"ops {sorted({n.short_op for n in g.nodes if 'lstm' in n.op or 'rnn' in n.op})}"


@kit.check("bitwise_autocast_bf16_training_step")
def _() -> str:
    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()

    def run() -> torch.Tensor:
        with torch.autocast(kit.DEV.type, dtype=torch.bfloat16):
            return m(x).logits

    g = kit.bitwise(m, run, "autocast")
    dtypes = {v.dtype for v in g.values if v.role == "activation"}
    assert "bfloat16" in dtypes, dtypes
    return f"activation dtypes {sorted(dtypes)}"


@kit.check("bitwise_side_stream")
def _() -> str:
    m = zoo.MLP(64, 128).to(kit.DEV)
    x = torch.randn(8, 64, device=kit.DEV)
    if kit.DEV.type != "cuda":
        g = kit.bitwise(m, lambda: m(x), "MLP")
        return f"{len(g.nodes)} ops (no streams on CPU)"
    s = torch.cuda.Stream()

    def run() -> torch.Tensor:
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            y = m(x)
        torch.cuda.current_stream().wait_stream(s)
        y.record_stream(torch.cuda.current_stream())
        return y

    g = kit.bitwise(m, run, "side stream")
    return f"{len(g.nodes)} ops"


@kit.check("no_added_synchronisation")
def _() -> str:
    if kit.DEV.type != "cuda":
        return "skipped on CPU (no device synchronisations)"
    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()

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


@kit.check("cuda_graph_captured_inside_a_trace")
def _() -> str:
    if kit.DEV.type != "cuda":
        return "skipped on CPU"
    m = zoo.MLP(64, 128).to(kit.DEV).eval()
    x = torch.randn(8, 64, device=kit.DEV)
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


@kit.check("witnesses_from_gpu_tensors")
def _() -> str:
    m = zoo.Branchy().to(kit.DEV)
    a, b = torch.full((2, 4), 3.0, device=kit.DEV), torch.full((2, 4), -3.0, device=kit.DEV)
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


@kit.check("torch_compile_inductor_eager_while_traced")
def _() -> str:
    import torch._dynamo

    torch._dynamo.reset()
    calls = []
    from torch._inductor.compile_fx import compile_fx

    def backend(gm: Any, ex: Any) -> Any:
        calls.append(len(gm.graph.nodes))
        return compile_fx(gm, ex)

    m = zoo.MLP(64, 128).to(kit.DEV)
    cm = torch.compile(m, backend=backend)
    x = torch.randn(8, 64, device=kit.DEV)
    cm(x)
    n0 = len(calls)
    with torchtrace.trace(cm) as t:
        y = cm(x)
    eager = m(x)
    assert torch.equal(y, eager), "traced compiled module is not the eager result"
    cm(torch.randn(8, 64, device=kit.DEV))
    assert len(calls) == n0, "recompiled after the trace"
    assert t.graph.meta.get("compiled_regions_ran_eager"), t.graph.meta
    # the compiled code runs again afterwards: the same frame goes through the cache
    before = torch._dynamo.utils.counters["stats"]["calls_captured"]
    return f"{len(t.graph.nodes)} eager ops traced; compiled graph kept (compiles {n0}, captured {before})"


@kit.check("recorder_adamw_steps")
def _() -> str:
    def train(rec: Any) -> List[torch.Tensor]:
        m = zoo.gpt2().to(kit.DEV).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        x = kit.ids()
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
    assert kit.same(base, got), "parameters after 6 recorded AdamW steps differ"
    assert len(passes) == 6 and len(structures) == 1, (len(passes), structures)
    return f"{len(passes)} passes, steps 1-4 one structure"


@kit.check("checkpoint_recompute_in_the_engine_thread")
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
        here, cpu = scopes(kit.DEV, reentrant), scopes(torch.device("cpu"), reentrant)
        assert here == cpu, f"reentrant={reentrant}: {here} on {kit.DEV}, {cpu} on cpu"
        out.append(f"reentrant={reentrant}: {[s for s in here if s[0] == 'recompute']}")
    return "; ".join(out)


@kit.check("save_load_render")
def _() -> str:
    m = zoo.gpt2().to(kit.DEV).train()
    x = kit.ids()
    with torchtrace.trace(m) as t:
        m(x, labels=x).loss.backward()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.json.gz")
        torchtrace.save(t.graph, p)
        g = torchtrace.load(p)
    assert g == t.graph
    sizes = {fmt: len(torchtrace.render(g, fmt, phase="both")) for fmt in ("text", "dot", "mermaid")}
    return f"{sizes}"


import cuda_lifecycle  # noqa: E402  (registers its checks after the ones above)

LATER = cuda_lifecycle.__name__


# ---------------------------------------------------------------------------------------------
# timings
# ---------------------------------------------------------------------------------------------
class Sync(Variant):
    """A timed pass that ends with ``torch.cuda.synchronize()``: the pass's
    device work counts, as a training step's would."""

    def __init__(self, name: str, fn: Callable[[], Any], wrap: Callable[[], Any]) -> None:
        self.name, self.fn, self.wrap = name, fn, wrap

    def run(self) -> float:
        kit.sync()
        t0 = time.perf_counter()
        with self.wrap() as ctx:
            self.out = self.fn()
        kit.sync()
        self.ctx = ctx
        return time.perf_counter() - t0

    def after(self) -> None:
        self.out = self.ctx = None


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
        m = transformers.GPT2LMHeadModel(cfg).to(kit.DEV).train()
        x = torch.randint(0, vocab, (1, seq), device=kit.DEV)
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
            kit.RESULTS["timings"][f"{name} {phase}"] = row
            print(f"TIME {name} {phase}: ms {dict((k, row[k]) for k in med)}; capture ×plain "
                  f"{row['capture_x_plain']}, ×empty {row['capture_x_empty']}; empty ×plain "
                  f"{row['empty_x_plain']}; trace() ×plain {row['trace_x_plain']}", flush=True)
            m.zero_grad(set_to_none=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=30, help="interleaved rounds per timing")
    ap.add_argument("--no-timings", action="store_true")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--only", default="", help="comma-separated parts of check names to run")
    opts = ap.parse_args()
    kit.ONLY[:] = [k for k in opts.only.split(",") if k]
    kit.DEV = torch.device(opts.device)
    torch.use_deterministic_algorithms(True, warn_only=True)  # (the repeated baseline shows nondeterminism)
    torch.backends.cudnn.benchmark = False
    desc = torch.cuda.get_device_name() if kit.DEV.type == "cuda" else "cpu"
    kit.RESULTS["device"] = f"{desc}, torch {torch.__version__}"
    print(f"device: {kit.RESULTS['device']}", flush=True)
    for run in kit.CHECKS:
        run()
    if not opts.no_timings:
        torch.use_deterministic_algorithms(False)
        timings(opts.reps)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(kit.RESULTS, f, indent=1)
    print(f"values not on {kit.DEV}, by the op that made them: {kit.RESULTS.get('not_on_device')}")
    failed = [k for k, v in kit.RESULTS["checks"].items() if not v["ok"]]
    print(f"{len(kit.RESULTS['checks']) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
