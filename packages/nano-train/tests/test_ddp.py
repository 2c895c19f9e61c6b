"""Real DDP: two CPU processes (torchrun, gloo on 127.0.0.1) against one process
with the same global batch, for pretraining and for SFT (whose ranks hold different
numbers of loss tokens).

Tolerance: losses within 1e-5 absolute and every parameter within 1e-5 absolute
after 4 steps. The two runs see the same rows (rank r takes the r-th slice of
each global micro-batch; pretraining runs 2 micro-batches per rank, so DDP's
no_sync accumulation is exercised) and average the same per-micro-batch gradients; only
the order of float32 additions may differ (all-reduce vs accumulation). On
this CPU the two runs come out bitwise identical (the test prints the maxima).
Both run in float32 (--dtype=float32): on a CPU with native bfloat16, dtype auto
would pick bfloat16 products, whose rounding differs with the rows per product.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from nano_train import checkpoint as ckpt_io
from nano_train.convert import load_checkpoint_model
from nano_train.metrics import read_log


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (torchrun starts its workers in sessions of their
    own, so killing torchrun's process group would not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_tree(proc: subprocess.Popen) -> None:
    """A run past its time: torchrun is asked to stop its workers (SIGTERM), then whatever is
    left of the tree is killed, so no worker outlives the test."""
    tree = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *tree]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(args, cwd, nproc=None, command="nano_train.pretrain", ok=True, launcher=()):
    """command (a module, or a script: a .py file) run as one process or with torchrun (given the
    options launcher); its exit status must be 0 (ok) or not (ok False)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    target = [command] if command.endswith(".py") else ["-m", command]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *launcher, *target, *args]
    else:
        cmd = [sys.executable, *target, *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} still running after 300 s\n{out[-3000:]}{err[-3000:]}", pytrace=False)
    assert (proc.returncode == 0) == ok, out[-3000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def pretrain_args(dataset, accum: int, max_iters: int, eval_interval: int, eval_iters: int) -> list[str]:
    """A 2-layer float32 pretraining run on the CPU with gloo, for one process or several."""
    return [f"--dataset={dataset}", "--n_layer=2", "--n_embd=32", "--n_head=2", "--n_kv_head=2", "--block_size=32",
            "--batch_size=4", f"--gradient_accumulation_steps={accum}", f"--max_iters={max_iters}",
            "--warmup_iters=1", "--learning_rate=1e-3", f"--eval_interval={eval_interval}",
            f"--eval_iters={eval_iters}", "--log_interval=1", "--device=cpu", "--dist_backend=gloo",
            "--dtype=float32", "--sample_tokens=0"]


# pretrain, with each checkpoint write's RANK appended to the file $NANO_WRITERS
RECORD_WRITERS = """
import os, sys
from nano_train import checkpoint
save = checkpoint.save_atomic
def recorded(obj, path):
    with open(os.environ["NANO_WRITERS"], "a") as f:
        f.write(os.environ.get("RANK", "-") + "\\n")
    save(obj, path)
checkpoint.save_atomic = recorded
from nano_train.train import main
sys.exit(main("pretrain"))
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, small_pretrain, monkeypatch):
    common = pretrain_args(small_pretrain, accum=4, max_iters=4, eval_interval=2, eval_iters=3) + ["--peak_flops=1e10"]
    single = run(common + [f"--out_dir={tmp_path / 'one'}"], tmp_path)
    script = tmp_path / "record_writers.py"
    script.write_text(RECORD_WRITERS, encoding="utf-8")
    monkeypatch.setenv("NANO_WRITERS", str(tmp_path / "writers.txt"))
    double = run(common + [f"--out_dir={tmp_path / 'two'}"], tmp_path, nproc=2, command=str(script))
    assert "1 x cpu" in single.stdout and "2 x cpu" in double.stdout
    # 2 ranks x 2 micro-batches each = 1 rank x 4 micro-batches: the same global batch
    assert "(4 x 32 x 2 x 2)" in double.stdout and "(4 x 32 x 4 x 1)" in single.stdout
    # only rank 0 wrote: its checkpoints alone, one start record, one set of progress lines
    writers = (tmp_path / "writers.txt").read_text().split()
    assert writers and set(writers) == {"0"}, writers
    assert double.stdout.count("step      4/4") == 1
    logs = {n: read_log(tmp_path / n / "log.jsonl") for n in ("one", "two")}
    assert sum(r["kind"] == "start" for r in logs["two"]) == 1
    loss = {n: [r["loss"] for r in logs[n] if r["kind"] == "train"] for n in logs}
    val = {n: [r["val_loss"] for r in logs[n] if r["kind"] == "eval"] for n in logs}
    assert len(loss["one"]) == len(loss["two"]) == 4 and len(val["one"]) == 3
    diffs = [abs(a - b) for a, b in zip(loss["one"] + val["one"], loss["two"] + val["two"])]
    print(f"max |loss difference| one vs two processes: {max(diffs):.2e}")
    assert max(diffs) < 1e-5
    one = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "latest.pt", weights_only=True)
    worst = max((one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"])
    print(f"max |parameter difference|: {worst:.2e}")
    assert worst < 1e-5
    assert one["data_state"] == two["data_state"] and one["tokens_seen"] == two["tokens_seen"]
    assert two["rng"]["world_size"] == 2 and len(two["rng"]["ranks"]) == 2
    assert not torch.equal(two["rng"]["ranks"][0]["torch"], two["rng"]["ranks"][1]["torch"])
    assert not list((tmp_path / "two").glob(".*.tmp"))
    # the log and the report count every rank's tokens, and MFU divides by both ranks' peak
    flops = load_checkpoint_model(tmp_path / "two" / "latest.pt")[0].flops_per_token(32)
    for name, world in (("one", 1), ("two", 2)):
        trains = [r for r in logs[name] if r["kind"] == "train"]
        assert [r["tokens_seen"] for r in trains] == [512, 1024, 1536, 2048]
        assert all(r["mfu"] == pytest.approx(flops * r["tokens_per_s"] / (1e10 * world)) for r in trains)
        report = (tmp_path / name / "report.md").read_text(encoding="utf-8")
        assert "| tokens seen | 2,048 |" in report and f"on {world} x cpu (float32)" in report


def rank_logs(tmp_path) -> dict[str, str]:
    """Each rank's stderr, by rank, from torchrun's --log-dir (tmp_path/logs)."""
    return {p.parent.name: p.read_text(encoding="utf-8") for p in (tmp_path / "logs").rglob("stderr.log")}


def exit_statuses(torchrun_stderr: str) -> dict[str, str]:
    """Each rank's exit status, by rank, from torchrun's failure summary."""
    return dict(re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s+exitcode\s*: (-?\d+)", torchrun_stderr))


@pytest.mark.slow
@pytest.mark.parametrize("setting, message", [
    ("--bogus_key=1", "error: override '--bogus_key=1': unknown key 'bogus_key'"),
    ("--n_layer=0", "error: model: ModelConfig.n_layer must be a positive integer, got 0"),
])
def test_a_config_error_under_torchrun_is_said_once(tmp_path, setting, message):
    """Every rank meets a configuration error before the process group exists: rank 0 says
    it, the other ranks end with the same exit status and say nothing (was: one line per rank)."""
    done = run([setting, "--device=cpu", f"--out_dir={tmp_path / 'run'}"], tmp_path, nproc=2, ok=False,
               launcher=[f"--log-dir={tmp_path / 'logs'}", "--tee=2"])
    logs = rank_logs(tmp_path)
    assert sorted(logs) == ["0", "1"], done.stderr[-3000:]
    assert logs["0"].startswith(message) and logs["0"].count("\n") == 1, logs
    assert logs["1"] == "", logs
    assert done.stderr.count(message) == 1, done.stderr[-3000:]
    # (rank 1 ends 130 where torchrun stops it before it reaches the error: on a loaded machine)
    statuses = exit_statuses(done.stderr)
    assert statuses["0"] == "2" and statuses["1"] in ("2", "130"), done.stderr[-3000:]


# pretrain on rank 1 only, which waits 1 s for rank 0 to end; rank 0 meets no error and waits
ERROR_ON_RANK_1_ONLY = """
import os, sys, time
from nano_train import train
train.RANK_ERROR_WAIT = 1.0
if os.environ["RANK"] == "0":
    time.sleep(120)
    sys.exit(0)
sys.exit(train.main("pretrain"))
"""


@pytest.mark.slow
def test_a_config_error_of_another_rank_alone_is_said_by_it(tmp_path):
    """A rank other than 0 whose error rank 0 does not share (torchrun does not stop it within
    RANK_ERROR_WAIT) says it itself, naming its rank."""
    script = tmp_path / "error_on_rank_1.py"
    script.write_text(ERROR_ON_RANK_1_ONLY, encoding="utf-8")
    done = run(["--bogus_key=1", "--device=cpu"], tmp_path, nproc=2, command=str(script), ok=False,
               launcher=[f"--log-dir={tmp_path / 'logs'}", "--tee=2"])
    logs = rank_logs(tmp_path)
    assert logs["0"] == "" and logs["1"] == "error: rank 1: override '--bogus_key=1': unknown key 'bogus_key'\n", logs
    assert exit_statuses(done.stderr)["1"] == "2", done.stderr[-3000:]


@pytest.mark.slow
def test_two_nodes_of_one_process_each_match_one_process(tmp_path, small_pretrain):
    """The multi-node launch the README gives (`--nnodes=2 --node_rank=i --master_addr
    --master_port`), two torchrun launchers on this machine standing for two nodes: each
    node's worker has LOCAL_RANK 0, and only global rank 0 (node 0) prints and writes. The
    run matches one process with the same global batch, as the one-node test does."""
    import socket

    common = pretrain_args(small_pretrain, accum=2, max_iters=3, eval_interval=3, eval_iters=2) + ["--dist_timeout=120"]
    single = run(common + [f"--out_dir={tmp_path / 'one'}"], tmp_path)
    with socket.socket() as probe:  # a free port for node 0's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={i}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                               "-m", "nano_train.pretrain", *common, f"--out_dir={tmp_path / 'nodes'}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for other in nodes:
                stop_tree(other)
            pytest.fail("the two-node run was still running after 300 s", pytrace=False)
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:] + err[-3000:]
    (out0, _), (out1, _) = outputs
    assert "2 x cpu" in out0 and "(4 x 32 x 1 x 2)" in out0 and out0.count("step      3/3") == 1
    assert "step" not in out1 and "pretrain:" not in out1  # node 1's rank prints nothing
    losses = {n: [r.get("loss", r.get("val_loss")) for r in read_log(tmp_path / n / "log.jsonl")
                  if r["kind"] in ("train", "eval")] for n in ("one", "nodes")}
    assert len(losses["one"]) == len(losses["nodes"]) == 5, losses  # 3 train + evaluations at steps 0 and 3
    assert max(abs(a - b) for a, b in zip(losses["one"], losses["nodes"])) < 1e-5, losses
    one = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)
    two = torch.load(tmp_path / "nodes" / "latest.pt", weights_only=True)
    assert max((one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"]) < 1e-5
    assert two["rng"]["world_size"] == 2 and len(two["rng"]["ranks"]) == 2
    assert sum(r["kind"] == "start" for r in read_log(tmp_path / "nodes" / "log.jsonl")) == 1


@pytest.mark.slow
def test_two_process_sft_weighs_ranks_by_their_answer_tokens(tmp_path, uneven_sft):
    """SFT rows count their answer tokens only, so the ranks' micro-batches hold
    different numbers of them: 2 processes x 4 rows give the losses and weights of
    one process x 8 rows (each rank weighs by its share of the step's tokens, not
    1/2), and the validation loss of 2 x 4 rows is that of the 8 rows as one batch."""
    common = [f"--dataset={uneven_sft}", "--n_layer=1", "--n_embd=32", "--n_head=2", "--n_kv_head=2",
              "--block_size=64", "--max_iters=4", "--warmup_iters=0", "--learning_rate=1e-3", "--eval_interval=2",
              "--log_interval=1", "--device=cpu", "--dist_backend=gloo", "--dtype=float32", "--peak_flops=1e10", "--sample_tokens=0"]
    one = ["--batch_size=8", "--gradient_accumulation_steps=1", "--eval_iters=1", f"--out_dir={tmp_path / 'one'}"]
    two = ["--batch_size=4", "--gradient_accumulation_steps=2", "--eval_iters=2", f"--out_dir={tmp_path / 'two'}"]
    single = run(common + one, tmp_path, command="nano_train.sft")
    double = run(common + two, tmp_path, nproc=2, command="nano_train.sft")
    assert "(8 x 63 x 1 x 1)" in single.stdout and "(4 x 63 x 1 x 2)" in double.stdout
    logs = {n: read_log(tmp_path / n / "log.jsonl") for n in ("one", "two")}
    loss = {n: [r["loss"] for r in logs[n] if r["kind"] == "train"] for n in logs}
    val = {n: [r["val_loss"] for r in logs[n] if r["kind"] == "eval"] for n in logs}
    assert len(loss["one"]) == len(loss["two"]) == 4 and len(val["one"]) == len(val["two"]) == 3
    diffs = [abs(a - b) for a, b in zip(loss["one"] + val["one"], loss["two"] + val["two"])]
    print(f"max |loss difference| one vs two processes: {max(diffs):.2e}")
    assert max(diffs) < 5e-6  # float32 rounding (each rank weighed 1/2: 1e-4 and more)
    one = torch.load(tmp_path / "one" / "latest.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "latest.pt", weights_only=True)
    worst = max((one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"])
    print(f"max |parameter difference|: {worst:.2e}")
    assert worst < 5e-6


FAILING_RANK = """
import sys
from nano_train import data, train

next_batch = data.Batcher.next


def failing_next(self):  # rank 1's third training batch is bad data (each evaluation has a Batcher of its own)
    self.calls = getattr(self, "calls", 0) + 1
    if self.rank == 1 and self.calls == 3:
        raise data.DataError("injected bad data on rank 1")
    return next_batch(self)


data.Batcher.next = failing_next
sys.exit(train.main("pretrain"))
"""


@pytest.mark.slow
def test_a_rank_that_fails_stops_the_run(tmp_path, small_pretrain):
    """Rank 1 fails in the middle of training: the run ends with an error (rank 0, waiting for
    it in a collective, is stopped), not a hang (run() fails the test after 300 s)."""
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK, encoding="utf-8")
    args = [f"--dataset={small_pretrain}", "--n_layer=1", "--n_embd=32", "--n_head=2", "--n_kv_head=2",
            "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--max_iters=50",
            "--eval_iters=1", "--device=cpu", "--dist_backend=gloo", "--sample_tokens=0", f"--out_dir={tmp_path / 'run'}"]
    done = run(args, tmp_path, nproc=2, command=str(script), ok=False)
    assert "error: injected bad data on rank 1" in done.stderr
    assert not (tmp_path / "run" / "report.md").exists()


KILLED_RANK = """
import os
import signal
import sys
from nano_train import data, train

next_batch = data.Batcher.next


def dying_next(self):  # rank 1 is killed (as by the kernel's OOM killer) fetching its sixth training batch
    self.calls = getattr(self, "calls", 0) + 1
    if self.rank == 1 and self.calls == 6 and os.environ.get("HANG_RANK_1"):
        with open(os.environ["HANG_RANK_1"] + ".tmp", "w") as f:  # its pid, for the test to end it
            f.write(str(os.getpid()))
        os.replace(os.environ["HANG_RANK_1"] + ".tmp", os.environ["HANG_RANK_1"])
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped: it hangs, its connections open
    elif self.rank == 1 and self.calls == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    if self.rank == 0 and self.calls == 6 and os.environ.get("SIGTERM_RANK_0"):  # asked to stop, as by a scheduler
        os.kill(os.getpid(), signal.SIGTERM)
    return next_batch(self)


data.Batcher.next = dying_next
sys.exit(train.main("pretrain"))
"""


def run_killed_rank(tmp_path, dataset, *extra) -> subprocess.CompletedProcess:
    """KILLED_RANK under torchrun, 2 processes, a 1-layer model checkpointed every 4 steps into
    tmp_path/run; each rank's stderr in tmp_path/logs/.../RANK/stderr.log. It must fail."""
    script = tmp_path / "killed_rank.py"
    script.write_text(KILLED_RANK, encoding="utf-8")
    args = [f"--dataset={dataset}", "--n_layer=1", "--n_embd=32", "--n_head=2", "--n_kv_head=2",
            "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--max_iters=50",
            "--eval_interval=4", "--eval_iters=1", "--device=cpu", "--dist_backend=gloo", "--dtype=float32",
            "--sample_tokens=0", f"--out_dir={tmp_path / 'run'}", *extra]
    return run(args, tmp_path, nproc=2, command=str(script), ok=False,
               launcher=[f"--log-dir={tmp_path / 'logs'}", "--tee=2"])


@pytest.mark.slow
@pytest.mark.parametrize("sigterm", [False, True], ids=["killed", "killed_while_rank_0_stops"])
def test_a_killed_rank_ends_the_run_with_one_line(tmp_path, small_pretrain, monkeypatch, sigterm):
    """Rank 1 dies (SIGKILL) in the middle of training, rank 0 waiting for it in a collective: rank 0
    ends with one error line saying so and naming the checkpoint to continue from, without gloo's
    traceback, and exit status 1 (torchrun's SIGTERM to it, which follows, does not cut that short),
    not a hang; the checkpoint of step 4, the last before the kill, is on disk and loads. Rank 0's
    own stderr is told apart from torchrun's (whose failure summary has a traceback of its own) by
    torchrun's per-rank log files. sigterm: rank 0 is asked to stop (SIGTERM) in the same step, so
    the checkpoint it promised cannot be written: its error line says so."""
    if sigterm:
        monkeypatch.setenv("SIGTERM_RANK_0", "1")
    done = run_killed_rank(tmp_path, small_pretrain)
    logs = {p.parent.name: p.read_text(encoding="utf-8") for p in (tmp_path / "logs").rglob("stderr.log")}
    assert sorted(logs) == ["0", "1"], done.stderr[-3000:]
    print(logs["0"])
    lines = logs["0"].strip().splitlines()
    # (torchrun's own SIGTERM may reach rank 0 before its collective fails: then the promise too)
    not_written = "the checkpoint the interrupt asked for was not written; " + ("" if sigterm else "|")
    error = re.compile(r"error: rank 0: lost contact with another process of this run during [^()]+ "
                       r"\(gloo: [^()]+\); one of the ranks stopped or crashed, see its output above; "
                       f"({not_written})the last checkpoint written is {re.escape(str(tmp_path / 'run' / 'latest.pt'))} "
                       r"\(step 4\): continue with --init_from=resume --out_dir=\S+")
    assert lines and error.fullmatch(lines[-1]), logs["0"]
    if sigterm:
        assert any(line.startswith("interrupt (SIGTERM): saving latest.pt after this step") for line in lines)
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in logs["0"]
    # rank 0 exits with status 1, not killed by the SIGTERM torchrun sends it after seeing rank 1 die
    status = re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: (-?\d+)", done.stderr)
    assert status and status[1] == "1", done.stderr[-3000:]
    latest = ckpt_io.load(tmp_path / "run" / "latest.pt")
    assert latest["step"] == 4 and ckpt_io.load(tmp_path / "run" / "best.pt")["step"] == 4
    load_checkpoint_model(tmp_path / "run" / "latest.pt")
    assert not list((tmp_path / "run").glob(".*.tmp")) and not (tmp_path / "run" / "report.md").exists()


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_run_after_dist_timeout(tmp_path, small_pretrain, monkeypatch):
    """Rank 1 stops (SIGSTOP: alive, its connections open, as a hung process or a node cut off
    would be) in the middle of training: rank 0 waits system.dist_timeout (8 s), not torch's
    30 minutes, then ends with one line saying that another rank did not take part in time and
    naming the checkpoint to continue from. The stopped rank is then killed here (SIGKILL), as
    torchrun kills it itself after a grace of 30 s, which no option shortens (the test took 44 s)."""
    pid_file = tmp_path / "hung_rank.pid"
    monkeypatch.setenv("HANG_RANK_1", str(pid_file))
    finished = threading.Event()

    def kill_the_hung_rank_once_rank_0_has_given_up():
        while not finished.wait(0.2):
            rank_0 = list((tmp_path / "logs").rglob("0/stderr.log"))
            if (pid_file.exists() and rank_0
                    and "error: rank 0" in rank_0[0].read_text(encoding="utf-8", errors="replace")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_the_hung_rank_once_rank_0_has_given_up, daemon=True)
    killer.start()
    try:
        run_killed_rank(tmp_path, small_pretrain, "--dist_timeout=8")
    finally:
        finished.set()
        killer.join()
    log = next((tmp_path / "logs").rglob("0/stderr.log")).read_text(encoding="utf-8")
    print(log)
    lines = log.strip().splitlines()
    error = re.compile(r"error: rank 0: lost contact with another process of this run during [^()]+ "
                       r"\(gloo: [^()]*[Tt]imed out[^()]*\); another rank did not take part within 8 s "
                       r"\(system.dist_timeout\): it hangs or was cut off, is slower than that, or the job was stopped "
                       r"for longer \(Ctrl-Z, SIGSTOP\); see its output; "
                       r"the last checkpoint written is \S+latest.pt \(step 4\): continue with --init_from=resume \S+")
    assert lines and error.fullmatch(lines[-1]), log
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in log
    assert ckpt_io.load(tmp_path / "run" / "latest.pt")["step"] == 4


ONE_RANK_OVERFLOWS = """
import os
import sys
from nano_train import train

train.activations_overflow = lambda model, x, context: os.environ["RANK"] == "1"  # only rank 1's row overflows
sys.exit(train.main("pretrain"))
"""


@pytest.mark.slow
def test_an_overflow_one_rank_sees_stops_every_rank_alike(tmp_path, small_pretrain):
    """Each rank probes its own row before a checkpoint: the verdict is all-reduced. (was: rank 1
    stopped with the overflow, rank 0 went on into the checkpoint's collective and lost contact)"""
    script = tmp_path / "one_rank_overflows.py"
    script.write_text(ONE_RANK_OVERFLOWS, encoding="utf-8")
    args = pretrain_args(small_pretrain, accum=2, max_iters=4, eval_interval=100, eval_iters=1)
    done = run(args + ["--checkpoint_interval=2", f"--out_dir={tmp_path / 'run'}"], tmp_path, nproc=2,
               command=str(script), ok=False)
    assert done.stderr.count("error: training diverged: the activations overflow float32") == 2, done.stderr[-3000:]
    assert "lost contact" not in done.stderr
    assert not (tmp_path / "run" / "latest.pt").exists()
