"""Broken or hostile input: one clear line naming the file and tensor, never a
traceback, a raw numpy warning, a control character on the terminal or a dead process."""

import json
import mmap
import os
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

import nano_format as nf
from nano_format import spec


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nano_format", *args], capture_output=True,
                          timeout=120, env=None if env is None else {**os.environ, **env})


def q8_file(build, path, scale=None):
    """A small Q8_0 model; `scale` overwrites the second scale of wq.0."""
    config = build.small_config()
    nf.write(path, config, build.random_tensors(config), build.make_tokens(24), quant="q8_0", group_size=16)
    if scale is not None:
        info = next(t for t in nf.read(path).tensors if t.name == "wq.0")
        data = bytearray(path.read_bytes())
        struct.pack_into("<f", data, info.offset + info.shape[0] * info.shape[1] + 4, scale)
        path.write_bytes(data)
    return path


# -- 7: non-finite values --------------------------------------------------


@pytest.mark.parametrize("scale, what", [(np.nan, "nan .* is not a finite number"),
                                         (3e38, "3e\\+38 .* overflows float32 when dequantized")])
def test_bad_scales_are_errors_naming_file_and_tensor(build, tmp_path, scale, what):
    path = q8_file(build, tmp_path / "bad.bin", scale)
    m = nf.read(path)  # the structure is fine: read() does not read the scales
    with pytest.raises(nf.BadScale, match=f"^{path}: tensor 'wq.0' at offset 0x[0-9A-F]+: scale {what}"):
        m.check_scales()
    with pytest.raises(nf.BadScale, match="tensor 'wq.0'"):
        m.tensor("wq")
    assert np.isfinite(m.tensor("wq.1")).all()  # the other layer is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nf.dequantize_q8_0(m.quantized("wq.0"))  # no RuntimeWarning from numpy

    good = q8_file(build, tmp_path / "good.bin")
    r = run("validate", str(path), str(good))  # once: OK for both
    assert r.returncode == 1 and b"OK   " + bytes(good) in r.stdout
    assert r.stderr.startswith(b"FAIL " + bytes(path) + b": tensor 'wq.0'") and r.stderr.count(b"\n") == 1
    out = tmp_path / "out.bin"
    r = run("convert", str(path), str(out), "--quant", "f32")  # once wrote inf/NaN with numpy's warning
    assert r.returncode == 1 and b"tensor 'wq.0'" in r.stderr and b"Warning" not in r.stderr
    assert not out.exists()


def f32_file(build, path, at=None, value=np.nan):
    """A small F32 model; `at` (tensor name, flat index) overwrites one stored value by hand,
    since the writer refuses NaN and infinity."""
    config = build.small_config()
    nf.write(path, config, build.random_tensors(config), build.make_tokens(24))
    if at is not None:
        info = next(t for t in nf.read(path).tensors if t.name == at[0])
        data = bytearray(path.read_bytes())
        struct.pack_into("<f", data, info.offset + 4 * at[1], value)
        path.write_bytes(data)
    return path


def test_writer_refuses_non_finite_weights(build, tmp_path):
    config = build.small_config()
    tensors = build.random_tensors(config)
    tensors["w1"][1, 2, 3] = np.inf
    for quant in ("f32", "q8_0"):  # F32 used to store them as given
        with pytest.raises(nf.WriteError, match=r"^tensor 'w1' holds inf at index \[1, 2, 3\]; "
                                                r"a model file holds finite values only$"):
            nf.to_bytes(config, tensors, build.make_tokens(24), quant=quant)
    tensors["w1"][1, 2, 3] = 0.5
    tensors["norm_final"][7] = np.nan  # always F32, in a Q8_0 file too
    with pytest.raises(nf.WriteError, match=r"tensor 'norm_final' holds nan at index \[7\]"):
        nf.to_bytes(config, tensors, build.make_tokens(24), quant="q8_0")
    lora = nf.LoraConfig(rank=2, alpha=4, n_layer=1, n_embd=8, n_head=2, n_hidden=8)
    lora_tensors = build.random_tensors(lora)
    lora_tensors["wv_B"][0, 1, 1] = -np.inf
    with pytest.raises(nf.WriteError, match=r"tensor 'wv_B' holds -inf at index \[0, 1, 1\]"):
        nf.write_lora(tmp_path / "lora.bin", lora, lora_tensors)
    assert not any(tmp_path.iterdir())


def test_writer_names_a_value_too_large_for_float32(build):
    """A finite float64 beyond float32's range was cast first, with numpy's overflow
    warning on stderr, then reported as an inf the caller never gave."""
    config = build.small_config()
    tensors = build.random_tensors(config)
    tensors["w1"] = tensors["w1"].astype(np.float64)
    tensors["w1"][0, 1, 2] = -1e40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(nf.WriteError, match=r"^tensor 'w1' holds -1e\+40 at index \[0, 1, 2\], beyond "
                                                r"float32's largest finite value 3\.40282e\+38$"):
            nf.to_bytes(config, tensors, build.make_tokens(24))
        tensors["w1"][0, 1, 2] = 3e38  # within range: written
        assert nf.read(nf.to_bytes(config, tensors, build.make_tokens(24))).tensor("w1")[0, 1, 2] == np.float32(3e38)


def test_writer_refuses_half_a_pair_of_rope_tables(build):
    """Given one RoPE table without the other, the writer used to recompute both and drop
    the one given, silently."""
    config = build.small_config()
    tensors = build.random_tensors(config, with_rope=False)
    cos, sin = nf.rope_tables(config.block_size, config.head_dim, config.rope_theta)
    for given, missing, table in (("rope_sin", "rope_cos", sin), ("rope_cos", "rope_sin", cos)):
        with pytest.raises(nf.WriteError, match=f"'{given}' is given without '{missing}': give both RoPE tables "
                                                "or neither"):
            nf.to_bytes(config, {**tensors, given: table}, build.make_tokens(24))
    both = nf.to_bytes(config, {**tensors, "rope_cos": cos, "rope_sin": sin}, build.make_tokens(24))
    assert both == nf.to_bytes(config, tensors, build.make_tokens(24))


@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_converting_non_finite_values_names_file_and_tensor(build, tmp_path, quant):
    src = f32_file(build, tmp_path / "nan.bin", at=("w1", 2 * 48 * 32 - 1))
    offset = next(t.offset for t in nf.read(src).tensors if t.name == "w1") + 4 * (2 * 48 * 32 - 1)
    out = tmp_path / "o.bin"
    r = run("convert", str(src), str(out), "--quant", quant)
    assert r.returncode == 1 and not out.exists()
    assert r.stderr == f"nano-format: error: {src}: tensor 'w1' at offset 0x{offset:X}: value nan " \
                       f"at index [1, 47, 31] is not a finite number\n".encode()


@pytest.mark.parametrize("quant, tensor, index", [("f32", "wq", 77), ("q8_0", "rope_sin", 5)])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_validate_reports_non_finite_f32_values(build, tmp_path, quant, tensor, index, value):
    config = build.small_config()
    path = tmp_path / "bad.bin"
    nf.write(path, config, build.random_tensors(config), build.make_tokens(24), quant=quant)
    info = next(t for t in nf.read(path).tensors if t.name == tensor)
    assert info.dtype == "f32"  # rope_sin stays F32 in a Q8_0 file
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, info.offset + 4 * index, value)
    path.write_bytes(data)
    where = [int(k) for k in np.unravel_index(index, info.shape)]

    m = nf.read(path)  # the structure is fine: read() does not read the values
    m.check_scales()
    with pytest.raises(nf.NonFiniteValue) as e:
        m.check_finite()
    assert str(e.value) == f"{path}: tensor {tensor!r} at offset 0x{info.offset + 4 * index:X}: " \
                           f"value {value} at index {where} is not a finite number"
    good = q8_file(build, tmp_path / "good.bin")
    r = run("validate", str(path), str(good))  # once: OK for both
    assert r.returncode == 1 and r.stdout == b"OK   " + bytes(good) + b": " + r.stdout.split(b": ", 1)[1]
    assert r.stderr == f"FAIL {e.value}\n".encode()


def test_fixtures_hold_finite_values(psycho_path, sort6_path):
    for path in (psycho_path, sort6_path):
        with nf.read(path) as m:
            m.check_finite()
            m.check_scales()


def test_finite_check_reads_a_chunk_at_a_time():
    values = np.zeros(8 << 20, np.float32)  # eight chunks
    assert nf.quant.first_non_finite(values) is None
    for i in (0, (1 << 20) - 1, 1 << 20, values.size - 1):
        values[i] = np.nan
        assert nf.quant.first_non_finite(values) == i and nf.quant.first_non_finite(values.reshape(8, -1)) == i
        values[i] = 0
    import tracemalloc
    tracemalloc.start()
    nf.quant.first_non_finite(values)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20  # 1 MiB boolean chunks, not 8 MiB for the whole


# -- q = -128: the int8 value the quantizer never writes ------------------


def test_minus_128_with_a_large_scale_is_a_bad_scale(build, tmp_path):
    amax = np.float32(3.39e38)
    big = amax / np.float32(127)  # the quantizer's scale: -127 * big is finite, -128 * big is not
    with np.errstate(over="ignore"):
        assert np.float32(-127) * big == -amax and np.float32(-128) * big == -np.inf

    config = build.small_config()
    tensors = build.random_tensors(config)
    tensors["wq"][0, 0, :16] = -amax  # group 0 of wq.0's row 0 gets that scale
    path = tmp_path / "big.bin"
    nf.write(path, config, tensors, build.make_tokens(24), quant="q8_0", group_size=16)
    m = nf.read(path)
    info = next(t for t in m.tensors if t.name == "wq.0")
    assert m.quantized("wq.0").scales[0, 0] == big
    m.check_scales()  # what the writer makes is fine (q is -127 there)
    assert np.isfinite(m.tensor("wq.0")).all()

    data = bytearray(path.read_bytes())
    data[info.offset + 5] = 0x80  # q = -128 in the same group
    data[info.offset + 16] = 0x80  # and in group 1, whose small scale is harmless
    path.write_bytes(data)
    m = nf.read(path)
    assert m.quantized("wq.0").q[0, 16] == -128
    with pytest.raises(nf.BadScale) as e:
        m.check_scales()
    assert str(e.value) == f"{path}: tensor 'wq.0' at offset 0x{info.offset + 32 * 32:X}: scale {big:g} " \
                           f"(row 0, group 0) overflows float32 when dequantized (its group holds q = -128)"
    with pytest.raises(nf.BadScale, match="q = -128"):
        m.tensor("wq.0")  # once -inf
    r = run("validate", str(path))
    assert r.returncode == 1 and r.stderr == f"FAIL {e.value}\n".encode()


def test_writer_checks_the_scales_of_quantized_tensors_it_is_given(build, tmp_path):
    config = build.small_config()
    tensors = {name: np.asarray(v) for name, v in build.random_tensors(config).items()}
    good = nf.quantize_q8_0(tensors["wq"], 16)
    big = np.float32(3.39e38) / np.float32(127)
    cases = [
        (np.nan, 0, "is not a finite number"),
        (np.float32(3.4e38), 0, "overflows float32 when dequantized"),
        (big, -128, "overflows float32 when dequantized (its group holds q = -128)"),
    ]
    for scale, q0, what in cases:
        q, scales = good.q.copy(), good.scales.copy()
        q[1, 2, 16] = q0 or q[1, 2, 16]
        scales[1, 2, 1] = scale  # layer 1, row 2, group 1
        path = tmp_path / "given.bin"
        with pytest.raises(nf.WriteError) as e:
            nf.write(path, config, dict(tensors, wq=nf.QuantizedTensor(q, scales)), build.make_tokens(24),
                     quant="q8_0", group_size=16)
        assert str(e.value) == f"tensor 'wq': scale {float(np.float32(scale)):g} at index [1, 2, 1] {what}"
        assert not path.exists()
    q = good.q.copy()
    q[1, 2, 16] = -128  # with an ordinary scale, -128 is fine
    nf.write(tmp_path / "ok.bin", config, dict(tensors, wq=nf.QuantizedTensor(q, good.scales)),
             build.make_tokens(24), quant="q8_0", group_size=16)
    nf.read(tmp_path / "ok.bin").check_scales()


def test_the_quantizer_refuses_a_scale_that_would_overflow(build, tmp_path):
    """amax = FLT_MAX: amax / 127 rounds up, and 127 x scale is inf. The writer used to
    write that scale into a file its own validate refuses."""
    fmax = np.finfo(np.float32).max
    with pytest.raises(ValueError, match="would overflow float32 when dequantized"):
        nf.quantize_q8_0(np.array([[-fmax, 1]], dtype=np.float32), 2)
    below = np.nextafter(fmax, np.float32(0), dtype=np.float32)  # the largest magnitude that quantizes
    t = nf.quantize_q8_0(np.array([[below, 1]], dtype=np.float32), 2)
    assert np.isfinite(nf.dequantize_q8_0(t)).all()
    config = build.small_config()
    tensors = {name: np.asarray(v) for name, v in build.random_tensors(config).items()}
    src = tmp_path / "max.bin"
    tensors["wq"] = tensors["wq"].copy()
    tensors["wq"][1, 2, 3] = fmax
    nf.write(src, config, tensors, build.make_tokens(24))  # F32 holds it
    with pytest.raises(nf.WriteError, match=r"tensor 'wq': cannot quantize a value of magnitude 3.40282e\+38"):
        nf.write(tmp_path / "q.bin", config, tensors, build.make_tokens(24), quant="q8_0", group_size=16)
    out = tmp_path / "out.bin"
    r = run("convert", str(src), str(out), "--quant", "q8_0")
    assert r.returncode == 1 and not out.exists()
    assert b"cannot quantize a value of magnitude" in r.stderr and b"Traceback" not in r.stderr


def test_minus_128_with_an_ordinary_scale_is_fine(build, tmp_path):
    path = q8_file(build, tmp_path / "ok.bin")
    info = next(t for t in nf.read(path).tensors if t.name == "w2.1")
    data = bytearray(path.read_bytes())
    data[info.offset + 48 + 20] = 0x80  # row 1, column 20 (group 1)
    path.write_bytes(data)
    m = nf.read(path)
    m.check_scales()  # the C engine computes -128 * scale like any other q
    qt = m.quantized("w2.1")
    assert qt.q[1, 20] == -128 and m.tensor("w2.1")[1, 20] == np.float32(-128) * qt.scales[1, 1]
    assert run("validate", str(path)).returncode == 0


# -- 8: API gaps ----------------------------------------------------------


def test_api_arguments_are_checked(build):
    x = np.ones((2, 8), np.float32)
    for bad in (2.5, 2.0, True):  # 2.5 was quietly 2, True was 1
        with pytest.raises(TypeError, match="group size must be an int"):
            nf.quantize_q8_0(x, bad)
    assert nf.quantize_q8_0(x, np.int64(4)).group_size == 4
    config = build.small_config()
    with pytest.raises(nf.WriteError, match="group_size must be an int"):
        nf.to_bytes(config, build.random_tensors(config), build.make_tokens(24), quant="q8_0", group_size=8.0)
    with pytest.raises(ValueError, match="groups of at least one"):  # dequantize raised ZeroDivisionError
        nf.QuantizedTensor(np.zeros((2, 0), np.int8), np.zeros((2, 1), np.float32))
    with pytest.raises(nf.BadTokenRecord, match="token 0: data must be bytes"):  # wrote 5 NUL bytes
        nf.encode_bpe_section([nf.BpeToken(0.0, 5)])
    with pytest.raises(nf.BadTokenRecord, match="token 1: score 1e\\+300"):  # OverflowError
        nf.encode_bpe_section([nf.BpeToken(0.0, b"a"), nf.BpeToken(1e300, b"a")])
    section = nf.encode_bpe_section([nf.BpeToken(0.5, "é")])
    assert nf.decode_bpe_section(section, 1)[0] == [nf.BpeToken(0.5, "é".encode())]


def test_layer_index_must_be_ascii_digits(sort6_path):
    with nf.read(sort6_path) as m:
        assert m.tensor("wq.1").shape == (32, 32)
        for name in ("wq.\u00b2", "wq.\u0661"):  # "wq.²" raised ValueError; Arabic-Indic 1 was layer 1
            with pytest.raises(KeyError, match="no tensor"):
                m.tensor(name)


# -- 3 and 9: the mapping -------------------------------------------------


def test_a_file_that_shrank_after_read_raises_instead_of_sigbus(sort6_path, tmp_path):
    path = tmp_path / "live.bin"
    path.write_bytes(sort6_path.read_bytes())
    code = ("import os, nano_format as nf\n"
            f"m = nf.read({str(path)!r})\n"
            f"os.truncate({str(path)!r}, 1000)\n"
            "try:\n    m.tensor('wq').sum()\n"
            "except nf.FormatError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r  # once killed by SIGBUS (returncode -7)
    assert r.stdout == f"{path}: the file shrank to 1000 bytes after it was read (49452 bytes); read it again\n"


def test_a_file_that_cannot_be_mapped_is_named(sort6_path, monkeypatch):
    def no_device(*args, **kwargs):
        raise OSError(19, "No such device")  # what /sys files give

    monkeypatch.setattr(mmap, "mmap", no_device)
    with pytest.raises(OSError) as info:
        nf.read(sort6_path)
    assert info.value.filename == str(sort6_path) and "No such device" in str(info.value)


def test_reading_a_fifo_does_not_hang(tmp_path, sort6_path):
    """Nor does it read a pipe as an empty file (it once said "the file is empty" for
    `<(cat model.bin)`): what is not a regular file is refused, saying what it is."""
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"not a regular file but a FIFO \(a pipe\); a model file is memory-mapped"):
        nf.read(fifo)
    with pytest.raises(OSError, match=r"a directory, not a model file"):
        nf.read(tmp_path)
    with pytest.raises(OSError, match=r"not a regular file but a character device"):
        nf.read(os.devnull)
    # what `nano-format info <(cat sort6_f32.bin)` gets
    r = subprocess.run([sys.executable, "-m", "nano_format", "info", "/dev/stdin"], input=sort6_path.read_bytes(),
                       capture_output=True, timeout=120)
    assert r.returncode == 1 and r.stderr.decode() == ("nano-format: error: /dev/stdin: not a regular file but a FIFO "
                                                       "(a pipe); a model file is memory-mapped, so save it to a file "
                                                       "first\n"), r


def test_a_closed_file_reads_nothing(sort6_path, psycho_path):
    """check_finite and check_scales on a closed file once viewed fresh, uninitialised
    memory (np.ndarray over buffer None) and reported NaNs the file does not hold."""
    for path, check in ((sort6_path, "check_finite"), (psycho_path, "check_scales")):
        m = nf.read(path)
        m.close()
        with pytest.raises(ValueError, match="the file is closed"):
            getattr(m, check)()


# -- 4 and 5: what reaches the terminal -----------------------------------


def test_info_escapes_control_bytes_of_bpe_tokens(build, tmp_path):
    q = build.qwen_file(spec.ModelType.QWEN2)
    tokens = [nf.BpeToken(t.score, b"\x1b]0;PWNED\x07\x1b[2J\nFAKE\rX\xc2\x9b\\\xff") for t in q.tokens]
    path = tmp_path / "esc.bin"
    with nf.read(q.data) as m:
        nf.write(path, m.config, m.weights(), tokens)
    r = run("info", str(path))
    assert r.returncode == 0, r.stderr
    shown = r.stdout.decode("utf-8")
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert r"'\x1b]0;PWNED\x07\x1b[2J\nFAKE\rX\x9b\\\xff' (id 0, 25 bytes)" in shown


# What a terminal acts on yet json.dumps(ensure_ascii=False) leaves raw: C1 controls, bidi controls,
# line and paragraph separators; DEL and a format character beyond the BMP (U+E0001) too.
_HIDDEN = ("\x7f\x80\x85\x9b\x9f\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
           "\u2066\u2067\u2068\u2069\u2028\u2029\U000e0001")


def test_info_json_escapes_what_the_terminal_would_act_on(build, tmp_path):
    config = build.small_config()
    tokens = build.make_tokens(24)
    tokens[0] = nf.TokenEntry(0, "<|" + _HIDDEN + "|>", True)
    tokens[1] = nf.TokenEntry(1, "中文 \U0001F600 é", True)  # readable text stays as it is
    path = tmp_path / "bidi\u202egnp.bin"
    nf.write(path, config, build.random_tensors(config), tokens)
    r = run("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    raw = r.stdout.decode("utf-8")
    d = json.loads(raw)
    assert d["path"] == str(path)
    assert [s["text"] for s in d["tokenizer"]["specials"]] == [tokens[0].text, tokens[1].text]
    assert not set(raw) & set(_HIDDEN + "\u202e")
    assert all(line.isprintable() for line in raw.split("\n"))
    assert '"text": "中文 \U0001F600 é"' in raw
    assert r'"text": "<|\u007f\u0080\u0085\u009b\u009f\u061c\u200e' in raw and r"\udb40\udc01|>" in raw


def test_validate_checks_every_file_whatever_the_terminal_encodes(sort6_path, tmp_path):
    odd = os.fsencode(tmp_path) + b"/bad\xffname\x1b.bin"
    with open(odd, "wb") as f:
        f.write(sort6_path.read_bytes())
    strict = {"PYTHONIOENCODING": "utf-8:strict"}
    r = run("validate", str(sort6_path), odd, str(sort6_path), env=strict)
    assert r.returncode == 0, r.stderr  # stopped at the odd name, reporting it as an error
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 3 and lines[1].startswith(rf"OK   {tmp_path}/bad\xffname\x1b.bin: 2025.12")
    r = run("info", odd, env=strict)
    assert r.returncode == 0 and r.stdout.decode().startswith(rf"file        {tmp_path}/bad\xffname\x1b.bin (")


# -- minor ----------------------------------------------------------------


def test_rope_note_only_after_a_successful_conversion(sort6_path, tmp_path):
    out = str(tmp_path / "o.bin")
    args = ["convert", str(sort6_path), out, "--layout", "2026.101", "--rope-theta", "5000"]
    r = run(*args, "--quant", "q8_0", "--group-size", "5")
    assert r.returncode == 2 and b"note" not in r.stderr and b"--group-size 5 does not divide" in r.stderr
    r = run(*args)
    assert r.returncode == 0 and b"RoPE tables recomputed" in r.stderr
