"""Input checks and conversions: the one place where csoftmax validates.

Every public function passes its arguments through here before any kernel
runs, so the compiled kernels and the NumPy twin only ever see C-contiguous,
native-endian float32/float64 arrays of consistent shapes, and every message
about bad input is written once.
"""

from __future__ import annotations

import math
import operator
import os

import numpy as np

from . import _half

try:  # NumPy >= 1.25
    from numpy.exceptions import AxisError
except ImportError:  # pragma: no cover - older NumPy
    from numpy import AxisError

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_NATIVE_LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------
# arrays and dtypes

def as_ndarray(x, name):
    """Any array-like (lists, ``__array__``, ``__dlpack__``) as a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if str(getattr(x, "dtype", "")) == "torch.bfloat16":
        return _torch_bfloat16(x, name)
    if not hasattr(x, "__array__") and hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            raise TypeError(f"{name}: cannot read {type(x).__name__} via DLPack: {exc}") from exc
    try:
        return np.asarray(x)
    except RuntimeError as exc:  # e.g. a torch.Tensor that requires grad
        raise TypeError(f"{name}: cannot convert {type(x).__name__} to an array: {exc}") from exc


def _torch_bfloat16(t, name):
    """A torch.bfloat16 CPU tensor as an ml_dtypes.bfloat16 array (a view:
    NumPy has no bfloat16 of its own, and torch's __array__ refuses it)."""
    import torch

    dtype = _half.require_bfloat16(f"{name} (a torch.bfloat16 tensor)")
    try:
        return t.view(torch.int16).numpy().view(dtype)
    except RuntimeError as exc:  # requires grad, not on the CPU, ...
        raise TypeError(f"{name}: cannot convert {type(t).__name__} to an array: {exc}") from exc


def half_array(x, name):
    """``(array, kind)``: a 16-bit float input (float16, bfloat16) as a
    C-contiguous, aligned, native array of its dtype with its kind (F16/BF16,
    see _half), or ``(ndarray, None)`` for anything else."""
    a = as_ndarray(x, name)
    kind = _half.half_kind(a.dtype)
    if kind is None:
        return a, None
    return contiguous(a, a.dtype.newbyteorder("=")), kind


def float_dtypes(dtype, name):
    """The dtype to compute in and the dtype to return, for an input dtype.

    float32/float64 compute natively; float16 and bfloat16 (``ml_dtypes``)
    compute in float32 and longdouble in float64, all returned in their own
    dtype; integers and bool become float64, as in NumPy and SciPy.  Anything
    else is a ``TypeError``.
    """
    kind = dtype.kind
    if _half.half_kind(dtype) == _half.BF16:
        return FLOAT32, dtype.newbyteorder("=")
    if kind == "f":
        size = dtype.itemsize
        native = dtype.newbyteorder("=")
        if size <= 4:
            return FLOAT32, native
        return FLOAT64, native
    if kind in "iub":
        return FLOAT64, FLOAT64
    raise TypeError(
        f"{name} has dtype {dtype}: expected a real floating, integer or bool array"
    )


def contiguous(x, dtype=None):
    """x as a C-contiguous, aligned, native array (a copy only if needed).

    The kernels load whole elements, so a misaligned buffer (a view at an odd
    byte offset) is copied too.  0-d input stays 0-d (unlike
    ``np.ascontiguousarray``)."""
    if (  # the common case, without np.require's ~1 us
        type(x) is np.ndarray
        and (dtype is None or x.dtype == dtype)
        and x.flags.c_contiguous
        and x.flags.aligned
    ):
        return x
    return np.require(x, dtype=dtype, requirements="CA")


def as_compute_array(x, name):
    """``(array, compute dtype, result dtype)`` with array C-contiguous in the compute dtype."""
    x = as_ndarray(x, name)
    compute, result = float_dtypes(x.dtype, name)
    return contiguous(x, compute), compute, result


def check_count(value, name):
    """``None`` or an int >= 1 (a thread count, a chunk size), named ``name``."""
    if value is None:
        return None
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def check_num_threads(num_threads):
    """``None`` or an int >= 1."""
    return check_count(num_threads, "num_threads")


def env_num_threads():
    """``OMP_NUM_THREADS`` (its first entry) where set and valid, else usable cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# axes

def normalize_axes(axis, ndim, shape):
    """``axis`` (int, tuple of ints or None) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    result = []
    for a in axes:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"axis must be an int, a tuple of ints or None, not {axis!r}") from None
        if ndim == 0 and a in (0, -1):
            continue  # PyTorch's rule: axis 0 (or -1) of a 0-d array is the array itself
        if not -ndim <= a < ndim:
            raise AxisError(f"axis {a} is out of range for an array of shape {shape}")
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"repeated axis in {axis!r}")
    return tuple(sorted(result))


class RowLayout:
    """How an N-D array maps to the 2-D ``(rows, n)`` arrays the kernels take.

    The reduced axes are moved last and flattened into one, the others into
    the rows.  ``rows`` makes a C-contiguous 2-D array (a view when the reduced
    axes are already the trailing ones and the array is contiguous);
    ``restore`` turns a 2-D result back into the input's shape and order;
    ``reduced_shape`` is the shape of a reduction's result.
    """

    def __init__(self, shape, axis):
        ndim = len(shape)
        self.shape = shape
        self.axes = normalize_axes(axis, ndim, shape)
        self.kept = tuple(a for a in range(ndim) if a not in self.axes)
        self.trailing = self.axes == tuple(range(ndim - len(self.axes), ndim))
        self.n = math.prod(shape[a] for a in self.axes)
        self.reduced_shape = tuple(shape[a] for a in self.kept)
        self.kept_shape = tuple(1 if a in self.axes else shape[a] for a in range(ndim))
        self.n_rows = math.prod(self.reduced_shape)
        self.moved_shape = self.reduced_shape + tuple(shape[a] for a in self.axes)

    def rows(self, x):
        if not self.trailing:
            x = np.ascontiguousarray(np.transpose(x, self.kept + self.axes))
        return x.reshape(self.n_rows, self.n)

    def restore(self, r):
        r = r.reshape(self.moved_shape)
        if self.trailing:
            return r
        return np.ascontiguousarray(np.transpose(r, np.argsort(self.kept + self.axes)))


# ---------------------------------------------------------------------------
# out=

def check_out(out, shape, dtype, name="out"):
    """``out`` must be a writeable C-contiguous ndarray of this shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, not {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise ValueError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def aliases_exactly(a, b):
    """True when a and b are the same aligned C-contiguous memory (an in-place
    call the kernels can take directly)."""
    return (
        a.flags.aligned
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.size == b.size
        and a.dtype == b.dtype
    )


# ---------------------------------------------------------------------------
# backward passes

def check_same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


# ---------------------------------------------------------------------------
# cross-entropy

def check_loss_options(reduction, label_smoothing, ignore_index):
    """``(reduction, label_smoothing as a float, ignore_index as an int)`` of a
    cross-entropy call, checked (the cross-entropy functions and
    linear_cross_entropy share them)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, (str, bytes)):
        raise TypeError(f"label_smoothing must be a float, not {label_smoothing!r}")
    try:
        eps = float(label_smoothing)
    except OverflowError:  # a huge int: out of [0, 1] anyway
        raise ValueError(
            f"label_smoothing must be in [0, 1], got {label_smoothing!r}"
        ) from None
    except (TypeError, ValueError):
        raise TypeError(
            f"label_smoothing must be a float, not {type(label_smoothing).__name__}"
        ) from None
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(
            f"ignore_index must be an int, not {type(ignore_index).__name__}"
        ) from None
    if not _INT64_MIN <= ignore_index <= _INT64_MAX:
        raise ValueError(f"ignore_index {ignore_index} does not fit in int64")
    return reduction, eps, ignore_index


class CrossEntropyArgs:
    """Validated cross-entropy arguments, ready for the kernels.

    Attributes: ``logits`` (2-D ``(positions, classes)``, compute dtype,
    C-contiguous), ``compute`` and ``result`` dtypes, ``one_sample`` (the input
    was ``(C,)``), ``axis`` (the class axis of the input, non-negative),
    ``positions`` (the input's shape without the class axis: the shape of
    class-index targets and of ``"none"`` losses), ``labels`` (1-D int32/int64,
    for class-index targets) or ``probs`` (2-D, compute dtype), ``labels_in``
    (the caller's labels, flattened, for messages), ``weight`` (1-D compute
    dtype, or None), ``ignore_index``, ``reduction``, ``label_smoothing``.
    ``middle`` is ``(outer, classes, inner)`` when the class axis is not the
    last: ``logits`` (and ``probs``) then have that shape (no copy).
    ``moved``: the class axis moved last by a copy (16-bit logits of more than
    ``HALF_STRIDED_CLASSES`` classes), undone by :meth:`restore`.
    """

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing,
                 axis=-1, z_loss=0.0, softcap=None, return_z_loss=False,
                 return_token_accuracy=False):
        self.z_loss = check_z_loss(z_loss)
        self.softcap = check_softcap(softcap)
        self.return_z_loss = check_flag(return_z_loss, "return_z_loss")
        self.return_token_accuracy = check_flag(return_token_accuracy, "return_token_accuracy")
        self.reduction, self.label_smoothing, self.ignore_index = check_loss_options(
            reduction, label_smoothing, ignore_index)

        x = as_ndarray(logits, "logits")
        if x.ndim == 0:
            raise ValueError("logits must have at least one dimension (the classes), got shape ()")
        self.compute, self.result = float_dtypes(x.dtype, "logits")
        # float16/bfloat16 logits stay 16-bit (the kernels convert them block
        # by block): their kind, and the dtype the logits are kept in
        self.half = _half.half_kind(x.dtype)
        self.storage = self.compute if self.half is None else self.result
        if isinstance(axis, tuple):
            raise TypeError(f"axis must be an int (the class axis), not {axis!r}")
        (self.axis,) = normalize_axes(axis, x.ndim, x.shape)
        self.one_sample = x.ndim == 1
        self.shape = x.shape
        self.positions = x.shape[:self.axis] + x.shape[self.axis + 1:]
        n_classes = x.shape[self.axis]
        n_rows = math.prod(self.positions)
        if n_classes == 0 and n_rows > 0:
            raise ValueError(f"logits of shape {x.shape} has no classes (C = 0)")
        self.n_rows, self.n_classes = n_rows, n_classes

        y = as_ndarray(target, "target")
        # The logits' layout for the kernels: (positions, classes) rows when the
        # class axis is last; over another axis the kernels read the classes
        # with their stride: (outer, classes, inner) without a copy (``middle``),
        # probability targets in the same layout.
        # 16-bit logits over a middle axis: at most HALF_STRIDED_CLASSES classes
        # (else a 16-bit copy moves the axis last)
        last = math.prod(x.shape[self.axis + 1:]) == 1  # the classes are contiguous
        self.middle = None
        if not last and (y.dtype.kind in "iuf" if self.half is None else
                         n_classes <= _half.HALF_STRIDED_CLASSES and (
                             y.dtype.kind in "iuf" or _half.half_kind(y.dtype) is not None)):
            self.middle = (math.prod(x.shape[:self.axis]), n_classes,
                           math.prod(x.shape[self.axis + 1:]))
        self.moved = not last and self.middle is None
        if self.middle is not None:
            self.logits = contiguous(x, self.storage).reshape(self.middle)
        else:
            self.logits = self._rows(x, n_rows, n_classes, self.storage)
        self.labels = self.probs = None
        if y.dtype.kind in "iu":
            if y.shape != self.positions:
                raise ValueError(
                    f"class-index target has shape {y.shape}, expected {self.positions} "
                    f"for logits of shape {x.shape} (class axis {self.axis})"
                )
            self.labels_in = y.reshape(n_rows)
            self.labels = _as_label_array(self.labels_in, ignore_index)
        elif y.dtype.kind == "f" or _half.half_kind(y.dtype) is not None:
            if self.return_token_accuracy:
                raise ValueError(
                    "return_token_accuracy needs class-index targets, not probabilities"
                )
            if y.shape != x.shape:
                raise ValueError(
                    f"probability target has shape {y.shape}, expected the logits' "
                    f"shape {x.shape}"
                )
            if ignore_index >= 0:
                raise ValueError(
                    f"ignore_index={ignore_index} is not supported with probability "
                    "targets (it must be negative)"
                )
            # 16-bit targets of the logits' dtype stay 16-bit too
            same = self.half is not None and y.dtype.newbyteorder("=") == self.storage
            kept = self.storage if same else self.compute
            if self.middle is None:
                self.probs = self._rows(y, n_rows, n_classes, kept)
            else:
                self.probs = contiguous(y, kept).reshape(self.middle)
        else:
            raise TypeError(
                f"target has dtype {y.dtype}: expected integer class indices or "
                "floating class probabilities"
            )

        self.weight = None
        if weight is not None:
            w = as_ndarray(weight, "weight")
            float_dtypes(w.dtype, "weight")
            if w.shape != (n_classes,):
                raise ValueError(
                    f"weight has shape {w.shape}, expected ({n_classes},) for logits "
                    f"of shape {x.shape}"
                )
            self.weight = contiguous(w, self.compute)

    def _rows(self, a, n_rows, n_classes, dtype):
        """a (of the logits' shape) as C-contiguous (positions, classes) rows."""
        if self.moved:
            a = np.moveaxis(a, self.axis, -1)
        return contiguous(a, dtype).reshape(n_rows, n_classes)

    def restore(self, rows):
        """A gradient in the layout of ``logits`` in the logits' shape (C-contiguous)."""
        if not self.moved:
            return rows.reshape(self.shape)
        moved = rows.reshape(self.positions + (self.n_classes,))
        return np.ascontiguousarray(np.moveaxis(moved, -1, self.axis))

    def check_out(self, out):
        out = check_out(out, self.shape, self.result)
        # the kernels read labels, probabilities and weights while writing
        # out: an overlap would feed them half-written values (or, for labels,
        # out-of-range indices), so it is refused
        for other, name in ((self.labels, "target"), (self.probs, "target"),
                            (self.weight, "weight")):
            if other is not None and np.may_share_memory(out, other):
                raise ValueError(f"out must not overlap {name}")
        return out

    def bad_label(self, row):
        value = self.labels_in[row]
        index = row
        if len(self.positions) > 1:
            index = ", ".join(str(int(i)) for i in np.unravel_index(row, self.positions))
        return ValueError(
            f"target[{index}] = {value} is not a class index in [0, {self.n_classes}) "
            f"nor ignore_index ({self.ignore_index})"
        )


def _real(value, name):
    """value as a float, or TypeError naming it (str, None, arrays of size > 1)."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        raise TypeError(f"{name} must be a float, not {value!r}")
    try:
        return float(value)
    except OverflowError:  # a huge int
        return math.inf
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, not {type(value).__name__}") from None


def check_z_loss(z_loss):
    """The z-loss coefficient: a finite float >= 0."""
    z = _real(z_loss, "z_loss")
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss!r}")
    return z


def check_softcap(softcap):
    """The logit soft cap: None (no cap) or a finite float > 0."""
    if softcap is None:
        return None
    c = _real(softcap, "softcap")
    if not (math.isfinite(c) and c > 0.0):
        raise ValueError(f"softcap must be None or finite and > 0, got {softcap!r}")
    return c


def check_flag(value, name):
    """A bool option (True/False or a NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {value!r}")
    return bool(value)


def _as_label_array(y, ignore_index):
    """Labels as native int32/int64 for the kernels.

    uint64 values that int64 cannot hold (>= 2**63) become a negative label
    that is not ``ignore_index``, so the kernels' check still reports that row
    (the message quotes the caller's original value)."""
    if y.dtype in _NATIVE_LABEL_DTYPES:
        return contiguous(y)
    if y.dtype.kind == "u" and y.dtype.itemsize == 8:
        too_big = y > _INT64_MAX
        if too_big.any():
            labels = np.where(too_big, np.uint64(0), y).astype(np.int64)
            labels[too_big] = -1 if ignore_index != -1 else -2
            return labels
    return contiguous(y, np.int64)


# ---------------------------------------------------------------------------
# where= (masks)

def check_where(where, shape, name="x"):
    """``where`` as a bool ndarray that broadcasts to ``shape`` (not copied)."""
    w = as_ndarray(where, "where")
    if w.dtype != np.bool_:
        raise TypeError(f"where has dtype {w.dtype}: expected a bool array")
    try:
        if np.broadcast_shapes(w.shape, tuple(shape)) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"where of shape {w.shape} does not broadcast to {name} of shape {tuple(shape)}"
        ) from None
    return w


def _linear_offsets(shape, strides):
    """``(stride, None)`` when the byte offsets of the C-order flattened index
    of axes ``shape`` are ``index * stride``, else ``(0, offsets)`` (int64, one
    per index)."""
    dims = [(s, st) for s, st in zip(shape, strides) if s != 1]
    if all(st == st1 * s1 for (_, st), (s1, st1) in zip(dims, dims[1:])):
        return (dims[-1][1] if dims else 0), None
    offsets = np.zeros(1, np.int64)
    for s, st in dims:
        offsets = (offsets[:, None] + np.arange(s, dtype=np.int64) * st).ravel()
    return 0, offsets


def middle_mask(where, shape, axis, name="x"):
    """``(view, so, sc, si)`` for a mask over the single reduced axis ``axis``
    (an index) of a C-contiguous ``shape`` viewed as ``(outer, C, inner)``:
    ``view = np.broadcast_to(where, shape)`` keeps entry ``(o, c, j)`` at byte
    ``o so + c sc + j si`` of its data; None where the axes before or after
    ``axis`` do not collapse into one stride (the rows path, MaskRows, then)."""
    view = np.broadcast_to(check_where(where, shape, name), tuple(shape))
    so, outer_offsets = _linear_offsets(view.shape[:axis], view.strides[:axis])
    si, inner_offsets = _linear_offsets(view.shape[axis + 1:], view.strides[axis + 1:])
    if outer_offsets is not None or inner_offsets is not None:
        return None
    return view, so, view.strides[axis], si


class MaskRows:
    """A ``where=`` mask as the masked kernels read it, without a copy.

    ``view`` is ``np.broadcast_to(where, shape)`` with its axes moved as
    :class:`RowLayout` moves x's (a view: broadcast axes have stride 0).  Row
    i of the layout's ``(n_rows, n)`` rows starts ``row_offsets[i]`` bytes
    (``i * row_stride`` when ``row_offsets`` is None) from ``view``'s data
    pointer, and its column k lies ``col_offsets[k]`` (``k * col_stride``)
    bytes further.  The offset arrays exist only when the axes do not collapse
    into one stride (say a (B, 1, 1, S) mask of (B, H, S, S) scores): O(rows)
    and O(columns), never O(size).
    """

    def __init__(self, where, shape, layout, name="x"):
        w = check_where(where, shape, name)
        view = np.broadcast_to(w, tuple(shape))
        if not layout.trailing:
            view = np.transpose(view, layout.kept + layout.axes)
        nk = len(layout.kept)
        self.view = view
        self.n_kept = nk
        self.n_rows, self.n = layout.n_rows, layout.n
        self.row_stride, self.row_offsets = _linear_offsets(view.shape[:nk], view.strides[:nk])
        self.col_stride, self.col_offsets = _linear_offsets(view.shape[nk:], view.strides[nk:])

    def block(self, start, stop):
        """Rows ``start:stop`` of the mask as a ``(stop - start, n)`` bool array
        (a copy of those rows only: the NumPy twin's blocks)."""
        if self.n_kept == 0:
            return self.view.reshape(1, self.n)
        index = np.unravel_index(np.arange(start, stop), self.view.shape[:self.n_kept])
        return self.view[index].reshape(stop - start, self.n)
