"""Models the tests run: transformers models built from tiny configs with
random weights (never downloaded), torch.nn reference modules, and small hand
models with data-dependent control flow."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def gpt2(n_layer: int = 2, **kw) -> nn.Module:
    t = _hf()
    cfg = t.GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                       bos_token_id=0, eos_token_id=0, **kw)
    torch.manual_seed(0)
    return t.GPT2LMHeadModel(cfg).eval()


def bert(n_layer: int = 2) -> nn.Module:
    t = _hf()
    cfg = t.BertConfig(num_hidden_layers=n_layer, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                       vocab_size=100, max_position_embeddings=64)
    torch.manual_seed(0)
    return t.BertModel(cfg).eval()


def llama(n_layer: int = 2) -> nn.Module:
    t = _hf()
    cfg = t.LlamaConfig(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    torch.manual_seed(0)
    return t.LlamaForCausalLM(cfg).eval()


def t5(n_layer: int = 2) -> nn.Module:
    t = _hf()
    cfg = t.T5Config(num_layers=n_layer, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=100,
                     decoder_start_token_id=0)
    torch.manual_seed(0)
    return t.T5ForConditionalGeneration(cfg).eval()


_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
# more architectures, each its own kernels: rotary embeddings and SiLU (Mistral, Qwen2),
# mixture-of-experts routing on data (Mixtral), a selective scan in plain torch (Mamba),
# parallel attention + MLP (GPT-NeoX)
ARCHS = {
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_SMALL, num_key_value_heads=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(_SMALL, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=32, num_hidden_layers=2, vocab_size=100, state_size=4, expand=2)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_SMALL)),
}


def causal_lm(arch: str) -> nn.Module:
    """A tiny random-weight causal LM of architecture ``arch`` (a key of ``ARCHS``)."""
    t = _hf()
    config, model, kw = ARCHS[arch]
    torch.manual_seed(0)
    return getattr(t, model)(getattr(t, config)(**kw)).eval()


def whisper() -> nn.Module:
    """A tiny random-weight Whisper (two encoder and two decoder layers), in train
    mode; its inputs: ``torch.randn(2, 8, 32)`` features, labels of ids 3..99."""
    t = _hf()
    torch.manual_seed(0)
    cfg = t.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, num_mel_bins=8, max_source_positions=16,
        max_target_positions=32, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return t.WhisperForConditionalGeneration(cfg).train()


def token_ids(n: int = 8, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 100, (batch, n), generator=g)


def transformer_encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def lstm() -> nn.Module:
    torch.manual_seed(0)
    return nn.LSTM(8, 16, num_layers=2, batch_first=True)


class ResNetBlock(nn.Module):
    """A torchvision-style BasicBlock (a downsampling shortcut when the shape changes)."""

    def __init__(self, cin: int = 8, cout: int = 16, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def resnet_block() -> nn.Module:
    torch.manual_seed(0)
    return ResNetBlock()


class Branchy(nn.Module):
    """Data-dependent control flow: an `if` on a reduction and a `while` on `.item()`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 0:  # WITNESS:if
            h = self.extra(h).relu()
        n = int(x.abs().sum().item())  # WITNESS:item
        while n > 0:  # plain Python int: no witness
            h = h * 0.5
            n -= 4
        k = torch.tensor(2)
        while k > 0:  # WITNESS:while
            h = h + 1
            k = k - 1
        return h


def marked_line(path: str, marker: str, tag: str = "LINE") -> int:
    """Line number in file ``path`` of the line that ends with `# <tag>:<marker>`."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# {tag}:{marker}"):
                return i
    raise LookupError(marker)


def marker_line(marker: str) -> int:
    """Line number in this file of the `# WITNESS:<marker>` comment."""
    return marked_line(__file__, marker, "WITNESS")


class Experts(nn.Module):
    """Top-1 routing: each expert runs on the tokens routed to it, if any (token e,
    one-hot on e, goes to expert e)."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.router = nn.Linear(n, n, bias=False)
        self.experts = nn.ModuleList(nn.Linear(n, n) for _ in range(n))
        with torch.no_grad():
            self.router.weight.copy_(torch.eye(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            mask = choice == e
            if mask.any():  # LINE:experts_any
                out[mask] = expert(x[mask])
        return out


class MLP(nn.Module):
    def __init__(self, d_in: int = 256, d_hidden: int = 1024) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_hidden, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def record(model: nn.Module, *args: object, train: bool = False, label: str = None, **kwargs: object):
    """The graph of one call of ``model`` (no autograd graph unless ``train``)."""
    import torchtrace

    with torch.set_grad_enabled(train), torchtrace.trace(model, label=label) as t:
        model(*args, **kwargs)
    return t.graph



def autograd_nodes(*roots) -> list:
    """Every autograd Node reachable from ``roots`` through ``next_functions``
    (torch's own graph: the oracle for the IR's autograd part), each once."""
    stack, nodes = list(roots), {}
    while stack:
        n = stack.pop()
        if n is not None and id(n) not in nodes:
            nodes[id(n)] = n
            stack.extend(f for f, _ in n.next_functions)
    return list(nodes.values())


class Tagged(nn.Linear):
    """A linear layer whose forward multiplies by ``tag``: ``100 + i`` in step ``i``
    (``held_steps`` reads it back)."""

    tag = 100

    def __init__(self, in_features: int = 4, out_features: int = 2) -> None:
        super().__init__(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.tag


def held_steps(graph) -> list:
    """The steps whose ops a pass holds: Recorder tests multiply by ``100 + i`` in step ``i``
    (the forward `mul` by that integer), whatever the pass's label or step says."""
    return [n.args["other"] - 100 for n in graph.nodes
            if n.short_op == "mul.Tensor" and type(n.args.get("other")) is int and n.phase == "forward"]


def stored_steps(path) -> list:
    """(step, steps held, ops) of each pass stored at ``path``."""
    from torchtrace.store import Store

    with Store(path, readonly=True) as st:
        return [(p.step, held_steps(g), [n.short_op for n in g.nodes]) for p, (_, g) in zip(st.passes(), st.graphs())]
