"""Q8_0: the vectorised rule against a scalar transcription of spec.py, and edge cases by hand."""

import math

import numpy as np
import pytest

import nano_format as nf
from nano_format.quant import round_half_away

F = np.float32


def scalar_q8_0(row, G):
    """spec.py's rule one value at a time, as C would do it (roundf = floor(|v| + 0.5) with sign).

    |v| + 0.5 is exact in float64 for any float32 v, so floor gives C's roundf.
    """
    q, scales = [], []
    for g in range(0, len(row), G):
        group = [F(x) for x in row[g:g + G]]
        amax = F(0)
        for x in group:
            amax = max(amax, F(abs(x)))
        scale = F(amax / F(127))
        scales.append(scale)
        for x in group:
            if scale == 0:
                q.append(0)
                continue
            v = float(F(x / scale))
            r = math.copysign(math.floor(abs(v) + 0.5), v)
            q.append(int(max(-127, min(127, r))))
    return np.array(q, dtype=np.int8), np.array(scales, dtype=np.float32)


@pytest.mark.parametrize("G", [1, 2, 3, 8, 16, 32])
def test_matches_scalar_rule_bit_for_bit(G):
    rng = np.random.default_rng(G)
    rows, cols = 5, 96
    x = rng.standard_normal((rows, cols)).astype(np.float32) * F(3)
    x[1, :G] = 0  # one all-zero group
    x[2] *= F(1e-30)  # tiny values
    x[3, ::7] = np.float32(0.5)
    qt = nf.quantize_q8_0(x, G)
    assert qt.q.dtype == np.int8 and qt.scales.dtype == np.float32
    assert qt.q.shape == (rows, cols) and qt.scales.shape == (rows, cols // G) and qt.group_size == G
    for r in range(rows):
        q, s = scalar_q8_0(list(x[r]), G)
        assert np.array_equal(qt.q[r], q)
        assert np.array_equal(qt.scales[r].view(np.uint32), s.view(np.uint32))


def test_half_way_values_round_away_from_zero():
    # amax 127 makes the scale exactly 1, so x / scale == x.
    x = np.array([[127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5]], dtype=np.float32)
    qt = nf.quantize_q8_0(x, 8)
    assert qt.scales[0, 0] == 1.0
    assert qt.q[0].tolist() == [127, 1, -1, 2, -2, 3, -3, 127]
    assert np.round(x).tolist() != qt.q.tolist()  # numpy's ties-to-even would differ


def test_just_below_half_rounds_down():
    below = np.nextafter(F(0.5), F(0))  # 0.49999997: adding 0.5 in float32 would give 1.0
    assert F(below + F(0.5)) == 1.0
    x = np.array([[127, below, -below, F(1.5) - np.nextafter(F(1.5), F(0)) + F(1)]], dtype=np.float32)
    qt = nf.quantize_q8_0(x, 4)
    assert qt.q[0, :3].tolist() == [127, 0, 0]
    assert round_half_away(np.array([below, -below, F(0.5), F(-0.5), F(-0.0)])).tolist() == [0, 0, 1, -1, 0]


def test_zero_groups_give_zero_scale_and_q():
    x = np.zeros((2, 8), dtype=np.float32)
    x[1, 4:] = [1, 2, 3, 4]
    qt = nf.quantize_q8_0(x, 4)
    assert qt.scales.tolist() == [[0, 0], [0, F(4) / F(127)]]
    assert qt.q[0].tolist() == [0] * 8 and qt.q[1, :4].tolist() == [0] * 4
    assert np.array_equal(nf.dequantize_q8_0(qt)[0], np.zeros(8, np.float32))


def test_underflowing_scale_counts_as_zero():
    tiny = np.float32(1e-45)  # the smallest subnormal: tiny / 127 underflows to 0
    qt = nf.quantize_q8_0(np.array([[tiny, 0]], dtype=np.float32), 2)
    assert qt.scales[0, 0] == 0 and qt.q.tolist() == [[0, 0]]


def test_negative_extremes_never_reach_minus_128():
    x = np.array([[-127, 1, -3e38, 3e38], [-1, -1, -1, -0.5]], dtype=np.float32)
    qt = nf.quantize_q8_0(x, 2)
    assert qt.q.min() >= -127
    assert qt.q.tolist() == [[-127, 1, -127, 127], [-127, -127, -127, -64]]


def test_dequantize_is_q_times_scale():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 32)).astype(np.float32)
    qt = nf.quantize_q8_0(x, 16)
    back = nf.dequantize_q8_0(qt)
    assert back.dtype == np.float32 and back.shape == x.shape
    expected = qt.q.reshape(3, 4, 2, 16).astype(np.float32) * qt.scales[..., None]
    assert np.array_equal(back, expected.reshape(x.shape))
    assert np.abs(back - x).max() <= np.abs(x).max() / 127 / 2 * 1.001
    assert np.array_equal(qt.dequantize(), back)
    # Re-quantizing what was dequantized gives the same bytes back.
    again = nf.quantize_q8_0(back, 16)
    assert np.array_equal(again.q, qt.q) and np.array_equal(again.scales, qt.scales)


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not divide"):
        nf.quantize_q8_0(np.zeros((2, 10), np.float32), 4)
    with pytest.raises(ValueError, match="non-finite"):
        nf.quantize_q8_0(np.array([[1, np.nan]], np.float32), 2)
    with pytest.raises(ValueError, match="non-finite"):
        nf.quantize_q8_0(np.array([[1, np.inf]], np.float32), 2)
    with pytest.raises(ValueError, match="int8"):
        nf.QuantizedTensor(np.zeros((2, 4), np.int16), np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="scales"):
        nf.QuantizedTensor(np.zeros((2, 4), np.int8), np.zeros((3, 1), np.float32))


@pytest.mark.parametrize("dims, preferred, expected", [
    ((32, 4, 96), 128, 32),      # psycho: gcd(32, 32, 96) = 32
    ((48, 4, 128), 128, 16),     # gcd(48, 48, 128) = 16
    ((96, 4, 192), 64, 48),      # gcd 96: its largest divisor <= 64 is 48
    ((256, 8, 1024), 128, 128),  # gcd 256, capped at the preferred 128
    ((28, 2, 77), 128, 7),       # odd sizes: gcd 7
    ((36, 2, 60), 5, 4),         # gcd 12, preferred 5 -> 4
])
def test_choose_group_size(dims, preferred, expected):
    n_embd, n_head, n_hidden = dims
    config = nf.Config(block_size=4, vocab_size=8, n_layer=1, n_embd=n_embd, n_head=n_head, n_hidden=n_hidden)
    assert nf.choose_group_size(config, preferred) == expected
    for row in config.row_lengths:
        assert row % expected == 0


def test_choose_group_size_default_is_128():
    config = nf.Config(block_size=4, vocab_size=8, n_layer=1, n_embd=512, n_head=8, n_hidden=1024)
    assert nf.choose_group_size(config) == nf.spec.DEFAULT_GROUP_SIZE == 128
    with pytest.raises(ValueError):
        nf.choose_group_size(config, 0)
