"""Parallelism, kept out of the model (torchtitan's split): process groups, DDP or FSDP2, compile.

Launch many processes with torchrun; one process needs nothing:

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc_per_node 8 -m trainer train --config phi-1.5

NVLink multicast (NVLS) stays off: the lent GPU machines do not support it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def label(self) -> str:
        """"rank R of W: " on several processes, else "": how an error one rank met begins."""
        return f"rank {self.rank} of {self.world_size}: " if self.enabled else ""


def pick_device(pref: str, local_rank: int = 0) -> str:
    """`pref` checked to exist here; "auto": this rank's GPU if there is one, else the CPU."""
    if pref == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise ValueError(f"device {pref!r}: not a device name (auto | cpu | cuda | cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {pref!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {pref!r}: only {torch.cuda.device_count()} GPU(s) here")
    return pref


def setup(device: str = "auto", backend: str = "auto", timeout_minutes: float | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), pick the device.
    `timeout_minutes`: the group's (distributed.timeout_minutes); None keeps torch's default."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.startswith("cuda"):
        if dev == "cuda":
            dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        if backend == "auto":
            backend = "nccl" if dev.startswith("cuda") else "gloo"
        _join(backend, timeout_minutes, device_id=torch.device(dev) if backend == "nccl" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, dev)


_timeout: timedelta | None = None  # the timeout of the process group `_join` made, None while there is none
_agreement_group: dist.ProcessGroup | None = None  # gloo, of every rank: `shared_outcome`'s collectives (`_join`)


def _join(backend: str, timeout_minutes: float | None, **kwargs: object) -> None:
    """`dist.init_process_group` under `timeout_minutes` (None: torch's default, 10 minutes under NCCL, 30 under
    gloo), kept for `shared_outcome` to say that a failed wait outlasted it; on several processes also a gloo group
    of every rank under the same timeout, where `shared_outcome` waits. Under NCCL a wait past the timeout (rank 0
    alone reading train.init_from or writing a checkpoint) ended in the watchdog's SIGABRT, which names no setting;
    on gloo it is a RuntimeError on the waiting rank, which `_any_rank_in_time` names distributed.timeout_minutes
    in (torch's monitored_barrier and torchtitan's checkpoint agreements use a gloo side group alike). Every rank
    joins it here, in the same order; `teardown`'s destroy_process_group ends it with the main group."""
    global _timeout, _agreement_group
    timeout = None if timeout_minutes is None else timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend, timeout=timeout, **kwargs)
    _timeout = timeout
    if dist.is_initialized() and dist.get_world_size() > 1:
        _agreement_group = dist.new_group(backend="gloo", timeout=timeout)


def teardown() -> None:
    """Leave the process group once every DDP model is gone (cycles collected first). A DDP model outliving it
    frees the group's last reference from its Reducer, whose destructor holds the GIL while it joins gloo's worker
    threads, one of which may wait for the GIL to free a finished collective's tensors: a deadlock (pytorch#56297).
    Freed while the group is still registered, the Reducer only drops a reference; the group's own destructor, run
    here, releases the GIL."""
    global _timeout, _agreement_group
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()  # every group: the agreement group too
    _timeout, _agreement_group = None, None


def choose_strategy(strategy: str, info: DistInfo, timeout_minutes: float | None = None) -> str:
    """"none" on one process; "ddp" by default on many (a 1.4B model fits every GPU), "fsdp" if asked (joining a
    group of one under `timeout_minutes` where there is none)."""
    if strategy == "auto":
        return "ddp" if info.enabled else "none"
    if strategy == "fsdp" and not dist.is_initialized():  # FSDP2 needs a process group, even of one
        backend = "nccl" if info.device.startswith("cuda") else "gloo"
        _join(backend, timeout_minutes, store=dist.HashStore(), rank=0, world_size=1)
    if strategy == "ddp" and not info.enabled:
        return "none"
    return strategy


def parallelize(model: nn.Module, info: DistInfo, strategy: str, compile: bool = False,
                param_dtype: torch.dtype | None = None, reshard_after_forward: bool = False) -> nn.Module:
    """Compile each block and the loss (torchtitan order: compile, then shard), then wrap for DDP or FSDP2.

    Compiling per block in place keeps parameter names (checkpoints stay HF-named) and lets DDP
    and FSDP overlap each block's gradient communication with the backward of the blocks below.
    """
    blocks = model.model.layers
    if compile:
        for block in blocks:
            block.compile()
        model.loss = torch.compile(model.loss)  # the lm_head + cross-entropy, apart from the blocks
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
        kw = {"mp_policy": mp} if mp else {}
        for block in blocks:
            fully_shard(block, reshard_after_forward=reshard_after_forward, **kw)
        fully_shard(model, reshard_after_forward=reshard_after_forward, **kw)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(info.device).index] if info.device.startswith("cuda") else None
        return DDP(model, device_ids=ids, gradient_as_bucket_view=True, broadcast_buffers=False)  # rope table: derived
    return model


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce/reduce-scatter on all but the last accumulation micro-step."""
    if hasattr(model, "no_sync") and not sync:  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    yield


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    _refuse_inside_agreement("all_reduce_sum")
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def barrier() -> None:
    _refuse_inside_agreement("barrier")
    if dist.is_initialized():
        dist.barrier()


T = TypeVar("T")

_agreement = threading.local()  # .depth: how many `shared_outcome` fns this thread is running, one inside another


def agreeing() -> bool:
    """Whether a `shared_outcome`'s fn (or `from_rank_0`'s) is running on this rank now. No collective may run
    then: the other ranks may have failed before reaching it, and be in the outer call's own collectives, which
    it would pair with (a hang, or another rank's error raised in the wrong place). Work that would run one (DCP's
    load) runs on this process alone instead; the outer call agrees on the outcome. One exception: a checkpoint's
    `dcp.save` is the first thing its fn does on every rank, and DCP shares each rank's failure with all."""
    return getattr(_agreement, "depth", 0) > 0


@contextlib.contextmanager
def _agreeing() -> Iterator[None]:
    """While a `shared_outcome`'s fn runs here: `agreeing` is True (by a depth, restored however the fn ends)."""
    _agreement.depth = getattr(_agreement, "depth", 0) + 1
    try:
        yield
    finally:
        _agreement.depth -= 1


def _refuse_inside_agreement(name: str) -> None:
    """A RuntimeError (a bug, which the outer agreement raises on every rank) for collective `name` called inside
    a `shared_outcome`'s fn (`agreeing`): on one process too, where it would not hang, so that tests find it."""
    if agreeing():
        raise RuntimeError(f"distributed.{name} inside a shared_outcome's fn: its collective would pair with another "
                           f"rank's agreement (a hang); call it before or after")


def shared_outcome(fn: Callable[[], T], every: bool = False) -> T | None:
    """`fn()` on rank 0 (on every rank with `every`; None elsewhere), its failure raised on every rank: a check or a
    write that only rank 0 does (or that fails on one rank only) otherwise leaves the others waiting in the next
    collective (a hang until the timeout), or ending as if the run had succeeded. A KeyboardInterrupt (a second
    Ctrl-C) or SystemExit in `fn` is sent alike, so every rank stops. The error, marked `every_rank` (printed once by
    the CLI), is a failing rank's own, sent to the others (the lowest failing rank's where several fail; each of
    those raises its own). Also a barrier: no rank goes on before the ranks that run `fn` are done. Where none fails,
    one all-reduce of a flag is all it costs (it runs at every training step): the errors are pickled and gathered
    only when one did.

    Called inside another one's fn (`agreeing`), an `every` call runs `fn` and no collective: a rank that failed
    before reaching it is in the outer call's collectives, which the outer call's other ranks reach once their fn
    returns or raises (this call's error raised through it). A rank-0-only call is refused there: without its
    collective it is no barrier, so work ordered by it (rank 0 makes a folder the others write into) would race."""
    runs = every or not dist.is_initialized() or dist.get_rank() == 0
    began = time.monotonic()
    if agreeing():
        if not every:
            _refuse_inside_agreement("shared_outcome (rank 0 alone)")
        return fn()
    result, error = None, None
    if runs:
        try:
            with _agreeing():
                result = fn()
        except BaseException as e:  # any failure must reach the other ranks, which wait in the collective below
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1 and _any_rank_in_time(error, began, time.monotonic()):
        errors: list[BaseException | None] = [None] * dist.get_world_size()
        dist.all_gather_object(errors, _sendable(error), group=_agreement_group)  # pickles on the CPU under gloo
        error = error or next((e for e in errors if e is not None), None)
    if error is not None:
        error.every_rank = True  # type: ignore[attr-defined]
        raise error
    return result


def from_rank_0(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 alone (`shared_outcome`: its failure raised on every rank), its result sent to every rank:
    for what the ranks must agree on but one process should fetch (a Hub download, a file that one node may lack),
    where each rank loading its own could fail on one rank only, the others going on. Refused inside another
    `shared_outcome`'s fn (`agreeing`): its broadcast is a collective, and its result would be missing elsewhere."""
    _refuse_inside_agreement("from_rank_0")
    result = shared_outcome(fn)
    if dist.is_initialized() and dist.get_world_size() > 1:
        sent = [result]
        dist.broadcast_object_list(sent, src=0)
        result = sent[0]
    return result  # type: ignore[return-value]


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and persistent buffers copied in place into `module` on every other rank, one tensor at a
    time (no second copy of the weights): for weights that rank 0 alone read (train.init_from), sent before FSDP2
    shards the module, as its `fully_shard` broadcasts nothing (DDP's constructor does). The module must be built
    alike on every rank (the same tensors, in the same order)."""
    _refuse_inside_agreement("broadcast_module")
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    tensors = {id(t): t for t in module.state_dict(keep_vars=True).values()}  # a tied weight once
    with torch.no_grad():
        for tensor in tensors.values():
            dist.broadcast(tensor.detach(), src=0)


def gathered(value: T) -> list[T]:
    """`value` of every rank, by rank (`[value]` on one process): for what each rank finds on its own node."""
    _refuse_inside_agreement("gathered")
    if dist.is_initialized() and dist.get_world_size() > 1:
        values: list[T | None] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values  # type: ignore[return-value]
    return [value]


def _any_rank_in_time(error: BaseException | None, began: float, waiting: float) -> bool:
    """Whether any rank failed (`_any_rank`; this one where `error`), the collective's failure past the group's
    timeout raised as a TimeoutError naming distributed.timeout_minutes: certain where this rank's own wait (since
    `waiting`) outlasted it; where only its work and wait together did (since `began`), another rank left while it
    worked: it gave up waiting, or died. A rank whose own work failed there raises its `error`: the cause, which
    the others' giving up on it would hide. A GPU's error (`_DEVICE_ERRORS`: out of memory) is raised as it is,
    however late: it is no rank's giving up."""
    try:
        return _any_rank(error is not None)
    except _DEVICE_ERRORS:  # a GPU's failure (out of memory, say) in a collective on it: no rank's giving up
        raise
    except RuntimeError as e:  # torch's DistBackendError and DistNetworkError are RuntimeErrors; gloo's plain ones
        now, limit = time.monotonic(), _timeout.total_seconds() if _timeout is not None else None
        if limit is None or now - began < limit:
            raise
        waited_out = now - waiting >= limit
        if error is not None and not waited_out:
            raise error  # noqa: B904  (torch's error stays as its __context__)
        raise _timed_out(e, limit / 60, waited_out) from e


def _timed_out(e: RuntimeError, minutes: float, waited_out: bool) -> TimeoutError:
    """The error of a collective that failed past the group's timeout: the ranks gave up waiting (`waited_out`),
    or another rank left while this one worked."""
    fix = f"raise it, e.g. --set distributed.timeout_minutes={min(10080, max(60, 2 * round(minutes)))}"
    if waited_out:
        return TimeoutError(
            f"the ranks gave up waiting for one another past the process group's timeout (distributed."
            f"timeout_minutes {minutes:g}): work that one rank does while the others wait (rank 0 downloading or "
            f"reading train.init_from, writing or reading a checkpoint) took longer; {fix}")
    return TimeoutError(
        f"another rank left while this one worked past the process group's timeout (distributed.timeout_minutes "
        f"{minutes:g}): if it gave up waiting for this one, {fix}; else it crashed (see its log). "
        f"torch: {str(e).splitlines()[0]}")


# a GPU's errors, which are RuntimeErrors too: out of memory, and (torch >= 2.8; 2.7's are plain) CUDA errors
_DEVICE_ERRORS: tuple[type[RuntimeError], ...] = (
    (torch.OutOfMemoryError, torch.AcceleratorError) if hasattr(torch, "AcceleratorError") else (torch.OutOfMemoryError,))


def _any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank: one all-reduce of a CPU tensor on the agreement group (`_join`), no GPU
    involved. A group joined without `_join` (tests, or a process group the caller made before `train()`) has
    none: the default group, on the GPU under NCCL (no CPU tensors)."""
    group = _agreement_group
    on_gpu = group is None and dist.get_backend() == "nccl"
    t = torch.tensor([float(flag)], device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
    dist.all_reduce(t, group=group)
    return bool(t.item())


def _sendable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling (to reach the other ranks), else a RuntimeError with its type and text."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # e.g. an exception class whose __init__ takes other arguments than args
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def first_to_report(text: str) -> bool:
    """Whether this process is the first rank of its torchrun to report `text` (an error line or traceback),
    so that ranks failing alike print it once: decided in the store torchrun's agent keeps for its workers,
    which outlives the process group (often torn down before the error reaches the CLI). True outside
    torchrun, or where the agent holds no store (other launchers: every rank prints, as before)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return True
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted group reports its errors again
    key = f"trainer/reported/{attempt}/{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=10))
        return store.add(key, 1) == 1
    except (KeyError, ValueError, RuntimeError):  # no address, or the store is gone: better twice than never
        return True
