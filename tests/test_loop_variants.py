"""Training loops as users write them, recorded step by step: the steady steps
are one variant, and what starts another variant is said as it is."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import torchtrace
import zoo
from torchtrace.families import store_variants
from torchtrace.store import Store


def _variants(path):
    with Store(path, readonly=True) as store:
        variants = store_variants(store)[1]
        return str(variants)


def test_a_loader_iterated_under_inference_mode_leaves_no_loading_in_the_step_before(tmp_path):
    """`iter(val)`'s seed draw under inference_mode (its `item()` runs in pieces)
    stayed in the training step before each evaluation: a variant of its own,
    put down to a logged loss."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    val = DataLoader(TensorDataset(torch.randn(24, 4), torch.randint(0, 2, (24,))), batch_size=8)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(3):
            for _ in range(2):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                loss.item()
            with torch.inference_mode():
                for vx, vy in val:
                    nn.functional.cross_entropy(model(vx), vy).item()
    variants = _variants(tmp_path / "t.db")
    assert variants.startswith("2 variants in 15 graphs"), variants
    assert "grad mode train in A, inference in B" in variants


def test_a_float_read_kept_in_a_name_is_named_for_the_if_that_compares_it(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Linear(4, 1), torch.randn(8, 4)
    best, kept = float("inf"), []
    with torchtrace.Recorder(tmp_path / "t.db"):
        for step in range(6):
            with torch.no_grad():
                out = model(x)
                loss = out.pow(2).mean().item()  # LINE:kept
                print(f"{out.sum().item():.6f}")  # (a logged float: differs every step too)
                if loss < best:
                    best = loss
                    kept.append(model.weight.clone())
                model.weight.mul_(1.1 if step % 2 else 0.8)
    why = str(_variants(tmp_path / "t.db"))
    line = zoo.marked_line(__file__, "kept")
    assert f"`test_loop_variants.py:{line}` read" in why, why  # (not the printed float, one line nearer)
    assert "(a float kept in the name the `if` around these ops tests: maybe not the cause)" in why


def test_a_float_kept_in_a_name_that_is_re_assigned_before_the_if_is_still_a_guess(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Linear(4, 1), torch.randn(8, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for step in range(6):
            with torch.no_grad():
                out = model(x)
                loss = out.pow(2).mean().item()
                loss = float(step)  # (the name is re-assigned: the read is not what is compared)
                if loss < 3:
                    out = out.exp()
                model.weight.mul_(1.1 if step % 2 else 0.8)
    why = _variants(tmp_path / "t.db")
    assert "maybe not the cause" in why, why


def test_a_last_step_that_skips_its_own_work_is_not_said_to_end_early(tmp_path):
    """Ops of the step after its model call that the last step skips (an EMA update
    under `if step < 4`) are no "next step's first ops"; nor are those a last pass
    lacks because it raised."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for step in range(5):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            if step < 4:
                for e, p in zip(ema, model.parameters()):
                    e.lerp_(p.detach(), 0.1)
    why = _variants(tmp_path / "t.db")
    assert "is the last one recorded" not in why and "Python state" in why, why


def test_the_last_pass_that_ends_before_the_next_step_s_first_ops_says_so(tmp_path):
    """`zero_grad` at the top of the loop: every pass but the last ends with the
    next step's `zero_` ops; the last was put down to a logged loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with torchtrace.Recorder(tmp_path / "t.db"):
        for _ in range(5):
            opt.zero_grad(set_to_none=False)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
    why = str(_variants(tmp_path / "t.db")).splitlines()[-1]
    assert "B's pass is the last one recorded: it ends before what A's pass ran after its step" in why, why
    assert "maybe not the cause" not in why
