"""Everything DistributedDataParallel in one place: the process group, wrapping, averaging, the final agreement.

Under ``torchrun`` (``WORLD_SIZE > 1``) :class:`DistContext` joins (or creates) the default process group --
``nccl`` when ``device`` says cuda and CUDA exists, else ``gloo`` -- and destroys a group it created on exit.
Outside torchrun it is a single-process context whose helpers do nothing, so a training loop calls them
unconditionally.

What a loop does with it (:func:`trainer.loops.run_loop`): rank ``r`` of ``world`` trains on batches
``r::world`` of each epoch's batch list; DDP averages the gradients of the wrapped model, :meth:`allreduce_grads`
those of parameters outside it (loss / head parameters), :meth:`allreduce_buffers` keeps floating-point buffers
(EMA centres) identical, :meth:`mean_parts` averages the logged losses; only rank 0 writes logs and checkpoints;
at the end :meth:`finalize` broadcasts rank 0's buffers and checks every rank holds the same weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

__all__ = ["DistContext", "dist_env", "state_sha1"]


def dist_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (``(0, 0, 1)`` outside torchrun)."""
    return (int(os.environ.get("RANK", "0") or 0), int(os.environ.get("LOCAL_RANK", "0") or 0),
            int(os.environ.get("WORLD_SIZE", "1") or 1))


def state_sha1(module) -> str:
    """SHA-1 over a module's state dict (sorted keys, names, dtypes, shapes and bytes): equal weights, equal hash."""
    h = hashlib.sha1()
    for k, v in sorted(getattr(module, "module", module).state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()


class DistContext:
    """The process group of a run (a context manager); ``rank``, ``world``, ``main`` (rank 0), ``ddp`` (world > 1).

    Args:
        device: the run's device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``): picks the backend.
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.rank, self.local_rank, self.world = dist_env()
        self._own = False

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> "DistContext":
        if not self.ddp:
            self.rank, self.world = 0, 1
            return self
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            use_cuda = self.device.startswith("cuda") and torch.cuda.is_available()
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self._own = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own:
            import torch.distributed as dist

            if dist.is_initialized():
                if exc[0] is None:  # all ranks leave together: a rank tearing gloo down while another still talks
                    dist.barrier()  # to it aborted the process at exit ("terminate called without an active exception")
                dist.destroy_process_group()
            self._own = False

    # -- training -----------------------------------------------------------------------------------------------
    def wrap(self, module):
        """``module`` in DistributedDataParallel under torchrun, else as it is."""
        if not self.ddp:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def shard(self, items: list) -> list:
        """This rank's share of an epoch's batch list: ``items[rank::world]``."""
        return items[self.rank::self.world]

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def allreduce_grads(self, params: Iterable) -> None:
        """Average the gradients of ``params`` (those DDP does not own) over the ranks; a missing grad counts as 0."""
        if not self.ddp:
            return
        import torch
        import torch.distributed as dist

        for q in params:
            if q.grad is None:
                q.grad = torch.zeros_like(q)
            dist.all_reduce(q.grad)
            q.grad.div_(self.world)

    def allreduce_buffers(self, module) -> None:
        """Average the floating-point buffers of ``module`` (EMA centres) over the ranks so they stay identical."""
        if not self.ddp:
            return
        import torch.distributed as dist

        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.world)

    def mean_parts(self, parts: Mapping[str, Any]) -> dict:
        """Logged loss parts averaged over the ranks (same keys, 0-d float64 tensors); as they are in one process."""
        if not self.ddp:
            return dict(parts)
        import torch
        import torch.distributed as dist

        keys = sorted(parts)
        v = torch.stack([torch.as_tensor(float(parts[k]), dtype=torch.float64) for k in keys])
        dist.all_reduce(v)
        v /= self.world
        return {k: v[i] for i, k in enumerate(keys)}

    def finalize(self, modules: Mapping[str, Any]) -> list[str] | None:
        """End of training under DDP: broadcast rank 0's buffers of ``modules`` (BatchNorm statistics differ by the
        last step's update only; rank 0's are the ones its checkpoints hold), then gather every rank's weight hash
        (:func:`state_sha1` of each module, joined by ``:``).  Returns the hashes (``None`` in one process); a
        disagreement is logged as a warning."""
        if not self.ddp:
            return None
        import torch.distributed as dist

        mods = [getattr(m, "module", m) for m in modules.values() if m is not None]
        for m in mods:
            for b in m.buffers():
                dist.broadcast(b, 0)
        mine = ":".join(state_sha1(m) for m in mods)
        hashes: list = [None] * self.world
        dist.all_gather_object(hashes, mine)
        if len(set(hashes)) != 1:
            log.warning("rank %d: ranks ended with different weights: %s", self.rank, hashes)
        return hashes
