"""A small multilayer perceptron with hand-written backpropagation, on scikit-learn's digits.

The data (1797 8x8 images of handwritten digits, 10 classes) ship inside scikit-learn,
so nothing is downloaded; scikit-learn is the optional extra ``digits``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .base import Problem, batch_indices, check_non_negative, check_positive_int

DIGITS_SAMPLES = 1797
DIGITS_PIXELS = 64
DIGITS_CLASSES = 10


@functools.cache
def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Pixels scaled to [0, 1] (float64, ``(1797, 64)``) and integer labels ``(1797,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits-mlp problem needs scikit-learn's digits data set: "
            "install the optional extra with  pip install 'cprop-ref[digits]'"
        ) from None
    images, labels = load_digits(return_X_y=True)
    return images.astype(np.float64) / 16.0, labels.astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class DigitsMLP(Problem):
    """Cross-entropy of a 64-``hidden``-10 tanh MLP on the digits, plus ``0.5 l2 |params|^2``.

    Parameters, flattened in this order: ``W1 (64, hidden)``, ``b1 (hidden)``,
    ``W2 (hidden, 10)``, ``b2 (10)``. Forward, for inputs ``X (n, 64)``:
    ``h = tanh(X W1 + b1)``, ``o = h W2 + b2``, loss ``mean_j (logsumexp(o_j) - o_j[y_j])``.
    Backward (by hand): ``dO = (softmax(o) - onehot(y)) / n``, ``dW2 = h^T dO``,
    ``db2 = sum_j dO_j``, ``dA = (dO W2^T) * (1 - h^2)``, ``dW1 = X^T dA``, ``db1 = sum_j dA_j``.
    tanh rather than ReLU keeps the loss smooth, so finite differences check the gradient
    everywhere. ``value``/``gradient`` use the first ``samples`` images (the training set);
    the mini-batch gradient averages ``batch_size`` of them drawn with replacement.
    Start: Glorot-uniform weights, zero biases, drawn from ``init_seed`` and the run's seed
    (:meth:`start_point`). The minimum is unknown.
    """

    hidden: int = 32
    batch_size: int = 64
    samples: int = DIGITS_SAMPLES
    l2: float = 0.0
    init_seed: int = 0
    inputs: np.ndarray = field(init=False, repr=False, compare=False)
    labels: np.ndarray = field(init=False, repr=False, compare=False)
    targets: np.ndarray = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "digits-mlp"
    summary: ClassVar[str] = "tanh MLP 64-hidden-10 on scikit-learn's digits (1797 images), hand-written backprop"
    noise_models: ClassVar[str] = "batch_size (mini-batches of the data); noise (additive Gaussian, std)"
    default_target: ClassVar[float | None] = 0.1
    default_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adam": 1e-3}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("hidden", self.hidden)
        check_positive_int("batch_size", self.batch_size)
        if check_positive_int("samples", self.samples) > DIGITS_SAMPLES:
            raise ValueError(f"invalid samples={self.samples!r}: the digits data set has {DIGITS_SAMPLES} images")
        check_non_negative("l2", self.l2)
        check_positive_int("init_seed", self.init_seed, minimum=0)
        images, labels = load_digits_data()
        object.__setattr__(self, "inputs", images[: self.samples])
        object.__setattr__(self, "labels", labels[: self.samples])
        object.__setattr__(self, "targets", np.eye(DIGITS_CLASSES)[self.labels])  # one-hot

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of ``W1, b1, W2, b2`` in the flat parameter vector."""
        return (DIGITS_PIXELS, self.hidden), (self.hidden,), (self.hidden, DIGITS_CLASSES), (DIGITS_CLASSES,)

    @property
    def dim(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes)

    def unpack(self, x: np.ndarray) -> list[np.ndarray]:
        """Views of ``W1, b1, W2, b2`` with the leading batch axes of ``x`` kept."""
        lead = x.shape[:-1]
        out, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            out.append(x[..., start : start + size].reshape(*lead, *shape))
            start += size
        return out

    def start_point(self, run_seed: int) -> np.ndarray:
        """Glorot-uniform weights ``U(-sqrt(6 / (fan_in + fan_out)), +...)``, zero biases,
        drawn from ``numpy.random.default_rng([init_seed, run_seed])``: ``init_seed`` picks
        the family of starts, the run's seed one start in it."""
        check_positive_int("run_seed", run_seed, minimum=0)
        rng = np.random.default_rng([self.init_seed, int(run_seed)])
        x = np.zeros(self.dim)
        w1, _, w2, _ = self.unpack(x)
        for w in (w1, w2):
            limit = np.sqrt(6.0 / sum(w.shape[-2:]))
            w[...] = rng.uniform(-limit, limit, size=w.shape)
        return x

    def default_start(self) -> np.ndarray:
        """The start of the run with seed 0 (see :meth:`start_point`)."""
        return self.start_point(0)

    def _forward(
        self, x: np.ndarray, inputs: np.ndarray, onehot: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Hidden activations, logits, their log-sum-exp and the mean cross-entropy."""
        # Contiguous copies: NumPy's matmul takes its fast BLAS path only for contiguous stacks.
        w1, b1, w2, b2 = (np.ascontiguousarray(p) for p in self.unpack(x))
        h = np.tanh(inputs @ w1 + b1[..., None, :])
        logits = h @ w2 + b2[..., None, :]
        top = logits.max(axis=-1)
        lse = top + np.log(np.sum(np.exp(logits - top[..., None]), axis=-1))
        loss = np.mean(lse - np.sum(logits * onehot, axis=-1), axis=-1)
        return h, logits, lse, loss

    def _backprop(self, x: np.ndarray, inputs: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The loss and its gradient over ``inputs`` (see the class docstring), L2 included."""
        w2 = np.ascontiguousarray(self.unpack(x)[2])
        h, logits, lse, loss = self._forward(x, inputs, onehot)
        d_logits = (np.exp(logits - lse[..., None]) - onehot) / logits.shape[-2]
        d_w2 = np.swapaxes(h, -1, -2) @ d_logits
        d_b2 = d_logits.sum(axis=-2)
        d_pre = (d_logits @ np.swapaxes(w2, -1, -2)) * (1.0 - h * h)
        d_w1 = np.swapaxes(inputs, -1, -2) @ d_pre
        d_b1 = d_pre.sum(axis=-2)
        lead = x.shape[:-1]
        parts = [d.reshape(*lead, -1) for d in (d_w1, d_b1, d_w2, d_b2)]
        penalty = 0.5 * self.l2 * np.sum(x * x, axis=-1)
        return loss + penalty, np.concatenate(parts, axis=-1) + self.l2 * x

    def _full_data(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        return self.inputs.astype(dtype, copy=False), self.targets.astype(dtype, copy=False)

    def _value(self, x: np.ndarray) -> np.ndarray:
        loss = self._forward(x, *self._full_data(x.dtype))[3]
        return loss + 0.5 * self.l2 * np.sum(x * x, axis=-1)

    def _value_and_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._backprop(x, *self._full_data(x.dtype))

    def _gradient(self, x: np.ndarray) -> np.ndarray:
        return self._value_and_gradient(x)[1]

    def _sample_gradient(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = batch_indices(rng, x.shape[:-1], self.samples, self.batch_size)
        return self._backprop(x, self.inputs[idx].astype(x.dtype), self.targets[idx].astype(x.dtype))[1]

    def accuracy(self, x: np.ndarray) -> np.ndarray:
        """Share of the training images classified correctly, per point."""
        x = self.check_point(x)
        logits = self._forward(x, *self._full_data(x.dtype))[1]
        return np.mean(np.argmax(logits, axis=-1) == self.labels, axis=-1)
