"""nano-wss, the C engine's WebSocket server, tested through real clients (`websockets`).

The tests build the server (`make` in engines/c-core, and `make SANITIZE=1` for
the ASan + UBSan build in build-san/), start it on port 0 against model files
(the shared fixtures and small models written here with nano_format), and talk
to it as clients do. Answers are compared with the `nano` CLI given the same
prompt and sampler settings.

Reference defects covered: 7 (every server path has a client test, including
info on models of every kind), 13 (per-connection sessions: concurrent clients
each get their own answer), 18 (incremental token pieces and an explicit done
message; errors are messages and the connection keeps working), 6 (nothing
optional is called unset: the servers run without a token callback).

The streaming, concurrency, cancel and malformed-input tests also run against
the sanitizer build; every server is stopped with a signal at the end and must
exit 0 with no sanitizer report (LeakSanitizer included).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import websockets

pytestmark = pytest.mark.outer_only  # the sanitizer build is run here, against its own server

TIMEOUT = 30.0  # seconds for any one reply; generous for the sanitizer build on a busy machine
SAN_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:")
BUILDS = ["release", "san"]


# ---------------------------------------------------------------------------
# Building and running the server


@pytest.fixture(scope="module")
def binaries(h) -> dict:
    h.make("all")
    h.make("all", san=True)
    out = {"release": h.CORE / "build" / "nano-wss", "san": h.CORE / "build-san" / "nano-wss",
           "nano": h.CORE / "build" / "nano"}
    for name, path in out.items():
        if not path.is_file():
            pytest.fail(f"make did not produce {path}", pytrace=False)
    return out


def server_env() -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)  # the programs link their own sanitizer runtime
    env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def sanitizer_report(text: str) -> str | None:
    return text if any(m in text for m in SAN_MARKERS) else None


class Server:
    """One nano-wss process on a free port; stop() returns (exit code, stderr)."""

    def __init__(self, binary: Path, model: Path, *args, preexec=None):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.argv = [str(binary), "-m", str(model), "--port", "0", "--threads", "1", *map(str, args)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=server_env(), preexec_fn=preexec)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(TIMEOUT) else ""
        sel.close()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        if not m:
            rc, err = self.stop()
            pytest.fail(f"{' '.join(self.argv)} did not start (rc {rc}, stdout {line!r}):\n{err}", pytrace=False)
        self.port = int(m.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.result = None

    def stop(self, sig=signal.SIGTERM) -> tuple[int, str]:
        if self.result is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
                self.log.write("\n(test: the server did not stop within the timeout and was killed)\n")
            self.proc.stdout.close()
            self.log.seek(0)
            self.result = (rc, self.log.read())
            self.log.close()
        return self.result

    def check_clean_exit(self, sig=signal.SIGTERM) -> None:
        rc, err = self.stop(sig)
        assert sanitizer_report(err) is None, f"sanitizer report from {self.argv[0]}:\n{err}"
        assert rc == 0, f"{self.argv[0]} exited with {rc}:\n{err}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.check_clean_exit()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def connect(server: Server, **kw):
    """A client of the local server. proxy=None: websockets follows *_proxy variables
    even for ws:// to 127.0.0.1, and a CI host may set them."""
    kw.setdefault("max_size", 1 << 22)
    return websockets.connect(server.url, ping_interval=None, open_timeout=TIMEOUT, proxy=None, **kw)


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def request(ws, msg) -> dict:
    await ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))
    return await recv(ws)


async def collect(ws, rid) -> tuple[list, dict]:
    """Token messages of request `rid` up to its done message."""
    tokens = []
    while True:
        m = await recv(ws)
        assert m.get("id") == rid, m
        if m["type"] == "token":
            tokens.append(m)
            continue
        assert m["type"] == "done", m
        return tokens, m


async def generate(ws, rid, prompt, **settings) -> tuple[list, dict]:
    await ws.send(json.dumps({"type": "generate", "id": rid, "prompt": prompt, **settings}))
    return await collect(ws, rid)


async def closed_with(ws) -> tuple[int, str]:
    """Wait for the server to close the connection; its close code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except websockets.ConnectionClosed as e:
        assert e.rcvd is not None, f"closed without a close frame: {e}"
        return e.rcvd.code, e.rcvd.reason


# ---------------------------------------------------------------------------
# Models and references


@pytest.fixture(scope="module")
def psycho(h) -> Path:
    return h.shared_file("fixtures/psycho_230k_1214_q80.bin")


@pytest.fixture(scope="module")
def sort6(h) -> Path:
    return h.shared_file("fixtures/sort6_f32.bin")


def _vocab_without(h, texts):
    import nano_format as nf

    kept = [e for e in h.make_vocab(48) if e.text not in texts]
    return [nf.TokenEntry(id=i, text=e.text, is_special=e.is_special) for i, e in enumerate(kept)]


def _write_model(h, path: Path, vocab, layout="2026.1", seed=0, **kw) -> Path:
    import nano_format as nf

    cfg = nf.Config(**{**dict(block_size=32, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32), **kw,
                       "vocab_size": len(vocab) if vocab else 48})
    path.write_bytes(nf.to_bytes(cfg, h.random_weights(cfg, seed), vocab, layout=layout))
    return path


@pytest.fixture(scope="module")
def slow_model(h, tmp_path_factory) -> Path:
    """A model slow enough (~0.5 ms a token, more under ASan) that a long generation
    is still running while other requests come and go. No <|eos|>, so it never stops
    early: a generation with max_tokens 0 runs until its 1024-token context is full."""
    return _write_model(h, tmp_path_factory.mktemp("wss") / "slow.bin", _vocab_without(h, {"<|eos|>"}), seed=7,
                        block_size=1024, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, n_hidden=384)


CLI_FLAGS = {"temperature": "-t", "top_k": "-k", "top_p": "--top-p", "min_p": "--min-p",
             "repetition_penalty": "-r", "seed": "-s", "max_tokens": "-n"}


@lru_cache(maxsize=None)
def _cli(nano: str, model: str, prompt: str, settings: tuple, lora: str | None) -> tuple:
    args = [nano, "run", "-m", model, "-p", prompt, "--threads", "1"]
    if lora:
        args += ["-l", lora]
    for k, v in settings:
        if k == "mode":
            if v == "instruct":
                args.append("--instruct")
        else:
            args += [CLI_FLAGS[k], str(v)]
    env = server_env()
    ids = subprocess.run(args + ["--ids"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    text = subprocess.run(args, capture_output=True, env=env, timeout=TIMEOUT)
    assert ids.returncode == 0 and text.returncode == 0, ids.stderr
    n_prompt = int(re.search(r"(\d+) prompt tokens", ids.stderr).group(1))
    all_ids = [int(x) for x in ids.stdout.strip().split(",")]
    out = text.stdout.decode("utf-8")
    assert out.endswith("\n")
    return all_ids[n_prompt:], out[:-1], n_prompt


def cli_answer(binaries, model, prompt, lora=None, **settings) -> tuple[list, str, int]:
    """Generated ids, text and prompt length from `nano run` with the same settings."""
    settings.setdefault("max_tokens", 256)  # the server's default, and the CLI's
    return _cli(str(binaries["nano"]), str(model), prompt, tuple(sorted(settings.items())),
                str(lora) if lora else None)


# ---------------------------------------------------------------------------
# Servers shared by the tests of one build


@pytest.fixture(scope="module", params=BUILDS)
def build(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(binaries, build, psycho):
    # two threads per evaluation: the answers must still equal the one-thread CLI's
    s = Server(binaries[build], psycho, "--max-message", 4096, "--max-tokens-cap", 600, "--threads", 2)
    yield s
    s.check_clean_exit()


@pytest.fixture(scope="module")
def slow_server(binaries, build, slow_model):
    s = Server(binaries[build], slow_model, "--max-connections", 64)
    yield s
    s.check_clean_exit(signal.SIGINT)


# ---------------------------------------------------------------------------
# Streaming


CASES = [
    ("人的心理", dict(temperature=0, max_tokens=40)),
    ("精神", dict(temperature=0.8, top_k=40, seed=7, max_tokens=48)),
    ("我们", dict(temperature=1.2, top_p=0.9, min_p=0.05, repetition_penalty=1.3, seed=123456789012345,
                max_tokens=64)),
    ("你是谁", dict(mode="instruct", temperature=0, max_tokens=50)),
    ("人的\U0001F600心理\U0001F601", dict(temperature=0, max_tokens=24)),
]
NOT_IN_THE_VOCABULARY = {"\U0001F600", "\U0001F601"}  # each becomes one <|unknown|>


@pytest.mark.parametrize("prompt,settings", CASES,
                         ids=["greedy", "top_k", "top_p_min_p_penalty", "instruct", "unknown_characters"])
def test_streaming_matches_cli(binaries, server, psycho, prompt, settings):
    ids, text, n_prompt = cli_answer(binaries, psycho, prompt, **settings)

    async def go():
        async with connect(server) as ws:
            return await generate(ws, "r1", prompt, **settings)

    tokens, done = run(go())
    assert [t["token"] for t in tokens] == ids
    # incremental pieces (defect 18): they concatenate to the answer, none repeats what came before
    assert "".join(t["text"] for t in tokens) == text
    assert sum(len(t["text"].encode()) for t in tokens) == len(text.encode())
    stats = done["stats"]
    assert stats["prompt_tokens"] == n_prompt and stats["generated_tokens"] == len(ids)
    assert stats["unknown_tokens"] == sum(c in NOT_IN_THE_VOCABULARY for c in prompt)
    assert done["reason"] == ("max_tokens" if len(ids) == settings["max_tokens"] else "stop")
    assert stats["prefill_ms"] >= 0 and stats["tokens_per_s"] >= 0
    assert stats["ttft_ms"] >= stats["prefill_ms"] or not ids  # no first token, no time to it


def test_default_max_tokens_and_context_full(binaries, server, psycho):
    async def go():
        async with connect(server) as ws:
            default = await generate(ws, "a", "心理学", temperature=0)
            # 600 tokens cannot fit the 512-token context: the stream ends with context_full
            full = await generate(ws, "b", "心理学", temperature=0, max_tokens=600)
            return default, full

    (tok_a, done_a), (tok_b, done_b) = run(go())
    ids_a, _, _ = cli_answer(binaries, psycho, "心理学", temperature=0)
    ids_b, text_b, n_prompt = cli_answer(binaries, psycho, "心理学", temperature=0, max_tokens=600)
    assert [t["token"] for t in tok_a] == ids_a and len(ids_a) <= 256
    assert [t["token"] for t in tok_b] == ids_b and "".join(t["text"] for t in tok_b) == text_b
    if len(ids_b) == 512 - n_prompt + 1:
        assert done_b["reason"] == "context_full"
    else:
        assert done_b["reason"] == "stop"


def test_fragmented_request(server):
    """A request split over several WebSocket frames is one message."""
    async def go():
        async with connect(server) as ws:
            await ws.send(['{"type":"generate","id":"f",', '"prompt":"人的心理","temperature":0,',
                           '"max_tokens":5}'])
            return await collect(ws, "f")

    tokens, done = run(go())
    assert len(tokens) == 5 and done["reason"] == "max_tokens"


# ---------------------------------------------------------------------------
# Concurrency (defect 13)


def test_concurrent_clients_each_get_their_own_answer(binaries, server, psycho):
    jobs = [("人的心理", dict(temperature=0, max_tokens=60)),
            ("精神", dict(temperature=0.9, seed=1, max_tokens=60)),
            ("精神", dict(temperature=0.9, seed=2, max_tokens=60)),
            ("我们", dict(temperature=1.0, top_k=20, seed=3, max_tokens=50)),
            ("意识", dict(temperature=0.7, top_p=0.8, seed=4, max_tokens=70)),
            ("自我", dict(temperature=0, repetition_penalty=1.5, max_tokens=40)),
            ("你是谁", dict(mode="instruct", temperature=0.5, seed=5, max_tokens=50)),
            ("梦", dict(temperature=1.5, min_p=0.1, seed=6, max_tokens=80)),
            ("人", dict(temperature=0.6, seed=8, max_tokens=30)),
            ("心理", dict(temperature=0, max_tokens=90))]

    async def client(ws, i, prompt, settings):
        return await generate(ws, f"c{i}", prompt, **settings)

    async def go():
        conns = [await connect(server) for _ in jobs]
        try:
            return await asyncio.gather(*(client(ws, i, p, s) for i, (ws, (p, s)) in enumerate(zip(conns, jobs))))
        finally:
            for ws in conns:
                await ws.close()

    results = run(go())
    for (prompt, settings), (tokens, done) in zip(jobs, results):
        ids, text, _ = cli_answer(binaries, psycho, prompt, **settings)
        assert [t["token"] for t in tokens] == ids, (prompt, settings)
        assert "".join(t["text"] for t in tokens) == text
        assert done["stats"]["generated_tokens"] == len(ids)


def test_a_long_generation_does_not_block_others(slow_server):
    """One token per connection per loop turn: a short request finishes while a long one streams."""
    async def go():
        async with connect(slow_server) as a, connect(slow_server) as b:
            await a.send(json.dumps({"type": "generate", "id": "long", "prompt": "the", "temperature": 0,
                                     "max_tokens": 0}))
            first = await recv(a)
            assert first["type"] == "token"
            info = await request(b, {"type": "info", "id": "i"})
            short, short_done = await generate(b, "short", "ab", temperature=0.7, seed=3, max_tokens=5)
            await a.send(json.dumps({"type": "cancel", "id": "long"}))
            tokens, done = await collect(a, "long")
            return info, short, short_done, tokens, done

    info, short, short_done, tokens, done = run(go())
    assert info["type"] == "info" and len(short) == 5 and short_done["reason"] == "max_tokens"
    # the long one was still running when the short one had finished, and it is cut short
    assert done["reason"] == "cancelled"
    assert done["stats"]["generated_tokens"] == len(tokens) + 1 < 1024


# ---------------------------------------------------------------------------
# Cancel


def test_cancel(slow_server):
    async def go():
        async with connect(slow_server) as ws:
            out = {}
            # nothing running yet
            out["idle"] = await request(ws, {"type": "cancel", "id": "x"})
            await ws.send(json.dumps({"type": "generate", "id": "g", "prompt": "the", "temperature": 0.8,
                                      "seed": 5, "max_tokens": 0}))
            got = [await recv(ws) for _ in range(3)]
            assert all(m["type"] == "token" for m in got), got
            # a second generate and a cancel for another id are refused; the stream goes on
            await ws.send(json.dumps({"type": "generate", "id": "g2", "prompt": "a"}))
            await ws.send(json.dumps({"type": "seq2seq", "id": "s", "input": "ab"}))
            await ws.send(json.dumps({"type": "cancel", "id": "other"}))
            await ws.send(json.dumps({"type": "cancel", "id": "g"}))
            errors, tokens = [], list(got)
            while True:
                m = await recv(ws)
                if m["type"] == "error":
                    errors.append(m)
                elif m["type"] == "token":
                    tokens.append(m)
                else:
                    out["done"] = m
                    break
            out["errors"], out["tokens"] = errors, tokens
            # the connection is usable afterwards, and a cancel after the end is an error
            out["after"] = await generate(ws, "h", "ab", temperature=0, max_tokens=4)
            out["late"] = await request(ws, {"type": "cancel"})
            # cancel right after generate, before any token was read
            await ws.send(json.dumps({"type": "generate", "id": "q", "prompt": "the", "max_tokens": 0}))
            await ws.send(json.dumps({"type": "cancel"}))
            out["quick"] = await collect(ws, "q")
            return out

    out = run(go())
    assert out["idle"]["type"] == "error" and out["idle"]["code"] == "not_running" and out["idle"]["id"] == "x"
    assert [(e["id"], e["code"]) for e in out["errors"]] == [("g2", "busy"), ("s", "busy"), ("other", "not_running")]
    done = out["done"]
    assert done["id"] == "g" and done["reason"] == "cancelled"
    assert done["stats"]["generated_tokens"] == len(out["tokens"]) < 1024
    assert all(t["id"] == "g" for t in out["tokens"])
    tokens, after = out["after"]
    assert len(tokens) == 4 and after["reason"] == "max_tokens"
    assert out["late"]["code"] == "not_running" and out["late"]["id"] is None
    q_tokens, q_done = out["quick"]
    assert q_done["reason"] == "cancelled" and q_done["stats"]["generated_tokens"] == len(q_tokens) < 1024


def test_system_streams_what_the_joined_prompt_streams(binaries, server, psycho):
    """A generate with "system" (mode instruct) streams the tokens of the same request whose
    prompt is the system text, "\\n", then the prompt (what `nano run --system` asks); an empty
    system text adds nothing. "system" in continue mode or not a string is a bad_field error."""
    settings = dict(mode="instruct", temperature=0.8, top_k=40, seed=11, max_tokens=40)
    system, prompt = "你是心理学家", "你是谁"
    ids, text, n_prompt = cli_answer(binaries, psycho, system + "\n" + prompt, **settings)

    async def go():
        async with connect(server) as ws:
            with_system = await generate(ws, "s", prompt, system=system, **settings)
            joined = await generate(ws, "j", system + "\n" + prompt, **settings)
            empty = await generate(ws, "e", prompt, system="", **settings)
            plain = await generate(ws, "p", prompt, **settings)
            errors = [await request(ws, {"type": "generate", "id": "c", "prompt": prompt, "system": system}),
                      await request(ws, {"type": "generate", "id": "n", "prompt": prompt, "mode": "instruct",
                                         "system": 1}),
                      await request(ws, {"type": "generate", "id": "z", "prompt": prompt, "mode": "instruct",
                                         "system": "a\u0000"})]
            return with_system, joined, empty, plain, errors

    (tokens, done), joined, empty, plain, errors = run(go())
    assert [t["token"] for t in tokens] == ids and "".join(t["text"] for t in tokens) == text
    assert [t["token"] for t in joined[0]] == ids
    assert done["stats"]["prompt_tokens"] == joined[1]["stats"]["prompt_tokens"] == n_prompt
    assert [t["token"] for t in empty[0]] == [t["token"] for t in plain[0]]
    assert empty[1]["stats"]["prompt_tokens"] == plain[1]["stats"]["prompt_tokens"] < n_prompt
    assert [(e["type"], e["code"], e["id"]) for e in errors] == [("error", "bad_field", i) for i in "cnz"]
    assert errors[0]["message"] == 'system needs mode "instruct": the system text goes into the instruct template'
    assert errors[1]["message"] == "system must be a string"
    assert errors[2]["message"] == "system must not contain U+0000"


# ---------------------------------------------------------------------------
# Malformed input: every error is a message, and the connection keeps working (defect 18)


LONG_ID = "x" * 129
BAD_REQUESTS = [
    ("{", "bad_json", None),
    ('{"type":"info"} x', "bad_json", None),
    ('{"type":"info",}', "bad_json", None),
    ("", "bad_json", None),
    ("nul", "bad_json", None),
    ('{"type":"info","id":"\\ud800"}', "bad_json", None),
    ("[" * 100 + "]" * 100, "bad_json", None),
    ('{"a":' * 40 + "1" + "}" * 40, "bad_json", None),
    ("[]", "bad_message", None),
    ('"generate"', "bad_message", None),
    ('{"type":"info","type":"info"}', "bad_message", None),
    (json.dumps({f"k{i}": i for i in range(40)}), "bad_message", None),
    ({"id": "m"}, "missing_field", "m"),
    ({"type": 5, "id": "t"}, "bad_field", "t"),
    ({"type": "dance", "id": "u"}, "unknown_type", "u"),
    ({"type": "info", "id": "f", "extra": 1}, "unknown_field", "f"),
    ({"type": "generate", "id": "f2", "prompt": "a", "temprature": 0}, "unknown_field", "f2"),
    ({"type": "info", "id": 5}, "bad_field", None),
    ({"type": "info", "id": LONG_ID}, "bad_field", None),
    ({"type": "generate", "id": "p0"}, "missing_field", "p0"),
    ({"type": "generate", "id": "p1", "prompt": 5}, "bad_field", "p1"),
    ({"type": "generate", "id": "p2", "prompt": None}, "bad_field", "p2"),
    ({"type": "generate", "id": "p3", "prompt": ""}, "bad_field", "p3"),
    ({"type": "generate", "id": "p4", "prompt": "a\u0000b"}, "bad_field", "p4"),
    ({"type": "generate", "id": "p5", "prompt": "a " * 1500}, "prompt_too_long", "p5"),
    ({"type": "generate", "id": "m1", "prompt": "a", "mode": "chat"}, "bad_field", "m1"),
    ({"type": "generate", "id": "m2", "prompt": "a", "mode": 1}, "bad_field", "m2"),
    ({"type": "generate", "id": "y1", "prompt": "a", "system": "b"}, "bad_field", "y1"),  # continue mode
    ({"type": "generate", "id": "y2", "prompt": "a", "mode": "continue", "system": ""}, "bad_field", "y2"),
    ({"type": "generate", "id": "y3", "prompt": "a", "mode": "instruct", "system": 5}, "bad_field", "y3"),
    ({"type": "generate", "id": "y4", "prompt": "a", "mode": "instruct", "system": None}, "bad_field", "y4"),
    ({"type": "generate", "id": "y5", "prompt": "a", "mode": "instruct", "system": ["b"]}, "bad_field", "y5"),
    ({"type": "generate", "id": "y6", "prompt": "a", "mode": "instruct", "system": "b\u0000"}, "bad_field", "y6"),
    ({"type": "generate", "id": "y7", "prompt": "a", "mode": "instruct", "system": "a " * 1500}, "prompt_too_long",
     "y7"),
    ({"type": "generate", "id": "s1", "prompt": "a", "temperature": -1}, "bad_field", "s1"),
    ({"type": "generate", "id": "s2", "prompt": "a", "temperature": "hot"}, "bad_field", "s2"),
    ({"type": "generate", "id": "s3", "prompt": "a", "temperature": 1e39}, "bad_field", "s3"),
    ({"type": "generate", "id": "s4", "prompt": "a", "top_k": -1}, "bad_field", "s4"),
    ({"type": "generate", "id": "s5", "prompt": "a", "top_k": 1.5}, "bad_field", "s5"),
    ({"type": "generate", "id": "s6", "prompt": "a", "top_k": 2**31}, "bad_field", "s6"),
    ({"type": "generate", "id": "s7", "prompt": "a", "top_p": 0}, "bad_field", "s7"),
    ({"type": "generate", "id": "s8", "prompt": "a", "top_p": 1.5}, "bad_field", "s8"),
    ({"type": "generate", "id": "s9", "prompt": "a", "top_p": 1e-50}, "bad_field", "s9"),
    ({"type": "generate", "id": "sa", "prompt": "a", "min_p": -0.1}, "bad_field", "sa"),
    ({"type": "generate", "id": "sb", "prompt": "a", "min_p": 1.1}, "bad_field", "sb"),
    ({"type": "generate", "id": "sc", "prompt": "a", "repetition_penalty": 0}, "bad_field", "sc"),
    ({"type": "generate", "id": "sd", "prompt": "a", "repetition_penalty": True}, "bad_field", "sd"),
    ({"type": "generate", "id": "se", "prompt": "a", "seed": -1}, "bad_field", "se"),
    ({"type": "generate", "id": "sf", "prompt": "a", "seed": 2**64}, "bad_field", "sf"),
    ({"type": "generate", "id": "sg", "prompt": "a", "seed": 1.0}, "bad_field", "sg"),
    ({"type": "generate", "id": "sh", "prompt": "a", "max_tokens": -1}, "bad_field", "sh"),
    ({"type": "generate", "id": "si", "prompt": "a", "max_tokens": 601}, "bad_field", "si"),  # over the cap
    ({"type": "generate", "id": "sj", "prompt": "a", "max_tokens": 0}, "bad_field", "sj"),  # unlimited: capped
    ({"type": "cancel", "id": "c1", "prompt": "a"}, "unknown_field", "c1"),
    ({"type": "seq2seq", "id": "q1"}, "missing_field", "q1"),
    ({"type": "seq2seq", "id": "q2", "input": ["1"]}, "bad_field", "q2"),
    ({"type": "seq2seq", "id": "q3", "input": ""}, "bad_field", "q3"),
]


def test_malformed_requests_are_answered_and_the_connection_keeps_working(server):
    async def go():
        answers = []
        async with connect(server) as ws:
            for msg, _, _ in BAD_REQUESTS:
                answers.append(await request(ws, msg))
            answers.append(await request(ws, b"\x01\x02binary"))           # binary frame
            answers.append(await request(ws, "x" * 5000))                   # over --max-message 4096
            await ws.send(["y" * 3000, "z" * 3000])                         # over it in fragments
            answers.append(await recv(ws))
            # the same connection still works, and escaped spellings are the same JSON
            info = await request(ws, '{"type":"\\u0069nfo","id":"ok"}')
            tokens, done = await generate(ws, "ok2", "人的心理", temperature=0, max_tokens=8)
        return answers, info, tokens, done

    answers, info, tokens, done = run(go())
    expected = [(code, rid) for _, code, rid in BAD_REQUESTS]
    expected += [("bad_message", None), ("message_too_large", None), ("message_too_large", None)]
    got = [(a.get("code"), a.get("id")) for a in answers]
    assert got == expected
    assert all(a["type"] == "error" and isinstance(a["message"], str) and a["message"] for a in answers)
    assert info["type"] == "info" and info["id"] == "ok"
    assert len(tokens) == 8 and done["reason"] == "max_tokens"


def test_top_k_and_max_tokens_are_at_most_2_to_the_30_as_in_the_clis(slow_server):
    """As `nano run -k/-n` and nano_train.sample: top_k and max_tokens above 2^30 are
    refused, the bound named (they were allowed up to 2^31 - 1 and 2^32 - 1)."""
    async def go():
        async with connect(slow_server) as ws:
            return [await request(ws, {"type": "generate", "id": field, "prompt": "a", field: 2**30 + 1})
                    for field in ("top_k", "max_tokens")]

    for answer, field in zip(run(go()), ("top_k", "max_tokens")):
        assert (answer["type"], answer["code"], answer["id"]) == ("error", "bad_field", field), answer
        assert answer["message"] == f"{field} must be an integer in [0, 1073741824]"


def test_many_queued_errors_from_a_client_that_does_not_read(server):
    """Replies queue up to a bound, then the server stops reading that client until it reads."""
    async def go():
        async with connect(server) as ws:
            for i in range(200):
                await ws.send(json.dumps({"type": "nope", "id": str(i)}))
            got = [await recv(ws) for _ in range(200)]
            tokens, done = await generate(ws, "after", "人的心理", temperature=0, max_tokens=3)
            return got, tokens, done

    got, tokens, done = run(go())
    assert [g["id"] for g in got] == [str(i) for i in range(200)]
    assert {g["code"] for g in got} == {"unknown_type"} and done["reason"] == "max_tokens"


# ---------------------------------------------------------------------------
# Raw handshakes and frames. libwebsockets parses the upgrade request and the
# frames, and nano_wss.c reassembles the messages from its callbacks; neither
# can be reached by a libFuzzer target without the sockets (fuzz/fuzz_json.c
# and fuzz/fuzz_protocol.c take over from the assembled message on), so random
# byte streams from a fixed seed are sent over TCP here, in random chunks,
# against both builds (the sanitizer build must stay silent).

HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def ws_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True,
             length_form: int | None = None, key: bytes = b"\x12\x34\x56\x78") -> bytes:
    """One client frame (RFC 6455 section 5.2); length_form 126 or 127 forces a longer length field."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    form = length_form or (n if n < 126 else 126 if n < 65536 else 127)
    m = 0x80 if mask else 0
    if form < 126:
        head += bytes([m | n])
    elif form == 126:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client made of a socket: sends any bytes, reads the server's frames."""

    def __init__(self, port: int, timeout: float = TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send_chunked(self, data: bytes, rng) -> None:
        """data in random pieces, so frames arrive split at every kind of boundary."""
        i = 0
        while i < len(data):
            k = rng.choice((1, 2, 3, 7, 64, 500, 5000))
            self.sock.sendall(data[i:i + k])
            i += k

    def _fill(self, enough) -> bool:
        """Receive until enough(self.buf); False on a reset, the timeout or the end."""
        while not enough(self.buf):
            try:
                chunk = self.sock.recv(65536)
            except OSError:  # a reset or the timeout
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def _read(self, n: int) -> bytes | None:
        if not self._fill(lambda buf: len(buf) >= n):
            return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response_head(self) -> bytes | None:
        if not self._fill(lambda buf: b"\r\n\r\n" in buf):
            return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the server's next frame; None at the end of the stream."""
        head = self._read(2)
        if head is None:
            return None
        assert head[1] & 0x80 == 0, "a server frame must not be masked"
        n = head[1] & 0x7F
        if n >= 126:
            ext = self._read(2 if n == 126 else 8)
            if ext is None:
                return None
            n = int.from_bytes(ext, "big")
        payload = self._read(n)
        return None if payload is None else (head[0] & 0x0F, payload)

    def close(self) -> None:
        self.sock.close()


def open_raw(port: int, timeout: float = TIMEOUT) -> RawClient:
    c = RawClient(port, timeout)
    c.sock.sendall(HANDSHAKE)
    head = c.response_head()
    assert head is not None and head.startswith(b"HTTP/1.1 101"), head
    return c


def random_payload(rng) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if kind == 1:  # a request with one byte changed, inserted or removed
        b = bytearray(json.dumps({"type": "info", "id": "r%d" % rng.randrange(1000)}).encode())
        i = rng.randrange(len(b))
        op = rng.randrange(3)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            b.insert(i, rng.randrange(256))
        else:
            del b[i]
        return bytes(b)
    if kind == 2:  # around --max-message 4096
        return b"x" * rng.choice((4095, 4096, 4097, 6000))
    if kind == 3:
        return b""
    if kind == 4:  # nesting at the depth limit and past it
        d = rng.choice((31, 32, 33, 200))
        return b'{"a":' + b"[" * d + b"]" * d + b"}"
    if kind == 5:
        return rng.choice((b'{"type":"info","id":"\xff"}', b'{"type":"info","id":"\xed\xa0\x80"}',
                           "{\"type\":\"info\",\"id\":\"世界\"}".encode()))
    return json.dumps({"type": "info", "id": "v%d" % rng.randrange(1000)}).encode()


def valid_stream(rng) -> tuple[bytes, int]:
    """Well-formed frames carrying 1-5 messages (fragmented, with control frames
    between the fragments); the number of messages, each of which gets one reply."""
    out = b""
    n_messages = rng.randrange(1, 6)
    for _ in range(n_messages):
        payload = random_payload(rng)
        opcode = OP_BINARY if rng.random() < 0.15 else OP_TEXT
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            opcode = OP_BINARY  # a text message must be UTF-8 (otherwise the connection fails: 1007)
        cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            if i and rng.random() < 0.3:  # control frames may come between fragments
                out += ws_frame(rng.choice((OP_PING, OP_PONG)), bytes(rng.randrange(256) for _ in range(
                    rng.randrange(126))))
            key = bytes(rng.randrange(256) for _ in range(4))
            out += ws_frame(OP_TEXT if i == 0 and opcode == OP_TEXT else OP_BINARY if i == 0 else OP_CONT,
                            piece, fin=i == len(pieces) - 1, key=key)
    return out, n_messages


def violation_stream(rng) -> tuple[bytes, bool]:
    """Frames that break RFC 6455 (the server may close the connection) or end
    in the middle of something; True when a probe request may follow."""
    text = json.dumps({"type": "info"}).encode()
    kind = rng.randrange(13)
    if kind == 0:
        return ws_frame(OP_TEXT, text, mask=False), True
    if kind == 1:
        return ws_frame(OP_TEXT, text, rsv=rng.randrange(1, 8)), True
    if kind == 2:
        return ws_frame(OP_PING, b"p" * 200), True  # a control frame over 125 bytes
    if kind == 3:
        return ws_frame(OP_PING, b"p", fin=False), True  # a fragmented control frame
    if kind == 4:
        return ws_frame(OP_CONT, text), True  # a continuation with nothing to continue
    if kind == 5:
        return ws_frame(OP_TEXT, text[:5], fin=False) + ws_frame(OP_TEXT, text[5:]), True
    if kind == 6:
        return ws_frame(rng.choice((3, 4, 5, 6, 7, 11, 12, 13, 14, 15)), text), True
    if kind == 7:
        return ws_frame(OP_CLOSE, rng.choice((b"\x03", b"\x00\x00", b"\x03\xe8\xff", b"\x0b\xb8"))), True
    if kind == 8:  # a 64-bit length with the top bit set, or far more than will come, then the end
        n = rng.choice((1 << 63, (1 << 62) + 5, 1 << 40))
        return bytes([0x81, 0xFF]) + n.to_bytes(8, "big") + b"\x00\x00\x00\x00" + text, False
    if kind == 9:  # the stream ends inside a frame header or payload
        f = ws_frame(OP_TEXT, text * 20)
        return f[:rng.randrange(1, len(f))], False
    if kind == 10:  # ... or inside a fragmented message (its buffer must be freed)
        return ws_frame(OP_TEXT, text * 100, fin=False) + ws_frame(OP_CONT, text, fin=False), False
    if kind == 11:  # a length in a longer field than it needs
        return ws_frame(OP_TEXT, text, length_form=rng.choice((126, 127))), True
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), False


def handshake_variant(rng) -> bytes:
    lines = HANDSHAKE.decode().split("\r\n")[:-2]
    kind = rng.randrange(8)
    if kind == 0:
        del lines[rng.randrange(1, len(lines))]
    elif kind == 1:
        lines[-1] = "Sec-WebSocket-Version: " + rng.choice(("8", "99", "", "13, 8", "x" * 300))
    elif kind == 2:
        lines[4] = "Sec-WebSocket-Key: " + rng.choice(("", "abc", "=" * 24, "\xe9" * 24, "A" * 5000))
    elif kind == 3:
        lines.insert(2, "X-Big: " + "y" * rng.choice((1000, 5000, 20000)))
    elif kind == 4:
        lines[0] = rng.choice(("GET /" + "p" * 3000 + " HTTP/1.1", "GET / HTTP/1.0", "POST / HTTP/1.1",
                               "GET", "\x00\x01\x02", "GET / HTTP/9.9"))
    elif kind == 5:
        lines = [line.lower() for line in lines]
    elif kind == 6:
        lines.append("Sec-WebSocket-Protocol: " + rng.choice(("nano", "other", "nano, other", ",,,", "")))
    else:
        return HANDSHAKE[:rng.randrange(len(HANDSHAKE))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_random_frames_and_handshakes(server):
    import random

    rng = random.Random(20260601)
    # well-formed frames: every message is answered once, in order, and the close handshake completes
    for _ in range(200):
        data, n_messages = valid_stream(rng)
        c = open_raw(server.port)
        try:
            c.send_chunked(data, rng)
            replies = []
            while len(replies) < n_messages:
                f = c.read_frame()
                assert f is not None, f"closed after {len(replies)} of {n_messages} replies"
                if f[0] == OP_TEXT:
                    replies.append(json.loads(f[1]))
                else:
                    assert f[0] == OP_PONG, f
            assert all(r["type"] in ("info", "error") for r in replies), replies
            c.sock.sendall(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            while (f := c.read_frame()) is not None and f[0] != OP_CLOSE:
                assert f[0] == OP_PONG, f
            assert f is not None and f[1][:2] == (1000).to_bytes(2, "big"), f
        finally:
            c.close()
    # protocol violations and streams cut short: the server closes or goes on, and stays up
    for _ in range(150):
        data, probe = violation_stream(rng)
        c = open_raw(server.port, timeout=5)
        try:
            c.send_chunked(data, rng)
            if probe:
                c.sock.sendall(ws_frame(OP_TEXT, b'{"type":"info","id":"probe"}'))
                while (f := c.read_frame()) is not None and f[0] != OP_CLOSE:
                    if f[0] == OP_TEXT and json.loads(f[1]).get("id") == "probe":
                        break
        except OSError:  # the server closed first (a reset, a broken pipe, not connected)
            pass
        finally:
            c.close()
    # upgrade requests with a header missing, wrong or huge, or cut short
    for _ in range(60):
        c = RawClient(server.port, timeout=5)
        try:
            c.send_chunked(handshake_variant(rng), rng)
            c.sock.shutdown(socket.SHUT_WR)
            c.response_head()
        except OSError:  # the server closed first (a reset, a broken pipe, not connected)
            pass
        finally:
            c.close()
    assert server.proc.poll() is None, "the server died"

    async def go():
        async with connect(server) as ws:
            return await request(ws, {"type": "info", "id": "after"})

    assert run(go())["id"] == "after"


def test_invalid_utf8_fails_the_connection_with_1007(server):
    """RFC 6455 section 8.1: a text message that is not UTF-8 fails the connection (code 1007),
    whole or split across fragments; a character split across fragments is fine."""
    def close_code(data: bytes):
        c = open_raw(server.port, timeout=10)
        try:
            c.sock.sendall(data)
            while (f := c.read_frame()) is not None:
                if f[0] == OP_CLOSE:
                    return int.from_bytes(f[1][:2], "big")
                assert f[0] != OP_TEXT, f"answered instead of closed: {f[1][:80]!r}"
            return None
        finally:
            c.close()

    assert close_code(ws_frame(OP_TEXT, b'{"type":"info","id":"\xff"}')) == 1007
    assert close_code(ws_frame(OP_TEXT, b'{"type":"info","id":"', fin=False)
                      + ws_frame(OP_CONT, b'\xe4\xb8"}')) == 1007
    assert close_code(ws_frame(OP_TEXT, b'{"type":"info","id":"\xe4\xb8')) == 1007  # ends inside a character
    whole = '{"type":"info","id":"人"}'.encode()
    c = open_raw(server.port)
    try:
        # a character split across fragments, with a ping (any bytes) between them
        c.sock.sendall(ws_frame(OP_TEXT, whole[:-4], fin=False) + ws_frame(OP_PING, b"\xff\xfe")
                       + ws_frame(OP_CONT, whole[-4:]))
        f = c.read_frame()
        assert f is not None and f[0] == OP_PONG, f
        f = c.read_frame()
        assert f is not None and f[0] == OP_TEXT and json.loads(f[1])["id"] == "人", f
    finally:
        c.close()


def test_error_messages_say_the_real_bounds_and_quote_names_whole(server):
    async def go():
        async with connect(server) as ws:
            out = [await request(ws, {"type": "generate", "id": "t", "prompt": "a", "temperature": v})
                   for v in (3.4028235e38, 1e39, -1)]
            out.append(await request(ws, {"type": "generate", "id": "r", "prompt": "a", "repetition_penalty": 1e39}))
            out.append(await request(ws, json.dumps({"type": "x" * 31 + "人的", "id": "u"}, ensure_ascii=False)))
            out.append(await request(ws, json.dumps({"type": "x" * 30 + "人", "id": "e"})))  # as \u4eba
            out.append(await request(ws, {"type": "info", "id": "n", "a\u0000b\u0001": 1}))
            return out

    *temps, pen, cut, escaped, nul = run(go())
    for m in temps:
        assert m["code"] == "bad_field" and m["message"] == "temperature must be a number in [0, 3.4028234e38] (0 = greedy)"
    assert pen["code"] == "bad_field" and "in (0, 3.4028234e38]" in pen["message"]
    # cut at 32 bytes, but never inside a character or an escape
    assert cut["code"] == "unknown_type" and '"' + "x" * 31 + '"...' in cut["message"], cut
    assert "\ufffd" not in cut["message"]
    assert escaped["code"] == "unknown_type" and '"' + "x" * 30 + '"...' in escaped["message"], escaped
    assert nul["code"] == "unknown_field" and 'unknown field "a\\u0000b\\u0001" for type info' in nul["message"], nul


def test_a_big_cookie_header_is_accepted(server):
    """Browsers send their cookies with the upgrade request: 8 KB of them still upgrade."""
    c = RawClient(server.port)
    try:
        c.sock.sendall(HANDSHAKE[:-2] + b"Cookie: session=" + b"c" * 8192 + b"\r\n\r\n")
        head = c.response_head()
        assert head is not None and head.startswith(b"HTTP/1.1 101"), head
        c.sock.sendall(ws_frame(OP_TEXT, b'{"type":"info","id":"cookie"}'))
        f = c.read_frame()
        assert f is not None and f[0] == OP_TEXT and json.loads(f[1])["id"] == "cookie", f
    finally:
        c.close()


# ---------------------------------------------------------------------------
# Info and the kinds of model (defect 7)


def test_info_reports_the_model(server, nano, psycho):
    async def go():
        async with connect(server) as ws:
            return await request(ws, {"type": "info", "id": "i"})

    info = run(go())
    ref = nano.load(psycho).info
    m = info["model"]
    assert info["type"] == "info" and info["id"] == "i"
    for k in ("block_size", "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "n_hidden", "head_dim",
              "group_size", "n_params", "file_size"):
        assert m[k] == ref[k], k
    assert m["layout"] == "2025.12" and m["quant"] == "q8_0" and m["model_type"] == "nano"
    assert m["tokenizer"] == {"kind": "trie", "vocab_size": 4096, "n_special": 12}
    assert info["modes"] == ["continue", "instruct"] and info["seq2seq"] is True and info["lora"] is None
    s = info["server"]
    assert s["n_ctx"] == 512 and s["max_tokens_cap"] == 600 and s["default_max_tokens"] == 256
    assert s["max_message"] == 4096 and s["threads"] == 2 and s["abi_version"] == 1


def test_models_of_every_kind(h, binaries, sort6, tmp_path):
    no_tok = _write_model(h, tmp_path / "no_tokenizer.bin", None, layout="2026.101", seed=1)
    no_instruct = _write_model(h, tmp_path / "no_instruct.bin",
                               _vocab_without(h, {"<|instruct_mark|>", "<|response_mark|>"}), seed=2)

    async def ask(server, *msgs):
        async with connect(server) as ws:
            out = []
            for msg in msgs:
                await ws.send(json.dumps(msg))
                m = await recv(ws)
                if m["type"] == "token":
                    tokens, done = await collect(ws, m["id"])
                    m = {"type": "stream", "tokens": [m] + tokens, "done": done}
                out.append(m)
            return out

    with Server(binaries["release"], sort6) as s:
        info, seq, gen, long_input = run(ask(
            s, {"type": "info"}, {"type": "seq2seq", "id": "s", "input": "251212"},
            {"type": "generate", "id": "g", "prompt": "25", "temperature": 0},
            {"type": "seq2seq", "id": "s2", "input": "2512121"}))
    ref = subprocess.run([binaries["nano"], "seq2seq", "-m", sort6, "251212"], capture_output=True, text=True)
    assert info["model"]["block_size"] == 6 and info["model"]["attention"] == "causal"
    assert info["model"]["attention_recorded"] is False
    assert seq["output"] == "112225" == ref.stdout.strip() and len(seq["tokens"]) == 6
    ids, _, _ = cli_answer(binaries, sort6, "25", temperature=0)
    assert gen["type"] == "stream" and [t["token"] for t in gen["tokens"]] == ids
    assert gen["done"]["reason"] in ("context_full", "stop")
    assert long_input["code"] == "prompt_too_long" and long_input["id"] == "s2"

    with Server(binaries["release"], no_tok) as s:
        info, gen, seq = run(ask(s, {"type": "info"}, {"type": "generate", "prompt": "a"},
                                 {"type": "seq2seq", "input": "a"}))
    assert info["model"]["tokenizer"] is None and info["modes"] == [] and info["seq2seq"] is False
    assert info["model"]["attention_recorded"] is True and info["model"]["layout"] == "2026.101"
    assert gen["code"] == "unsupported" and seq["code"] == "unsupported"

    # a file that records full attention: seq2seq only, as `nano run` and nano_train.sample treat it
    full = _write_model(h, tmp_path / "full.bin", h.make_vocab(48), layout="2026.101", seed=3, attention=1)
    with Server(binaries["release"], full) as s:
        info, gen, seq = run(ask(s, {"type": "info"}, {"type": "generate", "id": "g", "prompt": "ab"},
                                 {"type": "seq2seq", "id": "s", "input": "abcab"}))
    ref = subprocess.run([binaries["nano"], "seq2seq", "-m", full, "abcab"], capture_output=True, text=True)
    assert info["model"]["attention"] == "full" and info["modes"] == [] and info["seq2seq"] is True
    assert gen["code"] == "unsupported" and "full attention" in gen["message"] and gen["id"] == "g"
    assert seq["type"] == "seq2seq" and seq["output"] == ref.stdout.strip() != ""

    with Server(binaries["release"], no_instruct) as s:
        info, gen, ok = run(ask(s, {"type": "info"}, {"type": "generate", "prompt": "a", "mode": "instruct"},
                                {"type": "generate", "id": "c", "prompt": "ab", "temperature": 0,
                                 "max_tokens": 3}))
    assert info["modes"] == ["continue"] and gen["code"] == "unsupported"
    assert ok["type"] == "stream" and len(ok["tokens"]) == 3

    # no <|unknown|>: a character the vocabulary lacks is the request's problem, said as such
    no_unknown = _write_model(h, tmp_path / "no_unknown.bin", _vocab_without(h, {"<|unknown|>"}), seed=5)
    with Server(binaries["release"], no_unknown) as s:
        gen, seq, ok = run(ask(s, {"type": "generate", "id": "g", "prompt": "ab~"},
                               {"type": "seq2seq", "id": "s", "input": "~"},
                               {"type": "generate", "id": "c", "prompt": "ab", "temperature": 0, "max_tokens": 2}))
    for reply, id_ in ((gen, "g"), (seq, "s")):
        assert reply["code"] == "unsupported" and reply["id"] == id_, reply
        assert reply["message"] == ("the text holds a character that is not in the model's vocabulary, which has "
                                    "no <|unknown|> token to stand for it"), reply
    assert ok["type"] == "stream" and len(ok["tokens"]) == 2


def _lora(h, path: Path, **kw) -> Path:
    import nano_format as nf
    from nano_format.plan import lora_params

    lc = nf.LoraConfig(**{**dict(rank=2, alpha=4, n_layer=8, n_embd=32, n_head=4, n_kv_head=2, n_hidden=96), **kw})
    rng = np.random.default_rng(3)
    path.write_bytes(nf.to_bytes(lc, {p.name: (0.3 * rng.standard_normal(p.shape)).astype(np.float32)
                                      for p in lora_params(lc)}))
    return path


def test_lora(h, binaries, psycho, tmp_path):
    lora = _lora(h, tmp_path / "lora.bin")
    settings = dict(temperature=0, max_tokens=30)
    with Server(binaries["release"], psycho, "-l", lora) as s:
        async def go():
            async with connect(s) as ws:
                info = await request(ws, {"type": "info"})
                return info, await generate(ws, "l", "人的心理", **settings)

        info, (tokens, done) = run(go())
    ids, text, _ = cli_answer(binaries, psycho, "人的心理", lora=lora, **settings)
    plain, _, _ = cli_answer(binaries, psycho, "人的心理", **settings)
    assert info["lora"] == {"rank": 2, "alpha": 4}
    assert [t["token"] for t in tokens] == ids != plain
    assert "".join(t["text"] for t in tokens) == text


# ---------------------------------------------------------------------------
# Limits: connections, idle time; plain HTTP


def test_connection_cap(binaries, psycho):
    with Server(binaries["release"], psycho, "--max-connections", 2) as s:
        async def go():
            a = await connect(s)
            b = await connect(s)
            extra = await connect(s)
            refusal = await recv(extra)
            code, reason = await closed_with(extra)
            assert (await request(b, {"type": "info", "id": "b"}))["id"] == "b"
            await a.close()
            c = await connect(s)  # a's slot is free again
            tokens, done = await generate(c, "c", "人的心理", temperature=0, max_tokens=3)
            await b.close()
            await c.close()
            return refusal, code, reason, done

        refusal, code, reason, done = run(go())
    assert refusal["type"] == "error" and refusal["code"] == "too_many_connections"
    assert code == 1013 and reason == "too many connections"
    assert done["reason"] == "max_tokens"


def test_idle_timeout(binaries, psycho):
    with Server(binaries["release"], psycho, "--idle-timeout", 0.5) as s:
        async def go():
            async with connect(s) as idle, connect(s) as busy:
                t0 = time.monotonic()

                async def timed_close():  # when the idle connection's close arrived
                    code, reason = await closed_with(idle)
                    return code, reason, time.monotonic() - t0

                closing = asyncio.ensure_future(timed_close())
                for i in range(8):  # 1.2 s of activity, more than twice the timeout
                    assert (await request(busy, {"type": "info", "id": str(i)}))["id"] == str(i)
                    await asyncio.sleep(0.15)
                code, reason, elapsed = await closing
                still = await generate(busy, "b", "人的心理", temperature=0, max_tokens=2)
                return code, reason, elapsed, still

        code, reason, elapsed, (tokens, done) = run(go())
    assert code == 1001 and reason == "idle timeout" and 0.4 <= elapsed < 10
    assert done["reason"] == "max_tokens"


def test_plain_http_is_refused_and_the_subprotocol_is_optional(server):
    """A browser or curl at the address gets 426 Upgrade Required with a line of text that
    says what the server is (was: libwebsockets' bare 404 page), on any path and method,
    twice on one kept-alive connection; WebSocket clients are served as before."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path, data in (("/", None), ("/index.html?x=1", None), ("/", b"{}")):
        with pytest.raises(urllib.error.HTTPError) as e:
            no_proxy.open(f"http://127.0.0.1:{server.port}{path}", data=data, timeout=TIMEOUT)
        assert e.value.code == 426, (path, e.value.code)
        assert e.value.headers["Upgrade"] == "websocket" and e.value.headers["Content-Type"].startswith("text/plain")
        assert e.value.read().decode() == (
            'nano-wss is a WebSocket server: connect a WebSocket client (ws://, subprotocol nano or none) and send '
            'JSON requests such as {"type":"info"}; engines/c-core/README.md describes them\n')
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while got.count(b"HTTP/1.1 426") < 2 or not got.endswith(b"describes them\n"):
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk

    async def go():
        async with connect(server, subprotocols=["nano"]) as ws:
            return ws.subprotocol, await request(ws, {"type": "info"})

    subprotocol, info = run(go())
    assert subprotocol == "nano" and info["type"] == "info"


# ---------------------------------------------------------------------------
# Shutdown and the command line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_closes_clients_and_frees_everything(binaries, build, slow_model, sig):
    s = Server(binaries[build], slow_model)

    async def go():
        idle = await connect(s)
        busy = await connect(s)
        await busy.send(json.dumps({"type": "generate", "id": "g", "prompt": "the", "max_tokens": 0}))
        assert (await recv(busy))["type"] == "token"
        s.proc.send_signal(sig)
        return await closed_with(idle), await closed_with(busy)

    try:
        closes = run(go())
    finally:
        rc, err = s.stop(sig)
    assert closes == ((1001, "server shutting down"), (1001, "server shutting down"))
    assert sanitizer_report(err) is None, err
    assert rc == 0, err


def _free_port_in_use():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def _nan_copy(src: Path, dst: Path, tensor: str) -> Path:
    """src with the first value of F32 tensor `tensor` made NaN (the writer refuses NaN)."""
    import nano_format as nf

    data = bytearray(src.read_bytes())
    t = next(t for t in nf.read(bytes(data)).tensors if t.name == tensor)
    data[t.offset:t.offset + 4] = np.array([np.nan], np.float32).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_bad_command_lines(h, binaries, build, psycho, tmp_path):
    bad_magic = tmp_path / "bad.bin"
    bad_magic.write_bytes(b"\0" * 300)
    nan_model = _nan_copy(psycho, tmp_path / "nan.bin", "norm_final")
    nan_lora = _nan_copy(_lora(h, tmp_path / "ok_lora.bin"), tmp_path / "nan_lora.bin", "wq_A")
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)  # opening it for reading used to wait forever for a writer
    lora_as_model = _lora(h, tmp_path / "lora.bin")
    wrong_lora = _lora(h, tmp_path / "wrong_lora.bin", n_embd=16)
    import torch

    checkpoint = tmp_path / "best.pt"
    torch.save({"x": torch.zeros(1)}, checkpoint)  # what a newcomer gives instead of an exported model
    busy = _free_port_in_use()
    try:
        cases = [
            ([], 2, "-m MODEL is required"),
            (["-m"], 2, "missing value"),
            (["-m", psycho, "--bogus"], 2, "unknown option '--bogus'"),
            (["-m", psycho, "--port", "70000"], 2, "--port"),
            (["-m", psycho, "--port", "abc"], 2, "--port"),
            (["-m", psycho, "--threads", "0"], 2, "--threads"),
            (["-m", psycho, "--ctx", "0"], 2, "--ctx"),
            (["-m", psycho, "--ctx", "513"], 2, "exceeds the model's block size 512"),
            (["-m", psycho, "--max-connections", "0"], 2, "--max-connections"),
            (["-m", psycho, "--max-message", "10"], 2, "--max-message"),
            (["-m", psycho, "--idle-timeout", "-1"], 2, "--idle-timeout"),
            (["-m", psycho, "--idle-timeout", "soon"], 2, "--idle-timeout"),
            (["-m", psycho, "--idle-timeout", "0x10"], 2, "expected seconds in [0, 86400], got '0x10'"),
            (["-m", psycho, "--idle-timeout", " 5"], 2, "--idle-timeout"),
            (["-m", psycho, "--port", " +0"], 2, "--port: expected an integer in [0, 65535], got ' +0'"),
            (["-m", psycho, "--threads", "+1"], 2, "--threads"),
            (["-m", psycho, "--max-tokens-cap", "-5"], 2, "--max-tokens-cap"),
            # a request's max_tokens is at most 2^30 (as -n of the CLIs): a larger cap could never bind
            (["-m", psycho, "--max-tokens-cap", str(2**30 + 1)], 2,
             f"--max-tokens-cap: expected an integer in [0, {2**30}], got '{2**30 + 1}'"),
            (["-m", psycho, "--host", "example.com"], 2, "--host"),
            # the same explanations as nano's (cli/load_report.c); was the library's status alone
            (["-m", tmp_path / "missing.bin"], 1, "missing.bin: No such file or directory (NANO_ERR_IO)"),
            (["-m", tmp_path], 1, ": a folder (a directory), not a model file (NANO_ERR_IO)"),
            (["-m", checkpoint], 1, "a zip archive, probably a PyTorch checkpoint (.pt): export it first with "
                                    f"python -m nano_train.export --ckpt {checkpoint} --out MODEL.bin"),
            (["-m", bad_magic], 1, "(NANO_ERR_BAD_MAGIC): the file starts with 00 00 00 00"),
            (["-m", lora_as_model], 1, "(NANO_ERR_UNSUPPORTED): the file is a LoRA module, not a model: give the "
                                       "base model with -m and the LoRA with -l"),
            (["-m", psycho, "-l", wrong_lora], 1, "(NANO_ERR_LORA_MISMATCH): the LoRA is for (n_layer, n_embd, "
                                                  "n_head, n_kv_head) = (8, 16, 4, 2), the model is (8, 32, 4, 2)"),
            (["-m", psycho, "-l", bad_magic], 1, "NANO_ERR_BAD_MAGIC"),
            (["-m", psycho, "-l", psycho], 1, "a model file, not a LoRA module (NANO_ERR_UNKNOWN_MODEL_TYPE): give "
                                              "it with -m; -l takes a LoRA module"),
            (["-m", nan_model], 1, "(NANO_ERR_NON_FINITE): norm_final["),
            (["-m", psycho, "-l", nan_lora], 1, "(NANO_ERR_NON_FINITE): wq_A["),
            (["-m", fifo], 1, "NANO_ERR_IO"),
            (["-m", psycho, "-l", fifo], 1, "NANO_ERR_IO"),
            # the system's reason, in one line (was: libwebsockets' three lines, then "in use, or not an
            # address of this machine" whichever it was)
            (["-m", psycho, "--port", str(busy.getsockname()[1])], 1,
             f"nano-wss: error: cannot listen on 127.0.0.1:{busy.getsockname()[1]} (Address already in use)\n"),
            (["-m", psycho, "--host", "192.0.2.1", "--port", "0"], 1,  # (TEST-NET-1: no machine's address)
             "nano-wss: error: cannot listen on 192.0.2.1:0 (Cannot assign requested address)\n"),
        ]
        for args, want_rc, want_err in cases:
            res = subprocess.run([binaries[build], *map(str, args)], capture_output=True, text=True,
                                 env=server_env(), timeout=TIMEOUT)
            assert res.returncode == want_rc and want_err in res.stderr, (args, res.returncode, res.stderr)
            if want_err.startswith("nano-wss: error: cannot listen"):
                assert res.stderr == want_err, res.stderr
            assert all(line.startswith(("nano-wss: ", "(run 'nano-wss --help'")) for line in res.stderr.splitlines())
            assert "nano-wss: error: " in res.stderr, args
            assert "listening" not in res.stdout, args
            assert sanitizer_report(res.stderr) is None, res.stderr
    finally:
        busy.close()
    for flag in ("--help", "--version"):
        res = subprocess.run([binaries[build], flag], capture_output=True, text=True, env=server_env(),
                             timeout=TIMEOUT)
        assert res.returncode == 0 and "nano-wss" in res.stdout and res.stderr == ""
        if os.path.exists("/dev/full"):  # output that cannot be written is an error, as for `nano`
            with open("/dev/full", "w") as full:
                res = subprocess.run([binaries[build], flag], stdout=full, stderr=subprocess.PIPE, text=True,
                                     env=server_env(), timeout=TIMEOUT)
            assert res.returncode == 1 and "nano-wss: error: writing standard output" in res.stderr, res.stderr


SLOW_OPEN_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* open() of the path in $NANO_TEST_SLOW_OPEN takes a minute: a model on a slow disk
 * (or a big one being checked), so that a signal arrives while the server loads it.
 * Entering that open first creates the path + ".loading", for the test to wait on. */
static int slow_open(const char *name, const char *path, int flags, mode_t mode) {
    const char *slow = getenv("NANO_TEST_SLOW_OPEN");
    int (*real)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, name);
    if (slow && path && strcmp(path, slow) == 0) {
        char marker[4096];
        struct timespec t = {60, 0};
        if (strlen(slow) + sizeof ".loading" <= sizeof marker) {
            int fd;
            strcpy(marker, slow);
            strcat(marker, ".loading");
            fd = real(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) close(fd);
        }
        while (nanosleep(&t, &t) != 0) {}
    }
    return real(path, flags, mode);
}

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & O_CREAT) { va_list ap; va_start(ap, flags); mode = (mode_t)va_arg(ap, int); va_end(ap); }
    return slow_open("open", path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & O_CREAT) { va_list ap; va_start(ap, flags); mode = (mode_t)va_arg(ap, int); va_end(ap); }
    return slow_open("open64", path, flags, mode);
}
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_model_loads_stops_the_server(h, binaries, build, psycho, tmp_path, sig):
    """SIGINT/SIGTERM work before the server listens: the model's open takes a minute here
    (an LD_PRELOAD shim built by the test), and the signal stops the server at once with
    status 0. Before, the signals were blocked for the sigwait thread that started only
    after the load, so a slow (or never-ending) load could not be interrupted."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    shim = tmp_path / "slow_open.so"
    (tmp_path / "slow_open.c").write_text(SLOW_OPEN_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", shim, tmp_path / "slow_open.c", "-ldl"], check=True,
                   env=h.clean_env())
    model = tmp_path / "m.bin"
    model.write_bytes(psycho.read_bytes())
    env = server_env()
    env.update(LD_PRELOAD=str(shim), NANO_TEST_SLOW_OPEN=str(model))
    proc = subprocess.Popen([str(binaries[build]), "-m", str(model), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        loading = tmp_path / "m.bin.loading"  # the shim's mark: the server is inside the slow open
        deadline = time.monotonic() + 60
        while not loading.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loading.exists() and proc.poll() is None, proc.communicate()  # still loading: the open takes a minute
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert proc.returncode == 0 and f"nano-wss: {name} while starting, stopped" in err, (proc.returncode, err)
    assert out == "" and elapsed < 5 and sanitizer_report(err) is None, (out, elapsed, err)


def test_nan_logits_are_an_error_reply(h, binaries, build, tmp_path):
    """Finite weights whose logits overflow to NaN: a seq2seq request (like a generate) is
    answered with an `internal` error naming NANO_ERR_NON_FINITE, as `nano seq2seq` reports
    it, instead of an argmax read off NaN; the connection keeps working."""
    full = tmp_path / "full.bin"
    full.write_bytes(h.overflowing_model_bytes(block_size=32))
    causal = tmp_path / "causal.bin"
    causal.write_bytes(h.overflowing_model_bytes(layout="2026.1", block_size=32))

    async def ask(server, *msgs):
        async with connect(server) as ws:
            return [await request(ws, m) for m in msgs]

    with Server(binaries[build], full) as s:
        seq, again, info = run(ask(s, {"type": "seq2seq", "id": "s", "input": "abcab"},
                                   {"type": "seq2seq", "id": "t", "input": "b"}, {"type": "info", "id": "i"}))
    for reply, rid in ((seq, "s"), (again, "t")):
        assert reply["type"] == "error" and reply["code"] == "internal" and reply["id"] == rid, reply
        assert reply["message"].startswith("seq2seq: ") and "(NANO_ERR_NON_FINITE)" in reply["message"], reply
    assert info["type"] == "info" and info["id"] == "i"
    with Server(binaries[build], causal) as s:
        gen, seq = run(ask(s, {"type": "generate", "id": "g", "prompt": "ab", "temperature": 0, "max_tokens": 4},
                           {"type": "seq2seq", "id": "s", "input": "ab"}))
    assert gen["type"] == "error" and gen["id"] == "g" and "(NANO_ERR_NON_FINITE)" in gen["message"], gen
    assert seq["type"] == "error" and seq["id"] == "s" and "(NANO_ERR_NON_FINITE)" in seq["message"], seq


# ---------------------------------------------------------------------------
# Load: descriptors running out, a client pipelining heavy requests


def test_descriptors_do_not_run_out(binaries, psycho):
    """With RLIMIT_NOFILE 64 and 80 TCP connections that never send a byte, the server neither
    spins on accept() failing with EMFILE nor floods stderr; connections over its caps are closed
    at once, the idle ones it holds are dropped after the handshake timeout (10 s), and then a
    new client is served."""
    import resource

    def limit(soft, hard):
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with Server(binaries["release"], psycho, preexec=limit(64, 64)) as s:
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT) for _ in range(80)]
        try:
            time.sleep(3)
            assert s.proc.poll() is None, "the server died"
            stderr_bytes = os.fstat(s.log.fileno()).st_size
            assert stderr_bytes < 10_000, f"{stderr_bytes} bytes of stderr in 3 s"
            # every idle connection is closed by the server: at once (over a cap) or at the timeout
            t0 = time.monotonic()
            sel = selectors.DefaultSelector()
            for sock in idle:
                sel.register(sock, selectors.EVENT_READ)
            open_ = set(idle)
            while open_ and time.monotonic() - t0 < 20:
                for key, _ in sel.select(1.0):
                    assert key.fileobj.recv(16) == b""
                    sel.unregister(key.fileobj)
                    open_.discard(key.fileobj)
            sel.close()
            assert not open_, f"{len(open_)} idle connections still open after {time.monotonic() - t0:.0f} s"
        finally:
            for sock in idle:
                sock.close()

        async def go():
            async with connect(s) as ws:
                return await request(ws, {"type": "info", "id": "fresh"})

        assert run(go())["id"] == "fresh"
        assert os.fstat(s.log.fileno()).st_size < 10_000
    # the soft limit is raised (to what the caps want, at most the hard limit)
    with Server(binaries["release"], psycho, preexec=limit(40, 4096)) as s:
        soft = next(int(line.split()[3]) for line in Path(f"/proc/{s.proc.pid}/limits").read_text().splitlines()
                    if line.startswith("Max open files"))
        assert soft > 40


def test_pipelined_seq2seq_requests_do_not_stall_other_streams(binaries, psycho):
    """A seq2seq runs from the writeable callback, one per connection per loop turn: a client that
    pipelines many of them delays another client's stream by about one of them, not all of them.
    Timing is compared within the run (a ratio), never against a fixed number of milliseconds."""
    # 450 one-byte tokens of the 512-token context: one forward of ~0.1 s from a short message,
    # so that one read from the socket holds many of them
    heavy = "a" * 450
    n_pipelined = 16

    async def go():
        async with connect(s) as a, connect(s) as b:
            stamps, stop = [], asyncio.Event()

            async def stream():
                while not stop.is_set():
                    await b.send(json.dumps({"type": "generate", "id": "g", "prompt": "人的心理",
                                             "temperature": 1.0, "max_tokens": 50}))
                    while True:
                        m = await recv(b)
                        stamps.append(time.monotonic())
                        if m["type"] != "token":
                            break

            def max_gap(t0, t1):
                ts = [t for t in stamps if t0 <= t <= t1]
                return max(y - x for x, y in zip(ts, ts[1:]))

            streaming = asyncio.ensure_future(stream())
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            for i in range(4):  # one at a time: the baseline
                assert (await request(a, {"type": "seq2seq", "id": f"one{i}", "input": heavy}))["type"] == "seq2seq"
                await asyncio.sleep(0.05)
            t1 = time.monotonic()
            single = max_gap(t0, t1 + 0.05)
            # many in one go, with cheap requests between them: answered in order
            ids = []
            for i in range(n_pipelined):
                ids += [f"s{i}", f"i{i}", f"e{i}"]
                await a.send(json.dumps({"type": "seq2seq", "id": f"s{i}", "input": heavy}))
                await a.send(json.dumps({"type": "info", "id": f"i{i}"}))
                await a.send(json.dumps({"type": "nope", "id": f"e{i}"}))
            t2 = time.monotonic()
            replies = [await recv(a) for _ in ids]
            t3 = time.monotonic()
            await asyncio.sleep(0.05)
            pipelined = max_gap(t2, t3 + 0.05)
            stop.set()
            await asyncio.wait_for(streaming, TIMEOUT)
            return single, pipelined, t3 - t2, ids, replies

    with Server(binaries["release"], psycho, "--idle-timeout", 0) as s:
        single, pipelined, took, ids, replies = run(go())
    assert [r["id"] for r in replies] == ids
    assert [r["type"] for r in replies] == ["seq2seq", "info", "error"] * n_pipelined
    assert pipelined < 3 * single, (f"a stream stalled {pipelined * 1e3:.0f} ms while {n_pipelined} pipelined "
                                    f"seq2seq requests ran ({took * 1e3:.0f} ms); one at a time: {single * 1e3:.0f} ms")
