"""Prefill vs. decode in a KV-cache model (GPT-2, tiny config, random weights).

The first call runs the prompt and fills the cache; every later call runs one
token against the cache. torchtrace shows that these are two programs
(prefill builds the empty cache tensors, runs causal attention) and that the
decode steps are one program whose only change from step to step is the
cache length -- one variant, one shape variant per step.

    python examples/kv_cache_decode.py
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build from a config; never download

import torch  # noqa: E402

import torchtrace  # noqa: E402


def tiny_gpt2() -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _with_cache(model: torch.nn.Module, cache: Any) -> Dict[str, Any]:
    """transformers 5 takes ``cache=``, 4.x ``past_key_values=``."""
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _cache(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def record(model: torch.nn.Module, prompt_len: int = 8, steps: int = 3) -> List[torchtrace.Graph]:
    """The prefill graph, then one graph per greedy decode step."""
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    graphs = []
    with torch.no_grad():
        with torchtrace.trace(model, label="prefill") as t:
            out = model(ids, use_cache=True)
        graphs.append(t.graph)
        for k in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            with torchtrace.trace(model, label=f"decode {k + 1}") as t:
                out = model(token, use_cache=True, **_with_cache(model, _cache(out)))
            graphs.append(t.graph)
    return graphs


def main() -> None:
    graphs = record(tiny_gpt2(), prompt_len=8, steps=3)
    print("=== prefill vs. the first decode step")
    print(torchtrace.diff(graphs[0], graphs[1]))
    print("=== decode step 1 vs. decode step 2")
    print(torchtrace.diff(graphs[1], graphs[2]))
    print("=== variants")
    print(torchtrace.variants(graphs))


if __name__ == "__main__":
    main()
