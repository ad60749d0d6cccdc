"""Validation loss on held-out data: nanoGPT's `estimate_loss`, on fixed batches and exactly resumable.

Each dataset with a validation set (a published split, or documents held out when it was prepared; see
trainer/data.py) gives fixed windows of seq_len + 1 tokens: as many as `train.eval_tokens` holds, spread
evenly over the set, the same at every evaluation. Ranks take equal slices, padded with ignored rows so that
every rank runs as many forwards as the others (FSDP2 gathers weights in each); each rank sums loss x tokens
per dataset and one all-reduce adds them. The model runs in eval mode under no_grad and the training
autocast, through its own (chunked) loss, with torch's RNG forked around it: an evaluation leaves nothing
behind that training or a resume would see. The mixed `val_loss` weighs each dataset's loss by its mixture
weight, as training samples them (over the datasets that have a validation set).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from trainer import distributed
from trainer.data import TokenStream
from trainer.model import IGNORE_INDEX


def window_starts(length: int, seq_len: int, eval_tokens: int) -> np.ndarray:
    """Starts of the windows (seq_len + 1 tokens) evaluated in a validation stream of `length` tokens: as many
    as `eval_tokens` holds (at least one, at most as many as fit), evenly spaced so that all of it is sampled."""
    fits = (length - 1) // seq_len
    n = min(max(1, eval_tokens // seq_len), fits)
    return np.arange(n, dtype=np.int64) * ((length - 1) // n)


@dataclass(frozen=True)
class ValSet:
    """One dataset's validation windows on this rank, padded to whole micro-batches."""

    name: str
    weight: float
    windows: int
    """Windows over all ranks."""
    inputs: torch.Tensor
    labels: torch.Tensor
    """IGNORE_INDEX on the padding rows."""

    @classmethod
    def build(cls, name: str, weight: float, stream: TokenStream, seq_len: int, eval_tokens: int,
              micro_batch: int, info: distributed.DistInfo) -> ValSet:
        starts = window_starts(len(stream), seq_len, eval_tokens)
        per_rank = -(-len(starts) // info.world_size)
        mine = starts[info.rank * per_rank:(info.rank + 1) * per_rank]
        rows = -(-per_rank // micro_batch) * micro_batch
        tokens = np.zeros((rows, seq_len + 1), dtype=np.int64)
        for i, start in enumerate(mine.tolist()):
            tokens[i] = stream.read(start, seq_len + 1)
        labels = torch.from_numpy(tokens[:, 1:].copy())
        labels[len(mine):] = IGNORE_INDEX
        return cls(name, weight, len(starts), torch.from_numpy(tokens[:, :-1].copy()), labels)

    def batches(self, micro_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.inputs), micro_batch):
            yield self.inputs[i:i + micro_batch], self.labels[i:i + micro_batch]


class Validator:
    """Evaluates a model on every `ValSet`; returns val_loss, val_ppl and val_loss/<dataset>."""

    def __init__(self, sets: list[ValSet], micro_batch: int, device: str):
        self.sets, self.micro_batch, self.device = sets, micro_batch, torch.device(device)

    def __call__(self, model: torch.nn.Module, autocast: AbstractContextManager) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(self.sets), 2, dtype=torch.float64, device=self.device)
        rng_devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng_devices, device_type=self.device.type), torch.no_grad():
                for d, vs in enumerate(self.sets):
                    for x, y in vs.batches(self.micro_batch):
                        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                        with autocast:
                            loss = model(x, labels=y)
                        n = (y != IGNORE_INDEX).sum()
                        # a batch of padding only has a mean over no tokens (NaN without chunking): count it as 0
                        sums[d, 0] += torch.where(n > 0, loss.double() * n, 0.0)
                        sums[d, 1] += n
        finally:
            model.train(was_training)
        sums = distributed.all_reduce_sum(sums).tolist()
        losses = {vs.name: total / count for vs, (total, count) in zip(self.sets, sums, strict=True)}
        mixed = sum(vs.weight * losses[vs.name] for vs in self.sets) / sum(vs.weight for vs in self.sets)
        return {"val_loss": mixed, "val_ppl": math.exp(min(mixed, 700.0)),
                **{f"val_loss/{name}": loss for name, loss in losses.items()}}

