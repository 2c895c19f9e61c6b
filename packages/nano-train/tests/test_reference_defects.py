"""Reference defects 4 and 14 in the training loop, where the other tests left a
gap: a mutation re-introducing the defect there passed them all (test_data.py and
test_resume.py test the split and the restored state themselves)."""

import math

import pytest
import torch

from nano_train.convert import load_checkpoint_model
from nano_train.data import Dataset
from nano_train.metrics import read_log
from nano_train.train import DistInfo, evaluate, forward_context_factory, train


pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("task", ["pretrain", "sft"])
def test_the_logged_validation_loss_is_the_held_out_splits(tmp_path, small_pretrain, self_id_sft, tiny_config, task):
    """Defect 4 in the loop: the validation loss it logs, and chooses best.pt by, is the
    loss of the held-out split, not of the training split (which would pass for it)."""
    data, block_size = (small_pretrain, 32) if task == "pretrain" else (self_id_sft, 64)
    cfg = tiny_config(data, task=task, block_size=block_size, max_iters=2, eval_interval=2, eval_iters=2,
                      sample_tokens=0)
    train(cfg)
    logged = [r["val_loss"] for r in read_log(tmp_path / "run" / "log.jsonl") if r["kind"] == "eval"][-1]
    model, _ = load_checkpoint_model(tmp_path / "run" / "latest.pt")  # the model of that evaluation (step 2)
    ds, cpu = Dataset(data), torch.device("cpu")
    context = forward_context_factory(cpu, "float32", "auto")
    loss = {split: evaluate(model, ds.source(split, block_size), cfg, DistInfo(), cpu, context)
            for split in ("train", "val")}
    assert abs(loss["train"] - loss["val"]) > 1e-3  # the two splits are told apart here
    assert logged == pytest.approx(loss["val"], abs=1e-6), loss


def test_resume_keeps_the_best_validation_loss_of_the_checkpoint(tmp_path, small_pretrain, tiny_config):
    """Defect 14: the best validation loss comes back from latest.pt, not only from best.pt.
    Here best.pt is gone and latest.pt's best (0.5) beats anything the run reaches: the
    resumed run keeps it and writes no best.pt for a worse model."""
    out = tmp_path / "run"
    common = dict(out_dir=out, eval_interval=2, eval_iters=2, sample_tokens=0)
    train(tiny_config(small_pretrain, max_iters=2, **common))
    (out / "best.pt").unlink()
    latest = load(out / "latest.pt")
    assert math.isfinite(latest["best_val_loss"]) and latest["best_val_loss"] > 1.0
    latest["best_val_loss"] = 0.5
    torch.save(latest, out / "latest.pt")
    result = train(tiny_config(small_pretrain, max_iters=4, init_from="resume", **common))
    assert result.best_val_loss == 0.5 and result.val_loss > 0.5
    evals = [r for r in read_log(out / "log.jsonl") if r["kind"] == "eval" and r["step"] > 2]
    assert evals and all(r["best_val_loss"] == 0.5 for r in evals)
    assert load(out / "latest.pt")["best_val_loss"] == 0.5
    assert not (out / "best.pt").exists()
