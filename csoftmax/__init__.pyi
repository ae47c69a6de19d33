# Type stubs of csoftmax's public API (the functions are bound methods of a runtime-chosen
# backend, so they are declared here).  Checked by `mypy --strict` on examples/typed_usage.py
# and against the runtime by `python -m mypy.stubtest csoftmax` (tools/check_wheel.sh).
#
# Result dtypes: a floating input keeps its dtype (float16, bfloat16 and longdouble included),
# integer and bool input gives float64; `out=` is returned as given.  Reductions to no axis give a
# NumPy scalar, otherwise an array, hence the unions where the shape decides.

from typing import Any, Literal, NamedTuple, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "BACKEND",
    "CrossEntropyGradResult",
    "CrossEntropyResult",
    "LinearCrossEntropyGradResult",
    "__version__",
    "config",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "set_num_threads",
    "show_config",
    "softmax",
    "softmax_backward",
]

__version__: str
BACKEND: Literal["cython", "numpy"]

_FloatT = TypeVar("_FloatT", bound=np.floating[Any])
_ArrayT = TypeVar("_ArrayT", bound=np.ndarray[Any, Any])

_Axis = SupportsIndex | tuple[SupportsIndex, ...] | None
_IntOrBoolArray = NDArray[np.integer[Any] | np.bool_]
# a reduction's result when the shape decides between an array and a scalar
_Reduced = NDArray[np.floating[Any]] | np.floating[Any]
_MeanOrSum = Literal["mean", "sum"]

# -- softmax, log_softmax ----------------------------------------------------------------

@overload
def softmax(
    x: ArrayLike, axis: _Axis = -1, *, out: _ArrayT, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None
) -> _ArrayT: ...
@overload
def softmax(
    x: NDArray[_FloatT], axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT]: ...
@overload
def softmax(
    x: _IntOrBoolArray, axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.float64]: ...
@overload
def softmax(
    x: ArrayLike, axis: _Axis = -1, *, out: None = None, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.floating[Any]]: ...
@overload
def log_softmax(
    x: ArrayLike, axis: _Axis = -1, *, out: _ArrayT, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None
) -> _ArrayT: ...
@overload
def log_softmax(
    x: NDArray[_FloatT], axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT]: ...
@overload
def log_softmax(
    x: _IntOrBoolArray, axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.float64]: ...
@overload
def log_softmax(
    x: ArrayLike, axis: _Axis = -1, *, out: None = None, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.floating[Any]]: ...

# -- logsumexp: a scalar when every axis is reduced (without keepdims); with return_sign, the
# -- pair (result, sign); with b, computed in the promoted dtype of x and b ------------------

@overload
def logsumexp(
    x: NDArray[_FloatT], axis: None, *, keepdims: Literal[False] = False, b: None = None,
    return_sign: Literal[False] = False, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> _FloatT: ...
@overload
def logsumexp(
    x: NDArray[_FloatT], axis: _Axis = -1, *, keepdims: bool = False, b: None = None,
    return_sign: Literal[False] = False, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT] | _FloatT: ...
@overload
def logsumexp(
    x: NDArray[_FloatT], axis: _Axis = -1, *, keepdims: bool = False, b: None = None,
    return_sign: Literal[True], where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[NDArray[_FloatT] | _FloatT, NDArray[_FloatT] | _FloatT]: ...
@overload
def logsumexp(
    x: ArrayLike, axis: None, *, keepdims: Literal[False] = False, b: ArrayLike | None = None,
    return_sign: Literal[False] = False, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> np.floating[Any]: ...
@overload
def logsumexp(
    x: ArrayLike, axis: _Axis = -1, *, keepdims: bool = False, b: ArrayLike | None = None,
    return_sign: Literal[False] = False, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> _Reduced: ...
@overload
def logsumexp(
    x: ArrayLike, axis: _Axis = -1, *, keepdims: bool = False, b: ArrayLike | None = None,
    return_sign: Literal[True], where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[_Reduced, _Reduced]: ...
@overload
def logsumexp(
    x: ArrayLike, axis: _Axis = -1, *, keepdims: bool = False, b: ArrayLike | None = None,
    return_sign: bool, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> _Reduced | tuple[_Reduced, _Reduced]: ...

# -- backward passes: computed in the wider dtype of the two inputs --------------------------

@overload
def softmax_backward(
    grad_output: ArrayLike, output: ArrayLike, axis: _Axis = -1, *, out: _ArrayT,
    where: ArrayLike | None = None, num_threads: SupportsIndex | None = None,
) -> _ArrayT: ...
@overload
def softmax_backward(
    grad_output: NDArray[_FloatT], output: NDArray[_FloatT], axis: _Axis = -1, *,
    out: None = None, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT]: ...
@overload
def softmax_backward(
    grad_output: ArrayLike, output: ArrayLike, axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.floating[Any]]: ...
@overload
def log_softmax_backward(
    grad_output: ArrayLike, output: ArrayLike, axis: _Axis = -1, *, out: _ArrayT,
    where: ArrayLike | None = None, num_threads: SupportsIndex | None = None,
) -> _ArrayT: ...
@overload
def log_softmax_backward(
    grad_output: NDArray[_FloatT], output: NDArray[_FloatT], axis: _Axis = -1, *,
    out: None = None, where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT]: ...
@overload
def log_softmax_backward(
    grad_output: ArrayLike, output: ArrayLike, axis: _Axis = -1, *, out: None = None,
    where: ArrayLike | None = None,
    num_threads: SupportsIndex | None = None,
) -> NDArray[np.floating[Any]]: ...

class CrossEntropyResult(NamedTuple):
    loss: Any
    z_loss: Any = None
    token_accuracy: Any = None

class CrossEntropyGradResult(NamedTuple):
    loss: Any
    grad: Any
    z_loss: Any = None
    token_accuracy: Any = None

# -- cross-entropy: "mean"/"sum" give a scalar of the logits' dtype; "none" gives one loss per
# -- position (an array of the target's shape, a scalar for (C,) logits) ---------------------

@overload
def cross_entropy(
    logits: NDArray[_FloatT], target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: _MeanOrSum = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, num_threads: SupportsIndex | None = None,
) -> _FloatT: ...
@overload
def cross_entropy(
    logits: NDArray[_FloatT], target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, num_threads: SupportsIndex | None = None,
) -> NDArray[_FloatT] | _FloatT: ...
@overload
def cross_entropy(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: _MeanOrSum = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, num_threads: SupportsIndex | None = None,
) -> np.floating[Any]: ...
@overload
def cross_entropy(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, num_threads: SupportsIndex | None = None,
) -> _Reduced: ...
@overload
def cross_entropy(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: bool = False, return_token_accuracy: bool = False,
    num_threads: SupportsIndex | None = None,
) -> CrossEntropyResult: ...
@overload
def cross_entropy_with_grad(
    logits: NDArray[_FloatT], target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: _MeanOrSum = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, out: NDArray[_FloatT] | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[_FloatT, NDArray[_FloatT]]: ...
@overload
def cross_entropy_with_grad(
    logits: NDArray[_FloatT], target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, out: NDArray[_FloatT] | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[NDArray[_FloatT] | _FloatT, NDArray[_FloatT]]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: _MeanOrSum = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, out: NDArray[Any] | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[np.floating[Any], NDArray[np.floating[Any]]]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    softcap: float | None = None, return_z_loss: Literal[False] = False,
    return_token_accuracy: Literal[False] = False, out: NDArray[Any] | None = None,
    num_threads: SupportsIndex | None = None,
) -> tuple[_Reduced, NDArray[np.floating[Any]]]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike, target: ArrayLike, *, axis: SupportsIndex = -1,
    weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: bool = False, return_token_accuracy: bool = False,
    out: NDArray[Any] | None = None, num_threads: SupportsIndex | None = None,
) -> CrossEntropyGradResult: ...

# -- linear cross-entropy (the logits of input @ linear_weight.T + linear_bias, by chunks) ----

class LinearCrossEntropyGradResult(NamedTuple):
    loss: Any
    grad_input: Any
    grad_linear_weight: Any
    grad_linear_bias: Any
    z_loss: Any = None
    token_accuracy: Any = None

@overload
def linear_cross_entropy(
    input: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
    linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: Literal[False] = False, return_token_accuracy: Literal[False] = False,
    num_threads: SupportsIndex | None = None, chunk_size: SupportsIndex | None = None,
) -> _Reduced: ...
@overload
def linear_cross_entropy(
    input: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
    linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: bool = False, return_token_accuracy: bool = False,
    num_threads: SupportsIndex | None = None, chunk_size: SupportsIndex | None = None,
) -> CrossEntropyResult: ...
@overload
def linear_cross_entropy_with_grad(
    input: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
    linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: Literal[False] = False, return_token_accuracy: Literal[False] = False,
    num_threads: SupportsIndex | None = None, chunk_size: SupportsIndex | None = None,
) -> tuple[_Reduced, NDArray[np.floating[Any]], NDArray[np.floating[Any]],
           NDArray[np.floating[Any]] | None]: ...
@overload
def linear_cross_entropy_with_grad(
    input: ArrayLike, linear_weight: ArrayLike, target: ArrayLike, *,
    linear_bias: ArrayLike | None = None, weight: ArrayLike | None = None,
    ignore_index: SupportsIndex = -100, reduction: str = "mean",
    label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
    return_z_loss: bool = False, return_token_accuracy: bool = False,
    num_threads: SupportsIndex | None = None, chunk_size: SupportsIndex | None = None,
) -> LinearCrossEntropyGradResult: ...

# -- threads and configuration --------------------------------------------------------------

def set_num_threads(n: SupportsIndex | None) -> None: ...
def get_num_threads() -> int: ...
def config() -> dict[str, Any]: ...
def show_config() -> None: ...
