"""`Trainer._step_batches` takes all of a step's micro-batches before its first forward, so the Loader (as
Trainer.run builds it) must read a whole step ahead while the current one computes: read 2 ahead, the other
accum_steps - 2 were read while the device sat idle (found by review)."""

from __future__ import annotations

import threading

import numpy as np

from trainer.data import BatchPlan, Loader


class CountingSampler:
    """Samples of zeros; counts the samples read, so a test can wait until the loader's thread got to sample g."""

    def __init__(self, seq_len: int):
        self.seq_len, self.read, self.cond = seq_len, 0, threading.Condition()

    def sample(self, g: int) -> np.ndarray:
        with self.cond:
            self.read = max(self.read, g + 1)
            self.cond.notify_all()
        return np.zeros(self.seq_len + 1, dtype=np.int64)


def test_the_loader_reads_the_next_step_whole_while_a_step_computes():
    plan = BatchPlan(32, 2, 1, 0, 0, 0)  # accum 16 micro-batches of 2 samples
    assert plan.accum_steps == 16
    sampler = CountingSampler(8)
    loader = Loader(sampler, plan, 0, "cpu")  # as Trainer.run builds it
    try:
        step0 = [next(loader) for _ in range(plan.accum_steps)]  # _step_batches of step 0; its forwards now run
        assert [s for s, *_ in step0] == [0] * plan.accum_steps
        with sampler.cond:  # meanwhile the thread should read all of step 1 (samples 32..63)
            whole = sampler.cond.wait_for(lambda: sampler.read >= 2 * 32, timeout=10)
        assert whole, f"only {sampler.read - 32} of step 1's 32 samples read ahead while step 0 computes"
    finally:
        loader.close()
