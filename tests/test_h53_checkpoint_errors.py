"""A failed checkpoint save as one OSError (FSDP2's sharded save, after the rename, another error); the [train] map."""

from __future__ import annotations

import argparse
import errno
import importlib
import traceback

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from trainer import checkpoint
from trainer.cli import report_user_errors


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(4, 4)
    return model, torch.optim.AdamW(model.parameters())


def test_a_full_disk_in_a_sharded_save_is_one_oserror_and_no_partial_folder(tmp_path, monkeypatch):
    """DCP wraps the rank's error (torch.save's `unexpected pos`, its context the ENOSPC) in a CheckpointException,
    a BaseException: it escaped `except Exception` as a traceback (exit 1, "diverged"), step-N.tmp/ left behind."""
    def full(*args, **kwargs):
        try:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:  # torch.save's writer into a Python stream: the OSError is only its context
                raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 704 vs 598")  # noqa: B904
        except RuntimeError as error:
            raise CheckpointException("write", {0: (error, traceback.extract_tb(error.__traceback__))}) from None

    monkeypatch.setattr(checkpoint.dcp, "save", full)
    with pytest.raises(OSError, match="No space left on device; checkpoint not written") as e:
        checkpoint.save(tmp_path, 3, *_model(), {}, sharded=True)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "step-00000003")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_after_the_rename_says_the_checkpoint_was_written_but_not_marked_latest(tmp_path, monkeypatch):
    """`latest` failing to update (a full disk) left a complete step-N/ that the message called "not written"."""
    checkpoint.save(tmp_path, 5, *_model(), {})

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    with pytest.raises(OSError) as e:
        checkpoint.save(tmp_path, 7, *_model(), {})
    assert e.value.filename == str(tmp_path / "step-00000007")
    assert e.value.strerror == ("No space left on device; checkpoint written, but not marked latest: free space, "
                                "then run the same command again to resume from step-00000005")
    assert (tmp_path / "step-00000007" / "meta.json").is_file()
    assert checkpoint.find_latest(tmp_path) == tmp_path / "step-00000005"


def test_an_error_other_than_a_full_disk_names_the_path_that_failed(tmp_path):
    """A checkpoints folder that cannot be made (a file in its path): the error named step-N/, which is not where
    it failed."""
    (tmp_path / "run").write_text("")
    root = tmp_path / "run" / "checkpoints"
    with pytest.raises(OSError) as e:
        checkpoint.save(root, 2, *_model(), {})
    assert e.value.errno == errno.ENOTDIR
    assert e.value.filename == str(root / "step-00000002.tmp" / "rng"), e.value.filename
    assert e.value.strerror == ("Not a directory; checkpoint step-00000002 not written (its partial "
                                "step-00000002.tmp/ removed): fix that, then run the same command again to resume "
                                "(no earlier checkpoint: it starts over)")


def test_a_missing_submodule_of_an_installed_package_is_not_the_train_extra(capsys):
    """`torch._C` or a renamed private module of an installed torch: "pip install textbookgen[train]" would answer
    "already satisfied"; the traceback says what is broken. The bare package name still maps (a base install)."""
    def broken(args: argparse.Namespace) -> int:
        importlib.import_module("torch.nope_submodule")
        return 0

    with pytest.raises(ModuleNotFoundError, match="torch.nope_submodule"):
        report_user_errors(broken, argparse.Namespace(command="train"))
    assert capsys.readouterr().err == ""
