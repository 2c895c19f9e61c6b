"""Property: whatever the bytes, read() returns a usable model or raises FormatError,
and never allocates more than the file's size (measured with tracemalloc)."""

import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nano_format as nf
from nano_format.spec import ModelType, QuantType

# Fixed overhead a failing read may allocate whatever the file (exception, traceback, message).
SLACK = 64 * 1024

HUGE = [0, 1, 2, 3, 7, 10, 0x42, 0x80, 0xFF, 1 << 16, (1 << 20) + 1, 1 << 22, (1 << 31) - 1, 1 << 31,
        0xFFFFFFFF]


@pytest.fixture(scope="module")
def seeds(sort6_bytes, psycho_bytes, build):
    """Valid files of every kind to mutate."""
    config = build.small_config(vocab_size=20, tie_embeddings=False)
    tensors = build.random_tensors(config)
    tokens = build.make_tokens(20)
    lora = nf.LoraConfig(rank=2, alpha=4, n_layer=2, n_embd=16, n_head=2, n_hidden=8)
    return [
        sort6_bytes,
        psycho_bytes,
        nf.to_bytes(config, tensors, tokens, quant="q8_0", group_size=8),
        nf.to_bytes(config, tensors, None, quant="f32", layout="2026.101"),
        nf.to_bytes(lora, build.random_tensors(lora)),
        build.qwen_file(ModelType.QWEN2, QuantType.Q8_0).data,
        build.qwen_file(ModelType.QWEN3, QuantType.F32, tied=True).data,
    ]


def _mutation():
    position = st.one_of(st.integers(0, 0x5F), st.integers(0, 1 << 20))  # header-heavy
    return st.one_of(
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("splice"), st.integers(0, 0x57 // 4), st.one_of(st.sampled_from(HUGE),
                                                                          st.integers(0, 0xFFFFFFFF))),
    )


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for m in mutations:
        kind = m[0]
        if kind == "flip" and out:
            out[m[1] % len(out)] ^= 1 << m[2]
        elif kind == "overwrite" and out:
            at = m[1] % len(out)
            out[at:at + len(m[2])] = m[2]
        elif kind == "truncate":
            del out[m[1] % (len(out) + 1):]
        elif kind == "extend":
            out += m[1]
        elif kind == "splice" and len(out) >= 4 * m[1] + 4:
            struct.pack_into("<I", out, 4 * m[1], m[2])
    return bytes(out)


def check(data: bytes) -> None:
    tracemalloc.start()
    try:
        model = nf.read(data)
    except nf.FormatError:
        model = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= len(data) + SLACK, f"read() allocated {peak} bytes for a {len(data)}-byte file"
    if model is not None:  # a file that validates is fully usable
        model.tokens
        assert sum(t.nbytes for t in model.tensors) + model.params_offset == len(data)
        for name in model.tensor_names():
            model.tensor(name)


@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 6), mutations=st.lists(_mutation(), min_size=1, max_size=3))
def test_mutated_files_are_models_or_format_errors(seeds, which, mutations):
    check(mutate(seeds[which], mutations))


@pytest.mark.parametrize("word", range(0x44 // 4))
def test_every_header_word_set_huge(seeds, word):
    """Each header word set to each extreme value, in every seed file."""
    for data in seeds:
        for value in HUGE:
            out = bytearray(data)
            struct.pack_into("<I", out, 4 * word, value)
            check(bytes(out))


def test_unmutated_seeds_are_valid(seeds):
    for data in seeds:
        nf.read(data)
