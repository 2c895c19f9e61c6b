"""The C engine's test harness: build with make, load libnano.so through cffi (ABI mode).

The session starts by running `make test-programs` in engines/c-core (the tests
really build the target). The public API is declared to cffi from
include/nano.h itself (preprocessed without its system includes), so the
harness cannot drift from the header.

Environment:
    NANO_SHARED    the shared/ folder (default <repo>/../shared; see the root conftest.py)
    NANO_C_BUILD   "release" (default, build/) or "san" (build-san/: ASan + UBSan).
                   Loading the ASan library into Python needs the ASan runtime
                   preloaded: tests/test_sanitizers.py re-runs this suite that way
                   in a subprocess; do not set it by hand without LD_PRELOAD.

Missing shared data or a missing toolchain fails the tests; nothing skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CORE = Path(__file__).resolve().parents[1]
REPO = CORE.parents[1]
BUILD_KIND = os.environ.get("NANO_C_BUILD", "release")
if BUILD_KIND not in ("release", "san"):
    raise RuntimeError(f"NANO_C_BUILD must be 'release' or 'san', not {BUILD_KIND!r}")
SAN = BUILD_KIND == "san"
BUILD = CORE / ("build-san" if SAN else "build")
# The builds with other options, each into its own directory: directory -> make option
OTHER_BUILDS = {"build-noomp": "OPENMP=0", "build-stdio": "PLATFORM=stdio"}



def pytest_configure(config):
    config.addinivalue_line("markers", "outer_only: runs in the normal build only, not in the sanitizer re-run")


# ---------------------------------------------------------------------------
# Building


def clean_env() -> dict:
    """The environment for tools and programs: without the ASan runtime that the
    sanitizer re-run preloads into Python (compilers and make must not inherit it)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env


def run_samples(arg_lists: list[list]) -> list[subprocess.CompletedProcess]:
    """`python -m nano_train.sample ARGS` for each ARGS, each in a process of its own as a
    user runs it, several at a time (each spends seconds importing torch: one after another,
    they made the stop-text tests 25 s each)."""
    def one(args):
        return subprocess.run([sys.executable, "-m", "nano_train.sample", *map(str, args)], capture_output=True,
                              text=True, env=clean_env(), timeout=300)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, arg_lists))


def make(*targets: str, san: bool = False, extra: tuple[str, ...] = ()) -> None:
    """Run make in engines/c-core; a failed build fails the test with make's output."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed (python tools/setup/system_deps.py build)", pytrace=False)
    if san and shutil.which("clang") is None:
        pytest.fail("clang is not installed (python tools/setup/system_deps.py sanitize)", pytrace=False)
    cmd = ["make", "-C", str(CORE), "-j2", *(["SANITIZE=1"] if san else []), *extra, *targets]
    res = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    if res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def built() -> Path:
    """The build directory after `make test-programs` (build/ or build-san/)."""
    make("test-programs", san=SAN)
    return BUILD


@pytest.fixture(scope="session")
def nano_bin(built) -> Path:
    return built / "nano"


# ---------------------------------------------------------------------------
# cffi


def header_cdef() -> str:
    """nano.h's declarations for cffi: preprocessed without system includes, NANO_API empty."""
    text = (CORE / "include" / "nano.h").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#include"))
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler found", pytrace=False)
    res = subprocess.run([cc, "-E", "-P", "-DNANO_API=", "-x", "c", "-"], input=text, capture_output=True,
                         text=True, check=True, env=clean_env())
    # the integer #defines too (cffi takes `#define NAME <integer>`)
    defines = []
    for m in re.finditer(r"^#define (NANO_\w+) (.+?)\s*$", text, re.M):
        expr = re.sub(r"(?<=[0-9a-fA-F])u\b", "", m.group(2))
        if re.fullmatch(r"[0-9xXa-fA-F()<> ]+", expr):
            defines.append(f"#define {m.group(1)} {int(eval(expr, {}))}")
    return res.stdout + "\n" + "\n".join(defines)


TEST_CDEF = """
void nano_test_matmul(uint32_t kernels, float *y, const float *x, const float *w,
                      uint32_t n, uint32_t rows, uint32_t cols, int nt);
void nano_test_matmul_q8(uint32_t kernels, float *y, const float *x, const int8_t *q,
                         const float *s, uint32_t n, uint32_t rows, uint32_t cols,
                         uint32_t group, int nt);
void nano_test_rmsnorm(float *y, const float *x, const float *w, uint32_t n, float eps);
void nano_test_rope(float *x, uint32_t n_heads, uint32_t head_dim, const float *cos_row,
                    const float *sin_row);
void nano_test_softmax(uint32_t kernels, float *x, uint32_t n);
void nano_test_swiglu(float *y, const float *a, const float *b, uint32_t n);
const char *nano_test_kernels_name(uint32_t kernels);
nano_status nano_test_eval_in_omp_team(const nano_model *m, int team, const int32_t *ids, uint32_t n, float *logits, int32_t *ran);
"""


class NanoError(Exception):
    def __init__(self, status: int, name: str, what: str = ""):
        super().__init__(f"{what}: {name}" if what else name)
        self.status = status
        self.name = name


class Nano:
    """libnano.so through cffi, with small numpy-friendly helpers."""

    def __init__(self, lib_path: Path):
        import cffi

        self.ffi = cffi.FFI()
        self.ffi.cdef(header_cdef())
        self.ffi.cdef(TEST_CDEF)
        self.lib = self.ffi.dlopen(str(lib_path))
        self.path = lib_path

    # -- status --------------------------------------------------------------

    def status_name(self, st: int) -> str:
        return self.ffi.string(self.lib.nano_status_name(st)).decode()

    def check(self, st: int, what: str = "") -> None:
        if st != self.lib.NANO_OK:
            raise NanoError(st, self.status_name(st), what)

    # -- models --------------------------------------------------------------

    def load_status(self, data: bytes) -> str:
        """The status name of loading `data` from a buffer ("NANO_OK" or the error)."""
        out = self.ffi.new("nano_model **")
        buf = self.ffi.from_buffer(data)
        st = self.lib.nano_model_load_buffer(buf, len(data), self.ffi.NULL, out)
        if st == self.lib.NANO_OK:
            self.lib.nano_model_free(out[0])
        return self.status_name(st)

    def load_detail(self, data: bytes, size: int = 256, lora: bool = False) -> tuple[str, str]:
        """(status name, the loader's error_detail) of loading `data` from a buffer, with a
        detail buffer of `size` bytes that starts out filled with '#'."""
        buf = self.ffi.new("char[]", max(size, 1))
        self.ffi.memmove(buf, b"#" * max(size, 1), max(size, 1))
        params = self.ffi.new("nano_model_params *", self.lib.nano_model_default_params())
        params.error_detail = buf
        params.error_detail_size = size
        keep = self.ffi.from_buffer(data)
        if lora:
            out = self.ffi.new("nano_lora **")
            st = self.lib.nano_lora_load_buffer(keep, len(data), params, out)
            if st == self.lib.NANO_OK:
                self.lib.nano_lora_free(out[0])
        else:
            out = self.ffi.new("nano_model **")
            st = self.lib.nano_model_load_buffer(keep, len(data), params, out)
            if st == self.lib.NANO_OK:
                self.lib.nano_model_free(out[0])
        raw = bytes(self.ffi.buffer(buf, max(size, 1)))
        detail = raw.split(b"\0", 1)[0].decode() if size else raw.decode()
        return self.status_name(st), detail

    def load(self, source, use_mmap: bool = True) -> "Model":
        out = self.ffi.new("nano_model **")
        params = self.lib.nano_model_default_params()
        params.use_mmap = 1 if use_mmap else 0
        keep = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            keep = self.ffi.from_buffer(source)
            st = self.lib.nano_model_load_buffer(keep, len(source), self.ffi.new("nano_model_params *", params),
                                                 out)
        else:
            st = self.lib.nano_model_load_file(str(source).encode(), self.ffi.new("nano_model_params *", params),
                                               out)
        self.check(st, str(source)[:80] if not isinstance(source, (bytes, bytearray, memoryview)) else "buffer")
        return Model(self, self.ffi.gc(out[0], self.lib.nano_model_free), keep)

    def load_lora(self, source) -> "Lora":
        out = self.ffi.new("nano_lora **")
        keep = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            keep = self.ffi.from_buffer(source)
            st = self.lib.nano_lora_load_buffer(keep, len(source), self.ffi.NULL, out)
        else:
            st = self.lib.nano_lora_load_file(str(source).encode(), self.ffi.NULL, out)
        self.check(st, "lora")
        return Lora(self, self.ffi.gc(out[0], self.lib.nano_lora_free), keep)

    def tokenizer_from_section(self, section: bytes, vocab_size: int = 0) -> "Tokenizer":
        out = self.ffi.new("nano_tokenizer **")
        st = self.lib.nano_tokenizer_init_section(self.ffi.from_buffer(section), len(section), vocab_size, out)
        self.check(st, "tokenizer section")
        handle = self.ffi.gc(out[0], self.lib.nano_tokenizer_free)
        return Tokenizer(self, handle, owner=None)

    def info_dict(self, info) -> dict:
        d = {}
        for name, _ in self.ffi.typeof("nano_model_info").fields:
            v = getattr(info, name)
            if name == "layout":
                v = self.ffi.string(v).decode()
            d[name] = v
        return d

    def sampler(self, vocab_size: int, **kw) -> "Sampler":
        p = self.lib.nano_sampler_default_params()
        for k, v in kw.items():
            setattr(p, k, v)
        out = self.ffi.new("nano_sampler **")
        self.check(self.lib.nano_sampler_init(self.ffi.new("nano_sampler_params *", p), vocab_size, out),
                   "sampler")
        return Sampler(self, self.ffi.gc(out[0], self.lib.nano_sampler_free), vocab_size)


@dataclass
class Tensor:
    name: str
    layer: int
    quant_type: int
    shape: tuple
    offset: int
    size: int


class Model:
    def __init__(self, nano: Nano, handle, keep):
        self.nano, self.handle, self._keep = nano, handle, keep
        info = nano.ffi.new("nano_model_info *")
        nano.check(nano.lib.nano_model_get_info(handle, info))
        self.info = nano.info_dict(info)

    @property
    def tensors(self) -> list[Tensor]:
        ffi, lib = self.nano.ffi, self.nano.lib
        out = []
        t = ffi.new("nano_tensor_info *")
        for i in range(self.info["n_tensors"]):
            self.nano.check(lib.nano_model_get_tensor(self.handle, i, t))
            out.append(Tensor(ffi.string(t.name).decode(), t.layer, t.quant_type,
                              tuple(t.dims[d] for d in range(t.n_dims)), t.offset, t.size))
        return out

    @property
    def tokenizer(self) -> "Tokenizer | None":
        h = self.nano.lib.nano_model_tokenizer(self.handle)
        return None if h == self.nano.ffi.NULL else Tokenizer(self.nano, h, owner=self)

    def context(self, n_ctx: int = 0, threads: int = 1, attention: int = 0, kernels: int = 0,
                n_batch: int = 0) -> "Context":
        lib, ffi = self.nano.lib, self.nano.ffi
        p = lib.nano_context_default_params()
        p.n_ctx, p.n_threads, p.attention, p.kernels, p.n_batch = n_ctx, threads, attention, kernels, n_batch
        out = ffi.new("nano_context **")
        self.nano.check(lib.nano_context_init(self.handle, ffi.new("nano_context_params *", p), out), "context")
        return Context(self, ffi.gc(out[0], lib.nano_context_free))


class Lora:
    def __init__(self, nano, handle, keep):
        self.nano, self.handle, self._keep = nano, handle, keep


class Tokenizer:
    def __init__(self, nano: Nano, handle, owner):
        self.nano, self.handle, self._owner = nano, handle, owner

    @property
    def vocab_size(self) -> int:
        return self.nano.lib.nano_tokenizer_vocab_size(self.handle)

    def encode(self, text, allow_special: bool = False) -> list[int]:
        ffi, lib = self.nano.ffi, self.nano.lib
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        n = ffi.new("size_t *")
        st = lib.nano_tokenizer_encode(self.handle, data, len(data), int(allow_special), ffi.NULL, 0, n)
        if st not in (lib.NANO_OK, lib.NANO_ERR_BUFFER_TOO_SMALL):
            self.nano.check(st, "encode")
        ids = ffi.new("int32_t[]", max(1, n[0]))
        self.nano.check(lib.nano_tokenizer_encode(self.handle, data, len(data), int(allow_special), ids, n[0], n))
        return list(ids[0:n[0]])

    def decode_bytes(self, ids) -> bytes:
        ffi, lib = self.nano.ffi, self.nano.lib
        arr = ffi.new("int32_t[]", list(ids) or [0])
        n = ffi.new("size_t *")
        st = lib.nano_tokenizer_decode(self.handle, arr, len(ids), ffi.NULL, 0, n)
        if st not in (lib.NANO_OK, lib.NANO_ERR_BUFFER_TOO_SMALL):
            self.nano.check(st, "decode")
        buf = ffi.new("char[]", n[0] + 1)
        self.nano.check(lib.nano_tokenizer_decode(self.handle, arr, len(ids), buf, n[0] + 1, n))
        return ffi.unpack(buf, n[0])

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8")

    def token_text(self, i: int) -> bytes:
        ffi = self.nano.ffi
        t, n = ffi.new("char **"), ffi.new("size_t *")
        self.nano.check(self.nano.lib.nano_tokenizer_token_text(self.handle, i, t, n))
        return ffi.unpack(t[0], n[0])

    def find(self, text: str) -> int:
        b = text.encode()
        return self.nano.lib.nano_tokenizer_find(self.handle, b, len(b))

    def is_special(self, i: int) -> bool:
        return bool(self.nano.lib.nano_tokenizer_is_special(self.handle, i))


class Context:
    def __init__(self, model: Model, handle):
        self.model, self.nano, self.handle = model, model.nano, handle
        self.V = model.info["vocab_size"]

    def reset(self):
        self.nano.lib.nano_context_reset(self.handle)

    @property
    def pos(self) -> int:
        return self.nano.lib.nano_context_pos(self.handle)

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Logits [n, V] (all_logits) or [V] (the last position)."""
        ffi = self.nano.ffi
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        out = np.zeros((len(toks), self.V) if all_logits else (self.V,), dtype=np.float32)
        st = self.nano.lib.nano_eval(self.handle, ffi.cast("int32_t *", toks.ctypes.data), len(toks),
                                     ffi.cast("float *", out.ctypes.data), int(all_logits))
        self.nano.check(st, "eval")
        return out

    def eval_status(self, tokens) -> str:
        ffi = self.nano.ffi
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        st = self.nano.lib.nano_eval(self.handle, ffi.cast("int32_t *", toks.ctypes.data), len(toks),
                                     ffi.NULL, 0)
        return self.nano.status_name(st)

    def seq2seq(self, tokens) -> list[int]:
        ffi = self.nano.ffi
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        out = np.zeros(len(toks), dtype=np.int32)
        self.nano.check(self.nano.lib.nano_seq2seq(self.handle, ffi.cast("int32_t *", toks.ctypes.data),
                                                   len(toks), ffi.cast("int32_t *", out.ctypes.data)),
                        "seq2seq")
        return out.tolist()

    def set_threads(self, n: int) -> None:
        self.nano.check(self.nano.lib.nano_context_set_threads(self.handle, n))

    def set_lora(self, lora: "Lora | None") -> None:
        self._lora = lora  # keep it alive while attached
        self.nano.check(self.nano.lib.nano_context_set_lora(self.handle, lora.handle if lora else
                                                            self.nano.ffi.NULL), "lora")

    def greedy(self, prompt, n: int) -> list[int]:
        """Greedy continuation: prompt (batched), then n tokens one at a time."""
        self.reset()
        logits = self.eval(prompt)
        out = []
        for i in range(n):
            t = int(np.argmax(logits))
            out.append(t)
            if i + 1 < n:
                logits = self.eval([t])
        return out


class Sampler:
    def __init__(self, nano, handle, vocab_size):
        self.nano, self.handle, self.V = nano, handle, vocab_size

    def sample(self, logits, history=()) -> int:
        ffi = self.nano.ffi
        x = np.ascontiguousarray(logits, dtype=np.float32)
        h = np.ascontiguousarray(list(history) or [0], dtype=np.int32)
        out = ffi.new("int32_t *")
        st = self.nano.lib.nano_sampler_sample(self.handle, ffi.cast("float *", x.ctypes.data),
                                               ffi.cast("int32_t *", h.ctypes.data), len(history), out)
        self.nano.check(st, "sample")
        return out[0]


@pytest.fixture(scope="session")
def nano(built) -> Nano:
    return Nano(built / "libnano.so")


# ---------------------------------------------------------------------------
# Command-line runs


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(binary: Path, *args, input: str | bytes | None = None, env: dict | None = None,
            timeout: float = 120) -> Run:
    full_env = clean_env()  # programs link their own runtime
    if env:
        full_env.update(env)
    data = input.encode() if isinstance(input, str) else input
    res = subprocess.run([str(binary), *map(str, args)], input=data, capture_output=True, env=full_env,
                         timeout=timeout)
    return Run(res.returncode, res.stdout.decode("utf-8", "replace"), res.stderr.decode("utf-8", "replace"))


@pytest.fixture(scope="session")
def cli(nano_bin):
    def run(*args, **kw) -> Run:
        return run_cli(nano_bin, *args, **kw)
    return run


# ---------------------------------------------------------------------------
# Model files built with nano_format (fixed seeds)


def make_vocab(n: int = 48) -> list:
    """A small Nano vocabulary: the reference's special tokens, ASCII letters and digits,
    some multi-character and CJK tokens."""
    import nano_format as nf

    specials = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
    texts = list(specials)
    pool = list("abcdefghijklmnopqrstuvwxyz0123456789 .,") + ["ab", "the", "世", "界", "世界", "\U0001F600"]
    for t in pool:
        if len(texts) >= n:
            break
        texts.append(t)
    i = 0
    while len(texts) < n:
        texts.append(chr(0x4E00 + i))
        i += 1
    return [nf.TokenEntry(id=i, text=t, is_special=t in specials) for i, t in enumerate(texts)]


def random_weights(config, seed: int = 0, scale: float = 0.3) -> dict:
    """Random float32 tensors for every parameter of the config (norms near 1)."""
    from nano_format.plan import model_params

    rng = np.random.default_rng(seed)
    out = {}
    for p in model_params(config):
        if p.name in ("rope_cos", "rope_sin"):
            continue  # the writer computes the tables
        if p.name.startswith("norm"):
            out[p.name] = (1.0 + 0.1 * rng.standard_normal(p.shape)).astype(np.float32)
        else:
            out[p.name] = (scale * rng.standard_normal(p.shape)).astype(np.float32)
    return out


def build_model(kw: dict, seed: int):
    """A random nano_train model (block 80, vocabulary 72, 2 layers unless kw says
    otherwise) whose logits have clear margins, so that greedy decoding is stable."""
    import math

    import torch
    from nano_train.model import ModelConfig, Transformer

    c = dict(block_size=80, vocab_size=72, n_layer=2)
    c.update(kw)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**c))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.startswith(("tok_embd", "pos_embd")):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(p.shape[1])))
    return model.eval()


def attach_random_lora(model, rank: int, seed: int, scale: float = 0.3):
    """Attach LoRA (alpha 2 x rank) to model and draw B at random (it starts at zero,
    which would change nothing), so that the adapter changes the model. Returns it."""
    import torch
    from nano_train.lora import attach_lora

    attach_lora(model, rank, alpha=2 * rank)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for t in ("wq", "wk", "wv", "wo"):
                b = getattr(layer, t).lora_B
                b.copy_(torch.randn(b.shape, generator=gen) * scale)
    return model


def vocabulary(n: int):
    """A nano_tokenizer Tokenizer of n tokens: the reference's specials, then CJK characters."""
    import nano_format as nf
    from nano_tokenizer import Tokenizer

    specials = ["<|padding|>", "<|unknown|>", "<|bos|>", "<|eos|>", "<|instruct_mark|>", "<|response_mark|>"]
    texts = specials + [chr(0x4E00 + i) for i in range(n - len(specials))]
    return Tokenizer.from_tokens([nf.TokenEntry(id=i, text=t, is_special=t in specials)
                                  for i, t in enumerate(texts)])


def model_bytes(seed: int = 0, quant: str = "f32", layout: str = "2026.1", group_size=None, vocab=None,
                **config_kw) -> bytes:
    """A valid model file as bytes: a small random model with a vocabulary."""
    import nano_format as nf

    tokens = vocab if vocab is not None else make_vocab(config_kw.get("vocab_size", 48))
    kw = dict(block_size=16, vocab_size=len(tokens), n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    kw.update(config_kw)
    kw["vocab_size"] = len(tokens)
    config = nf.Config(**kw)
    return nf.to_bytes(config, random_weights(config, seed), tokens, quant=quant, group_size=group_size,
                       layout=layout)


def overflowing_model_bytes(seed: int = 0, layout: str = "2026.101", **config_kw) -> bytes:
    """A model whose weights are all finite (the loader takes it) but whose logits are NaN
    at every position: norm_final is 3e38, so the normalised stream overflows to +-inf and
    the classifier's dot products add +inf to -inf. Full attention unless told otherwise."""
    import nano_format as nf

    tokens = make_vocab(48)
    kw = dict(block_size=16, vocab_size=len(tokens), n_layer=2, n_embd=16, n_head=4, n_kv_head=2, n_hidden=32)
    if layout == "2026.101":
        kw["attention"] = 1
    kw.update(config_kw)
    config = nf.Config(**kw)
    weights = random_weights(config, seed)
    weights["norm_final"][:] = 3e38
    return nf.to_bytes(config, weights, tokens, layout=layout)


@pytest.fixture(scope="session")
def small_model_bytes() -> bytes:
    return model_bytes()


@pytest.fixture(scope="session")
def h(shared_file):
    """The harness's helpers for test modules (conftest is not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        CORE=CORE, REPO=REPO, BUILD=BUILD, SAN=SAN, OTHER_BUILDS=OTHER_BUILDS, make=make, shared_file=shared_file,
        clean_env=clean_env, run_samples=run_samples,
        run_cli=run_cli, model_bytes=model_bytes, make_vocab=make_vocab, random_weights=random_weights,
        build_model=build_model, attach_random_lora=attach_random_lora, vocabulary=vocabulary,
        overflowing_model_bytes=overflowing_model_bytes,
        NanoError=NanoError,
    )


@pytest.fixture(scope="module")
def torch_one_thread():
    """PyTorch on one thread while a module's parity tests run: the models are tiny, and
    intra-op threads on a busy machine make them many times slower. Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
