"""Per-run random streams (``problems.streams.RunStreams``): SplitMix64, one stream per run."""

from __future__ import annotations

import numpy as np
import pytest

from problems.streams import RunStreams, run_key


def splitmix64_reference(key: int, count: int) -> list[int]:
    """SplitMix64 as published (Steele, Lea & Flood 2014), in Python integers modulo 2^64."""
    mask, out, state = (1 << 64) - 1, [], key
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_each_row_is_the_published_splitmix64_stream_of_its_seed():
    streams = RunStreams([3, 11])
    first = streams._raw((2, 3))
    second = streams._raw((2, 2))
    for row, seed in enumerate((3, 11)):
        expected = splitmix64_reference(run_key(seed), 5)
        assert [int(v) for v in first[row]] + [int(v) for v in second[row]] == expected


def test_a_row_does_not_depend_on_the_other_runs_or_their_number():
    together = RunStreams([5, 6, 7])
    alone = RunStreams([6])
    for shape in ((4,), (2, 3), (1,)):
        np.testing.assert_array_equal(together.standard_normal((3, *shape))[1], alone.standard_normal((1, *shape))[0])
        np.testing.assert_array_equal(
            together.integers(0, 17, size=(3, *shape))[1], alone.integers(0, 17, size=(1, *shape))[0]
        )


def test_normals_and_integers_have_their_distribution():
    """n = 200000 normals: the sample mean has sd 1/sqrt(n) = 0.0022 and the sample variance
    sd sqrt(2/n) = 0.0032; 5 sd bounds fail by chance with probability < 1e-6 (the seed is
    fixed anyway). Integers on [0, 10): each count is Binomial(n, 0.1), sd 134."""
    n = 200_000
    z = RunStreams([0, 1]).standard_normal((2, n // 2)).ravel()
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6826894921370859) < 5 * np.sqrt(0.25 / n)
    k = RunStreams([2]).integers(0, 10, size=(1, n)).ravel()
    assert k.min() == 0 and k.max() == 9
    assert np.all(np.abs(np.bincount(k, minlength=10) - n / 10) < 5 * np.sqrt(n * 0.1 * 0.9))
    u = RunStreams([4]).random((1, n))
    assert 0.0 < u.min() and u.max() < 1.0
    f32 = RunStreams([9]).standard_normal((1, 5), dtype=np.float32)
    assert f32.dtype == np.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: RunStreams([]), "at least one seed"),
        (lambda: RunStreams([-1]), "at least one seed"),
        (lambda: RunStreams([1, 2]).standard_normal((3, 2)), "leading axis"),
        (lambda: RunStreams([1]).integers(3, 3, size=(1, 2)), "high=3 must exceed low=3"),
    ],
)
def test_bad_use_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
