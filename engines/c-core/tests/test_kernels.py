"""The kernel table: every op against a float64 numpy reference with a stated bound.

    op              bound (per element)
    matmul F32      |y - y64| <= gamma(cols) * sum_k |w_k x_k|,  gamma(n) = n u / (1 - n u), u = 2^-24
    matmul Q8_0     the same, against (q * scale) @ x in float64 (activations stay float)
    rmsnorm         |y - y64| <= 4 u |y64|_max
    rope            |y - y64| <= 4 u (|x0| + |x1|)
    softmax         |p - p64| <= 4 u max(p64)
    swiglu          |y - y64| <= 8 u |y64|
    quantize Q8_0   bit-identical to nano_format.quantize_q8_0

Both kernel families run (AVX2+FMA where the CPU has it, and the portable C
loops), on 1 and 2 threads; the results must not depend on the thread count
or on how many tokens share a matmul (prefill == decode, bit for bit).
"""

import numpy as np
import pytest

U = 2.0 ** -24
AUTO, PORTABLE = 0, 1


def gamma(n):
    return n * U / (1 - n * U)


def ptr(nano, arr, kind="float *"):
    return nano.ffi.cast(kind, arr.ctypes.data)


def c_matmul(nano, kernels, x, w, nt=1):
    n, cols = x.shape
    rows = w.shape[0]
    y = np.zeros((n, rows), dtype=np.float32)
    nano.lib.nano_test_matmul(kernels, ptr(nano, y), ptr(nano, x), ptr(nano, w), n, rows, cols, nt)
    return y


def c_matmul_q8(nano, kernels, x, q, s, group, nt=1):
    n, cols = x.shape
    rows = q.shape[0]
    y = np.zeros((n, rows), dtype=np.float32)
    nano.lib.nano_test_matmul_q8(kernels, ptr(nano, y), ptr(nano, x), ptr(nano, q, "int8_t *"),
                                 ptr(nano, s), n, rows, cols, group, nt)
    return y


SHAPES = [(1, 1, 1), (1, 4, 8), (3, 5, 7), (7, 13, 40), (2, 33, 96), (5, 64, 300), (1, 257, 64), (9, 17, 16)]


@pytest.mark.parametrize("kernels", [AUTO, PORTABLE])
@pytest.mark.parametrize("n,rows,cols", SHAPES)
def test_matmul_f32(nano, kernels, n, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    y = c_matmul(nano, kernels, x, w)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    bound = gamma(cols) * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    err = np.abs(y - ref)
    print(f"matmul f32 {n}x{rows}x{cols} kernels={kernels}: max err {err.max():.3g}, bound {bound.min():.3g}")
    assert (err <= bound).all()
    # 2 threads, and one token at a time, give the same bits
    assert np.array_equal(c_matmul(nano, kernels, x, w, nt=2), y)
    single = np.concatenate([c_matmul(nano, kernels, x[i:i + 1], w) for i in range(n)])
    assert np.array_equal(single, y)


@pytest.mark.parametrize("kernels", [AUTO, PORTABLE])
@pytest.mark.parametrize("n,rows,cols,group", [
    (1, 4, 8, 8), (3, 5, 32, 16), (4, 7, 40, 40), (2, 9, 40, 20), (5, 16, 40, 5), (1, 32, 96, 32),
    (6, 33, 128, 128), (2, 3, 12, 3), (9, 20, 64, 16), (1, 1, 1, 1),
    # rows wider than the batch's float copy of a strip (kernels.c QF_MAX_COLS)
    (4, 7, 4160, 32), (3, 5, 4100, 5),
])
def test_matmul_q8_0(nano, kernels, n, rows, cols, group):
    import nano_format as nf

    rng = np.random.default_rng(rows * 7 + cols + group)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    qt = nf.quantize_q8_0(rng.standard_normal((rows, cols)).astype(np.float32), group)
    q, s = np.ascontiguousarray(qt.q), np.ascontiguousarray(qt.scales)
    y = c_matmul_q8(nano, kernels, x, q, s, group)
    wd = nf.dequantize_q8_0(qt).astype(np.float64)
    ref = x.astype(np.float64) @ wd.T
    bound = gamma(cols + 2) * (np.abs(x).astype(np.float64) @ np.abs(wd).T)
    err = np.abs(y - ref)
    print(f"matmul q8_0 {n}x{rows}x{cols}/g{group} kernels={kernels}: max err {err.max():.3g}")
    assert (err <= bound).all()
    assert np.array_equal(c_matmul_q8(nano, kernels, x, q, s, group, nt=2), y)
    single = np.concatenate([c_matmul_q8(nano, kernels, x[i:i + 1], q, s, group) for i in range(n)])
    assert np.array_equal(single, y)


def test_big_matmul_threads_bitwise(nano):
    """Large enough that the work is really split over threads."""
    import nano_format as nf

    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    w = rng.standard_normal((515, 256)).astype(np.float32)
    for kernels in (AUTO, PORTABLE):
        ref = c_matmul(nano, kernels, x, w, 1)
        for nt in (2, 3, 4):
            assert np.array_equal(c_matmul(nano, kernels, x, w, nt), ref)
        qt = nf.quantize_q8_0(w, 32)
        q, s = np.ascontiguousarray(qt.q), np.ascontiguousarray(qt.scales)
        ref = c_matmul_q8(nano, kernels, x, q, s, 32, 1)
        for nt in (2, 3, 4):
            assert np.array_equal(c_matmul_q8(nano, kernels, x, q, s, 32, nt), ref)


def test_kernel_names(nano):
    auto = nano.ffi.string(nano.lib.nano_test_kernels_name(AUTO)).decode()
    assert auto in ("avx2", "portable")
    assert nano.ffi.string(nano.lib.nano_test_kernels_name(PORTABLE)) == b"portable"


@pytest.mark.parametrize("n,eps", [(1, 1e-5), (32, 1e-5), (96, 1e-6), (1000, 1e-5), (7, 0.5)])
def test_rmsnorm(nano, n, eps):
    rng = np.random.default_rng(n)
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, dtype=np.float32)
    nano.lib.nano_test_rmsnorm(ptr(nano, y), ptr(nano, x), ptr(nano, w), n, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64 ** 2) + np.float64(np.float32(eps))) * w
    err = np.abs(y - ref).max()
    print(f"rmsnorm n={n}: max err {err:.3g}")
    assert err <= 4 * U * np.abs(ref).max()


@pytest.mark.parametrize("n,big,count", [(4, 1e19, 4), (32, 2.8e19, 1), (512, 1.5e19, 512), (4, 9e18, 4)])
def test_rmsnorm_past_float32_is_pytorchs(nano, n, big, count):
    """A diverged model's activations: where the sum of squares passes FLT_MAX, PyTorch's
    float32 sum is inf and its output 0. (was: C summed in double and normalised, so the
    two engines picked different tokens from one file.) The last case stays below it."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    x[:count] = big
    w = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, dtype=np.float32)
    nano.lib.nano_test_rmsnorm(ptr(nano, y), ptr(nano, x), ptr(nano, w), n, 1e-5)
    ref = F.rms_norm(torch.from_numpy(x), (n,), torch.from_numpy(w), 1e-5).numpy()
    if count * np.float64(big) ** 2 > np.finfo(np.float32).max:
        assert not ref.any() and not y.any(), (ref[:3], y[:3])
    else:
        assert ref.any() and np.allclose(y, ref, rtol=1e-5, atol=0), (ref[:3], y[:3])


@pytest.mark.parametrize("n_heads,head_dim,pos", [(1, 2, 0), (4, 8, 5), (2, 64, 511), (3, 16, 100000)])
def test_rope_interleaved_pairs(nano, n_heads, head_dim, pos):
    import nano_format as nf

    rng = np.random.default_rng(head_dim)
    cos, sin = nf.rope_tables(pos + 1, head_dim)
    c, s = np.ascontiguousarray(cos[pos]), np.ascontiguousarray(sin[pos])
    x = rng.standard_normal(n_heads * head_dim).astype(np.float32)
    y = x.copy()
    nano.lib.nano_test_rope(ptr(nano, y), n_heads, head_dim, ptr(nano, c), ptr(nano, s))
    pairs = x.astype(np.float64).reshape(n_heads, head_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    ref = np.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(-1)
    bound = 4 * U * (np.abs(x0) + np.abs(x1))
    err = np.abs(y.reshape(n_heads, -1, 2) - ref.reshape(n_heads, -1, 2))
    print(f"rope {n_heads}x{head_dim} pos {pos}: max err {err.max():.3g}")
    assert (err <= bound[..., None]).all()


@pytest.mark.parametrize("kernels", [AUTO, PORTABLE])
@pytest.mark.parametrize("n", [1, 2, 17, 512, 4096])
def test_softmax(nano, kernels, n):
    rng = np.random.default_rng(n)
    x = (4 * rng.standard_normal(n)).astype(np.float32)
    x[::7] -= 60  # some tiny probabilities, and some that underflow
    y = x.copy()
    nano.lib.nano_test_softmax(kernels, ptr(nano, y), n)
    e = np.exp(x.astype(np.float64) - x.max())
    ref = e / e.sum()
    err = np.abs(y - ref).max()
    print(f"softmax n={n}: max err {err:.3g}")
    assert err <= 4 * U * ref.max() and abs(y.sum() - 1) < 1e-5


@pytest.mark.parametrize("n", [1, 3, 8, 17, 64, 515])
def test_softmax_nan_propagates_in_both_kernel_families(nano, n):
    """A NaN input (or an infinity, whose x - max is NaN) makes every output NaN in both kernel
    families, as expf does in the portable loop. The AVX2 exp clamped x with
    min(max(x, lo), hi), and maxps returns its second operand when one is NaN: the NaN
    became e^-87.3 and a broken model's attention looked fine, but only on AVX2."""
    rng = np.random.default_rng(n)
    base = (4 * rng.standard_normal(n)).astype(np.float32)
    spots = sorted({0, n // 2, n - 1, min((n // 8) * 8, n - 1)})  # first, middle, last, first of the tail
    for spot in spots:
        for bad in (np.nan, np.inf):
            x = base.copy()
            x[spot] = bad
            out = {}
            for kernels in (AUTO, PORTABLE):
                y = x.copy()
                nano.lib.nano_test_softmax(kernels, ptr(nano, y), n)
                out[kernels] = y
            assert np.isnan(out[PORTABLE]).all(), (spot, bad)
            assert np.isnan(out[AUTO]).all(), (spot, bad, out[AUTO])
    # -inf is an ordinary input: a probability of 0 (the AVX2 tail pads with it)
    x = base.copy()
    x[0] = -np.inf
    for kernels in (AUTO, PORTABLE):
        y = x.copy()
        nano.lib.nano_test_softmax(kernels, ptr(nano, y), n)
        if n > 1:
            assert y[0] == 0 and np.isfinite(y).all() and abs(y.sum() - 1) < 1e-5


def test_swiglu(nano):
    rng = np.random.default_rng(3)
    a = (3 * rng.standard_normal(999)).astype(np.float32)
    b = rng.standard_normal(999).astype(np.float32)
    y = np.zeros_like(a)
    nano.lib.nano_test_swiglu(ptr(nano, y), ptr(nano, a), ptr(nano, b), len(a))
    a64 = a.astype(np.float64)
    ref = a64 / (1 + np.exp(-a64)) * b
    err = np.abs(y - ref)
    print(f"swiglu: max err {err.max():.3g}")
    assert (err <= 8 * U * np.abs(ref) + 1e-30).all()


def c_quantize(nano, x, group):
    rows, cols = x.shape
    q = np.zeros((rows, cols), dtype=np.int8)
    s = np.zeros((rows, cols // group if group and cols % group == 0 else 1), dtype=np.float32)
    st = nano.lib.nano_quantize_q8_0(ptr(nano, x), rows, cols, group, ptr(nano, q, "int8_t *"), ptr(nano, s))
    return nano.status_name(st), q, s


QUANT_CASES = {
    "normal": lambda r: r.standard_normal((8, 64)),
    "ties": lambda r: (np.arange(-64, 64).reshape(4, 32) * 0.5),
    "near_ties": lambda r: np.float32(127.0) * r.uniform(-1, 1, (4, 32)),
    "zeros": lambda r: np.zeros((3, 16)),
    "one_nonzero": lambda r: np.eye(16)[:5] * 3.0,
    "tiny": lambda r: r.standard_normal((4, 32)) * 1e-39,
    "huge": lambda r: r.standard_normal((4, 32)) * 1e37,
    "mixed_scale": lambda r: r.standard_normal((4, 48)) * np.logspace(-20, 20, 48),
    "near_max_float": lambda r: np.tile([3.4028233e38, -3.4028233e38, 1.0, 0.0], (2, 4)),
}


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
@pytest.mark.parametrize("group", [1, 4, 16])
def test_quantize_q8_0_bit_identical(nano, case, group):
    import nano_format as nf

    x = np.ascontiguousarray(QUANT_CASES[case](np.random.default_rng(1)), dtype=np.float32)
    if x.shape[1] % group:
        pytest.fail("bad case")  # every case is built divisible by these groups
    status, q, s = c_quantize(nano, x, group)
    assert status == "NANO_OK"
    ref = nf.quantize_q8_0(x, group)
    assert np.array_equal(q, ref.q)
    assert np.array_equal(s.view(np.uint32), ref.scales.view(np.uint32))


def test_quantize_q8_0_random_bits(nano):
    """Random bit patterns (finite ones), every group size that divides 96."""
    import nano_format as nf

    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2 ** 32, size=(16, 96), dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.where(np.isfinite(x), x, np.float32(1.5)).astype(np.float32)
    for group in (1, 2, 3, 8, 12, 32, 96):
        status, q, s = c_quantize(nano, x, group)
        ref = nf.quantize_q8_0(x, group)
        assert status == "NANO_OK"
        assert np.array_equal(q, ref.q) and np.array_equal(s.view(np.uint32), ref.scales.view(np.uint32))


def test_quantize_errors_like_python(nano):
    import nano_format as nf

    x = np.ones((2, 10), dtype=np.float32)
    assert c_quantize(nano, x, 3)[0] == "NANO_ERR_BAD_GROUP_SIZE"
    assert c_quantize(nano, x, 0)[0] == "NANO_ERR_BAD_GROUP_SIZE"
    with pytest.raises(ValueError):
        nf.quantize_q8_0(x, 3)
    x[1, 3] = np.inf
    assert c_quantize(nano, x, 5)[0] == "NANO_ERR_BAD_ARGUMENT"
    with pytest.raises(ValueError):
        nf.quantize_q8_0(x, 5)
    # FLT_MAX itself: its scale rounds up and would dequantize to inf
    x[1, 3] = -np.finfo(np.float32).max
    assert c_quantize(nano, x, 5)[0] == "NANO_ERR_BAD_ARGUMENT"
    with pytest.raises(ValueError, match="would overflow"):
        nf.quantize_q8_0(x, 5)


def test_dequantize(nano):
    import nano_format as nf

    x = np.random.default_rng(4).standard_normal((3, 32)).astype(np.float32)
    qt = nf.quantize_q8_0(x, 8)
    out = np.zeros(96, dtype=np.float32)
    q, s = np.ascontiguousarray(qt.q), np.ascontiguousarray(qt.scales)
    nano.lib.nano_dequantize_q8_0(ptr(nano, q, "int8_t *"), ptr(nano, s), 96, 8, ptr(nano, out))
    assert np.array_equal(out.reshape(3, 32), nf.dequantize_q8_0(qt))


def test_quantize_null_with_sizes_whose_product_wraps(nano):
    """rows * cols = 2^64 wraps to 0 in 64 bits; NULL buffers with such sizes once got
    past the check and were dereferenced."""
    ffi = nano.ffi
    st = nano.lib.nano_quantize_q8_0(ffi.NULL, 1 << 32, 1 << 32, 1, ffi.NULL, ffi.NULL)
    assert nano.status_name(st) == "NANO_ERR_BAD_ARGUMENT"
