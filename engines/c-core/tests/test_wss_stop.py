"""nano-wss's `"stop": [TEXT, ...]`: the text a generation streams is what `nano run --stop`
prints and what `python -m nano_train.sample --stop` prints, for the same model, prompt,
settings and seed.

Stop texts are picked from each model's own unstopped output (as test_cli_stop.py picks
them), so that they occur where the test needs them: across tokens, inside one token, a
special token's text, several at once, and one whose start occurs but which never
completes (its tokens wait, then go out before the done message). The server is the
release build and the ASan + UBSan build (build-san/), each stopped at the end with no
sanitizer report.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import selectors
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import websockets

pytestmark = pytest.mark.outer_only  # runs the sanitizer build itself, as test_wss.py does

TIMEOUT = 30.0
SAN_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")
PROMPT = "人的心理"
SPECIALS = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
# test_cli_stop.py's vocabulary: one- and two-letter tokens, longer CJK ones and a 4-byte character
MULTI_TEXTS = SPECIALS + list("abcdefgh") + ["".join(p) for p in itertools.product("abcdefgh", repeat=2)][:40] + \
    ["世界", "你好吗", "\U0001F600a"] + list("世界你好吗\U0001F600 ,.")
SETTINGS = {"greedy": dict(temperature=0), "sampled": dict(temperature=0.8, top_k=40, seed=3)}
CLI_FLAGS = {"temperature": "-t", "top_k": "-k", "seed": "-s", "max_tokens": "-n"}


# ---------------------------------------------------------------------------
# The server (as test_wss.py starts it) and the two CLIs


def server_env() -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


class Server:
    def __init__(self, binary: Path, model: Path, *args):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.argv = [str(binary), "-m", str(model), "--port", "0", "--threads", "1", *map(str, args)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True, env=server_env())
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(TIMEOUT) else ""
        sel.close()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        if not m:
            rc, err = self.stop()
            pytest.fail(f"{' '.join(self.argv)} did not start (rc {rc}):\n{err}", pytrace=False)
        self.url = f"ws://127.0.0.1:{m.group(1)}/"

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc.stdout.close()
        self.log.seek(0)
        err = self.log.read()
        self.log.close()
        return rc, err

    def check_clean_exit(self) -> None:
        rc, err = self.stop()
        assert not any(m in err for m in SAN_MARKERS), f"sanitizer report from {self.argv[0]}:\n{err}"
        assert rc == 0, f"{self.argv[0]} exited with {rc}:\n{err}"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def connect(server: Server):
    return websockets.connect(server.url, ping_interval=None, open_timeout=TIMEOUT, proxy=None, max_size=1 << 22)


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def collect(ws, rid) -> tuple[list, dict]:
    """The token messages of request rid up to its done message."""
    tokens = []
    while True:
        m = await recv(ws)
        assert m.get("id") == rid, m
        if m["type"] != "token":
            assert m["type"] == "done", m
            return tokens, m
        tokens.append(m)


def stream(server: Server, jobs: list[dict]) -> list[tuple[list, dict]]:
    """Each generate request of jobs on one connection, in turn: (tokens, done)."""
    async def go():
        out = []
        async with connect(server) as ws:
            for i, job in enumerate(jobs):
                await ws.send(json.dumps({"type": "generate", "id": str(i), **job}))
                out.append(await collect(ws, str(i)))
        return out

    return run(go())


def cli_args(model: Path, prompt: str, settings: dict, stops=()) -> list[str]:
    args = ["-m", str(model), "-p", prompt, "--threads", "1"]
    for k, v in settings.items():
        args += [CLI_FLAGS[k], str(v)]
    return args + [a for s in stops for a in ("--stop", s)]


def nano_run(nano: Path, *args) -> tuple[str, list[int]]:
    """`nano run ARGS`: the text printed (without the final line break) and the ids of the
    generated tokens printed (--ids)."""
    text = subprocess.run([str(nano), "run", *args], capture_output=True, env=server_env(), timeout=TIMEOUT)
    ids = subprocess.run([str(nano), "run", *args, "--ids"], capture_output=True, text=True, env=server_env(),
                         timeout=TIMEOUT)
    assert text.returncode == 0 and ids.returncode == 0, (text.stderr, ids.stderr)
    n_prompt = int(re.search(r"(\d+) prompt tokens", ids.stderr).group(1))
    out = text.stdout.decode()
    assert out.endswith("\n")
    return out[:-1], [int(x) for x in ids.stdout.strip().split(",")][n_prompt:]


def samples(h, arg_lists: list[list[str]]) -> list[str]:
    """What `python -m nano_train.sample ARGS` prints for each ARGS, without the final line
    break (the runs side by side: h.run_samples)."""
    printed = []
    for args, r in zip(arg_lists, h.run_samples(arg_lists)):
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.endswith("\n"), args
        printed.append(r.stdout[:-1])
    return printed


def sample(h, *args) -> str:
    return samples(h, [list(args)])[0]


def first_end(text: str, stop: str) -> bool:
    """Whether the first occurrence of stop in text ends where text ends."""
    return text.find(stop) == len(text) - len(stop)


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def binaries(h) -> dict:
    h.make("all")
    h.make("all", san=True)
    out = {"release": h.CORE / "build" / "nano-wss", "san": h.CORE / "build-san" / "nano-wss",
           "nano": h.CORE / "build" / "nano"}
    for path in out.values():
        if not path.is_file():
            pytest.fail(f"make did not produce {path}", pytrace=False)
    return out


@pytest.fixture(scope="module", params=["release", "san"])
def build(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def psycho(h) -> Path:
    return h.shared_file("fixtures/psycho_230k_1214_q80.bin")


@pytest.fixture(scope="module")
def multi(h, tmp_path_factory) -> Path:
    """A random model (fixed seed) whose vocabulary has multi-character tokens, which it
    generates, special tokens among them."""
    import nano_format as nf

    tokens = [nf.TokenEntry(id=i, text=t, is_special=t in SPECIALS) for i, t in enumerate(MULTI_TEXTS)]
    path = tmp_path_factory.mktemp("wss_stop") / "multi.bin"
    path.write_bytes(h.model_bytes(seed=2, vocab=tokens, block_size=64, n_embd=32))
    return path


def compare(h, binaries, server, model: Path, prompt: str, settings: dict, cases: list[list[str]]) -> list[dict]:
    """Each list of stop texts in cases, streamed by the server, against `nano run --stop` and
    nano_train.sample --stop: the same text and the same token ids. Returns the done messages."""
    results = stream(server, [dict(prompt=prompt, stop=stops, **settings) for stops in cases])
    arg_lists = [cli_args(model, prompt, settings, stops) for stops in cases]
    dones = []
    for stops, args, printed, (tokens, done) in zip(cases, arg_lists, samples(h, arg_lists), results):
        text, ids = nano_run(binaries["nano"], *args)
        got = "".join(t["text"] for t in tokens)
        assert got == text == printed, stops
        assert [t["token"] for t in tokens] == ids, stops
        assert done["stats"]["generated_tokens"] == len(ids), stops
        dones.append(done)
    return dones


# ---------------------------------------------------------------------------
# The text of a generation with stop texts


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_single_character_tokens(h, binaries, build, psycho, settings):
    """psycho's tokens are single characters: a stop text of two or more spans token
    boundaries, and the text sent is the text before its first occurrence."""
    settings = dict(SETTINGS[settings], max_tokens=48)
    server = Server(binaries[build], psycho)
    try:
        full, _ = nano_run(binaries["nano"], *cli_args(psycho, PROMPT, settings))
        (plain, plain_done), = stream(server, [dict(prompt=PROMPT, **settings)])
        assert "".join(t["text"] for t in plain) == full
        # its first two characters occur, it does not: they wait, then go out before done
        tail = next(full[i:i + 2] + c for i in range(5, 40) for c in full if full[i:i + 2] + c not in full)
        cases = [[full[10:12]], [full[20:23]], [full[15]], [full[30:32], full[12:14]], [tail], ["<|eos|>"],
                 ["自我意识与心理学家"]]
        dones = compare(h, binaries, server, psycho, PROMPT, settings, cases)
    finally:
        server.check_clean_exit()
    for stops, done in zip(cases, dones):
        reached = any(s in full for s in stops)
        want = "stop" if reached else plain_done["reason"]
        assert done["reason"] == want, (stops, done)
        assert done["stats"]["generated_tokens"] == (min(full.find(s) for s in stops if s in full) if reached
                                                      else len(plain))


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_multi_character_tokens(h, binaries, build, multi, settings):
    """A token whose text starts before the stop text is sent whole, even where the stop
    text lies inside it; a stop text across two multi-character tokens drops the second;
    a special token the model writes stops before it."""
    settings = dict(SETTINGS[settings], max_tokens=60)
    server = Server(binaries[build], multi)
    try:
        (plain, plain_done), = stream(server, [dict(prompt="ab", **settings)])
        texts = [t["text"] for t in plain]
        full = "".join(texts)
        starts = list(itertools.accumulate([0] + [len(t) for t in texts]))
        inside = next(t[1:] for j, t in enumerate(texts)
                      if len(t) > 1 and t not in SPECIALS and first_end(full[:starts[j + 1]], t[1:]))
        across = next(texts[j][-1] + texts[j + 1][0] for j in range(len(texts) - 1)
                      if len(texts[j]) > 1 and texts[j] not in SPECIALS and texts[j + 1] not in SPECIALS
                      and first_end(full[:starts[j + 1] + 1], texts[j][-1] + texts[j + 1][0]))
        special = next(t for t in texts if t in SPECIALS and t != "<|eos|>")
        cases = [[inside], [across], [special], [across, inside, special]]
        dones = compare(h, binaries, server, multi, "ab", settings, cases)
    finally:
        server.check_clean_exit()
    assert all(d["reason"] == "stop" for d in dones), dones
    assert len(dones[1]["stats"]) == len(plain_done["stats"])


def test_instruct_mode(h, binaries, psycho):
    settings = dict(temperature=0, max_tokens=40)
    server = Server(binaries["release"], psycho)
    try:
        (plain, _), = stream(server, [dict(prompt="什么是心理学", mode="instruct", **settings)])
        text = "".join(t["text"] for t in plain)
        stop = text[len(text) // 2:len(text) // 2 + 2]
        (tokens, done), = stream(server, [dict(prompt="什么是心理学", mode="instruct", stop=[stop], **settings)])
    finally:
        server.check_clean_exit()
    args = ["-m", str(psycho), "--instruct", "-p", "什么是心理学", "-t", "0", "-n", "40", "--threads", "1",
            "--stop", stop]
    got = "".join(t["text"] for t in tokens)
    assert got == nano_run(binaries["nano"], *args)[0] == sample(h, *args) == text[:text.find(stop)]
    assert done["reason"] == "stop"


# ---------------------------------------------------------------------------
# The other ends: max_tokens, context_full, cancel


def test_held_back_tokens_are_sent_at_every_other_end(h, binaries, build, psycho):
    """Tokens waiting for a stop text that never came go out before the done message when
    max_tokens or a full context ends the generation; a stop text that ends in the token
    that fills the context is reason stop."""
    server = Server(binaries[build], psycho, "--ctx", 16)
    try:
        (plain, plain_done), = stream(server, [dict(prompt=PROMPT, temperature=0, max_tokens=0)])
        full = "".join(t["text"] for t in plain)
        assert plain_done["reason"] == "context_full"
        # the last two characters plus one that never follows them: the last two tokens wait
        never = full[-2:] + next(c for c in "的了是我" if full[-2:] + c not in full)
        last = next(full[-k:] for k in range(1, len(full)) if first_end(full, full[-k:]))
        jobs = [dict(prompt=PROMPT, temperature=0, max_tokens=0, stop=[never]),
                dict(prompt=PROMPT, temperature=0, max_tokens=0, stop=[last]),
                dict(prompt=PROMPT, temperature=0, max_tokens=5, stop=[never]),
                dict(prompt=PROMPT, temperature=0, max_tokens=5, stop=[full[4] + never])]
        results = stream(server, jobs)
    finally:
        server.check_clean_exit()
    (t_never, d_never), (t_last, d_last), (t_x, d_x), (t_cut, d_cut) = results
    assert "".join(t["text"] for t in t_never) == full and d_never["reason"] == "context_full"
    assert [t["token"] for t in t_never] == [t["token"] for t in plain]
    assert "".join(t["text"] for t in t_last) == full[:-len(last)] and d_last["reason"] == "stop"
    assert "".join(t["text"] for t in t_x) == full[:5] and d_x["reason"] == "max_tokens"
    # the fifth token could begin the stop text when max_tokens ends it: it is sent all the same
    assert "".join(t["text"] for t in t_cut) == full[:5] and d_cut["reason"] == "max_tokens"
    assert d_cut["stats"]["generated_tokens"] == 5
    args = cli_args(psycho, PROMPT, dict(temperature=0), [never]) + ["--ctx", "16", "-n", "0"]
    assert nano_run(binaries["nano"], *args)[0] == full


@pytest.fixture(scope="module")
def slow_model(h, tmp_path_factory) -> Path:
    """test_wss.py's slow model (~0.5 ms a token, more under ASan, no <|eos|>): a generation
    with max_tokens 0 runs until its 1024-token context is full, long enough to cancel."""
    import nano_format as nf

    kept = [e for e in h.make_vocab(48) if e.text != "<|eos|>"]
    vocab = [nf.TokenEntry(id=i, text=e.text, is_special=e.is_special) for i, e in enumerate(kept)]
    cfg = nf.Config(block_size=1024, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, n_hidden=384,
                    vocab_size=len(vocab))
    path = tmp_path_factory.mktemp("wss_stop") / "slow.bin"
    path.write_bytes(nf.to_bytes(cfg, h.random_weights(cfg, 7), vocab, layout="2026.1"))
    return path


def test_cancel_sends_the_held_back_tokens(h, binaries, build, slow_model):
    """A cancel ends a generation with stop texts as one without: the tokens waiting for a
    stop text are sent, then done with reason cancelled; generated_tokens counts the tokens
    sent. The stop texts (one character of the greedy output and one that never follows it
    there) make most tokens wait a step, and none ever completes: what is sent is a prefix
    of the generation without them."""
    full, ids = nano_run(binaries["nano"], "-m", str(slow_model), "-p", "the", "-t", "0", "-n", "0",
                         "--threads", "1")
    # the characters the vocabulary has as tokens of their own (not those of <|bos|> ...), most frequent first
    chars = sorted({e.text for e in h.make_vocab(48) if not e.is_special and len(e.text) == 1 and e.text in full},
                   key=full.count, reverse=True)
    stops = [a + next(b for b in chars if a + b not in full) for a in chars if any(a + b not in full for b in chars)]
    stops = stops[:16]
    assert len(stops) >= 8, stops
    server = Server(binaries[build], slow_model)
    try:
        async def go():
            async with connect(server) as ws:
                await ws.send(json.dumps({"type": "generate", "id": "g", "prompt": "the", "temperature": 0,
                                          "max_tokens": 0, "stop": stops}))
                first = [await recv(ws) for _ in range(3)]
                await ws.send(json.dumps({"type": "cancel", "id": "g"}))
                tokens, done = await collect(ws, "g")
                return first + tokens, done

        tokens, done = run(go())
    finally:
        server.check_clean_exit()
    assert all(t["type"] == "token" for t in tokens)
    assert done["reason"] == "cancelled" and done["stats"]["generated_tokens"] == len(tokens) < len(ids)
    assert [t["token"] for t in tokens] == ids[:len(tokens)]


# ---------------------------------------------------------------------------
# Bad stop values


BAD_STOPS = [
    ("x", "stop must be an array of at most 16 strings"),
    ({"a": "b"}, "stop must be an array of at most 16 strings"),
    (None, "stop must be an array of at most 16 strings"),
    (["a"] * 17, "stop must be an array of at most 16 strings"),
    (["。", 5], "stop[1] must be a string"),
    ([None], "stop[0] must be a string"),
    ([["。"]], "stop[0] must be a string"),
    (["。", ""], "stop[1] is empty: give the text to stop at"),
    (["心" * 86], "stop[0] must be at most 256 bytes"),  # 258 bytes
    (["a\u0000b"], "stop[0] must not contain U+0000"),
    (["心", "心理\U0001F600学\U0001F600Ж"],
     "stop[1] '心理\U0001F600学\U0001F600Ж': can never occur: the vocabulary has no token for '\U0001F600Ж'"),
]


def test_bad_stop_values_are_errors_and_the_connection_keeps_working(binaries, build, psycho):
    server = Server(binaries[build], psycho)
    try:
        async def go():
            answers = []
            async with connect(server) as ws:
                for i, (stop, _) in enumerate(BAD_STOPS):
                    await ws.send(json.dumps({"type": "generate", "id": f"b{i}", "prompt": PROMPT, "stop": stop}))
                    answers.append(await recv(ws))
                tokens, done = await collect_one(ws)
            return answers, tokens, done

        async def collect_one(ws):
            # 16 texts of 256 bytes are within the bounds; [] is no stop text
            await ws.send(json.dumps({"type": "generate", "id": "ok", "prompt": PROMPT, "temperature": 0,
                                      "max_tokens": 8, "stop": ["心" * 85 + "a"] * 16}))
            out = await collect(ws, "ok")
            await ws.send(json.dumps({"type": "generate", "id": "ok2", "prompt": PROMPT, "temperature": 0,
                                      "max_tokens": 8, "stop": []}))
            out2 = await collect(ws, "ok2")
            assert [t["token"] for t in out[0]] == [t["token"] for t in out2[0]]
            return out

        answers, tokens, done = run(go())
    finally:
        server.check_clean_exit()
    for i, ((stop, message), answer) in enumerate(zip(BAD_STOPS, answers)):
        assert answer == {"type": "error", "id": f"b{i}", "code": "bad_field", "message": message}, stop
    assert len(tokens) == 8 and done["reason"] == "max_tokens"
