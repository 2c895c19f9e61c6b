"""Parity with the PyTorch reference (ARCHITECTURE.md, "The parity contract").

Random-weight models are built with a fixed seed in nano_train, exported with
nano_train.convert.export_bin (and export_lora), and run in C through cffi:

  * logits at every position of a 64-token sequence agree within
        |C - torch| <= 1e-5 * max(1, max |torch logits|)    (F32 and Q8_0);
    the max difference is printed for every configuration;
  * greedy decoding gives identical ids for 64 tokens (causal models: an
    8-token prompt then 64 steps through the KV cache; full-attention models:
    the argmax at each of 64 positions of one forward);
  * Q8_0 files are compared with nano_train.convert.emulate_q8_0 (the weights'
    Q8_0 round trip; activations stay float, as in the C engine).

Configurations: F32 and Q8_0, multi-head, grouped-query and multi-query
attention, tied and untied classifier, causal and full attention, RoPE and
learned positions, layouts 2026.1 and 2026.101 (2025.12: the reference
fixtures), LoRA attached and detached, a Q8_0 group equal to n_embd and smaller
ones, n_embd not a multiple of 32, widths and vocabularies that are no multiple
of the SIMD kernels' lanes and tiles, 1 and 2 threads, the AVX2 and the
portable kernels.

Beyond one forward: the whole context (every position up to the block size,
the prompt in several prefill blocks, greedy decoding until the context is
full); the OPENMP=0 and PLATFORM=stdio libraries; `nano run` (--ids, sampling,
the chat, seq2seq) and `nano seq2seq -` against nano_train's generate and
seq2seq, and against `python -m nano_train.sample` itself; nano-wss's streams.
The reference fixtures too, within the same tolerance.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

TOL = 1e-5
KERNELS = {0: "auto", 1: "portable"}  # nano_kernels: AVX2+FMA where the CPU has them, and plain C loops
each_kernels = pytest.mark.parametrize("kernels", list(KERNELS), ids=list(KERNELS.values()))

pytestmark = pytest.mark.usefixtures("torch_one_thread")
GREEDY = 64

CASES = {
    # name: (model config, quant, group, lora rank, layout)
    "f32_mha_tied": (dict(n_embd=48, n_head=4, n_kv_head=4), "f32", None, 0, None),
    "f32_gqa_untied": (dict(n_embd=64, n_head=8, n_kv_head=2, tie_embeddings=False), "f32", None, 0, None),
    "f32_full_attention": (dict(n_embd=32, n_head=4, n_kv_head=2, is_causal=False), "f32", None, 0, None),
    "f32_learned_positions": (dict(n_embd=32, n_head=2, n_kv_head=1, use_rope=False), "f32", None, 0, None),
    "f32_full_learned_untied": (dict(n_embd=24, n_head=3, n_kv_head=1, is_causal=False, use_rope=False,
                                     tie_embeddings=False), "f32", None, 0, None),
    "f32_eps_theta_ext": (dict(n_embd=32, n_head=4, n_kv_head=1, norm_eps=1e-6, rope_theta=500.0), "f32", None, 0,
                          "2026.101"),
    "f32_lora": (dict(n_embd=32, n_head=4, n_kv_head=2), "f32", None, 4, None),
    "q8_group_n_embd": (dict(n_embd=48, n_head=4, n_kv_head=2, n_hidden=96), "q8_0", 48, 0, None),
    "q8_group_8_embd40": (dict(n_embd=40, n_head=5, n_kv_head=1, n_hidden=80), "q8_0", 8, 0, None),
    "q8_group_5_embd40": (dict(n_embd=40, n_head=4, n_kv_head=2, n_hidden=60), "q8_0", 5, 0, None),
    "q8_mha_untied_g16": (dict(n_embd=64, n_head=4, n_kv_head=4, tie_embeddings=False), "q8_0", 16, 0, None),
    "q8_full_attention": (dict(n_embd=32, n_head=4, n_kv_head=2, is_causal=False), "q8_0", 32, 0, None),
    "q8_learned_lora": (dict(n_embd=32, n_head=4, n_kv_head=1, use_rope=False), "q8_0", 16, 3, None),
    "q8_default_group_2026_101": (dict(n_embd=96, n_head=6, n_kv_head=3, n_hidden=160), "q8_0", None, 0,
                                  "2026.101"),
    # widths that are no multiple of the SIMD kernels' 8 lanes, 4-row or 3-token tiles
    "f32_odd_widths": (dict(vocab_size=71, n_embd=36, n_head=6, n_kv_head=3, n_hidden=43), "f32", None, 0, None),
    "q8_odd_widths_g9": (dict(vocab_size=67, n_embd=36, n_head=6, n_kv_head=2, n_hidden=45), "q8_0", 9, 0, None),
    "f32_full_lora": (dict(n_embd=32, n_head=4, n_kv_head=2, is_causal=False), "f32", None, 2, None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory, nano, h):
    from nano_train.convert import emulate_q8_0, export_bin, export_lora
    from nano_train.lora import attach_lora

    kw, quant, group, rank, layout = CASES[request.param]
    seed = sorted(CASES).index(request.param)
    model = h.build_model(kw, seed)
    d = tmp_path_factory.mktemp(request.param)
    tok = h.vocabulary(model.config.vocab_size)
    info = export_bin(model, d / "model.bin", quant=quant, group_size=group, layout=layout, tokenizer=tok)
    reference = emulate_q8_0(copy.deepcopy(model), info.group_size) if quant == "q8_0" else model
    base = copy.deepcopy(reference)
    lora = None
    if rank:
        h.attach_random_lora(model, rank, seed + 100)
        export_lora(model, d / "lora.bin")
        if quant == "q8_0":
            attach_lora(reference, rank, alpha=2 * rank)
            for lr, lm in zip(reference.layers, model.layers):
                for t in ("wq", "wk", "wv", "wo"):
                    getattr(lr, t).lora_A.data.copy_(getattr(lm, t).lora_A.data)
                    getattr(lr, t).lora_B.data.copy_(getattr(lm, t).lora_B.data)
        else:
            reference = model
        lora = nano.load_lora(d / "lora.bin")
    c_model = nano.load(d / "model.bin")
    return dict(name=request.param, model=reference.eval(), base=base.eval(), c_model=c_model, lora=lora,
                info=info, dir=d, tok=tok)


def c_context(case, lib=None, **kw):
    """A context of the case's C model, with its LoRA attached; lib: the files loaded
    by another build's library instead."""
    m = case["c_model"] if lib is None else lib.load(case["dir"] / "model.bin")
    ctx = m.context(**kw)
    if case["lora"] is not None:
        ctx.set_lora(case["lora"] if lib is None else lib.load_lora(case["dir"] / "lora.bin"))
    return ctx


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        logits, _ = model(torch.tensor([list(ids)]))
    return logits[0].numpy()


@each_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_logits_at_every_position(case, threads, kernels):
    m = case["c_model"]
    V, B = m.info["vocab_size"], m.info["block_size"]
    ids = np.random.default_rng(threads).integers(0, V, 64)
    ctx = c_context(case, threads=threads, kernels=kernels)
    got = ctx.eval(ids, all_logits=True)
    want = torch_logits(case["model"], ids)
    diff = np.abs(got - want).max()
    scale = max(1.0, np.abs(want).max())
    print(f"{case['name']} ({case['info'].layout}, {case['info'].quant}, g{case['info'].group_size}, "
          f"{threads} thread(s), {KERNELS[kernels]} kernels): max |C - torch| = {diff:.3g} "
          f"(logits up to {scale:.3g}, tolerance {TOL * scale:.3g})")
    assert diff <= TOL * scale
    assert B >= 64
    if case["lora"] is not None:  # detached again: the base model
        ctx.set_lora(None)
        want = torch_logits(case["base"], ids)
        diff = np.abs(ctx.eval(ids, all_logits=True) - want).max()
        print(f"{case['name']} with the LoRA detached: max |C - torch| = {diff:.3g}")
        assert diff <= TOL * max(1.0, np.abs(want).max())


@each_kernels
def test_greedy_tokens(case, kernels):
    from nano_train.sampling import SamplerConfig, generate

    m = case["c_model"]
    V = m.info["vocab_size"]
    ctx = c_context(case, threads=2, kernels=kernels)
    model = case["model"]
    if model.config.is_causal:
        prompt = np.random.default_rng(9).integers(0, V, 8).tolist()
        want = list(generate(model, prompt, SamplerConfig(temperature=0.0, max_new_tokens=GREEDY)))
        got = ctx.greedy(prompt, GREEDY)
    else:
        inp = np.random.default_rng(9).integers(0, V, GREEDY).tolist()
        want = np.argmax(torch_logits(model, inp), axis=-1).tolist()
        got = ctx.seq2seq(inp)
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    print(f"{case['name']} ({KERNELS[kernels]} kernels): {same} identical greedy tokens")
    assert len(want) == GREEDY and got == want


def test_whole_context(case):
    """The KV cache up to the block size: logits at all of its positions, the prompt
    pushed through in blocks of 7 (attention across blocks), and greedy decoding
    from an 8-token prompt until the context is full, as nano_train's generate."""
    from nano_train.sampling import SamplerConfig, generate

    m, model = case["c_model"], case["model"]
    V, B = m.info["vocab_size"], m.info["block_size"]
    ctx = c_context(case, threads=2, n_batch=7)
    ids = np.random.default_rng(3).integers(0, V, B)
    want = torch_logits(model, ids)
    diff = np.abs(ctx.eval(ids, all_logits=True) - want).max()
    print(f"{case['name']}: max |C - torch| over all {B} positions = {diff:.3g}")
    assert diff <= TOL * max(1.0, np.abs(want).max())
    if model.config.is_causal:
        prompt = ids[:8].tolist()
        want = list(generate(model, prompt, SamplerConfig(temperature=0.0, max_new_tokens=0)))
        assert len(want) == B - len(prompt) + 1
        assert ctx.greedy(prompt, len(want)) == want
        assert ctx.pos == B


@pytest.fixture(scope="module")
def other_libs(h, nano) -> dict:
    """libnano.so of the other builds, made into their own directories as test_build.py
    makes them, loaded through the same cffi harness."""
    for directory, option in h.OTHER_BUILDS.items():
        h.make("lib", extra=(option, f"BUILD={directory}"))
    return {directory: type(nano)(h.CORE / directory / "libnano.so") for directory in h.OTHER_BUILDS}


@pytest.mark.outer_only
def test_other_builds(case, other_libs):
    """The OPENMP=0 and PLATFORM=stdio libraries (the latter reads the file instead of
    mapping it, as on WASM and bare metal): logits and greedy tokens as in build/."""
    from nano_train.sampling import SamplerConfig, generate

    V = case["c_model"].info["vocab_size"]
    ids = np.random.default_rng(4).integers(0, V, 64)
    want = torch_logits(case["model"], ids)
    causal = case["model"].config.is_causal
    prompt = ids[:8].tolist()
    if causal:
        greedy = list(generate(case["model"], prompt, SamplerConfig(temperature=0.0, max_new_tokens=GREEDY)))
    for build, lib in other_libs.items():
        ctx = c_context(case, lib, threads=2)
        diff = np.abs(ctx.eval(ids, all_logits=True) - want).max()
        print(f"{case['name']} ({build}): max |C - torch| = {diff:.3g}")
        assert diff <= TOL * max(1.0, np.abs(want).max()), build
        if causal:
            assert ctx.greedy(prompt, GREEDY) == greedy, build
        else:
            assert ctx.seq2seq(ids) == np.argmax(want, axis=-1).tolist(), build


CLI_RUNS = {
    # nano run's options: nano_train's SamplerConfig
    "-t 0 -n 64": dict(temperature=0.0, max_new_tokens=64),
    "-t 0 -n 0 --threads 2 --batch 3": dict(temperature=0.0, max_new_tokens=0),
    "-t 0 -n 64 --portable": dict(temperature=0.0, max_new_tokens=64),
    "-t 0.9 -k 20 --top-p 0.9 --min-p 0.02 -r 1.3 -s 7 -n 64": dict(temperature=0.9, top_k=20, top_p=0.9,
                                                                   min_p=0.02, repetition_penalty=1.3, seed=7,
                                                                   max_new_tokens=64),
}


def test_cli(case, cli):
    """`nano run --ids` (continuation, greedy and sampled) and the chat (instruct-mode
    questions on standard input), with `-l` for the LoRA cases, give the ids and text
    of nano_train's generate; on full-attention models `nano run -p`, its line batch
    and `nano seq2seq -` (with `-l` too) give nano_train's seq2seq."""
    from nano_train.sampling import SamplerConfig, generate, instruct_prompt, seq2seq

    model, tok, d = case["model"], case["tok"], case["dir"]
    args = ["-m", d / "model.bin", *(["-l", d / "lora.bin"] if case["lora"] is not None else [])]
    rng = np.random.default_rng(5)
    texts = [tok.decode(rng.integers(6, model.config.vocab_size, n).tolist()) for n in (8, 3, 12)]
    if not model.config.is_causal:  # one forward per input: nano run does what nano seq2seq does
        want = [tok.decode(seq2seq(model, tok.encode(t))) for t in texts]
        r = cli("run", *args, "-p", texts[0])
        assert r.returncode == 0 and r.stdout == want[0] + "\n", r.stderr
        lines = "".join(t + "\n" for t in texts)
        batches = [("run", *args), ("seq2seq", *args, "-")]
        for r in [cli(*batch, input=lines) for batch in batches]:
            assert r.returncode == 0 and r.stdout.splitlines() == want, r.stderr
        return
    prompt = tok.encode(texts[0])
    for options, settings in CLI_RUNS.items():
        r = cli("run", *args, "-p", texts[0], "--ids", *options.split())
        assert r.returncode == 0, r.stderr
        want = list(generate(model, prompt, SamplerConfig(**settings), tokenizer=tok))
        assert r.stdout == ",".join(map(str, prompt + want)) + "\n", options
    r = cli("run", *args, "-t", "0", input="".join(t + "\n" for t in texts))
    assert r.returncode == 0, r.stderr
    greedy = SamplerConfig(temperature=0.0)
    want = [tok.decode(list(generate(model, instruct_prompt(tok, t), greedy, tokenizer=tok))) for t in texts]
    assert r.stdout.splitlines() == want
    # the chat with --system: every question as nano_train's instruct_prompt(tok, question, system)
    system = tok.decode(rng.integers(6, model.config.vocab_size, 5).tolist())
    r = cli("run", *args, "-t", "0", "--system", system, input="".join(t + "\n" for t in texts))
    assert r.returncode == 0, r.stderr
    want = [tok.decode(list(generate(model, instruct_prompt(tok, t, system), greedy, tokenizer=tok)))
            for t in texts]
    assert r.stdout.splitlines() == want


@pytest.mark.outer_only
@pytest.mark.parametrize("case", ["f32_lora", "q8_learned_lora", "q8_full_attention"], indirect=True)
@pytest.mark.parametrize("options", ["", "--instruct -t 0.7 -k 30 -r 1.1 -s 5 -n 40",
                                     "--instruct --system SYSTEM -t 0 -n 40",
                                     "--instruct --system SYSTEM -t 0.7 -k 30 -r 1.1 -s 5 -n 40"])
def test_nano_run_prints_what_nano_train_sample_prints(case, cli, h, options):
    """The two programs a user runs, given the same file, LoRA, prompt and options
    (none: both defaults, sampling at temperature 1 with seed 0), print the same text.
    SYSTEM: a system text from the vocabulary (--system TEXT: TEXT "\\n" PROMPT)."""
    import subprocess
    import sys

    d = case["dir"]
    text = case["tok"].decode(list(range(10, 18)))
    system = case["tok"].decode(list(range(20, 25)))
    args = ["-m", str(d / "model.bin"), *(["-l", str(d / "lora.bin")] if case["lora"] is not None else []),
            "-p", text, *(system if o == "SYSTEM" else o for o in options.split())]
    want = subprocess.run([sys.executable, "-m", "nano_train.sample", *args, "--threads", "1"], capture_output=True,
                          text=True, env=h.clean_env(), timeout=120)
    assert want.returncode == 0 and want.stdout, want.stderr
    got = cli("run", *args)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout


SERVER_REQUESTS = [
    # a generate request's settings: nano_train's SamplerConfig
    (dict(temperature=0, max_tokens=64), dict(temperature=0.0, max_new_tokens=64)),
    (dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.3, seed=7, max_tokens=0),
     dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.3, seed=7, max_new_tokens=0)),
    (dict(mode="instruct", temperature=0, max_tokens=64), dict(temperature=0.0, max_new_tokens=64)),
    (dict(mode="instruct", temperature=0.7, repetition_penalty=1.2, seed=3, max_tokens=64),
     dict(temperature=0.7, repetition_penalty=1.2, seed=3, max_new_tokens=64)),
]


@pytest.mark.outer_only  # test_wss.py runs the sanitizer build's server
def test_server(case, h):
    """nano-wss (two threads, the LoRA cases with -l) streams the tokens nano_train's
    generate gives (continuation and instruct), and answers seq2seq as nano_train."""
    import asyncio
    import json
    import subprocess

    import websockets
    from nano_train.sampling import SamplerConfig, generate, instruct_prompt, seq2seq

    model, tok, d = case["model"], case["tok"], case["dir"]
    h.make("all")
    lora = ["-l", str(d / "lora.bin")] if case["lora"] is not None else []
    text = tok.decode(np.random.default_rng(6).integers(6, model.config.vocab_size, 8).tolist())

    async def ask(url: str) -> list[dict]:
        async with websockets.connect(url, ping_interval=None, proxy=None) as ws:
            if not model.config.is_causal:
                await ws.send(json.dumps({"type": "seq2seq", "id": "s", "input": text}))
                return [json.loads(await ws.recv())]
            answers = []
            for i, (settings, _) in enumerate(SERVER_REQUESTS):
                await ws.send(json.dumps({"type": "generate", "id": str(i), "prompt": text, **settings}))
                answers.append([])
                while (m := json.loads(await ws.recv()))["type"] == "token":
                    answers[-1].append(m["token"])
                assert m["type"] == "done", m
            return answers

    server = subprocess.Popen([str(h.BUILD / "nano-wss"), "-m", str(d / "model.bin"), *lora, "--port", "0",
                               "--threads", "2"], stdout=subprocess.PIPE, text=True, env=h.clean_env())
    try:
        line = server.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line
        got = asyncio.run(asyncio.wait_for(ask(f"ws://{line.split()[-1]}/"), 60))
    finally:
        server.terminate()
        assert server.wait(30) == 0
        server.stdout.close()
    if not model.config.is_causal:
        assert got[0]["tokens"] == seq2seq(model, tok.encode(text)), got
        return
    prompts = {"continue": tok.encode(text), "instruct": instruct_prompt(tok, text)}
    for (settings, config), ids in zip(SERVER_REQUESTS, got):
        prompt = prompts[settings.get("mode", "continue")]
        assert ids == list(generate(model, prompt, SamplerConfig(**config), tokenizer=tok)), settings


@each_kernels
def test_psycho_greedy_equals_nano_train(nano, psycho_path, kernels):
    """The reference Q8_0 fixture (layout 2025.12), imported into nano_train (dequantized),
    greedy for 128 tokens; logits within the contract's tolerance."""
    from nano_train.convert import load_bin
    from nano_train.sampling import SamplerConfig, generate

    model, tok = load_bin(psycho_path)
    m = nano.load(psycho_path)
    for text in ("人的心理", "精神的本质是", "意识"):
        prompt = tok.encode(text)
        want = list(generate(model, prompt, SamplerConfig(temperature=0.0, max_new_tokens=128)))
        got = m.context(threads=2, kernels=kernels).greedy(prompt, 128)
        assert got == want, text
    ids = tok.encode("在一本哲学著作的序言里，如果也象在普通的书序里惯常所做的那样先作一个声明")
    want = torch_logits(model, ids)
    diff = np.abs(m.context(kernels=kernels).eval(ids, all_logits=True) - want).max()
    print(f"psycho ({KERNELS[kernels]} kernels): max |C - torch| over {len(ids)} positions = {diff:.3g}")
    assert diff <= TOL * max(1.0, np.abs(want).max())


@each_kernels
def test_sort6_equals_nano_train(nano, sort6_path, kernels):
    from nano_train.convert import load_bin
    from nano_train.sampling import seq2seq

    model, tok = load_bin(sort6_path, is_causal=False)
    m = nano.load(sort6_path)
    ctx = m.context(kernels=kernels)
    rng = np.random.default_rng(0)
    for _ in range(20):
        digits = "".join(str(d) for d in rng.integers(0, 10, 6))
        ids = tok.encode(digits)
        assert ctx.seq2seq(ids) == seq2seq(model, ids), digits
    ids = tok.encode("251212")
    assert tok.decode(seq2seq(model, ids)) == "112225"
    want = torch_logits(model, ids)
    diff = np.abs(m.context(attention=2, kernels=kernels).eval(ids, all_logits=True) - want).max()
    print(f"sort6 ({KERNELS[kernels]} kernels): max |C - torch| = {diff:.3g}")
    assert diff <= TOL * max(1.0, np.abs(want).max())
