"""Two ranks that part ways: the classic cause of a hung all_reduce.

    torchtrace run --nproc-per-node 2 examples/ranks_diverge.py
    torchtrace ranks torchtrace-out/trace.db

Each rank trains on its own data and averages its gradients with one
all_reduce per step (like a DDP bucket). At step 2 rank 1 gets an outlier
batch, a data-dependent `if` re-synchronises the gradients, and rank 1 calls
one all_reduce more than rank 0. From then on the collectives pair up wrongly
(rank 1's extra call meets rank 0's next step), and at the end rank 1 waits in
an all_reduce that rank 0 never joins: with NCCL a hang, here gloo reports the
lost peer and the run fails. torchtrace names the pass, the first collective
where the ranks differ, and the `if` that sent rank 1 there.
"""
import datetime
import time

import torch
import torch.distributed as dist
import torch.nn as nn


def main(steps: int = 4) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    for step in range(steps):
        outlier = rank == 1 and step == 2  # one odd batch on one rank
        x = torch.full((16, 4), 5.0) if outlier else torch.ones(16, 4)
        loss = model(x).pow(2).mean()
        loss.backward()
        flat = torch.cat([p.grad.flatten() for p in model.parameters()])
        dist.all_reduce(flat)
        if x.max() > 2.5:  # data-dependent: re-synchronise after an outlier batch
            dist.all_reduce(flat)
        model.zero_grad()
    # no destroy_process_group(): with a collective still pending on rank 1 it
    # would block rank 0; exiting closes the connections and rank 1 sees that.
    # Rank 0 lingers first: closing them while a loaded rank 1 still reads the
    # last exchange they shared would make rank 1 fail one collective earlier.
    if rank == 0:
        time.sleep(1.0)


if __name__ == "__main__":
    main()
