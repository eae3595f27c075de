"""Data parallelism under ``torchrun``: this process's place in the group, and the few collectives
the trainer and the scorer need beyond what Betty's ``distributed`` strategy does.

Betty does the data-parallel training itself: with ``EngineConfig(strategy="distributed")`` each
problem's module is wrapped in ``DistributedDataParallel`` and its gradients are averaged over
the ranks in the backward pass. What this module adds:

- ``World``: rank, world size, device and backend, read from the variables torchrun sets
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); ``join`` starts the process group (gloo on the
  CPU, NCCL on CUDA unless ``--backend gloo``). A run without torchrun is a world of one.
- small agreements every rank must reach together: whether a step is skipped, whether a
  signal arrived, whether setup failed somewhere (``any_true``, ``max_int``);
- ``gather_objects``: per-rank Python values (statistics, scored questions) on every rank;
  ``average_``: tensors averaged over the ranks (the meta gradient before darts); ``barrier``;
- ``leave``: closing the group, together or alone; ``quiet_unless_main``: the output of the
  ranks other than 0 kept to their own errors.

Every function is a no-op, or the identity, in a world of one, so a single-process run never
touches ``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How a process that stops because another one failed says so (its own output hides such lines).
PEER_FAILED = "another process of this torchrun failed"


class DistributedSetupError(RuntimeError):
    """The process group cannot start as asked (no torchrun variables, a missing backend): one line."""


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, on ``device``."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: no process group (a world of one without torchrun)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); readable before any setup."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def quiet_unless_main(rank: int, run, echo=lambda line: True) -> int:
    """``run()``'s exit code; on a rank other than 0 its output is swallowed (it would repeat rank
    0's) except the last ``error:`` line of a failed run, printed as ``[rank N] error: ...`` when
    ``echo(line)`` says it is this rank's own."""
    if rank == 0:
        return run()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = run()
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    if code != 0 and lines and echo(lines[-1]):
        print(f"[rank {rank}] {lines[-1]}", file=sys.stderr)
    return code


def device_for(device: str, local_rank: int) -> str:
    """The device of the process ``local_rank`` on its node: the CPU, a CUDA device named with its
    index, or for plain ``cuda`` the device ``local_rank % device_count`` (Betty's rule; more
    ranks than GPUs share them, which only the gloo backend allows)."""
    if not device.startswith("cuda"):
        return "cpu"
    if ":" in device:
        return device
    count = torch.cuda.device_count()
    if count == 0:
        return device  # the trainer reports the missing device in its own words
    return f"cuda:{local_rank % count}"


def join(strategy: str, device: str, backend: str | None = None, timeout_s: float = 1800) -> World:
    """This process's ``World`` for ``--strategy`` and ``--device``; with ``distributed``, joins the
    process group torchrun set up (gloo on the CPU; NCCL on CUDA unless ``backend`` says gloo)."""
    if strategy != "distributed":
        return World(device=device)
    if not launched_by_torchrun():
        raise DistributedSetupError(
            "--strategy distributed runs under torchrun, one process per GPU: "
            "torchrun --standalone --nproc_per_node N train.py --strategy distributed ...")
    size, rank, local_rank = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    device = device_for(device, local_rank)
    cpu = device == "cpu"
    backend = backend or ("gloo" if cpu else "nccl")
    if cpu and backend == "nccl":
        raise DistributedSetupError("--backend nccl needs CUDA devices; on the CPU use gloo (the default there)")
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        raise DistributedSetupError(f"this torch build has no {backend} backend; pass --backend gloo")
    if not cpu:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return World(size=size, rank=rank, local_rank=local_rank, device=device, backend=backend)


def leave(wait: bool = True) -> None:
    """Close the process group, if there is one (idempotent). ``wait``: first wait until every
    rank gets here. Closing while another rank still exchanges with this one can abort the
    process (gloo), so ranks that stop together wait; a rank that stops alone does not."""
    if dist.is_available() and dist.is_initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _flag_device(world: World) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes either
    return torch.device(world.device) if world.backend == "nccl" else torch.device("cpu")


def any_true(world: World, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any of them."""
    return max_int(world, 1 if flag else 0) > 0


def max_int(world: World, value: int) -> int:
    """The largest ``value`` over the ranks, on every rank."""
    if world.size == 1 or not world.distributed:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_flag_device(world))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(world: World, value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (picklable values)."""
    if world.size == 1 or not world.distributed:
        return [value]
    out = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def barrier(world: World) -> None:
    """Wait until every rank gets here (rank 0 writing a checkpoint while the others wait)."""
    if world.size > 1 and world.distributed:
        dist.barrier()


def average_(world: World, tensors: list[torch.Tensor], bucket_elements: int = 2**26) -> None:
    """Replace each tensor by its mean over the ranks, in place: the tensors of one dtype are
    flattened into buckets of about ``bucket_elements`` and each bucket is all-reduced once."""
    if world.size == 1 or not world.distributed:
        return
    buckets: dict[torch.dtype, list[list[torch.Tensor]]] = {}
    for t in tensors:
        groups = buckets.setdefault(t.dtype, [[]])
        if groups[-1] and sum(x.numel() for x in groups[-1]) + t.numel() > bucket_elements:
            groups.append([])
        groups[-1].append(t)
    for groups in buckets.values():
        for group in groups:
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world.size)
            offset = 0
            for t in group:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()
