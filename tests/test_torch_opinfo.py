"""PyTorch's own test inputs for these operations, through csoftmax.

The OpInfo sample inputs of ``torch.testing._internal.common_methods_invocations`` (and the
module inputs of ``nn.CrossEntropyLoss`` in ``common_modules``) are what PyTorch tests its
kernels with: every one is run through the matching csoftmax call and compared with
PyTorch's result, values and (where the op is differentiable) gradients.  Needs torch and
the ``expecttest`` package (which ``torch.testing._internal`` imports); skipped without them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")
cmi = pytest.importorskip("torch.testing._internal.common_methods_invocations")
F = torch.nn.functional

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _ops(*names):
    return [op for op in cmi.op_db if op.name in names]


def _samples(op, dtype, requires_grad=False):
    return list(op.sample_inputs("cpu", dtype, requires_grad=requires_grad))


def _np(t):
    return t.detach().numpy() if torch.is_tensor(t) else t


def _close(ours, theirs, dtype, what):
    theirs = theirs.detach() if torch.is_tensor(theirs) else torch.as_tensor(theirs)
    ours = torch.as_tensor(np.asarray(ours))
    assert tuple(ours.shape) == tuple(theirs.shape), f"{what}: {ours.shape} vs {theirs.shape}"
    torch.testing.assert_close(ours.to(theirs.dtype), theirs, equal_nan=True, **TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp, the softmax backward

def _softmax_family(frontend, op, sample):
    """csoftmax's value for one sample of softmax / log_softmax (any variant) / logsumexp."""
    x = sample.input
    if op.name == "logsumexp":
        dim, keepdim = sample.args[0], sample.args[1] if len(sample.args) > 1 else False
        axis = tuple(dim) if isinstance(dim, (tuple, list)) else dim
        return frontend.logsumexp(_np(x), axis=axis, keepdims=keepdim)
    dim = sample.args[0] if sample.args else sample.kwargs["dim"]
    dtype = sample.kwargs.get("dtype")
    if dtype is not None:  # PyTorch casts the input first
        x = x.to(dtype)
    return getattr(frontend, op.name)(_np(x), axis=dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", _ops("softmax", "log_softmax", "logsumexp"),
                         ids=lambda op: f"{op.name}-{op.variant_test_name or 'plain'}")
def test_softmax_family_samples(frontend, op, dtype):
    for i, sample in enumerate(_samples(op, DTYPES[dtype])):
        ours = _softmax_family(frontend, op, sample)
        theirs = op(sample.input, *sample.args, **sample.kwargs)
        _close(ours, theirs, DTYPES[dtype], f"{op.name} sample {i} {sample}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_sample_gradients(frontend, name, dtype):
    """The backward functions against autograd on the same samples."""
    (op,) = [o for o in _ops(name) if not o.variant_test_name]
    backward = getattr(frontend, f"{name}_backward")
    for i, sample in enumerate(_samples(op, DTYPES[dtype], requires_grad=True)):
        dim = sample.args[0]
        out = op(sample.input, *sample.args, **sample.kwargs)
        g = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
        (want,) = torch.autograd.grad(out, sample.input, g)
        ours = backward(_np(g), _np(out), axis=dim)
        _close(ours, want, DTYPES[dtype], f"{name} backward sample {i}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_data_samples(frontend, dtype):
    (op,) = _ops("_softmax_backward_data")
    for i, sample in enumerate(_samples(op, DTYPES[dtype])):
        output, dim = sample.args[0], sample.args[1]
        theirs = op(sample.input, *sample.args, **sample.kwargs)
        ours = frontend.softmax_backward(_np(sample.input), _np(output), axis=dim)
        _close(ours, theirs, DTYPES[dtype], f"_softmax_backward_data sample {i}")


# ---------------------------------------------------------------------------------------------
# cross-entropy

def _cross_entropy_call(sample):
    """(logits, target, keyword arguments) of csoftmax for one F.cross_entropy sample."""
    x, (target,) = sample.input, sample.args
    kw = dict(sample.kwargs)
    if "weight" in kw and kw["weight"] is not None:
        kw["weight"] = _np(kw["weight"])
    kw["axis"] = 1 if x.dim() > 1 else 0  # PyTorch's class dimension
    return _np(x), _np(target), kw


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_samples(frontend, dtype):
    (op,) = _ops("nn.functional.cross_entropy")
    samples = _samples(op, DTYPES[dtype], requires_grad=True)
    assert samples
    for i, sample in enumerate(samples):
        x, target, kw = _cross_entropy_call(sample)
        want = op(sample.input, *sample.args, **sample.kwargs)
        loss = frontend.cross_entropy(x, target, **kw)
        loss2, grad = frontend.cross_entropy_with_grad(x, target, **kw)
        what = f"cross_entropy sample {i}: {sample}"
        _close(loss, want, DTYPES[dtype], what)
        _close(loss2, want, DTYPES[dtype], what)
        upstream = torch.linspace(0.5, 1.5, want.numel(), dtype=want.dtype).reshape(want.shape)
        (want_grad,) = torch.autograd.grad(want, sample.input, upstream)
        grad = grad * (np.expand_dims(_np(upstream), kw["axis"]) if want.dim() else
                       _np(upstream))
        _close(grad, want_grad, DTYPES[dtype], f"{what} (gradient)")


def test_cross_entropy_module_inputs(frontend):
    """nn.CrossEntropyLoss's module inputs (common_modules), through the module's options."""
    cm = pytest.importorskip("torch.testing._internal.common_modules")
    (info,) = [m for m in cm.module_db if m.module_cls is torch.nn.CrossEntropyLoss]
    inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                     requires_grad=False, training=True)
    assert inputs
    for i, mi in enumerate(inputs):
        module = torch.nn.CrossEntropyLoss(*mi.constructor_input.args,
                                           **mi.constructor_input.kwargs)
        x, target = mi.forward_input.args
        want = module(x, target)
        kw = {"reduction": module.reduction, "ignore_index": module.ignore_index,
              "label_smoothing": module.label_smoothing, "axis": 1 if x.dim() > 1 else 0}
        if module.weight is not None:
            kw["weight"] = _np(module.weight)
        ours = frontend.cross_entropy(_np(x), _np(target), **kw)
        _close(ours, want, torch.float64, f"CrossEntropyLoss module input {i}: {mi.desc}")


# ---------------------------------------------------------------------------------------------
# masked softmax (where=): torch.masked's samples and PyTorch's _safe_softmax

def _masked_call(frontend, op, sample):
    """csoftmax's value for one torch.masked sample: where=mask, as torch.masked reads it."""
    x, kw = _np(sample.input), dict(sample.kwargs)
    mask = kw.pop("mask", None)
    where = None if mask is None else _np(mask)
    if op.name == "masked.logsumexp":
        dim = kw.get("dim", None)
        axis = None if dim is None or dim == () else dim
        if isinstance(axis, list):
            axis = tuple(axis)
        return frontend.logsumexp(x, axis=axis, keepdims=kw.get("keepdim", False), where=where)
    name = op.name.split(".")[1]
    return getattr(frontend, name)(x, axis=sample.args[0], where=where)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", _ops("masked.softmax", "masked.log_softmax", "masked.logsumexp"),
                         ids=lambda op: op.name)
def test_masked_samples(frontend, op, dtype):
    """Equal to torch.masked wherever a slice keeps an entry.  A slice with nothing kept
    is csoftmax's "safe" 0 / -inf / -inf where torch.masked gives NaN (softmax,
    log_softmax) -- compared as that."""
    for i, sample in enumerate(_samples(op, DTYPES[dtype])):
        theirs = op(sample.input, *sample.args, **sample.kwargs)
        ours = np.asarray(_masked_call(frontend, op, sample))
        theirs_np = _np(theirs).copy()
        if op.name != "masked.logsumexp" and sample.kwargs.get("mask") is not None:
            mask = np.broadcast_to(_np(sample.kwargs["mask"]), theirs_np.shape)
            empty = ~mask.any(axis=sample.args[0], keepdims=True) & np.ones_like(mask)
            theirs_np[empty] = 0.0 if op.name == "masked.softmax" else -np.inf
        _close(ours, theirs_np, DTYPES[dtype], f"{op.name} sample {i} {sample}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_softmax_samples(frontend, dtype):
    """softmax(x, where=x != -inf) is PyTorch's _safe_softmax, on its own samples and on
    rows that are entirely -inf."""
    (op,) = _ops("torch.ops.aten._safe_softmax.default")
    samples = _samples(op, DTYPES[dtype])
    for i, sample in enumerate(samples):
        x = sample.input.clone()
        x.view(-1)[::3] = -float("inf")
        dim = sample.kwargs["dim"]
        theirs = torch._safe_softmax(x, dim)
        xn = _np(x)
        _close(frontend.softmax(xn, axis=dim, where=xn != -np.inf), theirs, DTYPES[dtype],
               f"_safe_softmax sample {i}")
    x = torch.randn(4, 5, dtype=DTYPES[dtype], generator=torch.Generator().manual_seed(0))
    x[1] = -float("inf")  # a fully padded row: 0, not NaN
    xn = _np(x)
    ours = frontend.softmax(xn, axis=1, where=xn != -np.inf)
    _close(ours, torch._safe_softmax(x, 1), DTYPES[dtype], "_safe_softmax, an all -inf row")
    assert (ours[1] == 0).all()
