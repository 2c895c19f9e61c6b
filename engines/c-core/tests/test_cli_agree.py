"""`nano run` and `python -m nano_train.sample` agree on their command lines: the same
arguments are taken or refused with the same exit status (2 for a usage error, 1 for
a bad file), and --profile counts the same tokens (the tokens printed).
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.outer_only  # nano_train.sample runs in this process

SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
PROMPT = "\u4e00\u4e01"  # two tokens of the model's vocabulary
EXIT_STATUS = [
    (["-t", "-1"], 2), (["-t", "nan"], 2), (["-t", "inf"], 2), (["-t", "1e39"], 2), (["-t", "0x1p-3"], 2),
    (["-t", "abc"], 2), (["-k", "-1"], 2), (["--top-p", "0"], 2), (["--top-p", "1.5"], 2),
    (["--top-p", "nan"], 2), (["--min-p", "1.5"], 2), (["-r", "0"], 2), (["-r", "-1"], 2), (["-n", "-1"], 2),
    (["-s", "-1"], 2), (["-s", str(2**64)], 2), (["-s", "+5"], 2), (["-s", " 5"], 2), (["-k", "1_0"], 2),
    (["-p", ""], 2), (["--stop", ""], 2), (["--stop", "\U0001F600"], 2), (["--threads", "0"], 2),
    (["-k", str(2**30 + 1)], 2), (["-n", str(2**30 + 1)], 2), (["--instruct=1"], 2),
    # float settings read as the float32 they become; a value 0 in float32 is 0
    (["--min-p", "1.00000001"], 0), (["-t", "-1e-46"], 0), (["--min-p", "-1e-46"], 0), (["-t", "1e-320"], 0),
    (["-t", "1e-400"], 0), (["-k", str(2**30)], 0),
    # --long-option=value
    (["--top-p=0.9"], 0), (["--temperature=0", "--max-tokens=1"], 0), (["--stop=\u4e00"], 0),
    # a short option's value attached; no abbreviation of a long option (a typo must not pass)
    (["-t0"], 0), (["-t=0.5"], 0), (["-k5"], 0), (["--temp", "0"], 2), (["--max-tok", "1"], 2),
    (["-m", "no-such-model.bin"], 1),
    # '_' for '-' between a long option's words, as nano_train's commands take it (nano run refused it)
    (["--top_p", "0.9"], 0), (["--max_tokens=1", "--repetition_penalty", "1.1"], 0), (["--min_p", "2"], 2),
    (["--top__p", "0.9"], 2), (["--_top-p", "0.9"], 2),
    # text that is not UTF-8 is refused as bad input (nano run gave its bytes to the model as <|unknown|>)
    (["-p", os.fsdecode(b"\xe4\xb8\x80\xff")], 1), (["--instruct", "--system", os.fsdecode(b"\xc0\x80")], 1),
    # a value that looks like an option is not taken (nano run took "--instruct" as the prompt);
    # after '=', a negative number or a text with a space it is
    (["-p", "--instruct"], 2), (["-p", "-x"], 2), (["--stop", "-a"], 2), (["-p=-x"], 0),
    (["-p", "-x y"], 0), (["-t", "-0"], 0), (["-t", "-.5e-46"], 0),
    # a stop text that can never occur is the usage error, before a prompt too long (bad input)
    (["--stop", "\U0001F600", "-p", "\u4e00" * 80], 2), (["-p", "\u4e00" * 80], 1),
]


@pytest.fixture(scope="module")
def model(h, tmp_path_factory):
    """A random model (fixed seed) whose tokens are one CJK character each."""
    import nano_format as nf

    texts = SPECIALS + [chr(0x4E00 + i) for i in range(42)]
    vocab = [nf.TokenEntry(id=i, text=t, is_special=t in SPECIALS) for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("agree") / "m.bin"
    path.write_bytes(h.model_bytes(seed=3, vocab=vocab, block_size=64))
    return path


def sample(capsys, *args) -> tuple[int, str, str]:
    """python -m nano_train.sample ARGS, in this process: (exit status, stdout, stderr)."""
    from nano_train import sample as sample_cmd

    try:
        rc = sample_cmd.main(list(map(str, args)))
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("extra,status", EXIT_STATUS, ids=[" ".join(e) for e, _ in EXIT_STATUS])
def test_the_same_arguments_get_the_same_exit_status(cli, capsys, model, extra, status):
    args = ["-m", model, "-p", PROMPT, "-n", "3", "--threads", "1", *extra]
    c = cli("run", *args)
    py, _, py_err = sample(capsys, *args)
    assert (c.returncode, py) == (status, status), (c.stderr, py_err)


def counted(err: str) -> int:
    """The tokens --profile counted, from either CLI's line (0: "no token generated")."""
    found = re.findall(r"(\d+) tokens? generated|no token generated", err)
    assert len(found) == 1, err
    return int(found[0] or 0)


def test_profile_counts_the_printed_tokens_on_both_sides(cli, capsys, model):
    """The tokens counted are the tokens printed: not those a stop text dropped (nano
    run counted every token sampled), one token has no rate (nano run said "decode 0.0
    tokens/s"), and a run that printed nothing says so the same way on both sides."""
    base = ["-m", model, "-p", PROMPT, "-t", "0", "--threads", "1"]
    text = cli("run", *base, "-n", "40").stdout.rstrip("\n")
    # a stop text of two tokens (one character each) that first occurs at k > 0
    k = next(k for k in range(1, len(text) - 1) if text.find(text[k:k + 2]) == k)
    runs = {"stop": (["-n", "40", "--stop", text[k:k + 2]], k),
            "one token": (["-n", "1"], 1),
            "nothing printed": (["-n", "40", "--stop", text[0]], 0)}
    for what, (extra, n) in runs.items():
        c = cli("run", *base, *extra, "--profile")
        rc, out, err = sample(capsys, *base, *extra, "--profile")
        assert c.returncode == rc == 0 and c.stdout == out == text[:n] + "\n", (what, c.stderr, err)
        assert counted(c.stderr) == counted(err) == n, (what, c.stderr, err)
        for line in (c.stderr, err):
            assert ("time to first token" in line) == (n > 0), (what, line)
            assert ("no decode rate (it needs 2 tokens)" in line) == (n == 1), (what, line)
            assert ("decode rate" not in line and "tokens/s" in line.split("generated")[-1]) == (n > 1), (what, line)
