"""The dense matmul peak of this process, TensorFlow alone: imported by ``bench.harness`` and by
``serving_worker.py``, which must not import ppnet, so that each FLOP bound is measured by the
process, threads and kernels that the figures set against it run with."""

import math
import time

import tensorflow as tf


def matmul_peak_flops(n: int = 1024, repeats: int = 40, dtype: tf.DType = tf.float32) -> float:
    """Best dense matmul FLOP/s of an ``n x n`` by ``n x n`` product of ``dtype`` in a ``tf.function``.

    The operands are cast before the timed calls, so only the product (and its sum, which fetches
    it) is timed. bfloat16 is timed the same way on every CPU: where the hardware lacks it,
    TensorFlow emulates it and this is that (slow) rate.
    """
    a, b = (tf.cast(tf.random.uniform([n, n]), dtype) for _ in range(2))
    product = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    product().numpy()  # trace and warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product().numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
