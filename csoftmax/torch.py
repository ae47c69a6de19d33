"""PyTorch autograd functions over the csoftmax kernels (CPU tensors).

``cross_entropy``, ``softmax`` and ``log_softmax`` behave as their
``torch.nn.functional`` namesakes on CPU tensors and take part in autograd.
Tensors cross to NumPy without copies (``tensor.detach().numpy()`` and
``torch.from_numpy``); non-contiguous input is made contiguous first.
bfloat16 tensors cross as ``ml_dtypes.bfloat16`` views (through their int16
view: NumPy has no bfloat16 of its own), and come back as bfloat16 tensors.

``cross_entropy`` computes its gradient in the forward pass, in the same sweep
over the logits as the loss (:func:`csoftmax.cross_entropy_with_grad`), and
keeps only that gradient for the backward pass, which scales it by the upstream
gradient.  No ``log_softmax`` or ``softmax`` tensor of the logits' size is kept.

Limits: CPU tensors of dtype bfloat16 (with ``ml_dtypes`` installed),
float16, float32 or float64 only (a CUDA tensor
is a ``ValueError``: use ``torch.nn.functional`` there); ``cross_entropy``
takes ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dK)`` input (classes on
dimension 1, as in PyTorch) and differentiates with respect to the input
only (not ``target`` nor ``weight``); double backward is not supported (the
backward passes are first-order only: ``create_graph=True`` through them
raises a ``RuntimeError``).

This module needs PyTorch (``pip install "csoftmax[torch]"``); ``import
csoftmax`` alone never imports torch.
"""

from __future__ import annotations

import functools

try:
    import torch
    from torch.autograd.function import once_differentiable
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "csoftmax.torch needs PyTorch, which is not installed: "
        'pip install "csoftmax[torch]" (or install torch), or use the NumPy functions '
        "in csoftmax directly"
    ) from exc

import numpy as np

import csoftmax as _cs
from csoftmax import _half

__all__ = ["CrossEntropy", "LinearCrossEntropy", "LogSoftmax", "Softmax", "cross_entropy",
           "linear_cross_entropy", "log_softmax", "softmax"]

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _check_cpu(t, name):
    """A clear error for tensors csoftmax cannot read (non-CPU devices)."""
    if type(t) is torch.Tensor and t.is_cpu:  # the common case: 0.05 us, .device 0.25
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(
            f"csoftmax.torch computes on CPU tensors only, but {name} is on device "
            f"'{t.device}': use torch.nn.functional on that device, or move the "
            f"tensor with .cpu()"
        )


def _as_numpy(t, name):
    """A NumPy view of a CPU tensor (a copy only when it is not contiguous);
    bfloat16 as an ml_dtypes.bfloat16 view (a TypeError without ml_dtypes)."""
    _check_cpu(t, name)
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:
        bf16 = _half.require_bfloat16(f"{name} (a torch.bfloat16 tensor)")
        return t.view(torch.int16).numpy().view(bf16)
    return t.numpy()


def _from_numpy(a):
    """A tensor sharing the memory of a NumPy array (bfloat16 included)."""
    if _half.half_kind(a.dtype) == _half.BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _check_input(t, name="input"):
    _check_cpu(t, name)
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}: csoftmax.torch takes bfloat16, float16, float32 or "
            f"float64 tensors"
        )


def _first_order_only(backward):
    """Wrap a backward pass: no double backward, with a clear error.

    ``once_differentiable`` raises only when the upstream gradient itself
    requires grad; with ``create_graph=True`` and a constant upstream gradient
    it would return a gradient that silently lacks its dependence on the input.
    So any attempt to build a graph of the backward pass is refused here.
    """
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"csoftmax.torch.{ctx.name}: double backward is not supported "
                f"(backward was called with create_graph=True); use "
                f"torch.nn.functional.{ctx.name} for higher-order gradients"
            )
        return once(ctx, *grad_outputs)

    return wrapper


def _graph_needed(*tensors):
    """Whether autograd records the call (grad mode on and a tensor argument
    that requires grad), as ``Function.apply`` decides; where it does not, the
    functions below run their forward computation directly: ``apply`` alone
    cost 4-5 us, three times a 1x1000 softmax.  (A loop, not ``any`` over a
    generator: 0.1 against 0.3 us.)"""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return torch.is_grad_enabled()
    return False


def _direct_numpy(t, logits=True):
    """``t.numpy()`` for the common tensor that needs nothing else: exactly a
    ``torch.Tensor``, on the CPU, contiguous, not requiring grad (so no graph
    is recorded), of a dtype NumPy has (logits: float16, float32, float64;
    else anything but bfloat16).  None for every other tensor or object,
    which then takes the checked path (_check_input, _as_numpy, _from_numpy)
    and its errors.  A 1x10 softmax spent 1.2 of its 2.7 us in those steps
    (checks made twice, the bfloat16 tests of the input and the result)."""
    if type(t) is not torch.Tensor or not t.is_cpu or t.requires_grad:
        return None
    dtype = t.dtype
    if logits:
        if dtype is not torch.float32 and dtype is not torch.float64 and dtype is not torch.float16:
            return None
    elif dtype is torch.bfloat16:
        return None
    if not t.is_contiguous():
        return None
    try:
        return t.numpy()
    except (TypeError, RuntimeError):  # a dtype NumPy lacks, a wrapped tensor, a view bit:
        return None                    # the checked path raises its own error


def _scalar_tensor(value):
    """A 0-d tensor from the NumPy scalar (or 0-d array) csoftmax returns."""
    return _from_numpy(np.array(value))


def _loss_tensor(loss):
    """A tensor of a loss as csoftmax returns it (a NumPy scalar or an array)."""
    return _from_numpy(loss) if type(loss) is np.ndarray and loss.ndim else _scalar_tensor(loss)


def _check_cross_entropy_input(input):
    _check_input(input)
    if input.dim() == 0:
        raise ValueError(
            "csoftmax.torch.cross_entropy takes (N, C), (C,) or (N, C, d1, ..., dK) "
            "input, got a 0-d tensor"
        )


def _cross_entropy_forward(input, target, weight, ignore_index, reduction, label_smoothing,
                           z_loss, softcap, with_grad):
    """The loss tensor, and with_grad the gradient tensor (else None), of a
    checked input."""
    x = _as_numpy(input, "input")
    t = _as_numpy(target, "target")
    w = None if weight is None else _as_numpy(weight, "weight")
    axis = 1 if x.ndim > 1 else 0  # the class dimension, as in PyTorch
    grad = None
    if with_grad:
        loss, grad = _cs.cross_entropy_with_grad(
            x, t, axis=axis, weight=w, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        grad = _from_numpy(grad)
    else:
        loss = _cs.cross_entropy(x, t, axis=axis, weight=w, ignore_index=ignore_index,
                                 reduction=reduction, label_smoothing=label_smoothing,
                                 z_loss=z_loss, softcap=softcap)
    return _loss_tensor(loss), grad


class CrossEntropy(torch.autograd.Function):
    """``F.cross_entropy`` whose forward also computes the gradient (see the module doc).

    Use :func:`cross_entropy`; ``CrossEntropy.apply`` takes the same arguments
    positionally.
    """

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing,
                z_loss=0.0, softcap=None):
        _check_cross_entropy_input(input)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            which = "target" if ctx.needs_input_grad[1] else "weight"
            raise NotImplementedError(
                f"csoftmax.torch.cross_entropy differentiates with respect to input only, "
                f"but {which} requires grad: detach it, or use "
                f"torch.nn.functional.cross_entropy"
            )
        ctx.reduction = reduction
        ctx.name = "cross_entropy"
        loss, grad = _cross_entropy_forward(input, target, weight, ignore_index, reduction,
                                            label_smoothing, z_loss, softcap,
                                            ctx.needs_input_grad[0])
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none" and grad_output.dim():
            # per-position losses: the saved gradient is per position with factor 1,
            # the class dimension (1) of the input missing from the loss
            grad_output = grad_output.unsqueeze(1)
        # a new tensor: the saved gradient stays intact for retain_graph=True
        return grad * grad_output.to(grad.dtype), None, None, None, None, None, None, None


def _row_forward(function, input, dim, mask):
    """function (softmax, log_softmax) of a tensor over dim, as a tensor."""
    _check_input(input)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, not {type(dim).__name__}")
    where = None
    if mask is not None:
        _check_cpu(mask, "mask")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask has dtype {mask.dtype}: expected a bool tensor")
        where = mask.detach().numpy()  # any strides: read in place (broadcast too)
    return _from_numpy(function(_as_numpy(input, "input"), axis=dim, where=where))


class _RowFunction(torch.autograd.Function):
    """Shared forward/backward of Softmax and LogSoftmax."""

    _forward = _backward = None  # csoftmax functions, set by subclasses

    @classmethod
    def _run_forward(cls, ctx, input, dim, mask=None):
        out = _row_forward(cls._forward, input, dim, mask)
        ctx.dim = dim
        ctx.name = cls._name
        # the mask too through save_for_backward: autograd then refuses a
        # backward after it was changed in place, as it refuses a changed output
        ctx.save_for_backward(out, mask)
        return out

    @classmethod
    def _run_backward(cls, ctx, grad_output):
        out, mask = ctx.saved_tensors
        g = _as_numpy(grad_output.to(out.dtype), "grad_output")
        a = _as_numpy(out, "output")
        where = None if mask is None else mask.detach().numpy()
        grad = cls._backward(g, a, axis=ctx.dim, where=where)
        return _from_numpy(grad), None, None


class Softmax(_RowFunction):
    """``F.softmax`` over csoftmax's kernels; use :func:`softmax`."""

    _name = "softmax"
    _forward = staticmethod(_cs.softmax)
    _backward = staticmethod(_cs.softmax_backward)

    @staticmethod
    def forward(ctx, input, dim, mask=None):
        return Softmax._run_forward(ctx, input, dim, mask)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_output):
        return Softmax._run_backward(ctx, grad_output)


class LogSoftmax(_RowFunction):
    """``F.log_softmax`` over csoftmax's kernels; use :func:`log_softmax`."""

    _name = "log_softmax"
    _forward = staticmethod(_cs.log_softmax)
    _backward = staticmethod(_cs.log_softmax_backward)

    @staticmethod
    def forward(ctx, input, dim, mask=None):
        return LogSoftmax._run_forward(ctx, input, dim, mask)

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_output):
        return LogSoftmax._run_backward(ctx, grad_output)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, *, z_loss=0.0, softcap=None):
    """``torch.nn.functional.cross_entropy`` on CPU tensors, with the gradient fused
    into the forward pass.

    Parameters
    ----------
    input : Tensor, shape (N, C), (C,) or (N, C, d1, ..., dK)
        Logits (bfloat16, float16, float32 or float64, on the CPU), classes on dimension
        1 (0 for (C,) input); may require grad.
    target : Tensor
        Class indices, shape (N,) or (N, d1, ..., dK) (a 0-d tensor for (C,)
        input), any integer dtype; or class probabilities of the input's shape
        (need not sum to one).
    weight : Tensor, shape (C,), optional
        Per-class weights.
    ignore_index : int, default -100
        Rows with this class index count 0 and get a zero gradient.
    reduction : {"mean", "sum", "none"}
        As in PyTorch: "mean" divides by the summed weight of the counted rows.
    label_smoothing : float in [0, 1]
        As in PyTorch.
    z_loss : float >= 0, default 0
        PaLM's z-loss ``z_loss * logsumexp(row)**2`` added per counted row
        (see :func:`csoftmax.cross_entropy`); not in ``F.cross_entropy``.
    softcap : float > 0, optional
        Gemma 2's logit soft cap, ``softcap * tanh(input / softcap)`` before
        the softmax; not in ``F.cross_entropy`` (there:
        ``F.cross_entropy(softcap * torch.tanh(input / softcap), ...)``).
        Both enter the fused gradient exactly.  (The ``return_z_loss`` and
        ``return_token_accuracy`` flags of the NumPy API are not offered
        here: the result stays one differentiable tensor.)

    Returns
    -------
    Tensor
        The loss: 0-d, or the target's shape ((N,) or (N, d1, ..., dK)) for
        ``reduction="none"``; the input's dtype.
        Its backward pass scales the gradient saved by the forward pass; it
        cannot be differentiated twice.

    Examples
    --------
    >>> import torch, csoftmax.torch as ct
    >>> x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    >>> loss = ct.cross_entropy(x, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> round(loss.item(), 4)
    1.0986
    >>> x.grad
    tensor([[-0.3333,  0.1667,  0.1667],
            [ 0.1667,  0.1667, -0.3333]], dtype=torch.float64)
    """
    if weight is None and type(target) is torch.Tensor:  # the common call, see _direct_numpy
        x = _direct_numpy(input)
        t = _direct_numpy(target, logits=False) if x is not None and x.ndim else None
        if t is not None:
            loss = _cs.cross_entropy(x, t, axis=1 if x.ndim > 1 else 0,
                                     ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=label_smoothing, z_loss=z_loss,
                                     softcap=softcap)
            # a NumPy scalar (a 0-d array of it), or the "none" array as it is
            return torch.from_numpy(loss if type(loss) is np.ndarray else np.array(loss))
    if not _graph_needed(input, target, weight):
        _check_cross_entropy_input(input)
        return _cross_entropy_forward(input, target, weight, ignore_index, reduction,
                                      label_smoothing, z_loss, softcap, False)[0]
    return CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing,
                              z_loss, softcap)


def softmax(input, dim, *, mask=None):
    """``torch.nn.functional.softmax(input, dim)`` on CPU tensors.

    Parameters
    ----------
    input : Tensor
        Any shape; bfloat16, float16, float32 or float64, on the CPU.
    dim : int
        The dimension normalised over.
    mask : Tensor of bool, optional
        Broadcastable to ``input`` (say ``(B, 1, 1, S)`` for ``(B, H, S, S)``
        attention scores); read in place, never expanded.  False entries are
        left out and get probability 0; a slice with no True entry is all 0
        (``torch._safe_softmax``'s convention for fully padded rows, where
        ``torch.masked.softmax`` gives NaN): ``softmax(x, d, mask=x != -inf)``
        is ``torch._safe_softmax(x, d)``.

    Returns
    -------
    Tensor
        The input's shape and dtype.  Backward: ``a * (g - sum(g * a))`` (over
        the kept entries, 0 at masked ones); not differentiable twice.

    Examples
    --------
    >>> import torch, csoftmax.torch as ct
    >>> ct.softmax(torch.tensor([[1.0, 2.0, 3.0]]), dim=1)
    tensor([[0.0900, 0.2447, 0.6652]])
    >>> ct.softmax(torch.tensor([[1.0, 2.0, 3.0]]), dim=1, mask=torch.tensor([True, True, False]))
    tensor([[0.2689, 0.7311, 0.0000]])
    """
    if mask is None and type(dim) is int:  # the common call, see _direct_numpy
        x = _direct_numpy(input)
        if x is not None:
            return torch.from_numpy(_cs.softmax(x, axis=dim))
    if not _graph_needed(input):
        return _row_forward(_cs.softmax, input, dim, mask)
    return Softmax.apply(input, dim, mask)


def log_softmax(input, dim, *, mask=None):
    """``torch.nn.functional.log_softmax(input, dim)`` on CPU tensors.

    Parameters
    ----------
    input : Tensor
        Any shape; bfloat16, float16, float32 or float64, on the CPU.
    dim : int
        The dimension normalised over.
    mask : Tensor of bool, optional
        As for :func:`softmax`: False entries give -inf, and a slice with no
        True entry is all -inf.

    Returns
    -------
    Tensor
        The input's shape and dtype.  Backward: ``g - exp(out) * sum(g)`` (over
        the kept entries, 0 at masked ones); not differentiable twice.

    Examples
    --------
    >>> import torch, csoftmax.torch as ct
    >>> ct.log_softmax(torch.tensor([0.0, 0.0]), dim=0)
    tensor([-0.6931, -0.6931])
    """
    if mask is None and type(dim) is int:  # the common call, see _direct_numpy
        x = _direct_numpy(input)
        if x is not None:
            return torch.from_numpy(_cs.log_softmax(x, axis=dim))
    if not _graph_needed(input):
        return _row_forward(_cs.log_softmax, input, dim, mask)
    return LogSoftmax.apply(input, dim, mask)


def _check_linear_inputs(input, linear_weight, linear_bias):
    for t, name in ((input, "input"), (linear_weight, "linear_weight"),
                    (linear_bias, "linear_bias")):
        if t is not None:
            _check_input(t, name)


def _linear_options(ignore_index, reduction, label_smoothing, z_loss, softcap):
    options = dict(ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing)
    if not (softcap is None and type(z_loss) in (float, int) and z_loss == 0):
        options.update(z_loss=z_loss, softcap=softcap)
    return options


class LinearCrossEntropy(torch.autograd.Function):
    """``F.linear_cross_entropy`` over :func:`csoftmax.linear_cross_entropy_with_grad`;
    use :func:`linear_cross_entropy`.

    With a "mean" or "sum" reduction the three gradients are computed in the
    forward pass and saved alone; "none" computes the loss only and its
    backward pass runs the chunks again with the upstream gradient as row
    factors (as PyTorch's chunked path does).
    """

    @staticmethod
    def forward(ctx, input, linear_weight, target, linear_bias, weight, reduction,
                ignore_index, label_smoothing, z_loss=0.0, softcap=None):
        _check_linear_inputs(input, linear_weight, linear_bias)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[4]:
            which = "target" if ctx.needs_input_grad[2] else "weight"
            raise NotImplementedError(
                f"csoftmax.torch.linear_cross_entropy differentiates with respect to input, "
                f"linear_weight and linear_bias only, but {which} requires grad: detach it, "
                f"or use torch.nn.functional.linear_cross_entropy")
        arrays, arrays_options = LinearCrossEntropy._arrays(input, linear_weight, target,
                                                            linear_bias, weight)
        options = _linear_options(ignore_index, reduction, label_smoothing, z_loss, softcap)
        ctx.name = "linear_cross_entropy"
        ctx.reduction = reduction
        ctx.has_bias = linear_bias is not None
        needs = any(ctx.needs_input_grad[i] for i in (0, 1, 3))
        if needs and reduction != "none":
            loss, gx, gw, gb = _cs.linear_cross_entropy_with_grad(*arrays, **arrays_options,
                                                                  **options)
            saved = [_from_numpy(gx), _from_numpy(gw)]
            if gb is not None:
                saved.append(_from_numpy(gb))
            ctx.save_for_backward(*saved)
        else:
            loss = _cs.linear_cross_entropy(*arrays, **arrays_options, **options)
            if needs:
                # "none": recomputed in backward with the upstream factors, from the
                # inputs saved through autograd, which refuses a backward after
                # one of them was changed in place (as PyTorch's own function does)
                ctx.save_for_backward(input, linear_weight, target, linear_bias, weight)
                ctx.options = options
        return _loss_tensor(loss)

    @staticmethod
    def _arrays(input, linear_weight, target, linear_bias, weight):
        """(input, linear_weight, target) and the bias and class weights (keywords)
        as NumPy views."""
        arrays = (_as_numpy(input, "input"), _as_numpy(linear_weight, "linear_weight"),
                  _as_numpy(target, "target"))
        return arrays, dict(
            linear_bias=None if linear_bias is None else _as_numpy(linear_bias, "linear_bias"),
            weight=None if weight is None else _as_numpy(weight, "weight"))

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_output):
        if ctx.reduction == "none":
            from . import _linear

            arrays, arrays_options = LinearCrossEntropy._arrays(*ctx.saved_tensors)
            scale = grad_output.detach().to(torch.float64).contiguous().numpy()
            _, gx, gw, gb = _linear.call(None, *arrays, True, row_scale=scale,
                                         **arrays_options, **ctx.options)
            grads = [_from_numpy(gx), _from_numpy(gw),
                     None if gb is None else _from_numpy(gb)]
        else:
            saved = list(ctx.saved_tensors)
            go = grad_output.to(saved[0].dtype)
            grads = [g * go for g in saved] + ([] if ctx.has_bias else [None])
        gx, gw, gb = grads
        return (gx if ctx.needs_input_grad[0] else None,
                gw if ctx.needs_input_grad[1] else None,
                None, gb if ctx.needs_input_grad[3] else None, None, None, None, None, None,
                None)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0,
                         options=None, z_loss=0.0, softcap=None):
    """``torch.nn.functional.linear_cross_entropy`` on CPU tensors, by chunks of
    rows: the (N, V) logits are never held.

    Parameters
    ----------
    input : Tensor, shape (N, D) or (D,)
        Features; float16, float32 or float64, on the CPU; may require grad.
    linear_weight : Tensor, shape (V, D) or (V, d1, ..., dK, D)
        The projection; may require grad.
    target : Tensor
        Class indices ((N,), a 0-d tensor for (D,) input, (N, d1, ..., dK)
        for K-dimensional weights) or class probabilities of the logits' shape.
    linear_bias : Tensor, shape ``linear_weight.shape[:-1]``, optional
        May require grad.
    weight, reduction, label_smoothing
        As in :func:`torch.nn.functional.cross_entropy`.
    ignore_index : int, optional
        As in PyTorch: None means -100 for class indices; it must be None
        with probability targets.
    options : LinearCrossEntropyOptions, optional
        Accepted and ignored: csoftmax always chunks (see
        :func:`csoftmax.linear_cross_entropy`).
    z_loss, softcap
        csoftmax's additions (not in PyTorch), as for
        :func:`csoftmax.torch.cross_entropy`: the z-loss ``z_loss *
        logsumexp(row)**2`` per counted row and the soft cap ``softcap *
        tanh(logits / softcap)``, on the logits ``input @ linear_weight.T +
        linear_bias``; both enter the three gradients exactly.

    Returns
    -------
    Tensor
        The loss, as ``F.linear_cross_entropy`` returns it.  Its backward
        pass scales the gradients saved by the forward pass ("none": runs the
        chunks again); it cannot be differentiated twice.

    Examples
    --------
    >>> import torch, csoftmax.torch as ct
    >>> x = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    >>> W = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    >>> loss = ct.linear_cross_entropy(x, W, torch.tensor([0, 3]))
    >>> loss.backward()
    >>> round(loss.item(), 4)
    1.3863
    >>> W.grad[0]
    tensor([-0.2500, -0.2500, -0.2500], dtype=torch.float64)
    """
    for t, name in ((input, "input"), (linear_weight, "linear_weight"), (target, "target")):
        _check_cpu(t, name)
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(
            f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    logits_shape = tuple(input.shape[:-1]) + tuple(linear_weight.shape[:-1])
    if tuple(target.shape) == logits_shape and target.is_floating_point():
        if ignore_index is not None:
            raise RuntimeError(
                "ignore_index cannot be specified when target contains probabilities")
        ignore_index = -100
    elif ignore_index is None:
        ignore_index = -100
    if not _graph_needed(input, linear_weight, target, linear_bias, weight):
        _check_linear_inputs(input, linear_weight, linear_bias)
        arrays, arrays_options = LinearCrossEntropy._arrays(input, linear_weight, target,
                                                            linear_bias, weight)
        loss = _cs.linear_cross_entropy(*arrays, **arrays_options, **_linear_options(
            ignore_index, reduction, label_smoothing, z_loss, softcap))
        return _loss_tensor(loss)
    return LinearCrossEntropy.apply(input, linear_weight, target, linear_bias, weight,
                                    reduction, ignore_index, label_smoothing, z_loss, softcap)
