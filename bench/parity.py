"""PyTorch parity of the 0.2 API: ``python -m bench --parity``.

The calls that 0.2 added, each timed interleaved (:func:`bench.timing.interleave`)
in one process with what a PyTorch user writes for the same result, float32:

- ``cross_entropy_with_grad(x, t, axis=1, out=g)`` on ``(8, 21, 256, 256)``
  segmentation logits (classes on axis 1) against ``F.cross_entropy`` forward +
  backward (the input requires grad) and ``np.copyto`` of the logits;
- ``cross_entropy_with_grad`` on ``(32, 512, 1000)`` (classes last) against the
  same call on the 2-D view ``(16384, 1000)`` of the same logits: time per
  element (both calls have as many elements);
- ``softmax`` over a non-last axis (``(64, 1000, 64)`` axis 1, ``(1000, 4096)``
  axis 0) against ``torch.softmax`` and ``np.copyto``;
- ``softmax_backward`` over the same non-last axes against
  ``torch._softmax_backward_data`` (the op autograd runs for ``torch.softmax``) and
  ``np.copyto``;
- ``softmax(x, where=m)`` on ``(8192, 1024)`` with a broadcast ``(1, 1024)``
  padding mask (last 10% False) and with a full random mask, against
  ``torch.masked.softmax(xt, -1, mask=mt)``, ``xt.masked_fill(~mt, -inf).softmax(-1)``
  and (broadcast mask) csoftmax's unmasked softmax.

- the fused cross-entropy's options (issue 13, section 3) on ``(8192, 1000)`` and
  ``(1024, 32000)``, class indices: ``z_loss=1e-4``, ``softcap=30.0`` and
  ``return_token_accuracy=True``, each against the plain call (``out=`` both,
  interleaved): at most 1.15x its time;
- ``cross_entropy(x, t)`` (the loss alone) and ``logsumexp`` on ``(8192, 1000)``
  logits ``N(0, 30^2)``, a fifth of whose exponentials fall below float32's normal
  range, against the same loss on ``N(0, 1)`` logits and ``F.cross_entropy`` under
  ``no_grad``.

Every call's result is first checked against a float64 NumPy reference
(relative error ``1e-4``, as :mod:`bench.runner`); the masks leave no slice
empty, so that torch's two masked forms (NaN or 0 there) agree with csoftmax. A
call that disagrees is still timed, printed as ``MISMATCH`` and fails every
criterion it enters. The criteria (:class:`Criterion`) are time ratios; they
appear as rows of kind ``parity`` in ``python -m bench --targets`` (see
:mod:`bench.targets`).
"""

from __future__ import annotations

import gc
import importlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .ops import LOGIT_SCALE, shape_label
from .peers import to_arrays
from .report import format_time, larger_floor
from .runner import TOLERANCE, rel_error
from .timing import interleave

DTYPE = "float32"
#: Fraction of the columns that the broadcast padding mask leaves out (the last ones).
PADDING = 0.1


@dataclass(frozen=True)
class Criterion:
    """One criterion of a case: ``time(num) / time(den)`` against a bound.

    Attributes
    ----------
    name : str
        Key within its case.
    num, den : str
        Calls of the case (keys of :attr:`Built.calls`).
    bound : float
    at_least : bool
        ``value >= bound`` (a speed-up) if True, else ``value <= bound``.
    text : str
        The criterion in words.
    alt : str, optional
        A call timed in place of ``den`` (``out=`` variant) whose ratio the
        note gives for context.
    floor_of : str, optional
        The csoftmax call (``num`` or ``den``) that the case's floor calls bound
        (see :func:`floor_calls`): where the criterion fails, its note gives the
        value it would have if that call took only its floor, and says when
        even that misses the bound (out of reach).
    units : float, optional
        The logits-sized arrays that call must move, in copies of the logits
        (1: one read and one write; a backward reading two arrays: 1.5).
    """

    name: str
    num: str
    den: str
    bound: float
    at_least: bool
    text: str
    alt: str | None = None
    floor_of: str | None = None
    units: float = 1.0

    def passed(self, value):
        """Whether ``value`` meets the bound."""
        return value >= self.bound if self.at_least else value <= self.bound


@dataclass
class Built:
    """A case ready to verify and time.

    Attributes
    ----------
    calls : dict of str to callable
        The timed calls (no argument), csoftmax's first.
    labels : dict of str to str
        The call of each, in words.
    outputs : dict of str to callable
        Per checked call: turns what it returns into a tuple of arrays
        comparable with the reference (``np.copyto`` has none).
    reference : callable
        Returns the float64 reference outputs.
    references : dict of str to callable, optional
        Calls checked against a reference of their own (e.g. the unmasked
        softmax beside the masked one).
    """

    calls: dict
    labels: dict
    outputs: dict
    reference: Callable
    references: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """One parity case.

    Attributes
    ----------
    key : str
        Identifier (in the JSON and the target rows).
    group : str
        What is measured (first column of the targets table).
    op : str
        The csoftmax call in short.
    shape : tuple of int
    build : callable
        ``build(shape, threads, seed, torch)`` -> :class:`Built`; ``torch`` is
        the module or None (then the torch calls are left out).
    criteria : tuple of Criterion
    """

    key: str
    group: str
    op: str
    shape: tuple
    build: Callable
    criteria: tuple


# ---------------------------------------------------------------- references


def _lse64(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _ce_reference(x, t, axis):
    """Mean cross-entropy and its gradient in float64, classes along ``axis``."""
    xm = np.moveaxis(x.astype(np.float64), axis, -1)
    lse = _lse64(xm, -1)
    picked = np.take_along_axis(xm, t[..., None], -1)
    loss = np.mean(lse - picked)
    grad = np.exp(xm - lse)
    np.put_along_axis(grad, t[..., None], np.take_along_axis(grad, t[..., None], -1) - 1, -1)
    grad /= t.size
    return np.float64(loss), np.moveaxis(grad, -1, axis)


def _softmax_reference(x, axis, where=None):
    x = x.astype(np.float64)
    if where is not None:
        x = np.where(where, x, -np.inf)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _logits(shape, seed):
    rng = np.random.default_rng([seed, *shape])
    return (LOGIT_SCALE * rng.standard_normal(shape)).astype(DTYPE), rng


def _own(result):
    return to_arrays(result)


#: The floor calls that :func:`floor_calls` adds, by key.
FLOOR_CALLS = ("copy_threads", "exp_floor")
#: float32 values of the block over which a 16-bit case's exp floor is timed, again and
#: again: 1 MiB, half of the L2 of each of two cores on the development machine.
CACHED_EXP_ELEMENTS = 1 << 18


def floor_calls(calls, labels, x, threads, values=None):
    """Add the floors of a call on logits ``x`` to a case's ``calls`` (timed, not checked).

    ``copy_threads``: a copy of ``x``'s bytes (all of them, or all but the last one to
    three where their count is not a multiple of 4) into an array of their size in
    ``threads`` parts (``kernels.copy_floor``), the memory floor beside ``np.copyto``,
    which runs on one thread. ``exp_floor``: csoftmax's own max and exp-sum in blocks of
    4096 (``kernels.exp_floor``), the least compute of any call that takes every logit's
    exponential: over ``x`` itself, which the call reads too; or, given ``values`` (the
    float32 values of 16-bit logits, which the 16-bit kernels compute in), over a block of
    CACHED_EXP_ELEMENTS of them held in the cache, again and again for as many elements:
    read from memory, the float32 values would move twice the bytes of the 16-bit call and
    bound its compute from above. ``values=False``: no exp floor (a backward function).
    Neither floor exists on the NumPy fallback (``CSOFTMAX_BACKEND=numpy``): nothing is
    added there.
    """
    from csoftmax import _dispatch

    copy = getattr(_dispatch.KERNELS, "copy_floor", None)
    exp_floor = getattr(_dispatch.KERNELS, "exp_floor", None)
    raw = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    raw = raw[:raw.size // 4 * 4].view(np.float32).reshape(1, -1)  # bytes, whatever the type
    if copy is not None and raw.size:
        dst = np.empty_like(raw)
        calls["copy_threads"] = lambda: copy(raw, dst, threads)
        labels["copy_threads"] = f"copy of the logits on {threads} thread(s) (memory floor)"
    if exp_floor is None or values is False or not np.size(x):
        return
    if values is None:
        v = np.ascontiguousarray(x).reshape(1, -1)
        calls["exp_floor"] = lambda: exp_floor(v, threads)
        labels["exp_floor"] = f"max and exp-sum of the {v.dtype} logits (exp floor)"
        return
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    block = v[:CACHED_EXP_ELEMENTS].reshape(1, -1)
    reps, rest = divmod(v.size, block.size)
    tail = v[:rest].reshape(1, -1)

    def cached():
        for _ in range(reps):
            exp_floor(block, threads)
        if rest:
            exp_floor(tail, threads)

    calls["exp_floor"] = cached
    labels["exp_floor"] = (f"max and exp-sum of their float32 values, {block.size} at a time "
                           "in the cache (exp floor)")


def floor_bound(c, calls):
    """The note of a failed criterion ``c`` with a ``floor_of`` call: its value had that
    call taken only the larger of its floors (the memory floor, ``c.units`` times the
    faster of ``np.copyto`` and ``copy_threads``; the exp floor), or "" without them."""
    def time(name):
        return calls.get(name, {}).get("time")

    found = larger_floor(c.units, (time("copyto"), time("copy_threads")), time("exp_floor"))
    num, den = time(c.num), time(c.den)
    if found is None or not num or not den or c.floor_of not in (c.num, c.den):
        return ""
    floor, what = found
    best = floor / den if c.floor_of == c.num else num / floor
    return f"bound: {best:.2f}x at the {what}" + ("" if c.passed(best) else ", out of reach")


# ---------------------------------------------------------------- cases

#: The spread of the ``wide_logits`` case: N(0, WIDE_SCALE^2) logits, a fifth of whose
#: exponentials exp(x - max) are below float32's normal range (subnormal, or 0).
WIDE_SCALE = 30.0


def _build_wide_loss(shape, threads, seed, torch):
    """The loss alone (and logsumexp) of logits spread beyond the exp's normal range,
    against the same call on N(0, 1) logits and PyTorch's loss under ``no_grad``."""
    import csoftmax

    rng = np.random.default_rng([seed, *shape])
    narrow = rng.standard_normal(shape, dtype=np.float32)
    x = (WIDE_SCALE * narrow).astype(DTYPE)
    t = rng.integers(0, shape[-1], size=shape[:-1])
    dst = np.empty_like(x)
    calls = {
        "csoftmax": lambda: csoftmax.cross_entropy(x, t, num_threads=threads),
        "csoftmax_narrow": lambda: csoftmax.cross_entropy(narrow, t, num_threads=threads),
        "csoftmax_logsumexp": lambda: csoftmax.logsumexp(x, num_threads=threads)}
    labels = {"csoftmax": f"cross_entropy(x, t), x ~ N(0, {WIDE_SCALE:g}^2)",
              "csoftmax_narrow": "cross_entropy(x1, t), x1 ~ N(0, 1)",
              "csoftmax_logsumexp": "logsumexp(x)"}
    outputs = {"csoftmax": _own, "csoftmax_narrow": _own, "csoftmax_logsumexp": _own}
    references = {"csoftmax_narrow": lambda: _ce_reference(narrow, t, -1)[:1],
                  "csoftmax_logsumexp": lambda: (_lse64(x.astype(np.float64), -1)[..., 0],)}
    if torch is not None:
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)

        def torch_loss():
            with torch.no_grad():
                return torch.nn.functional.cross_entropy(xt, tt)

        calls["torch"] = torch_loss
        labels["torch"] = "F.cross_entropy(xt, tt) under no_grad"
        outputs["torch"] = to_arrays
    calls["copyto"] = lambda: np.copyto(dst, x)
    labels["copyto"] = "np.copyto(dst, x)"
    return Built(calls, labels, outputs, lambda: _ce_reference(x, t, -1)[:1], references)


def _build_ce_axis1(shape, threads, seed, torch):
    """Segmentation logits ``(N, C, H, W)``, classes on axis 1, integer targets."""
    import csoftmax

    x, rng = _logits(shape, seed)
    t = rng.integers(0, shape[1], size=shape[:1] + shape[2:])
    g, dst = np.empty_like(x), np.empty_like(x)
    calls = {"csoftmax_out": lambda: csoftmax.cross_entropy_with_grad(
        x, t, axis=1, out=g, num_threads=threads)}
    labels = {"csoftmax_out": "csoftmax.cross_entropy_with_grad(x, t, axis=1, out=g)"}
    outputs = {"csoftmax_out": _own}
    if torch is not None:
        leaf = torch.from_numpy(x).requires_grad_(True)
        calls["torch"] = torch_forward_backward(torch, leaf, torch.from_numpy(t))
        labels["torch"] = "F.cross_entropy(xt, tt) + backward (xt requires grad)"
        outputs["torch"] = to_arrays
    calls["copyto"] = lambda: np.copyto(dst, x)
    labels["copyto"] = "np.copyto(dst, x)"
    floor_calls(calls, labels, x, threads)
    return Built(calls, labels, outputs, lambda: _ce_reference(x, t, 1))


def _build_ce_3d(shape, threads, seed, torch):
    """``(B, S, C)`` classes last, and the same logits as one ``(B*S, C)`` matrix."""
    import csoftmax

    x, rng = _logits(shape, seed)
    t = rng.integers(0, shape[-1], size=shape[:-1])
    flat = (int(np.prod(shape[:-1])), shape[-1])
    x2, t2 = x.reshape(flat), t.reshape(flat[:1])  # views: the same memory
    g3, g2 = np.empty_like(x), np.empty_like(x2)
    calls = {
        "csoftmax_out": lambda: csoftmax.cross_entropy_with_grad(
            x, t, out=g3, num_threads=threads),
        "csoftmax_2d_out": lambda: csoftmax.cross_entropy_with_grad(
            x2, t2, out=g2, num_threads=threads)}
    labels = {"csoftmax_out": f"cross_entropy_with_grad(x, t, out=g) on {shape_label(shape)}",
              "csoftmax_2d_out": f"the same on the 2-D view {shape_label(flat)}"}
    outputs = {"csoftmax_out": _own,
               "csoftmax_2d_out": lambda r: (np.asarray(r[0]), r[1].reshape(shape))}
    return Built(calls, labels, outputs, lambda: _ce_reference(x, t, -1))


def _softmax_builder(axis):
    def build(shape, threads, seed, torch):
        import csoftmax

        x, _ = _logits(shape, seed)
        out, dst = np.empty_like(x), np.empty_like(x)
        calls = {
            "csoftmax": lambda: csoftmax.softmax(x, axis, num_threads=threads),
            "csoftmax_out": lambda: csoftmax.softmax(x, axis, out=out, num_threads=threads)}
        labels = {"csoftmax": f"csoftmax.softmax(x, axis={axis})",
                  "csoftmax_out": f"csoftmax.softmax(x, axis={axis}, out=o)"}
        outputs = {"csoftmax": _own, "csoftmax_out": _own}
        if torch is not None:
            xt = torch.from_numpy(x)
            calls["torch"] = lambda: torch.softmax(xt, axis)
            labels["torch"] = f"torch.softmax(xt, {axis})"
            outputs["torch"] = to_arrays
        calls["copyto"] = lambda: np.copyto(dst, x)
        labels["copyto"] = "np.copyto(dst, x)"
        floor_calls(calls, labels, x, threads)
        return Built(calls, labels, outputs, lambda: (_softmax_reference(x, axis),))

    return build


def _softmax_backward_builder(axis):
    def build(shape, threads, seed, torch):
        import csoftmax

        x, rng = _logits(shape, seed)
        g = rng.standard_normal(shape).astype(DTYPE)
        a = csoftmax.softmax(x, axis)
        out, dst = np.empty_like(x), np.empty_like(x)
        calls = {"csoftmax_out": lambda: csoftmax.softmax_backward(g, a, axis, out=out,
                                                                   num_threads=threads)}
        labels = {"csoftmax_out": f"csoftmax.softmax_backward(g, a, axis={axis}, out=o)"}
        outputs = {"csoftmax_out": _own}
        if torch is not None:
            gt, at = torch.from_numpy(g), torch.from_numpy(a)
            # the op autograd runs for torch.softmax's backward
            calls["torch"] = lambda: torch._softmax_backward_data(gt, at, axis, torch.float32)
            labels["torch"] = f"torch._softmax_backward_data(gt, at, {axis}, float32)"
            outputs["torch"] = to_arrays

        def reference():
            a64 = a.astype(np.float64)
            return (a64 * (g - np.sum(g * a64, axis=axis, keepdims=True)),)

        calls["copyto"] = lambda: np.copyto(dst, x)
        labels["copyto"] = "np.copyto(dst, x)"
        floor_calls(calls, labels, x, threads, values=False)  # no exponential: a copy
        return Built(calls, labels, outputs, reference)

    return build


#: The options of the fused cross-entropy timed against its plain call (``extras`` cases).
EXTRAS = {"z_loss": {"z_loss": 1e-4}, "softcap": {"softcap": 30.0},
          "token_accuracy": {"return_token_accuracy": True}}


def _ce_extras_reference(x, t, z=0.0, cap=None):
    """(loss, grad[, accuracy]) in float64 of the mean cross-entropy of ``x`` (classes last)
    with the z-loss ``z mean(lse**2)`` and the soft cap ``cap tanh(x / cap)``; the token
    accuracy (the target's logit is the row maximum) when ``z`` is None."""
    xc = x.astype(np.float64)
    if cap:
        np.tanh(np.divide(xc, cap, out=xc), out=xc)
        xc *= cap
    n = t.size
    lse = _lse64(xc, -1)
    picked = np.take_along_axis(xc, t[:, None], -1)
    zz = z or 0.0
    loss = np.float64(np.mean(lse - picked) + zz * np.mean(lse * lse))
    accuracy = np.float64(np.mean(picked[:, 0] == np.max(xc, axis=-1)))
    grad = xc - lse
    np.exp(grad, out=grad)
    grad *= (1.0 + 2.0 * zz * lse) / n
    np.put_along_axis(grad, t[:, None], np.take_along_axis(grad, t[:, None], -1) - 1.0 / n, -1)
    if cap:
        xc /= cap
        np.square(xc, out=xc)
        grad *= 1.0 - xc
    return (loss, grad) if z is not None else (loss, grad, accuracy)


def _build_ce_extras(shape, threads, seed, torch):
    """The fused call with each option of :data:`EXTRAS` and without (``out=`` all)."""
    import csoftmax

    x, rng = _logits(shape, seed)
    t = rng.integers(0, shape[-1], size=shape[:-1])
    g = np.empty_like(x)
    calls = {"csoftmax_plain_out": lambda: csoftmax.cross_entropy_with_grad(
        x, t, out=g, num_threads=threads)}
    labels = {"csoftmax_plain_out": "cross_entropy_with_grad(x, t, out=g)"}
    outputs = {"csoftmax_plain_out": _own}
    references = {}
    for name, opts in EXTRAS.items():
        key = f"csoftmax_{name}_out"
        calls[key] = (lambda o: lambda: csoftmax.cross_entropy_with_grad(
            x, t, out=g, num_threads=threads, **o))(opts)
        labels[key] = "cross_entropy_with_grad(x, t, out=g, " + ", ".join(
            f"{k}={v!r}" for k, v in opts.items()) + ")"
        outputs[key] = _own if name != "token_accuracy" else (
            lambda r: (np.asarray(r.loss), r.grad, np.asarray(r.token_accuracy)))
        if name == "token_accuracy":
            references[key] = lambda: _ce_extras_reference(x, t, z=None)
        else:
            references[key] = (lambda o: lambda: _ce_extras_reference(
                x, t, z=o.get("z_loss", 0.0), cap=o.get("softcap")))(opts)
    return Built(calls, labels, outputs, lambda: _ce_extras_reference(x, t), references)


def torch_forward_backward(torch, leaf, target):
    """A call of ``F.cross_entropy(leaf, target)`` and its backward (the leaf's
    gradient cleared first), returning ``(loss, grad)``."""
    func = torch.nn.functional.cross_entropy

    def forward_backward():
        leaf.grad = None
        loss = func(leaf, target)
        loss.backward()
        return loss, leaf.grad

    return forward_backward


def padding_mask(shape):
    """The broadcast ``(1, C)`` mask: True but on the last :data:`PADDING` of the columns."""
    mask = np.ones((1, shape[-1]), dtype=bool)
    mask[:, shape[-1] - max(1, int(PADDING * shape[-1])):] = False
    return mask


def random_mask(shape, rng):
    """A full random mask (half True) with at least one True per row (no empty slice)."""
    mask = rng.random(shape) < 0.5
    mask[~mask.any(axis=-1), 0] = True
    return mask


def _masked_builder(kind):
    def build(shape, threads, seed, torch):
        import csoftmax

        x, rng = _logits(shape, seed)
        mask = padding_mask(shape) if kind == "padding" else random_mask(shape, rng)
        out, plain = np.empty_like(x), np.empty_like(x)
        calls = {
            "csoftmax": lambda: csoftmax.softmax(x, where=mask, num_threads=threads),
            "csoftmax_out": lambda: csoftmax.softmax(x, where=mask, out=out,
                                                     num_threads=threads)}
        labels = {"csoftmax": "csoftmax.softmax(x, where=m)",
                  "csoftmax_out": "csoftmax.softmax(x, where=m, out=o)"}
        outputs = {"csoftmax": _own, "csoftmax_out": _own}
        if kind == "padding":
            calls["csoftmax_unmasked_out"] = lambda: csoftmax.softmax(x, out=plain,
                                                                      num_threads=threads)
            labels["csoftmax_unmasked_out"] = "csoftmax.softmax(x, out=o) (no mask)"
            outputs["csoftmax_unmasked_out"] = _own
        if torch is not None:
            xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
            neg_inf = float("-inf")
            calls["torch_masked"] = lambda: torch.masked.softmax(xt, -1, mask=mt)
            calls["torch_masked_fill"] = lambda: xt.masked_fill(~mt, neg_inf).softmax(-1)
            labels["torch_masked"] = "torch.masked.softmax(xt, -1, mask=mt)"
            labels["torch_masked_fill"] = "xt.masked_fill(~mt, -inf).softmax(-1)"
            outputs["torch_masked"] = outputs["torch_masked_fill"] = to_arrays
        return Built(calls, labels, outputs,
                     lambda: (_softmax_reference(x, -1, np.broadcast_to(mask, shape)),),
                     {"csoftmax_unmasked_out": lambda: (_softmax_reference(x, -1),)})

    return build


def _faster(peer, own, bound, what, alt=None):
    return Criterion(peer, peer, own, bound, True, f">= {bound:g}x faster than {what}", alt)


def _floor(own, bound, units=1.0):
    return Criterion("copyto", own, "copyto", bound, False,
                     f"<= {bound:g}x np.copyto time (out=)", floor_of=own, units=units)


_SOFTMAX_CRITERIA = (_faster("torch", "csoftmax", 1.5, "torch.softmax", "csoftmax_out"),
                     _floor("csoftmax_out", 1.5))
#: The backward reads two arrays of the input's size and writes one: its floor is 1.5x
#: a copy's traffic, so the softmax criteria's bound on the copy scaled by 1.5.
_BACKWARD_CRITERIA = (_faster("torch", "csoftmax_out", 1.5, "PyTorch's softmax backward"),
                      _floor("csoftmax_out", 2.25, 1.5))
_MASKED_CRITERIA = (
    _faster("torch_masked", "csoftmax", 2, "torch.masked.softmax", "csoftmax_out"),
    _faster("torch_masked_fill", "csoftmax", 2, "masked_fill(-inf).softmax",
            "csoftmax_out"))

_EXTRAS_CRITERIA = tuple(
    Criterion(name, f"csoftmax_{name}_out", "csoftmax_plain_out", 1.15, False,
              f"{name} on: <= 1.15x the plain call's time (out=, interleaved)")
    for name in EXTRAS)

#: The parity cases, in table order.
SPECS = [
    Spec("ce_axis1", "parity: CE loss+grad, class axis 1 (segmentation)",
         "cross_entropy_with_grad axis=1 out=", (8, 21, 256, 256), _build_ce_axis1,
         (_faster("torch", "csoftmax_out", 3, "F.cross_entropy fwd+bwd"),
          _floor("csoftmax_out", 1.5))),
    Spec("ce_3d", "parity: CE loss+grad, 3-D logits, class axis last",
         "cross_entropy_with_grad out=", (32, 512, 1000), _build_ce_3d,
         (Criterion("2d", "csoftmax_out", "csoftmax_2d_out", 1.1, False,
                    "time per element <= 1.1x the 2-D (rows x C) call's (interleaved)"),)),
    Spec("softmax_axis1", "parity: softmax over a non-last axis", "softmax axis=1",
         (64, 1000, 64), _softmax_builder(1), _SOFTMAX_CRITERIA),
    Spec("softmax_axis0", "parity: softmax over a non-last axis", "softmax axis=0",
         (1000, 4096), _softmax_builder(0), _SOFTMAX_CRITERIA),
    Spec("softmax_backward_axis1", "parity: softmax backward over a non-last axis",
         "softmax_backward axis=1", (64, 1000, 64), _softmax_backward_builder(1),
         _BACKWARD_CRITERIA),
    Spec("softmax_backward_axis0", "parity: softmax backward over a non-last axis",
         "softmax_backward axis=0", (1000, 4096), _softmax_backward_builder(0),
         _BACKWARD_CRITERIA),
    Spec("masked_padding", "parity: masked softmax, (1, C) padding mask (last 10% False)",
         "softmax where=", (8192, 1024), _masked_builder("padding"),
         (*_MASKED_CRITERIA,
          Criterion("unmasked", "csoftmax_out", "csoftmax_unmasked_out", 1.2, False,
                    "<= 1.2x csoftmax's unmasked softmax time (out=, interleaved)"))),
    Spec("masked_random", "parity: masked softmax, full random mask", "softmax where=",
         (8192, 1024), _masked_builder("random"), _MASKED_CRITERIA),
    Spec("wide_logits", "loss only (no grad), logits N(0, 30^2): exponentials below the "
         "normal range", "cross_entropy", (8192, 1000), _build_wide_loss,
         (Criterion("narrow", "csoftmax", "csoftmax_narrow", 1.3, False,
                    "<= 1.3x the same call on N(0, 1) logits (interleaved)"),
          _faster("torch", "csoftmax", 3, "F.cross_entropy under no_grad"))),
    Spec("extras_1000", "z-loss, softcap, token accuracy: CE loss+grad vs the plain call",
         "cross_entropy_with_grad out=", (8192, 1000), _build_ce_extras, _EXTRAS_CRITERIA),
    Spec("extras_32000", "z-loss, softcap, token accuracy: CE loss+grad vs the plain call",
         "cross_entropy_with_grad out=", (1024, 32000), _build_ce_extras, _EXTRAS_CRITERIA),
]


def criterion_text(ref, specs=None):
    """The words of criterion ``"<case key>:<criterion name>"`` (a target row's ``peer``)."""
    key, _, name = ref.partition(":")
    for spec in SPECS if specs is None else specs:
        for c in spec.criteria:
            if spec.key == key and c.name == name:
                return c.text
    return f"parity criterion {ref}"


# ---------------------------------------------------------------- measurement


def _verify(built, tol, compare=None):
    """Run each call once (the warm-up) and compare its outputs with the reference:
    ``compare(built, name, result, expected, tol, check)`` fills ``check``'s error and
    status (default :func:`_compare`, float32 outputs)."""
    expected = built.reference()
    checks = {}
    for name, call in built.calls.items():
        check = checks[name] = {"label": built.labels[name], "status": "ok"}
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - reported in the row
            check.update(status="error", message=f"{type(exc).__name__}: {exc}")
            continue
        if name not in built.outputs:
            check["status"] = "unchecked"
            continue
        (compare or _compare)(built, name, result, expected, tol, check)
        del result
    return checks


def _compare(built, name, result, expected, tol, check):
    """A call's outputs against the float64 reference; csoftmax's must be float32."""
    out = built.outputs[name](result)
    want = built.references[name]() if name in built.references else expected
    err = check["error"] = rel_error(out, want)
    del want
    bad = [str(a.dtype) for a in out if name.startswith("csoftmax") and a.ndim
           and a.dtype != np.dtype(DTYPE)]
    problems = [f"error {err:.2e} vs float64 reference"] if not err <= tol else []
    if bad:
        problems.append(f"output dtype {', '.join(bad)}, not {DTYPE}")
    if problems:
        check.update(status="mismatch", message="; ".join(problems))


def measure(spec, threads, budget=1.0, stat="min", seed=0, min_rounds=5, min_sample=1e-3,
            torch=None, dtype=DTYPE, verify=None):
    """Verify and time one parity case, then judge its criteria.

    Parameters
    ----------
    spec : Spec
    threads : int
        ``num_threads`` of csoftmax (PyTorch's threads are set by the caller).
    budget : float, optional
        Seconds of interleaved timing.
    stat : {"min", "median"}, optional
        The statistic used as each call's ``time``.
    seed : int, optional
    min_rounds : int, optional
    min_sample : float, optional
    torch : module, optional
        PyTorch, or None to leave its calls out.
    dtype : str, optional
        The case's dtype (recorded; :mod:`bench.half` measures 16-bit cases).
    verify : callable, optional
        ``verify(built)`` -> the checks of the built calls (default: against the
        float64 reference at float32's tolerance).

    Returns
    -------
    dict
        JSON-ready: ``key``, ``group``, ``op``, ``shape``, ``dtype``,
        ``threads``, ``status`` (``ok``, ``mismatch``, ``error``),
        ``message``, per call its check and timing summary (``calls``), the
        judged ``criteria`` (``name``, ``text``, ``bound``, ``value``,
        ``passed``, ``note``) and ``seconds``.
    """
    start = time.perf_counter()
    result = {"key": spec.key, "group": spec.group, "op": spec.op, "shape": list(spec.shape),
              "dtype": dtype, "threads": threads, "status": "ok", "message": "",
              "calls": {}, "criteria": [], "seconds": None}
    try:
        built = spec.build(tuple(spec.shape), threads, seed, torch)
        checks = verify(built) if verify is not None else _verify(built, TOLERANCE[DTYPE])
    except Exception as exc:  # noqa: BLE001 - reported in the row
        result.update(status="error", message=f"{type(exc).__name__}: {exc}")
        result["criteria"] = judge(spec, result)
        return result
    result["calls"] = checks
    bad = [f"{name}: {c['status'].upper()}: {c['message']}" for name, c in checks.items()
           if c["status"] in {"mismatch", "error"}]
    if bad:
        result.update(status="error" if any(c["status"] == "error" for c in checks.values())
                      else "mismatch", message="; ".join(bad))
    timed = {name: call for name, call in built.calls.items()
             if checks[name]["status"] != "error"}
    gc.collect()
    samples = interleave(timed, budget, min_rounds=min_rounds, min_sample=min_sample,
                         warmup=0) if timed else {}
    for name, s in samples.items():
        checks[name].update(s.summary())
        checks[name]["time"] = checks[name][stat]
    del built, timed, samples
    gc.collect()
    result["criteria"] = judge(spec, result)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def judge(spec, result):
    """Judge the criteria of ``spec`` on its measured ``result``.

    A criterion whose call disagreed with the reference or failed fails,
    whatever the times; one whose call was not made (PyTorch missing) is
    not measured (``passed`` None).
    """
    rows = []
    calls = result["calls"]
    for c in spec.criteria:
        row = {"name": c.name, "text": c.text, "bound": c.bound, "value": None,
               "passed": None, "note": ""}
        rows.append(row)
        if result["status"] == "error" and not calls:
            row.update(passed=False, note=f"ERROR: {result['message']}")
            continue
        involved = [n for n in (c.num, c.den, c.alt) if n]
        broken = [f"{n} {calls[n]['status'].upper()}" for n in involved
                  if n in calls and calls[n]["status"] in {"mismatch", "error"}]
        missing = [n for n in (c.num, c.den) if n not in calls]
        if broken and missing:
            row.update(passed=False, note=", ".join(broken))
        if missing:
            row["note"] = row["note"] or f"{', '.join(missing)} not run (torch not installed?)"
            continue
        num, den = calls[c.num].get("time"), calls[c.den].get("time")
        if num and den:
            row["value"] = num / den
            row["passed"] = c.passed(row["value"])
        alt = calls.get(c.alt, {}).get("time") if c.alt else None
        if alt and num and c.at_least:
            row["note"] = f"out=: {num / alt:.2f}x"
        if broken:
            row.update(passed=False, note=", ".join(broken))
        elif row["value"] is None:
            row.update(passed=False, note="not timed")
        elif row["passed"] is False and c.floor_of:
            row["note"] = floor_bound(c, calls) or row["note"]
    return rows


def run(specs=None, threads=2, budget=1.0, stat="min", seed=0, min_rounds=5,
        min_sample=1e-3, stream=None):
    """Measure every parity case.

    Parameters
    ----------
    specs : list of Spec, optional
        Default :data:`SPECS`.
    threads : int, optional
        csoftmax's ``num_threads`` and ``torch.set_num_threads`` (restored after).
    budget : float, optional
        Seconds of interleaved timing per case.
    stat, seed, min_rounds, min_sample
        As in :func:`measure`.
    stream : file, optional
        Where progress is written.

    Returns
    -------
    list of dict
        See :func:`measure`.
    """
    specs = SPECS if specs is None else specs
    try:
        torch = importlib.import_module("torch")
    except Exception:  # noqa: BLE001 - optional: its calls are left out
        torch = None
    saved = torch.get_num_threads() if torch is not None else None
    results = []
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        for spec in specs:
            if stream is not None:
                print(f"parity: {spec.key} {shape_label(spec.shape)} {DTYPE} t={threads}",
                      file=stream, flush=True)
            results.append(measure(spec, threads, budget, stat, seed, min_rounds,
                                   min_sample, torch))
            if stream is not None and results[-1]["status"] != "ok":
                print(f"!! parity {spec.key}: {results[-1]['status'].upper()}: "
                      f"{results[-1]['message']}", file=stream, flush=True)
    finally:
        if torch is not None:
            torch.set_num_threads(saved)
    return results


def problems(results):
    """List the mismatches and errors, one line each."""
    return [f"parity {r['key']} {shape_label(r['shape'])} {r['dtype']}: "
            f"{r['status'].upper()}: {r['message']}" for r in results if r["status"] != "ok"]


def table_lines(results, simd=None):
    """Return the Markdown lines of the parity timings table.

    Parameters
    ----------
    results : list of dict
        As returned by :func:`run`.
    simd : str, optional
        The SIMD paths in use (see :func:`bench.report.simd_text`).
    """
    threads = results[0]["threads"] if results else "?"
    lines = [f"## PyTorch parity: timings (SIMD path: {simd or 'unknown'}; {DTYPE}, "
             f"{threads} thread(s); error: relative to the float64 reference)", "",
             "| case | shape | call | time | / first call's | error |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        shape = shape_label(r["shape"])
        if not r["calls"]:
            lines.append(f"| {r['key']} | {shape} | **ERROR** | — | — | {r['message']} |")
            continue
        base = next(iter(r["calls"].values())).get("time")
        for c in r["calls"].values():
            t = c.get("time")
            rel = f"{t / base:.2f}x" if t and base else "—"
            err = f"{c['error']:.1e}" if c.get("error") is not None else "—"
            if c["status"] in {"mismatch", "error"}:
                err = f"**{c['status'].upper()}** {c.get('message', '')}"
            lines.append(f"| {r['key']} | {shape} | `{c['label']}` | {format_time(t)} | "
                         f"{rel} | {err} |")
    return lines
