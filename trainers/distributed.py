"""Training on several processes with torch.distributed: nnU-Net's DDP recipe on GPUs and on the CPU.

nnU-Net's ``run_ddp`` spawns one process per GPU with the ``nccl`` backend and ``torch.cuda.set_device``, so it
runs on CUDA only; :func:`spawn` is the same recipe (localhost, a free port, ``mp.spawn``) with the backend the
device needs: ``nccl`` on CUDA, ``gloo`` on the CPU (tests, and CPU clusters). Inside each process the trainer
is nnU-Net's DDP trainer (its per-rank batch size, loss gathering, rank-0 logs and checkpoints); what the SAM
families add is here: gradients averaged over the ranks (:func:`average_gradients`: the trainers call the
network's ``encode``/``decode``, never the DDP wrapper's ``forward``, whose hooks would do it), rank 0's value of
a clock shared (:func:`from_rank0`), and a rank's share of a list (:func:`rank_share`).
"""
import os
from typing import Any, Callable, List, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def spawn(num_processes: int, device: str, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``num_processes`` spawned processes, each one rank of a process group."""
    from nnunetv2.run.run_training import find_free_network_port

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
    mp.spawn(_run_rank, args=(num_processes, device, fn, args), nprocs=num_processes, join=True)


def _run_rank(rank: int, world_size: int, device: str, fn: Callable[..., Any], args: Sequence[Any]) -> None:
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        if device == "cuda":
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the cores
        fn(*args)
    finally:
        dist.destroy_process_group()


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Every rank's gradients replaced by their mean over the ranks, in one all-reduce (a missing gradient
    counts as zero, as in DDP)."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def from_rank0(value: T) -> T:
    """``value`` as rank 0 has it (a picklable object), so that every rank takes the same decision."""
    if not is_distributed():
        return value
    box: List[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_share(items: Sequence[T]) -> List[T]:
    """Every world_size-th item from this rank's: the ranks' shares are disjoint and together complete."""
    if not is_distributed():
        return list(items)
    return list(items)[dist.get_rank()::dist.get_world_size()]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
