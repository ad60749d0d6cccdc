"""A resume under another data mix (data.datasets weights) goes on in each dataset from the windows it drew.

Sample g's window in its dataset was `b * quota + ordinal` of that dataset's epoch permutation, counted from
sample 0 under the *current* quotas: after 0.5/0.5 -> 0.2/0.8 the first dataset went back to windows it had
trained on, and the second jumped over windows it never saw (a mix changed for annealing replayed data).
"""

from __future__ import annotations

import pytest
from trainer_testlib import one_torch_thread, tiny_overrides, wiki_and_books

from trainer import checkpoint, distributed
from trainer.config import load_config
from trainer.train import Trainer, train

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_and_books(tmp_path_factory.mktemp("mixresume"), shared_data)


def mix(corpus, run, wiki: float, steps: int, **extra):
    sources = [(corpus["wiki"], wiki), (corpus["books"], 1 - wiki)]
    return load_config(None, tiny_overrides(run, corpus["root"] / "cache", corpus["tok"], sources,
                                            **{"train.max_steps": steps, "data.mix_block": 10, **extra}))


def windows(trainer: Trainer, first: int, last: int) -> list[tuple[int, int]]:
    """(dataset, start token) of the samples trainer reads from sample `first` to `last` (excluded)."""
    return [trainer.sampler.locate(g) for g in range(first, last)]


def test_a_changed_mix_reads_no_window_twice_and_skips_none(corpus, tmp_path):
    run = tmp_path / "run"
    train(mix(corpus, run, 0.5, 5))  # 40 samples: 20 windows of each
    before = Trainer(mix(corpus, run, 0.5, 10), distributed.setup("cpu"), False)
    seen = windows(before, 0, 40)
    annealed = Trainer(mix(corpus, run, 0.2, 10), distributed.setup("cpu"), False)
    after = windows(annealed, 40, 80)
    assert not set(seen) & set(after)  # was: all 8 wiki windows after the change had been read before
    assert annealed.sampler.drawn(80) == [20 + 8, 20 + 32]  # each goes on from its 20 (books: from 32)
    for d in (0, 1):  # and in the order of an unchanged run: the dataset's next windows, none jumped over
        ahead = [w for w in windows(before, 40, 200) if w[0] == d]
        assert [w for w in after if w[0] == d] == ahead[:len([w for w in after if w[0] == d])]


def test_a_run_resumed_again_under_the_new_mix_equals_one_that_went_on(corpus, tmp_path):
    """The point where the mix changed is kept in each checkpoint: a later resume under the same mix reads the
    samples of a run that never stopped, bit for bit."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        train(mix(corpus, run, 0.5, 3))
    full = train(mix(corpus, straight, 0.2, 8)).losses
    first = train(mix(corpus, stopped, 0.2, 5)).losses
    second = train(mix(corpus, stopped, 0.2, 8)).losses
    assert {**first, **second} == full
    assert checkpoint.read_meta(stopped)["mix"] == checkpoint.read_meta(straight)["mix"]


def test_the_header_gives_each_datasets_share_of_the_samples(corpus, tmp_path):
    """Weights are relative: 7 and 0.3 (0.7 mistyped) train 96% on the first dataset, which the start-up lines
    now say (they gave only tokens drawn, which nobody reads as a share)."""
    sources = [(corpus["wiki"], 7.0), (corpus["books"], 0.3)]
    cfg = load_config(None, tiny_overrides(tmp_path / "run", corpus["root"] / "cache", corpus["tok"], sources))
    lines = Trainer(cfg, distributed.setup("cpu"), False).sampler.epoch_lines(80)
    assert lines[0].startswith("data wiki: 95.9% of the samples, draws ")
    assert lines[1].startswith("data books: 4.1% of the samples, draws ")
