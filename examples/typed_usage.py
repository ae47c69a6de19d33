"""csoftmax in typed code: this file passes ``mypy --strict`` against the installed package's
stubs (``csoftmax/__init__.pyi``, shipped with ``py.typed``) and runs as a script.

    python -m mypy --strict examples/typed_usage.py
    python examples/typed_usage.py
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

import csoftmax


def train_step(
    logits: NDArray[np.float32], labels: NDArray[np.int64], lr: float = 0.1
) -> tuple[float, NDArray[np.float32]]:
    """One step of gradient descent on the logits themselves: (loss, updated logits)."""
    loss, grad = csoftmax.cross_entropy_with_grad(logits, labels, label_smoothing=0.1)
    loss_f32: np.float32 = loss  # the loss keeps the logits' dtype
    return float(loss_f32), logits - np.float32(lr) * grad


def per_row_losses(logits: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.float64]:
    """reduction="none": one loss per row (an array for 2-D logits)."""
    losses = csoftmax.cross_entropy(logits, labels, reduction="none")
    return np.asarray(losses, dtype=np.float64)


def main() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 64)

    probs: NDArray[np.float32] = csoftmax.softmax(logits)
    logp: NDArray[np.float32] = csoftmax.log_softmax(logits, axis=1, num_threads=1)
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert np.allclose(np.exp(logp), probs, atol=1e-6)

    buf = np.empty_like(logits)
    same: NDArray[np.float32] = csoftmax.softmax(logits, out=buf)
    assert same is buf

    from_list = csoftmax.softmax([1.0, 2.0, 3.0])  # any array-like
    assert from_list.dtype == np.float64

    lse_all: np.float32 = csoftmax.logsumexp(logits, axis=None)  # all axes: a scalar
    lse_rows = csoftmax.logsumexp(logits)  # an array here; a scalar for 1-D input
    assert np.isfinite(lse_all) and np.shape(lse_rows) == (64,)

    upstream = rng.standard_normal((64, 10), dtype=np.float32)
    dx: NDArray[np.float32] = csoftmax.softmax_backward(upstream, probs)
    dlogp: NDArray[np.float32] = csoftmax.log_softmax_backward(upstream, logp)
    assert dx.shape == dlogp.shape == logits.shape

    loss = 0.0
    for _ in range(3):
        loss, logits = train_step(logits, labels)
    mean_loss: np.float64 = csoftmax.cross_entropy(logits.astype(np.float64), labels)
    rows = per_row_losses(logits.astype(np.float64), labels)
    assert np.isclose(float(mean_loss), float(rows.mean()))

    csoftmax.set_num_threads(2)
    threads: int = csoftmax.get_num_threads()
    csoftmax.set_num_threads(None)
    info = csoftmax.config()
    openmp = bool(info["openmp"])
    backend: str = csoftmax.BACKEND
    version: str = csoftmax.__version__
    print(
        f"csoftmax {version} ({backend}, openmp={openmp}, threads={threads}): "
        f"loss {loss:.4f} after 3 steps"
    )


if __name__ == "__main__":
    main()
