"""Against PyTorch (CPU): cross_entropy forward and autograd backward for every combination of
options, softmax / log_softmax / logsumexp and their backward passes, float32 accuracy no worse
than PyTorch's, and torch.Tensor inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref
from arrays import (
    FLOAT_DTYPES,
    FLOAT_IDS,
    LAYOUTS,
    Case,
    assert_bitwise_equal,
    assert_close,
    call_unmodified,
    ce_inputs,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional

float_dtypes = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=FLOAT_IDS)
REDUCTIONS = ("mean", "sum", "none")


def torch_cross_entropy(logits, target, *, weight=None, **kwargs):
    """PyTorch's loss and d(sum of loss)/d(logits) (upstream gradient 1)."""
    x = torch.tensor(logits, requires_grad=True)
    t = torch.tensor(target.astype(np.int64) if target.dtype.kind in "iu" else target)
    w = None if weight is None else torch.tensor(weight)
    loss = F.cross_entropy(x, t, weight=w, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach().numpy(), x.grad.numpy()


def check_like_torch(ours, theirs, dtype, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}"
    # both carry their own rounding: twice the tolerance of a comparison with the reference
    assert_close(ours, theirs, dtype, what=what, factor=2.0)


# ---------------------------------------------------------------------------------------------
# cross_entropy

_CE_OPTIONS = [
    o
    for o in itertools.product(
        ("int", "prob"), (False, True), ("none", "hit"), REDUCTIONS, (0.0, 0.1, 1.0)
    )
]


@pytest.mark.parametrize(
    ("kind", "weighted", "ignore", "reduction", "smoothing"),
    _CE_OPTIONS,
    ids=["-".join(map(str, o)) for o in _CE_OPTIONS],
)
@float_dtypes
def test_cross_entropy_like_torch(
    frontend, kind, weighted, ignore, reduction, smoothing, dtype, rng
):
    n, c = 17, 7
    if ignore == "hit":  # an in-range class for labels; a negative one (no effect) for probs
        ignore_index = 3 if kind == "int" else -1
    else:
        ignore_index = -100
    logits, target, w = ce_inputs(
        n,
        c,
        rng,
        kind=kind,
        weight=weighted,
        ignore_index=ignore_index if ignore == "hit" else None,
    )
    logits = logits.astype(dtype)
    target = target.astype(dtype) if kind == "prob" else target
    w = None if w is None else w.astype(dtype)
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    t_loss, t_grad = torch_cross_entropy(logits, target, weight=w, **kw)
    loss, grad = call_unmodified(frontend.cross_entropy_with_grad, logits, target, weight=w, **kw)
    check_like_torch(loss, t_loss, dtype, "loss")
    check_like_torch(grad, t_grad, dtype, "grad")
    check_like_torch(
        frontend.cross_entropy(logits, target, weight=w, **kw), t_loss, dtype, "cross_entropy loss"
    )


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_edge_cases_like_torch(frontend, kind, reduction, weighted, rng):
    """No rows at all, and (for labels) every row ignored: NaN means, zero sums and grads."""
    cases = [ce_inputs(0, 4, rng, kind=kind, weight=weighted)]
    if kind == "int":
        logits, _, w = ce_inputs(5, 4, rng, weight=weighted)
        cases.append((logits, np.full(5, -100), w))
    for logits, target, w in cases:
        for smoothing in (0.0, 0.3):
            kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
            t_loss, t_grad = torch_cross_entropy(logits, target, **kw)
            loss, grad = frontend.cross_entropy_with_grad(logits, target, **kw)
            check_like_torch(loss, t_loss, np.float64, "loss")
            check_like_torch(grad, t_grad, np.float64, "grad")


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_single_sample_like_torch(frontend, kind, reduction, rng):
    logits = rng.standard_normal(6)
    target = np.int64(4) if kind == "int" else rng.random(6)
    kw = dict(weight=np.linspace(0.5, 2, 6), reduction=reduction, label_smoothing=0.2)
    t_loss, t_grad = torch_cross_entropy(logits, np.asarray(target), **kw)
    loss, grad = frontend.cross_entropy_with_grad(logits, target, **kw)
    assert np.shape(loss) == t_loss.shape == ()
    check_like_torch(loss, t_loss, np.float64, "loss")
    check_like_torch(grad, t_grad, np.float64, "grad")


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_zero_class_weights_like_torch(frontend, kind, reduction, smoothing, rng):
    """Classes of weight 0: their rows count for nothing in the loss nor the "mean" divisor."""
    logits, target, _ = ce_inputs(
        12, 5, rng, kind=kind, ignore_index=-100 if kind == "int" else None
    )
    w = np.array([0.0, 1.5, 0.0, 0.7, 2.0])
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    t_loss, t_grad = torch_cross_entropy(logits, target, **kw)
    loss, grad = frontend.cross_entropy_with_grad(logits, target, **kw)
    check_like_torch(loss, t_loss, np.float64, "loss")
    check_like_torch(grad, t_grad, np.float64, "grad")


def test_masked_classes_like_torch(frontend):
    """-inf logits (masked classes) that are not the target: the same finite loss as PyTorch."""
    logits = np.array([[0.5, -np.inf, 1.5, -np.inf], [-np.inf, 2.0, 0.0, 1.0]])
    target = np.array([2, 3])
    for reduction in REDUCTIONS:
        t_loss, t_grad = torch_cross_entropy(logits, target, reduction=reduction)
        loss, grad = frontend.cross_entropy_with_grad(logits, target, reduction=reduction)
        check_like_torch(loss, t_loss, np.float64, "loss")
        check_like_torch(grad, t_grad, np.float64, "grad")


# ---------------------------------------------------------------------------------------------
# The softmax family

TORCH_CASES = [
    Case("2d", (6, 9), -1),
    Case("2d-axis0", (6, 9), 0),
    Case("3d", (3, 4, 5), 1),
    Case("3d-axis-3", (3, 4, 5), -3),
    Case("wide", (2, 5000), -1),
    Case("large", (5, 8), -1, "large"),
    Case("special", (16, 5), -1, "special"),
    Case("special-axis0", (5, 16), 0, "special"),
]
CASE_IDS = [c.id for c in TORCH_CASES]

TORCH_FORWARD = {
    "softmax": lambda t, dim: torch.softmax(t, dim),
    "log_softmax": lambda t, dim: torch.log_softmax(t, dim),
    "logsumexp": lambda t, dim: torch.logsumexp(t, dim),
}


@pytest.mark.parametrize("name", list(TORCH_FORWARD))
@pytest.mark.parametrize("case", TORCH_CASES, ids=CASE_IDS)
@float_dtypes
def test_forward_like_torch(frontend, name, case, dtype, rng):
    x = case.values(rng).astype(dtype)
    theirs = TORCH_FORWARD[name](torch.from_numpy(x), case.axis).numpy()
    ours = call_unmodified(getattr(frontend, name), x, axis=case.axis)
    if name == "logsumexp":  # m + log(s) may cancel: the error unit is the row's largest |x|
        scale = np.max(np.abs(np.where(np.isfinite(x), x, 0)), axis=case.axis)
        assert_close(ours, theirs, dtype, np.maximum(scale, 1), what=name, factor=2.0)
    else:
        check_like_torch(ours, theirs, dtype, name)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize(
    "case", [c for c in TORCH_CASES if c.finite], ids=[c.id for c in TORCH_CASES if c.finite]
)
@float_dtypes
def test_backward_like_torch(frontend, name, case, dtype, rng):
    x = case.values(rng).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    y = TORCH_FORWARD[name](xt, case.axis)
    y.backward(torch.from_numpy(g))
    output = y.detach().numpy()
    ours = call_unmodified(getattr(frontend, f"{name}_backward"), g, output, axis=case.axis)
    scale = np.maximum(1, np.max(np.abs(g), axis=case.axis, keepdims=True))
    assert_close(ours, xt.grad.numpy(), dtype, scale, what=f"{name}_backward", factor=2.0)
    assert ours.dtype == dtype


# ---------------------------------------------------------------------------------------------
# float32 accuracy: no worse than PyTorch's float32 against the extended-precision reference

ACCURACY_SHAPES = [(64, 1000), (512, 10), (3, 30000)]


def _max_err(values, exact):
    v, e = np.asarray(values, np.float64), np.asarray(exact, np.float64)
    return float(np.max(np.abs(v - e))) if v.size else 0.0


def _no_worse(ours, theirs, exact, what):
    err_ours, err_torch = _max_err(ours, exact), _max_err(theirs, exact)
    tiny = 2 * np.finfo(np.float32).eps * float(np.max(np.abs(np.asarray(exact, np.float64))))
    assert err_ours <= 1.5 * err_torch + tiny, (
        f"{what}: float32 max error {err_ours:.3g} vs PyTorch's {err_torch:.3g} (tiny {tiny:.3g})"
    )


@pytest.mark.parametrize("shape", ACCURACY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize(("reduction", "smoothing"), [("mean", 0.0), ("sum", 0.1), ("none", 0.0)])
def test_float32_cross_entropy_accuracy(frontend, shape, kind, reduction, smoothing, rng):
    n, c = shape
    logits, target, w = ce_inputs(n, c, rng, kind=kind, weight=True, scale=6.0)
    x = logits.astype(np.float32)
    t = target.astype(np.float32) if kind == "prob" else target
    w = w.astype(np.float32)
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    exact_loss, exact_grad = ref.cross_entropy_with_grad(x, t, **kw)
    t_loss, t_grad = torch_cross_entropy(x, t, **kw)
    loss, grad = frontend.cross_entropy_with_grad(x, t, **kw)
    _no_worse(grad, t_grad, exact_grad, "grad")
    _no_worse(loss, t_loss, exact_loss, "loss")


@pytest.mark.parametrize("shape", ACCURACY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(TORCH_FORWARD))
def test_float32_forward_accuracy(frontend, shape, name, rng):
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    exact = getattr(ref, name)(x, -1)
    theirs = TORCH_FORWARD[name](torch.from_numpy(x), -1).numpy()
    _no_worse(getattr(frontend, name)(x), theirs, exact, name)


@pytest.mark.parametrize("shape", ACCURACY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_float32_backward_accuracy(frontend, shape, name, rng):
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = TORCH_FORWARD[name](xt, -1)
    y.backward(torch.from_numpy(g))
    output = y.detach().numpy()
    exact = getattr(ref, f"{name}_backward")(g, output)
    ours = getattr(frontend, f"{name}_backward")(g, output)
    _no_worse(ours, xt.grad.numpy(), exact, f"{name}_backward")


# ---------------------------------------------------------------------------------------------
# torch.Tensor inputs


@pytest.mark.parametrize("name", list(TORCH_FORWARD))
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@float_dtypes
def test_tensor_input(frontend, name, layout, dtype, rng):
    x = rng.standard_normal((7, 6)).astype(dtype)
    t = {
        "contiguous": lambda a: a,
        "transposed": lambda a: a.T.contiguous().T,
        "sliced": lambda a: torch.stack([a, -a], -1).flatten(1)[:, ::2],
    }[layout](torch.from_numpy(x.copy()))
    ours = getattr(frontend, name)(t)
    assert isinstance(ours, np.ndarray)
    assert_bitwise_equal(ours, getattr(frontend, name)(x), name)


@pytest.mark.parametrize("name", ["softmax_backward", "log_softmax_backward"])
def test_tensor_input_backward(frontend, name, rng):
    g, a = rng.standard_normal((5, 4)), rng.random((5, 4))
    ours = getattr(frontend, name)(torch.from_numpy(g), torch.from_numpy(a))
    assert_bitwise_equal(ours, getattr(frontend, name)(g, a), name)


@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32, torch.uint8])
def test_tensor_input_cross_entropy(frontend, kind, tdtype, rng):
    logits, target, w = ce_inputs(9, 5, rng, kind=kind, weight=True)
    tl, tw = torch.from_numpy(logits), torch.from_numpy(w)
    tt = torch.from_numpy(target) if kind == "prob" else torch.from_numpy(target).to(tdtype)
    loss, grad = frontend.cross_entropy_with_grad(tl, tt, weight=tw, label_smoothing=0.1)
    e_loss, e_grad = frontend.cross_entropy_with_grad(logits, target, weight=w, label_smoothing=0.1)
    assert isinstance(grad, np.ndarray) and isinstance(loss, np.generic)
    assert_bitwise_equal(grad, e_grad, "grad")
    assert_bitwise_equal(loss, e_loss, "loss")


def test_tensor_layouts_match_numpy_layouts(frontend, rng):
    """A byte-for-byte check that a CPU tensor and the same NumPy layouts agree."""
    x = rng.standard_normal((6, 5)).astype(np.float32)
    expected = frontend.softmax(x)
    for layout in LAYOUTS.values():
        assert_bitwise_equal(frontend.softmax(layout(x)), expected, "softmax")
