"""The multiplier streams of the one-step bootstrap (nmfre.core.bootstrap): the streamed sum
equals the product with the full multiplier matrix whatever the chunk and the threads, and the
Rademacher law is exactly one generator bit per multiplier."""

import numpy as np
import pytest

from nmfre.core import bootstrap as cb

N = 2 * cb.STREAM_UNITS + 300  # three streams, the last one short
B = 37


@pytest.mark.parametrize("dist", cb.DISTS)
def test_streamed_sum_is_chunk_and_thread_invariant(dist):
    S = np.random.default_rng(0).standard_normal((3, N))
    ref = S @ cb.multiplier_matrix(dist, N, B, np.random.default_rng(1))
    sums = [cb.onestep_sum(S, dist, B, np.random.default_rng(1), chunk=c, workers=w)
            for c in (256, 1000, 5000) for w in (1, 2)]
    for s in sums[1:]:
        np.testing.assert_array_equal(s, sums[0])  # bitwise, as documented
    np.testing.assert_allclose(sums[0], ref, rtol=1e-12, atol=1e-9)  # same multipliers, other summation order


def test_rademacher_is_the_generator_bits():
    W = cb.draw_multipliers("rademacher", 5, 30, np.random.default_rng(7))
    words = np.random.default_rng(7).integers(0, 2**64, size=3, dtype=np.uint64)
    bits = [(int(w) >> i) & 1 for w in words for i in range(64)][:150]
    np.testing.assert_array_equal(W.ravel(), 2.0 * np.array(bits) - 1.0)
    # filling in row blocks of a multiple of 64 entries continues the same bit stream
    g = np.random.default_rng(7)
    parts = [cb.draw_multipliers("rademacher", n, 64, g) for n in (3, 1, 6)]
    np.testing.assert_array_equal(np.vstack(parts), cb.draw_multipliers("rademacher", 10, 64, np.random.default_rng(7)))


def test_rademacher_bits_are_the_bits_of_the_multipliers():
    """The streamed sum draws Rademacher multipliers as their bits b (W = 2 b - 1), from the same
    generator calls: exactly the multipliers of draw_multipliers."""
    W = cb.draw_multipliers("rademacher", 7, 50, np.random.default_rng(3))
    b = cb.rademacher_bits(np.random.default_rng(3), np.empty((7, 50)))
    assert set(np.unique(b)) <= {0.0, 1.0}
    np.testing.assert_array_equal(2.0 * b - 1.0, W)
