"""What a newcomer walking through the README got wrong, or was told unhelpfully: each row
is a case an audit of the documented workflow found (the old behaviour in its comment)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from nano_train import data, export, prepare, report, sample
from nano_train.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_python_m_nano_train_lora_trains_adapters():
    # (was: nothing at all, exit status 0: the module of the adapters had no __main__)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "nano_train.lora", "--max_iters=1"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2 and error_line(done.stderr).startswith("error: no dataset given"), done.stderr


@pytest.mark.parametrize("argv, want", [
    # (was: "DIR: cannot read config: Is a directory": the folder exists, so it was taken for the config)
    (["--dataset", "{dir}"], "error: '--dataset {dir}': settings take --key=value; write '--dataset={dir}'"),
    (["--init-from", "{dir}"], "error: '--init-from {dir}': settings take --key=value; write '--init-from={dir}'"),
    # (was: "expected --key=value or --section.key=value")
    (["--compile"], "error: --compile: settings take --key=value; write --compile=true (or --compile=false)"),
    # (was: "max_iters=5: cannot read config: No such file or directory")
    (["max_iters=5"], "error: 'max_iters=5': settings take --key=value; write '--max_iters=5'"),
    (["-max_iters=5"], "error: '-max_iters=5': settings take --key=value; write '--max_iters=5'"),
])
def test_a_setting_in_another_form_gets_the_form_to_write(tmp_path, capsys, argv, want):
    assert main("pretrain", [a.format(dir=tmp_path) for a in argv]) == 2
    assert error_line(capsys.readouterr().err) == want.format(dir=tmp_path)


def test_a_run_stopped_before_its_first_checkpoint_says_to_start_again(tmp_path, small_pretrain, tiny_args,
                                                                       monkeypatch, capsys):
    """A second Ctrl-C before any checkpoint: the old advice (resume) led to "latest.pt does
    not exist", and starting again to "already holds a run: continue it with resume"."""
    out = tmp_path / "run"
    batches = data.Batcher.next

    def ctrl_c_twice(self):
        os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint after the step ...
        os.kill(os.getpid(), signal.SIGINT)  # ... the second, before it, stops at once
        return batches(self)

    monkeypatch.setattr(data.Batcher, "next", ctrl_c_twice)
    assert main("pretrain", tiny_args(small_pretrain, out, eval_iters=0, max_iters=50)) == 130
    line = error_line(capsys.readouterr().err)
    assert line == "error: interrupted; the run stopped at once (no checkpoint was written: start again with " \
                   "--overwrite=true)", line
    monkeypatch.setattr(data.Batcher, "next", batches)
    assert main("pretrain", tiny_args(small_pretrain, out)) == 2
    assert "holds a run that stopped before writing a checkpoint (log.jsonl): pass --overwrite=true" in \
        error_line(capsys.readouterr().err)
    assert main("pretrain", [f"--out_dir={out}", "--init_from=resume"]) == 2
    assert error_line(capsys.readouterr().err).endswith(
        "stopped before writing a checkpoint; start again with --overwrite=true")
    assert main("pretrain", tiny_args(small_pretrain, out, overwrite=True)) == 0


def test_ctrl_c_while_sampling_after_an_interrupted_run_does_not_call_it_complete(
        tmp_path, small_pretrain, tiny_args, monkeypatch, capsys):
    # (was: "the training is complete", then "done: step 2", for a run stopped at step 2 of 50)
    batches = data.Batcher.next

    def ctrl_c_at_step_2(self):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return batches(self)

    def ctrl_c(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not stop the sampling")

    monkeypatch.setattr(data.Batcher, "next", ctrl_c_at_step_2)
    monkeypatch.setattr(report, "samples", ctrl_c)
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "run", eval_iters=0, max_iters=50)) == 130
    out, err = capsys.readouterr()
    assert "interrupted while sampling for the report: the training stopped at step 2 (latest.pt saved); " \
           "writing the report without samples" in err, err
    assert "stopped: step 2," in out and "done:" not in out, out


def test_sample_refuses_a_vocabulary_other_than_the_models_own(tmp_path, shared_file, capsys):
    # (was: "人人人人..." and exit 0: a vocabulary of the same size with two tokens swapped was used)
    model = shared_file("fixtures/psycho_230k_1214_q80.bin")
    vocab = json.loads(shared_file("data/tokenizer_4096.json").read_text(encoding="utf-8"))
    itos = vocab["itos"]
    itos[100], itos[101] = itos[101], itos[100]
    vocab["stoi"] = {t: i for i, t in enumerate(itos)}
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    assert sample.main(["-m", str(model), "-p", "人的", "-t", "0", "-n", "4", "--tokenizer", str(swapped)]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"error: {swapped}: not the vocabulary {model} carries (another of the same size: its ids would become other "
        "text); leave --tokenizer out, the model's own is used")
    # its own vocabulary, given again, is fine
    same = shared_file("data/tokenizer_4096.json")
    assert sample.main(["-m", str(model), "-p", "人的", "-t", "0", "-n", "4", "--tokenizer", str(same)]) == 0
    with_own = capsys.readouterr().out
    assert sample.main(["-m", str(model), "-p", "人的", "-t", "0", "-n", "4"]) == 0
    assert capsys.readouterr().out == with_own


def test_a_warmup_longer_than_the_run_is_noted_and_the_progress_line_has_an_eta(
        tmp_path, small_pretrain, tiny_args, capsys):
    # (was: silent; the learning rate never reached its peak in a run of 60 steps with warmup 100)
    assert main("pretrain", tiny_args(small_pretrain, tmp_path / "run", warmup_iters=100, max_iters=4)) == 0
    out, err = capsys.readouterr()
    assert "note: optim.warmup_iters 100 >= optim.max_iters 4: the learning rate only warms up (to 1.19e-04 at " \
           "the last step, not optim.learning_rate 0.003) and never decays; lower --warmup_iters" in err, err
    lines = [line for line in out.splitlines() if line.startswith("step ") and "/4 |" in line]
    assert [", eta " in line for line in lines] == [False, True, True, False], lines  # not before a pace is known


def test_prepare_sft_notes_that_it_holds_nothing_out_and_its_help_gives_the_defaults(
        tmp_path, shared_file, capsys):
    # (was: "(train 99, val 0)" and nothing more; `prepare sft --help` had no text for its options)
    assert prepare.main(["sft", "--tokenizer", str(shared_file("data/tokenizer_4096.json")), "--out_dir",
                         str(tmp_path / "d"), "--block_size", "64", "--quiet",
                         str(shared_file("data/sft_self_id.jsonl"))]) == 0
    assert "note: no validation samples (--val_fraction 0 is the default for SFT): a run on this data reports no " \
           "validation loss and writes no best.pt; --val_fraction 0.05 holds some out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.main(["sft", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "share of samples held out (default 0: no validation loss, no best.pt)" in help_text
    assert "skip it (default), truncate it, or stop with an error" in help_text


def test_export_notes_on_stderr_and_a_folder_as_out_gets_a_file_name(tmp_path, nano80, lora_ckpt, capsys):
    # (was: the merge notice on standard output, without "note:"; "--out DIR is a directory")
    ckpt = lora_ckpt(tmp_path, nano80)
    assert export.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "m.bin")]) == 0
    out, err = capsys.readouterr()
    assert "merged" not in out and err.startswith("note: the checkpoint's LoRA adapters are merged into the "
                                                  "exported weights (use --lora-out to keep them separate)"), (out, err)
    (tmp_path / "dir").mkdir()
    assert export.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "dir")]) == 1
    assert error_line(capsys.readouterr().err) == \
        f"error: --out {tmp_path / 'dir'} is a directory; give a file name, e.g. {tmp_path / 'dir' / 'model.bin'}"


def test_a_config_key_written_as_a_section_names_its_section(tmp_path, capsys):
    # (was: "unknown section 'n_layer'; sections are model, run, ...")
    config = tmp_path / "c.json"
    config.write_text('{"n_layer": 2}', encoding="utf-8")
    assert main("pretrain", [str(config)]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"error: {config}: unknown section 'n_layer' (n_layer is a key of section model: write "
        '{"model": {"n_layer": ...}}); sections are model, ')
