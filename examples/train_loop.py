"""A small training loop whose graph changes part way through.

    torchtrace run examples/train_loop.py          # records every step
    torchtrace variants torchtrace-out/trace.db    # two variants, and why

The model refines its features with an extra block until its running loss
drops below a threshold; the `if` that reads the running loss is a witness,
so torchtrace can say which line switched the graph, and when.
"""
import torch
import torch.nn as nn


class CurriculumNet(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, 32), nn.GELU())
        self.refine = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 1)
        self.register_buffer("loss_ema", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.loss_ema > 0.25:  # early training: refine the features
            h = h + self.refine(h)
        return self.head(h)


def main(steps: int = 40) -> None:
    torch.manual_seed(0)
    model = CurriculumNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 16)
    y = x[:, :1] * 0.5  # an easy target: the loss drops quickly
    history = []
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.loss_ema.mul_(0.8).add_(0.2 * loss.detach())
        history.append(loss.item())
    print(f"{steps} steps: loss {history[0]:.4f} -> {history[-1]:.4f}")


if __name__ == "__main__":
    main()
