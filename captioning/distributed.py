"""Several processes (`accelerate launch`, `torchrun`) as right as one: who builds a cache, who captions what,
and how a loss is averaged.

    state(cfg)                    accelerate's process state, started once (gloo on a machine without a GPU)
    local_main_first()            the main process of each machine goes first (builds a cache), the others
                                  wait and then read what it committed
    my_batches(n, batch_size)     this process's contiguous share of whole batches of a split
    gather(items)                 every process's list, concatenated in process order, on every process
    global_mean(total, count)     the value to backpropagate so that DDP's average of the processes'
                                  gradients is the gradient of total / count over ALL processes' items

With one process every function is the plain single-process operation.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch

# How long a process waits for the others in a collective (a cache being built, a best model saved) before
# the run is stopped: torch's own default (10 minutes with NCCL) can stop a finished run on a slow save.
DEFAULT_TIMEOUT_MINUTES = 60


def launched() -> bool:
    """True under `accelerate launch` / `torchrun` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def no_device() -> bool:
    acc = getattr(torch, "accelerator", None)
    return not (acc.is_available() if acc is not None else torch.cuda.is_available())


def init_kwargs(cfg=None) -> dict:
    """What accelerate needs to join this process to the others: cpu=True on a machine without a GPU
    (otherwise each process would work alone), and the collective timeout (cfg.process_timeout minutes)."""
    minutes = getattr(cfg, "process_timeout", DEFAULT_TIMEOUT_MINUTES) or DEFAULT_TIMEOUT_MINUTES
    return {"cpu": no_device() and launched(), "timeout": timedelta(minutes=minutes)}


def state(cfg=None):
    """accelerate's PartialState of this process (its rank, device, process group), started on first use."""
    from accelerate import PartialState

    if PartialState._shared_state:  # already started (by this or by an Accelerator)
        return PartialState()
    return PartialState(**init_kwargs(cfg))


def started() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def device(cfg=None) -> torch.device:
    """This process's device: its own GPU under a launcher (cuda:LOCAL_RANK), else the GPU or the CPU."""
    return state(cfg).device


@contextmanager
def local_main_first(cfg=None):
    """The main process of each machine runs the block first; the others wait for it, then run it too
    (and find the cache it committed). Yields True in the process that goes first."""
    if not started():
        yield True
        return
    st = state(cfg)
    with st.local_main_process_first():
        yield st.is_local_main_process


def rank_and_world() -> tuple[int, int]:
    if not started():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True in the main process (rank 0), and in a single-process run."""
    return rank_and_world()[0] == 0


def my_batches(n: int, batch_size: int) -> list[tuple[int, range]]:
    """(batch number, item indices) of this process's share of the split's batches.

    The batches are the single-process ones (same size, same items); each process takes a contiguous
    run of them, so gathering in process order gives the split's order, with no item twice."""
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    rank, world = rank_and_world()
    lo, hi = len(batches) * rank // world, len(batches) * (rank + 1) // world
    return list(enumerate(batches))[lo:hi]


def gather(items: list) -> list:
    """Every process's `items`, concatenated in process order, on every process."""
    if not started():
        return list(items)
    import torch.distributed as dist

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def sum_counts(counts: dict) -> dict:
    """A dict of numbers summed over processes (the same keys everywhere)."""
    out = {}
    for part in gather([dict(counts)]):
        for k, v in part.items():
            out[k] = out.get(k, 0) + v
    return out


def global_mean(total: torch.Tensor, count) -> torch.Tensor:
    """total / count over every process's items, as this process's share of it.

    Each process holds `total` (a sum over its items, with gradients) and `count` (how many items).
    The result is total * world / (count summed over processes): DDP averages the processes'
    gradients, so the gradient is that of (sum of all totals) / (all items), the single-process loss
    of the whole batch (not a mean of per-process means, which weights a process with few tokens as
    much as one with many); the mean of the returned values over processes is that global mean."""
    n = torch.as_tensor(count, dtype=torch.float32, device=total.device).detach().clone()
    if started():
        import torch.distributed as dist

        world = dist.get_world_size()
        dist.all_reduce(n, op=dist.ReduceOp.SUM)
        return total * world / n.clamp(min=1)
    return total / n.clamp(min=1)
