"""Memory a run keeps: no growth per forward pass, no second copy of the weights, a
dataset's shards not resident for opening them, a checkpoint's optimizer not read to
sample or export (findings of a memory audit; /proc and ru_maxrss: Linux)."""

import gc
import subprocess
import sys
import tracemalloc
import weakref

import numpy as np
import pytest
import torch

from nano_train import train as train_mod
from nano_train.data import Dataset, prepare_pretrain
from nano_train.train import forward_context_factory, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_forward_pass_context_leaves_nothing_behind():
    """Each forward pass enters the run's context; it used to patch torch.compile's config,
    and every patch left about 200 bytes behind for good (1M micro-batches: 210 MB)."""
    context = forward_context_factory(torch.device("cpu"), "bfloat16", "math")
    for _ in range(200):  # warm-up: whatever torch caches once
        with context():
            pass
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(5000):
        with context():
            pass
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 50_000, f"{grown:,} bytes kept by 5,000 forward contexts"


def test_the_compile_cache_tag_holds_for_the_whole_run_and_no_longer(small_pretrain, tiny_config):
    """The tag that keys torch.compile's caches on the SDPA kernel is set once per run."""
    tags = []

    def progress(record):
        tags.append(torch.compiler.config.cache_key_tag)

    before = torch.compiler.config.cache_key_tag
    train(tiny_config(small_pretrain, attention_backend="math", max_iters=2), progress=progress)
    assert tags and set(tags) == {"nano_train sdpa=math"}, set(tags)
    assert torch.compiler.config.cache_key_tag == before


def _watch_tensors(tensors):
    refs = [weakref.ref(t) for t in tensors]
    return lambda: sum(r() is not None for r in refs)


def test_a_fine_tuning_run_does_not_keep_the_base_models_weights(small_pretrain, tiny_config, tmp_path, monkeypatch):
    assert train(tiny_config(small_pretrain, out_dir=tmp_path / "base", max_iters=2)).step == 2
    load = train_mod.load_base_model
    alive = []

    def watched(path, *args):
        config, sd, tok = load(path, *args)
        alive.append(_watch_tensors(sd.values()))
        return config, sd, tok

    monkeypatch.setattr(train_mod, "load_base_model", watched)
    seen = []

    def progress(record):
        if record["kind"] == "train":
            gc.collect()
            seen.append(alive[0]())

    train(tiny_config(small_pretrain, out_dir=tmp_path / "ft", init_from=tmp_path / "base" / "best.pt", max_iters=2),
          progress=progress)
    assert seen and max(seen) == 0, f"{max(seen)} tensors of the base model alive during training"


def test_a_resumed_run_does_not_keep_the_checkpoints_weights(small_pretrain, tiny_config, tmp_path):
    from nano_train.checkpoint import load

    out = tmp_path / "run"
    train(tiny_config(small_pretrain, out_dir=out, max_iters=2))
    checkpoint = load(out / "latest.pt")  # held by the caller for the whole run, as train.main holds it
    alive = _watch_tensors(checkpoint["model"].values())
    seen = []

    def progress(record):
        if record["kind"] == "train":
            gc.collect()
            seen.append(alive())

    result = train(tiny_config(small_pretrain, out_dir=out, init_from="resume", max_iters=4), checkpoint=checkpoint,
                   progress=progress)
    assert result.step == 4
    assert seen and max(seen) == 0, f"{max(seen)} tensors of the checkpoint's model alive during training"
    assert "model" not in checkpoint and "optimizer" not in checkpoint and checkpoint["step"] == 2


def _resident_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_opening_a_dataset_does_not_make_its_shards_resident(tmp_path, psycho_slice, shared_file):
    """The vocabulary check reads the shards; it must not leave their pages in the map
    training keeps (24 MB of ids here: before, all of them counted as resident)."""
    text = psycho_slice.read_text(encoding="utf-8") + "\n\n"
    corpus = tmp_path / "big.txt"
    corpus.write_text(text * 60, encoding="utf-8")
    out = tmp_path / "data"
    prepare_pretrain([corpus], shared_file("data/tokenizer_4096.json"), out, chunk_tokens=8192, progress=False)
    shard_kb = sum(p.stat().st_size for p in out.glob("train_*.bin")) // 1024
    assert shard_kb > 20_000, shard_kb
    gc.collect()
    before = _resident_file_kb()
    ds = Dataset(out)
    grown = _resident_file_kb() - before
    assert grown < shard_kb // 4, f"opening the dataset made {grown:,} kB resident (shards: {shard_kb:,} kB)"
    assert ds.splits["train"]  # and it is open, checked and mapped


def test_a_damaged_shard_is_still_found_past_the_first_piece(tmp_path, small_pretrain, monkeypatch):
    """The check reads the shards in pieces (CHECK_PIECE values, made small here); an id
    out of the vocabulary in a later piece is found and placed (position counted across
    pieces)."""
    import shutil

    from nano_train import data
    from nano_train.data import DataError

    copy = tmp_path / "data"
    shutil.copytree(small_pretrain, copy)
    shard = sorted(copy.glob("train_*.bin"))[0]
    ids = np.fromfile(shard, dtype=np.uint16)
    monkeypatch.setattr(data, "CHECK_PIECE", 1000)
    at = ids.size - 3
    assert at > 3 * data.CHECK_PIECE  # several pieces before it
    ids[at] = 5000
    ids.tofile(shard)
    with pytest.raises(DataError, match=rf"token id 5000 at position {at:,} is outside the vocabulary"):
        Dataset(copy)


MEASURE = """
import sys
from nano_train.convert import load_model
def peak_kb():  # this process's own (ru_maxrss may carry the parent's peak over an exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
before = peak_kb()
load_model(sys.argv[1])
print(peak_kb() - before)
"""


def test_loading_a_checkpoint_does_not_read_its_optimizer_state(tmp_path, small_pretrain, tiny_config):
    """sample -m CKPT.pt and export read the model from a checkpoint mapped, not read:
    the optimizer's moments (twice the weights, here padded to 96 MB) are never touched."""
    out = tmp_path / "run"
    train(tiny_config(small_pretrain, out_dir=out, max_iters=2))
    ck = torch.load(out / "latest.pt", weights_only=True)
    ck["optimizer"]["padding"] = torch.ones(24 << 20)  # 96 MB that a full read brings into memory
    big = tmp_path / "big.pt"
    torch.save(ck, big)
    grown_kb = int(subprocess.run([sys.executable, "-c", MEASURE, str(big)], capture_output=True, text=True,
                                  check=True).stdout)
    assert grown_kb < 48_000, f"loading the model took {grown_kb:,} kB more peak memory"


def test_a_checkpoint_replaced_while_it_is_loaded_gives_one_files_weights(tmp_path, small_pretrain, tiny_config,
                                                                         monkeypatch):
    """torch.load(mmap=True) opens the path twice (directory, then map); a training run that
    renames a new latest.pt over it between the two paired one file's offsets with the
    other's bytes: garbage weights, finite, no error. Now the load is of one file."""
    import os
    import shutil

    from nano_train import convert

    for name, layers in (("a", 1), ("b", 2)):  # two layouts: b's bytes at a's offsets are no weights at all
        train(tiny_config(small_pretrain, out_dir=tmp_path / name, max_iters=2, n_layer=layers))
    path = tmp_path / "latest.pt"
    shutil.copy(tmp_path / "a" / "latest.pt", path)
    shutil.copy(tmp_path / "b" / "latest.pt", tmp_path / "new.pt")
    real_getsize = os.path.getsize

    def getsize(p):  # torch's map step asks the size of the path: the rename lands just then
        if str(p).endswith("latest.pt") and (tmp_path / "new.pt").exists():
            os.replace(tmp_path / "new.pt", path)
        return real_getsize(p)

    monkeypatch.setattr(os.path, "getsize", getsize)
    got = convert.load_checkpoint_model(path)[0].state_dict()
    assert not (tmp_path / "new.pt").exists()  # the rename came during the load (else this tests nothing)
    wants = [torch.load(tmp_path / name / "latest.pt", weights_only=True)["model"] for name in ("a", "b")]
    matches = [got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want) for want in wants]
    assert any(matches), "the weights are neither file's"
