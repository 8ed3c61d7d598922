"""Benchmark models: what the table in bench/README.md measures.

Every builder returns a :class:`Workload`: the model (train mode, random
weights, nothing downloaded), a ``forward()`` closure for the forward rows and
a ``loss()`` closure for the forward+backward rows. Inputs are fixed tensors
created once, so every repetition runs the same ops.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@dataclass
class Workload:
    name: str
    description: str
    model: nn.Module
    forward: Callable[[], object]   # one forward pass (train mode, grad on)
    loss: Callable[[], torch.Tensor]  # forward + scalar loss, for .backward()
    x: torch.Tensor                   # the forward's input (for torchview/torchlens)


# -- MLP with data-dependent control flow ------------------------------------------
class BranchyMLP(nn.Module):
    """A small MLP whose path depends on the data: per block an ``if`` on a
    reduction picks GELU or ReLU, and a ``while`` runs on ``.item()``."""

    def __init__(self, d_in: int = 128, hidden: int = 256, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for blk in self.blocks:
            y = blk(h)
            if y.mean() > 0:  # data-dependent branch (a witness)
                h = h + F.gelu(y)
            else:
                h = h + F.relu(y)
        h = self.norm(h)
        n = int(h.abs().mean().item() * 2) + 1  # data-dependent trip count
        while n > 0:
            h = h * 0.5
            n -= 1
        return self.out(h)


def mlp() -> Workload:
    torch.manual_seed(0)
    m = BranchyMLP().train()
    x = torch.randn(32, 128)
    y = torch.randint(0, 10, (32,))
    return Workload("mlp", "BranchyMLP 128-256x4-10, batch 32 (if + while on data)", m,
                    lambda: m(x), lambda: F.cross_entropy(m(x), y), x)


# -- GPT-2 (transformers) ---------------------------------------------------------
def _gpt2(name: str, desc: str, n_layer: int, n_embd: int, n_head: int, vocab: int, seq: int) -> Workload:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
                                  n_positions=max(seq, 64), bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (1, seq), generator=g)
    return Workload(name, desc, m, lambda: m(x), lambda: m(x, labels=x).loss, x)


def gpt2_tiny() -> Workload:
    return _gpt2("gpt2-tiny", "transformers GPT-2 2x128, 4 heads, vocab 1000, seq 32", 2, 128, 4, 1000, 32)


def gpt2_small() -> Workload:
    return _gpt2("gpt2-small", "transformers GPT-2 12x768, 12 heads, vocab 50257, seq 64", 12, 768, 12, 50257, 64)


def gpt2_layers(n_layer: int) -> nn.Module:
    """GPT-2 tiny with ``n_layer`` blocks (for render timings)."""
    return _gpt2(f"gpt2-{n_layer}", "", n_layer, 128, 4, 1000, 32).model


# -- ResNet-18, written by hand (torchvision does not import beside torch 2.13 here) ---
# its BasicBlock is the one the tests use
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from zoo import ResNetBlock as BasicBlock  # noqa: E402


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> Workload:
    torch.manual_seed(0)
    m = ResNet18().train()
    x = torch.randn(1, 3, 224, 224)
    y = torch.tensor([3])
    return Workload("resnet18", "hand ResNet-18, 1x3x224x224", m, lambda: m(x), lambda: F.cross_entropy(m(x), y), x)


MODELS: Dict[str, Callable[[], Workload]] = {
    "mlp": mlp,
    "gpt2-tiny": gpt2_tiny,
    "gpt2-small": gpt2_small,
    "resnet18": resnet18,
}
