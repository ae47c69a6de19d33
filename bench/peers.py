"""The implementations timed: csoftmax and its peers.

A :class:`Peer` turns an operation (:class:`bench.ops.Op`) and its inputs into
a :class:`Prepared` call with no arguments, made once per case outside the
timed region, or returns None when it has no equivalent of the operation.
Optional libraries are imported lazily; a peer whose library is missing is
reported as skipped, never as an error.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .ops import IGNORE_INDEX, LABEL_SMOOTHING, call_args


def to_arrays(result):
    """Return a result (array, tensor, scalar or tuple of them) as NumPy arrays.

    Parameters
    ----------
    result : object
        What an implementation returned.

    Returns
    -------
    tuple of numpy.ndarray
    """
    items = result if isinstance(result, (tuple, list)) else (result,)
    arrays = []
    for item in items:
        if hasattr(item, "detach"):  # a torch.Tensor
            item = item.detach().cpu().numpy()
        arrays.append(np.asarray(item))
    return tuple(arrays)


@dataclass
class Prepared:
    """A call ready to time.

    Attributes
    ----------
    call : callable
        Runs the operation once; takes no argument.
    normalize : callable
        Turns what ``call`` returns into the csoftmax outputs (a tuple of
        arrays) for verification; never timed.
    verify : bool
        False for calls with no comparable result (the memory floor).
    own : bool
        Whether this is the package's own code (csoftmax, its ``out=`` variant,
        its NumPy twin): the outputs must then keep the input's dtype and are
        checked against the float64 reference; other peers are checked against
        csoftmax.
    context : callable or None
        Returns a context manager entered around the verification call and
        around each timed batch of calls, not around every call (as an
        inference loop runs under one ``torch.no_grad()``).
    """

    call: Callable[[], Any]
    normalize: Callable[[Any], tuple] = to_arrays
    verify: bool = True
    own: bool = False
    context: Callable[[], Any] | None = None


@dataclass
class Peer:
    """Base class of an implementation.

    Attributes
    ----------
    name : str
        Key in the results.
    label : str
        Column header.
    module : str
        Module that must import for the peer to be available.
    threaded : bool
        Whether the peer honours the case's thread count (else it runs on one
        thread).
    """

    name: str
    label: str
    module: str
    threaded: bool = True
    _mod: Any = field(default=None, init=False, repr=False)
    _why: str | None = field(default=None, init=False, repr=False)

    def load(self):
        """Import the peer's module.

        Returns
        -------
        str or None
            Why the peer is unavailable, or None when it is usable.
        """
        try:
            self._mod = importlib.import_module(self.module)
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
            self._why = f"{self.module} not importable ({type(exc).__name__}: {exc})"
        return self._why

    @property
    def version(self):
        """Version of the peer's library."""
        top = importlib.import_module(self.module.split(".")[0]) if self._mod else None
        return getattr(top, "__version__", None)

    def info(self):
        """Return the peer's thread settings and build facts worth recording."""
        return {}

    def prepare(self, op, inputs, threads):
        """Prepare the call of ``op`` on ``inputs`` at ``threads`` threads.

        Parameters
        ----------
        op : bench.ops.Op
        inputs : dict
            As made by :func:`bench.ops.make_inputs`.
        threads : int

        Returns
        -------
        Prepared or None
            None when the peer has no equivalent of ``op``.
        """
        raise NotImplementedError


def direct_call(func, args, kwargs):
    """``lambda: func(*args, **kwargs)`` written out where the call is a common one (one
    to three positional arguments with ``out`` and ``num_threads``): the unpacking took
    0.15-0.2 us a call (a quarter of a 1x10 loss's time), which a user's call does not
    pay and the loss-only peer, calling directly, did not either (the AVX2 loss +
    gradient of 1x10 read 1.67x the loss that way, 1.41x with both called directly)."""
    keys = set(kwargs)
    if "num_threads" not in keys or not keys <= {"out", "num_threads"} or not 1 <= len(args) <= 3:
        return lambda: func(*args, **kwargs)
    nt = kwargs.get("num_threads")
    a, b, c = (*args, None, None)[:3]
    if "out" in keys:
        out = kwargs["out"]
        return {1: lambda: func(a, out=out, num_threads=nt),
                2: lambda: func(a, b, out=out, num_threads=nt),
                3: lambda: func(a, b, c, out=out, num_threads=nt)}[len(args)]
    return {1: lambda: func(a, num_threads=nt),
            2: lambda: func(a, b, num_threads=nt),
            3: lambda: func(a, b, c, num_threads=nt)}[len(args)]


@dataclass
class Csoftmax(Peer):
    """csoftmax, or its NumPy twin; optionally writing into a preallocated ``out``."""

    out: bool = False

    def prepare(self, op, inputs, threads):  # noqa: D102
        func = getattr(self._mod, op.func, None)
        if func is None or (self.out and not op.has_out):
            return None
        args, kwargs = call_args(op, inputs)
        kwargs["num_threads"] = threads
        if self.out and not op.linear:
            kwargs["out"] = np.empty_like(args[0])
        return Prepared(direct_call(func, args, kwargs), own=True)


@dataclass
class CsoftmaxPlain(Peer):
    """csoftmax's plain integer-target call (no weight, ignore_index or
    smoothing; ignored rows get class 0) on the weighted case's logits, with
    ``out=``: the "relative" target compares the two timed interleaved, in one
    case, rather than two cases timed minutes apart."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if not op.weighted or not op.with_grad:
            return None
        func = self._mod.cross_entropy_with_grad
        x = inputs["x"]
        target = np.where(inputs["target"] == IGNORE_INDEX, 0, inputs["target"])
        out = np.empty_like(x)
        return Prepared(lambda: func(x, target, out=out, num_threads=threads), verify=False)


@dataclass
class CsoftmaxLoss(Peer):
    """csoftmax's loss-only ``cross_entropy`` on the logits and targets of an
    unweighted integer-target ``cross_entropy_with_grad`` case: the "relative"
    target "loss+grad <= 1.5x loss only" compares the two timed interleaved,
    in one case."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if not op.with_grad or op.target != "index" or op.weighted:
            return None
        if op.linear:
            func = self._mod.linear_cross_entropy
            args, kwargs = call_args(op, inputs)
            return Prepared(lambda: func(*args, num_threads=threads, **kwargs), verify=False)
        func = self._mod.cross_entropy
        x, target = inputs["x"], inputs["target"]
        return Prepared(lambda: func(x, target, num_threads=threads), verify=False)


@dataclass
class CsoftmaxOneThread(Peer):
    """csoftmax at one thread in the 2-thread cases of the "scaling" targets
    (:func:`bench.targets.scaling_keys`), checked as csoftmax's own call: the target
    "2 threads >= k x faster than 1" compares the two timed interleaved, in one case,
    rather than two cases timed apart (on a shared machine the one-row column split
    read 0.92x in a run and 1.8x in a script of both interleaved)."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        from .targets import scaling_keys

        x = inputs.get("x")
        if threads != 2 or x is None or (op.name, tuple(x.shape)) not in scaling_keys():
            return None
        func = getattr(self._mod, op.func)
        args, kwargs = call_args(op, inputs)
        return Prepared(lambda: func(*args, num_threads=1, **kwargs), own=True)


@dataclass
class Scipy(Peer):
    """``scipy.special.softmax``, ``log_softmax`` and ``logsumexp``."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if op.linear or op.func not in {"softmax", "log_softmax", "logsumexp"}:
            return None
        func = getattr(self._mod, op.func)
        x = inputs["x"]
        return Prepared(lambda: func(x, axis=-1))


@dataclass
class Sklearn(Peer):
    """``HalfMultinomialLoss.loss`` / ``loss_gradient`` (integer targets only).

    scikit-learn returns per-row losses and un-averaged gradients; they are
    brought to the mean reduction for verification only (not timed).
    """

    def prepare(self, op, inputs, threads):  # noqa: D102
        if op.target != "index" or op.weighted or op.linear:
            return None
        x = inputs["x"]
        n, c = x.shape
        loss = self._mod.HalfMultinomialLoss(n_classes=c)
        y_true = inputs["target"].astype(x.dtype)
        if op.with_grad:
            return Prepared(
                lambda: loss.loss_gradient(y_true=y_true, raw_prediction=x,
                                           n_threads=threads),
                normalize=lambda r: (np.mean(r[0], dtype=np.float64), r[1] / n))
        return Prepared(
            lambda: loss.loss(y_true=y_true, raw_prediction=x, n_threads=threads),
            normalize=lambda r: (np.mean(r, dtype=np.float64),))


@dataclass
class Torch(Peer):
    """PyTorch on the CPU, with ``torch.set_num_threads`` matched to the case.

    Cross-entropy with gradient runs forward and backward through autograd;
    the loss alone runs under ``torch.no_grad()`` (entered once per timed
    batch, like an inference loop) on a tensor that does not require grad.
    """

    chunked: bool = False  # linear_cross_entropy only: options=LinearCrossEntropyOptions()

    def info(self):  # noqa: D102
        torch = self._mod
        return {"default_num_threads": torch.get_num_threads(),
                "cpu_capability": cpu_capability(torch),
                "parallel_info": torch.__config__.parallel_info()}

    def prepare(self, op, inputs, threads):  # noqa: D102
        if self.chunked and not op.linear:
            return None
        torch = self._mod
        torch.set_num_threads(threads)
        if op.linear:
            return self._linear(inputs, self.chunked)
        x = torch.from_numpy(inputs["x"])
        if op.func in {"softmax", "log_softmax", "logsumexp"}:
            func = getattr(torch, op.func)
            return Prepared(lambda: func(x, -1))
        if op.func == "softmax_backward":
            grad = torch.from_numpy(inputs["grad_output"])
            out = torch.from_numpy(inputs["output"])
            return Prepared(
                lambda: torch._softmax_backward_data(grad, out, -1, out.dtype))
        return self._cross_entropy(op, inputs, x)

    def _linear(self, inputs, chunked):
        torch = self._mod
        func = torch.nn.functional.linear_cross_entropy
        options = None
        if chunked:
            make = getattr(torch.nn, "LinearCrossEntropyOptions", None)
            if make is None:
                return None
            options = make()
        x, w, b = (torch.from_numpy(inputs[k]).requires_grad_(True)
                   for k in ("input", "linear_weight", "linear_bias"))
        target = torch.from_numpy(inputs["target"])

        def forward_backward():
            x.grad = w.grad = b.grad = None
            loss = func(x, w, target, linear_bias=b, options=options)
            loss.backward()
            return loss, x.grad, w.grad, b.grad

        return Prepared(forward_backward)

    def _cross_entropy(self, op, inputs, x):
        torch = self._mod
        func = torch.nn.functional.cross_entropy
        target = torch.from_numpy(inputs["target"])
        kwargs = {}
        if op.weighted:
            kwargs = {"weight": torch.from_numpy(inputs["weight"]),
                      "ignore_index": IGNORE_INDEX, "label_smoothing": LABEL_SMOOTHING}
        if not op.with_grad:
            return Prepared(lambda: func(x, target, **kwargs), context=torch.no_grad)
        leaf = x.detach().requires_grad_(True)

        def forward_backward():
            leaf.grad = None
            loss = func(leaf, target, **kwargs)
            loss.backward()
            return loss, leaf.grad

        return Prepared(forward_backward)


@dataclass
class TorchLoss(Peer):
    """``F.linear_cross_entropy``'s loss alone (reference path) under
    ``torch.no_grad()``, on tensors that do not require grad: what scoring and
    perplexity run (linear cross-entropy only)."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if not op.linear:
            return None
        torch = self._mod
        torch.set_num_threads(threads)
        func = torch.nn.functional.linear_cross_entropy
        x, w, b, target = (torch.from_numpy(inputs[k]) for k in
                           ("input", "linear_weight", "linear_bias", "target"))
        return Prepared(lambda: func(x, w, target, linear_bias=b), verify=False,
                        context=torch.no_grad)


@dataclass
class CsoftmaxHalfIgnored(Peer):
    """csoftmax's linear cross-entropy (loss and gradients) with every other row's
    target ``ignore_index``: the "half padding" target compares it with the full call,
    timed interleaved in one case."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if not op.linear:
            return None
        func = self._mod.linear_cross_entropy_with_grad
        args, kwargs = call_args(op, inputs)
        target = args[2].copy()
        target[1::2] = IGNORE_INDEX
        args = (args[0], args[1], target)
        return Prepared(lambda: func(*args, num_threads=threads, ignore_index=IGNORE_INDEX,
                                     **kwargs), verify=False)


@dataclass
class Copyto(Peer):
    """The memory floor: ``np.copyto`` of the logits into a preallocated array."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if op.linear:
            return None
        src = inputs["x"]
        dst = np.empty_like(src)
        copyto = self._mod.copyto
        return Prepared(lambda: copyto(dst, src), verify=False)


def _floor_kernel(name, op, inputs):
    """``(kernel, logits as 2-D)`` for a floor peer: the compiled kernels'
    function ``name`` (the NumPy fallback, ``CSOFTMAX_BACKEND=numpy``, has none)
    and the case's logits; None where the case has none or is linear."""
    from csoftmax import _dispatch

    kernel = getattr(_dispatch.KERNELS, name, None)
    if op.linear or kernel is None or "x" not in inputs:
        return None
    x = inputs["x"]
    return kernel, np.ascontiguousarray(x).reshape(-1, x.shape[-1] if x.ndim else 1)


@dataclass
class ExpFloor(Peer):
    """The compute floor of a loss without gradient: csoftmax's own max and
    exp-sum over the logits in blocks of 4096 (``kernels.exp_floor``), with no
    per-row costs, no log, no store.
    A loss-only call cannot beat it, so ``peer time / exp floor`` bounds the
    speed-up over that peer (the targets table notes it where a target fails)."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        found = _floor_kernel("exp_floor", op, inputs)
        if found is None:
            return None
        exp_floor, x2 = found
        return Prepared(lambda: exp_floor(x2, threads), verify=False)


@dataclass
class CopyFloor(Peer):
    """The memory floor at the case's thread count: a copy of the logits into
    an array of their size in ``threads`` parts (``kernels.copy_floor``;
    ``np.copyto`` runs on one thread).  Times the logits-sized arrays a call
    moves (:attr:`bench.ops.Op.memory_units`), it bounds the call's speed."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        found = _floor_kernel("copy_floor", op, inputs)
        if found is None:
            return None
        copy_floor, x2 = found
        out = np.empty_like(x2)
        return Prepared(lambda: copy_floor(x2, out, threads), verify=False)


@dataclass
class Gemm(Peer):
    """The floor of linear cross-entropy: the bare logits GEMM
    ``np.matmul(x, W.T, out=buf)`` (NumPy's BLAS, its threads limited to the case's)."""

    def prepare(self, op, inputs, threads):  # noqa: D102
        if not op.linear:
            return None
        from csoftmax._linear_blas import blas_limits

        x, w = inputs["input"], inputs["linear_weight"]
        buf = np.empty((x.shape[0], w.shape[0]), x.dtype)

        def gemm():
            with blas_limits(threads):
                np.matmul(x, w.T, out=buf)

        return Prepared(gemm, verify=False)


def cpu_capability(torch):
    """Return PyTorch's SIMD kernel level (``DEFAULT``, ``AVX2``, ``AVX512``...) or None."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    try:
        return get() if callable(get) else None
    except Exception:  # noqa: BLE001 - informative only
        return None


def all_peers():
    """Return fresh instances of every implementation, in table order.

    Returns
    -------
    list of Peer
    """
    return [
        Csoftmax("csoftmax", "csoftmax", "csoftmax"),
        Csoftmax("csoftmax_out", "csoftmax out=", "csoftmax", out=True),
        CsoftmaxPlain("csoftmax_plain", "csoftmax plain out=", "csoftmax"),
        CsoftmaxLoss("csoftmax_loss", "csoftmax loss only", "csoftmax"),
        CsoftmaxOneThread("csoftmax_1thread", "csoftmax 1 thread", "csoftmax", threaded=False),
        Csoftmax("numpy_twin", "NumPy twin", "csoftmax.slow", threaded=False),
        Scipy("scipy", "SciPy", "scipy.special", threaded=False),
        Sklearn("sklearn", "sklearn", "sklearn._loss.loss"),
        Torch("torch", "PyTorch", "torch"),
        Torch("torch_chunked", "PyTorch chunked", "torch", chunked=True),
        TorchLoss("torch_loss", "PyTorch loss only", "torch"),
        CsoftmaxHalfIgnored("csoftmax_half", "csoftmax half ignored", "csoftmax"),
        Copyto("copyto", "np.copyto", "numpy", threaded=False),
        ExpFloor("exp_floor", "exp floor", "csoftmax"),
        CopyFloor("copy_floor", "copy (threads)", "csoftmax"),
        Gemm("gemm", "bare GEMM", "numpy"),
    ]


PEER_NAMES = [p.name for p in all_peers()]
