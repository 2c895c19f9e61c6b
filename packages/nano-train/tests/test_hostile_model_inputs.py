"""Hostile or broken input to sample, export, plot and the model loaders: each is one
`error: ...` line naming the file or option, never a traceback, a hang, a silently
ignored argument or a file written where none was asked for."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nano_train import export as export_cmd
from nano_train import plot as plot_cmd
from nano_train import sample as sample_cmd
from nano_train.convert import ConvertError, export_bin, export_lora, load_bin, load_lora_bin, load_model
from nano_train.lora import attach_lora, detach_lora

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def files(tmp_path, nano80, tiny, save_ckpt) -> dict[str, Path]:
    """A checkpoint, a LoRA checkpoint, a model file and a LoRA file of a tiny model."""
    m = tiny()
    out = {"ckpt": save_ckpt(tmp_path / "c.pt", m, nano80), "base": tmp_path / "base.bin",
           "lora_bin": tmp_path / "lora.bin"}
    export_bin(m, out["base"], tokenizer=nano80)
    attach_lora(m, 2, 2)
    export_lora(m, out["lora_bin"])
    out["lora_ckpt"] = save_ckpt(tmp_path / "lora.pt", m, nano80, lora={"rank": 2, "alpha": 2, "dropout": 0.0})
    (tmp_path / "empty.pt").write_bytes(b"")
    out["empty"] = tmp_path / "empty.pt"
    return out


def run(cmd, argv, files, capsys):
    rc = cmd.main([str(a).format(**files) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(rc, err, text, status=1) -> bool:
    return rc == status and err.startswith("error: ") and err.count("\n") == 1 and text in err


# ---------------------------------------------------------------------------
# sample and export: options and paths


SAMPLE = {
    # an empty path (an unset shell variable) read as "." or, for -l and --tokenizer, as not given at all
    "empty -m": (["-m", ""], "error: -m: the path is empty"),
    "empty -l": (["-m", "{base}", "-l", ""], "error: -l: the path is empty"),
    "empty --tokenizer": (["-m", "{base}", "--tokenizer", ""], "error: --tokenizer: the path is empty"),
    # an empty stop string was dropped without a word
    "empty --stop": (["-m", "{base}", "--stop", ""], "error: --stop: stop string '' is empty", 2),  # a usage error
    # the error named no file
    "LoRA on a LoRA checkpoint": (["-m", "{lora_ckpt}", "-l", "{lora_bin}"],
                                  "error: {lora_bin}: cannot attach this LoRA: the model already has LoRA"),
}


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_sample_refuses(files, capsys, name):
    argv, msg, *status = SAMPLE[name]
    rc, out, err = run(sample_cmd, argv + ["-p", "ab", "-n", "2"], files, capsys)
    assert out == "" and one_error_line(rc, err, msg.format(**files), *status), err


EXPORT = {
    # --lora-out "" exported the merged weights, as if --lora-out had not been given
    "empty --lora-out": (["--ckpt", "{lora_ckpt}", "--out", "{dir}/out.bin", "--lora-out", ""],
                         "error: --lora-out: the path is empty"),
    "empty --out": (["--ckpt", "{ckpt}", "--out", ""], "error: --out: the path is empty"),  # was ". is a directory"
    "empty --ckpt": (["--ckpt", "", "--out", "{dir}/out.bin"], "error: --ckpt: the path is empty"),
    "empty checkpoint file": (["--ckpt", "{empty}", "--out", "{dir}/out.bin"],  # was "(EOFError: )"
                              "error: {empty}: not a checkpoint: the file is empty"),
}


@pytest.mark.parametrize("name", sorted(EXPORT))
def test_export_refuses(files, tmp_path, capsys, name):
    argv, msg = EXPORT[name]
    files = {**files, "dir": tmp_path}
    rc, out, err = run(export_cmd, argv, files, capsys)
    assert out == "" and one_error_line(rc, err, msg.format(**files)), err
    assert not (tmp_path / "out.bin").exists()


# ---------------------------------------------------------------------------
# Checkpoints whose weights are not what a model holds


def _weight(ck):
    return ck["model"]["layers.0.w1.weight"]


BAD_WEIGHTS = {
    # loaded silently, the values cast (bool: 0 and 1)
    "integer": (lambda ck: ck["model"].update({"layers.0.w1.weight": _weight(ck).to(torch.int64)}),
                "not a dense floating-point tensor with data: layers.0.w1.weight (torch.int64)"),
    "bool": (lambda ck: ck["model"].update({"layers.0.w1.weight": _weight(ck) > 0}),
             "layers.0.w1.weight (torch.bool)"),
    "complex": (lambda ck: ck["model"].update({"layers.0.w1.weight": _weight(ck).to(torch.complex64)}),
                "layers.0.w1.weight (torch.complex64)"),
    # tracebacks
    "sparse": (lambda ck: ck["model"].update({"layers.0.w1.weight": _weight(ck).to_sparse()}),
               "layers.0.w1.weight (torch.float32, torch.sparse_coo)"),
    "meta": (lambda ck: ck["model"].update({"layers.0.w1.weight": torch.empty(_weight(ck).shape, device="meta")}),
             "layers.0.w1.weight (torch.float32, meta)"),
    "integer key": (lambda ck: ck["model"].update({5: torch.zeros(1)}), "(unexpected: 5)"),
    # a message of two lines
    "key with a line break": (lambda ck: ck["model"].update({"layers.0\nw1": torch.zeros(1)}),
                              "(unexpected: 'layers.0\\nw1')"),
}


@pytest.mark.parametrize("command", ["sample", "export"])
@pytest.mark.parametrize("name", sorted(BAD_WEIGHTS))
def test_weights_that_are_not_a_models_are_one_line(files, tmp_path, capsys, command, name):
    change, msg = BAD_WEIGHTS[name]
    ck = torch.load(files["ckpt"], weights_only=True)
    change(ck)
    torch.save(ck, files["ckpt"])
    if command == "sample":
        rc, out, err = run(sample_cmd, ["-m", "{ckpt}", "-p", "ab", "-n", "2"], files, capsys)
    else:
        rc, out, err = run(export_cmd, ["--ckpt", "{ckpt}", "--out", tmp_path / "out.bin"], files, capsys)
        assert not (tmp_path / "out.bin").exists()
    assert out == "" and one_error_line(rc, err, f"error: {files['ckpt']}: the weights do not fit"), err
    assert msg in err, err


# ---------------------------------------------------------------------------
# A FIFO: opening it waited for a writer that never came


@pytest.mark.parametrize("how", ["sample -m", "load_checkpoint_model"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, how):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    if how == "sample -m":
        argv = ["-m", "nano_train.sample", "-m", str(fifo), "-p", "ab", "--threads", "1"]
    else:
        argv = ["-c", "import sys; from nano_train.convert import load_checkpoint_model as load\n"
                      "try: load(sys.argv[1])\nexcept ValueError as e: sys.exit(f'error: {e}')", str(fifo)]
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    what = "a model file or checkpoint" if how == "sample -m" else "a checkpoint file"
    assert one_error_line(p.returncode, p.stderr, f"error: {fifo}: is a FIFO (a pipe), not {what}"), p.stderr


# ---------------------------------------------------------------------------
# plot


@pytest.mark.parametrize("argv, msg", [
    (["log.jsonl", "-o", ""], "error: -o: the path is empty"),  # was: loss.png written beside the log
    ([""], "error: a log path is empty"),  # was: the log.jsonl of the current folder plotted
])
def test_plot_refuses_an_empty_path(tmp_path, monkeypatch, argv, msg):
    (tmp_path / "log.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        plot_cmd.main(argv)
    assert e.value.code == msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


# ---------------------------------------------------------------------------
# Byte-level damage: a clean error of the documented type, or a load (a guard: no
# change of behaviour; these pass on the code before this file too)


def damaged(data: bytes, rng: random.Random, n_cuts: int, n_flips: int):
    """Copies of data cut at n_cuts offsets (the first 300 bytes, where the header and
    vocabulary start, all of them) and n_flips copies with 1 to 4 bytes set at random,
    most of them in the first kilobyte."""
    cuts = sorted(set(range(0, min(300, len(data)))) | {rng.randrange(len(data)) for _ in range(n_cuts)})
    for cut in cuts:
        yield data[:cut]
    for _ in range(n_flips):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(1024, len(b))) if rng.random() < 0.7 else rng.randrange(len(b))] = rng.randrange(256)
        yield bytes(b)


def expect_clean(load, path: Path, cases) -> int:
    loaded = 0
    for data in cases:
        path.write_bytes(data)
        try:
            load(path)
            loaded += 1
        except ConvertError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
    return loaded


@pytest.mark.parametrize("name", ["sort6_f32.bin", "psycho_230k_1214_q80.bin"])
def test_damaged_fixtures_load_or_fail_cleanly(shared_file, tmp_path, name):
    data = shared_file(f"fixtures/{name}").read_bytes()
    cases = damaged(data, random.Random(20261127), n_cuts=200, n_flips=400)
    assert expect_clean(load_bin, tmp_path / name, cases) > 0  # flips in the weights load


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on a damaged header byte
def test_damaged_lora_files_and_checkpoints_load_or_fail_cleanly(files, tmp_path):
    rng = random.Random(7)
    base, _ = load_bin(files["base"])

    def attach(path):
        try:
            load_lora_bin(base, path)
        finally:
            detach_lora(base)

    lora = files["lora_bin"].read_bytes()
    expect_clean(attach, tmp_path / "damaged_lora.bin", damaged(lora, rng, n_cuts=100, n_flips=300))
    ckpt = files["lora_ckpt"].read_bytes()
    expect_clean(load_model, tmp_path / "damaged.pt", damaged(ckpt, rng, n_cuts=100, n_flips=300))
