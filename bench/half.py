"""bfloat16 and float16: ``python -m bench --dtypes bfloat16,float16`` (and ``--targets``).

The cases of the 16-bit issue, each timed interleaved (:func:`bench.timing.interleave`) in
one process, on 16-bit logits (float16, or ``ml_dtypes.bfloat16``: skipped when ml_dtypes
is not installed):

- ``cross_entropy_with_grad(x16, t, out=g16)`` at 4096x32000 and 4096x4096 against
  ``np.copyto`` of the 16-bit logits, csoftmax's own float32 call on the same values
  (``out=``), and PyTorch's ``F.cross_entropy`` forward + backward on the 16-bit tensor;
- ``cross_entropy_with_grad(x16, t, axis=1, out=g16)`` on (8, 21, 256, 256) segmentation
  logits (classes on axis 1) against the same peers, bfloat16 only;
- ``softmax(x16, out=o16)`` at 4096x32000 against the float32 call and ``torch.softmax``
  of the 16-bit tensor.

Each case also times its floors (:func:`bench.parity.floor_calls`): a copy of the 16-bit
logits on the case's threads and the max and exp-sum of their float32 values. A criterion
on the 16-bit call's time that fails notes the value it would have at the larger floor,
and "out of reach" where even that misses.

Each call is first checked against a float64 reference (on the first rows for the
full-size outputs, to bound the memory; relative error 1e-2 for bfloat16, 2e-3 for
float16). The cases reuse :mod:`bench.parity`'s cases, criteria and verdicts (rows of
kind ``parity`` in the targets table, in the 16-bit dtype's column).
"""

from __future__ import annotations

import importlib

import numpy as np

from . import parity
from .ops import LOGIT_SCALE, shape_label
from .peers import to_arrays
from .runner import rel_error

#: The 16-bit dtypes (names as on the command line and in the results).
DTYPES = ("bfloat16", "float16")
#: Largest accepted error of each dtype, relative to the reference's largest magnitude.
TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3}
#: Rows of the full-size outputs checked against the float64 reference.
CHECKED_ROWS = 64
CE_SHAPES = ((4096, 32000), (4096, 4096))
SOFTMAX_SHAPE = (4096, 32000)
#: (N, C, H, W) logits, classes on axis 1 (read in place by the 16-bit strided kernels)
SEGMENTATION_SHAPE = (8, 21, 256, 256)


def numpy_dtype(name):
    """The NumPy dtype of ``name`` (``ml_dtypes.bfloat16``), or None when unavailable."""
    if name == "float16":
        return np.dtype(np.float16)
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _tensor(torch, a):
    """A torch view of a 16-bit array (bfloat16 through its int16 view)."""
    if a.dtype == np.float16:
        return torch.from_numpy(a)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)


def _head(outputs):
    """The loss as it is, the first CHECKED_ROWS rows of a full-size output."""
    return tuple(np.asarray(a, np.float64) if np.ndim(a) < 2 else
                 np.asarray(a[:CHECKED_ROWS], np.float64) for a in outputs)


def _outputs(result):
    return _head(to_arrays(result))


def _ce_reference(x, t):
    """float64 mean loss over every row (by blocks), gradient of the first rows."""
    n, total = x.shape[0], 0.0
    for s in range(0, n, 256):
        z = x[s:s + 256].astype(np.float64)
        m = z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
        total += float(np.sum(lse - z[np.arange(z.shape[0]), t[s:s + 256]]))
    z = x[:CHECKED_ROWS].astype(np.float64)
    g = np.exp(z - z.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    g[np.arange(g.shape[0]), t[:CHECKED_ROWS]] -= 1
    return np.float64(total / n), g / n


def _softmax_reference(x):
    z = x[:CHECKED_ROWS].astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True),)


def _logits(shape, dtype, seed):
    rng = np.random.default_rng([seed, *shape])
    x32 = (LOGIT_SCALE * rng.standard_normal(shape, dtype=np.float32))
    return x32.astype(dtype), rng


def _ce_builder(dtype_name, axis=-1):
    """The fused loss + gradient with classes on ``axis`` (-1: rows; 1: the
    segmentation layout (N, C, H, W), read in place)."""
    def build(shape, threads, seed, torch):
        import csoftmax

        dtype = numpy_dtype(dtype_name)
        x, rng = _logits(shape, dtype, seed)
        x32 = x.astype(np.float32)  # the same values in float32
        positions = shape[:axis] + shape[axis + 1:] if axis >= 0 else shape[:-1]
        t = rng.integers(0, shape[axis], size=positions)
        g, g32, dst = np.empty_like(x), np.empty_like(x32), np.empty_like(x)
        on = "" if axis == -1 else f", axis={axis}"
        calls = {
            "csoftmax_out": lambda: csoftmax.cross_entropy_with_grad(
                x, t, axis=axis, out=g, num_threads=threads),
            "csoftmax_f32_out": lambda: csoftmax.cross_entropy_with_grad(
                x32, t, axis=axis, out=g32, num_threads=threads)}
        labels = {"csoftmax_out": f"cross_entropy_with_grad(x {dtype_name}, t{on}, out=g)",
                  "csoftmax_f32_out": f"cross_entropy_with_grad(x float32, t{on}, out=g)"}
        outputs = {"csoftmax_out": _outputs, "csoftmax_f32_out": _outputs}
        if torch is not None:
            leaf = _tensor(torch, x).clone().requires_grad_(True)
            forward_backward = parity.torch_forward_backward(torch, leaf, torch.from_numpy(t))
            calls["torch"] = lambda: tuple(v.float() for v in forward_backward())
            labels["torch"] = f"F.cross_entropy(xt {dtype_name}, tt) + backward"
            outputs["torch"] = _outputs
        calls["copyto"] = lambda: np.copyto(dst, x)
        labels["copyto"] = f"np.copyto(dst, x) ({dtype_name})"
        parity.floor_calls(calls, labels, x, threads, values=x32)
        if axis == -1:
            return parity.Built(calls, labels, outputs, lambda: _ce_reference(x, t))
        return parity.Built(calls, labels, outputs,
                            lambda: _head(parity._ce_reference(x, t, axis)))

    return build


def _softmax_builder(dtype_name):
    def build(shape, threads, seed, torch):
        import csoftmax

        dtype = numpy_dtype(dtype_name)
        x, _ = _logits(shape, dtype, seed)
        x32 = x.astype(np.float32)
        out, out32, dst = np.empty_like(x), np.empty_like(x32), np.empty_like(x)
        calls = {
            "csoftmax_out": lambda: csoftmax.softmax(x, out=out, num_threads=threads),
            "csoftmax_f32_out": lambda: csoftmax.softmax(x32, out=out32, num_threads=threads)}
        labels = {"csoftmax_out": f"csoftmax.softmax(x {dtype_name}, out=o)",
                  "csoftmax_f32_out": "csoftmax.softmax(x float32, out=o)"}
        outputs = {"csoftmax_out": _outputs, "csoftmax_f32_out": _outputs}
        if torch is not None:
            xt = _tensor(torch, x)
            calls["torch"] = lambda: torch.softmax(xt, -1)
            labels["torch"] = f"torch.softmax(xt {dtype_name}, -1)"
            outputs["torch"] = lambda r: _head((r.float(),))
        calls["copyto"] = lambda: np.copyto(dst, x)
        labels["copyto"] = f"np.copyto(dst, x) ({dtype_name})"
        parity.floor_calls(calls, labels, x, threads, values=x32)
        return parity.Built(calls, labels, outputs, lambda: _softmax_reference(x))

    return build


def _specs(dtype_name):
    short = "bf16" if dtype_name == "bfloat16" else "f16"
    # the 16-bit call's floors (parity.floor_calls: a copy of the 16-bit logits, the
    # exponentials of their float32 values) bound both criteria of its own time
    f32 = parity.Criterion("f32", "csoftmax_f32_out", "csoftmax_out", 1.7, True,
                           ">= 1.7x faster than csoftmax's float32 call (out=)",
                           floor_of="csoftmax_out")
    specs = [parity.Spec(
        f"{short}_ce_{shape_label(shape)}", f"{dtype_name}: fused CE loss+grad, out=",
        "cross_entropy_with_grad out=", shape, _ce_builder(dtype_name),
        (parity.Criterion("copyto", "csoftmax_out", "copyto", 1.3, False,
                          f"<= 1.3x np.copyto of the {dtype_name} logits",
                          floor_of="csoftmax_out"),
         f32,
         parity.Criterion("torch", "torch", "csoftmax_out", 5, True,
                          f">= 5x faster than F.cross_entropy fwd+bwd ({dtype_name})")))
        for shape in CE_SHAPES]
    if dtype_name == "bfloat16":
        # bfloat16 only: a float16 gradient of the mean over 524288 positions is
        # about 2e-6, in float16's subnormal range, where it keeps 5 bits at best
        # (1.6e-2 relative to the largest gradient: past the check's 2e-3)
        specs.append(parity.Spec(
            f"{short}_ce_axis1_{shape_label(SEGMENTATION_SHAPE)}",
            f"{dtype_name}: CE loss+grad, class axis 1 (segmentation), out=",
            "cross_entropy_with_grad axis=1 out=", SEGMENTATION_SHAPE,
            _ce_builder(dtype_name, 1),
            (parity.Criterion("torch", "torch", "csoftmax_out", 3, True,
                              f">= 3x faster than F.cross_entropy fwd+bwd ({dtype_name}), "
                              "as the float32 segmentation target"),)))
    specs.append(parity.Spec(
        f"{short}_softmax_{shape_label(SOFTMAX_SHAPE)}", f"{dtype_name}: softmax, out=",
        "softmax out=", SOFTMAX_SHAPE, _softmax_builder(dtype_name),
        (f32, parity.Criterion("torch", "torch", "csoftmax_out", 2, True,
                               f">= 2x faster than torch.softmax ({dtype_name})"))))
    return specs


#: The cases, by dtype name.
SPECS = {name: _specs(name) for name in DTYPES}
ALL_SPECS = [s for specs in SPECS.values() for s in specs]
#: The dtype of each case key (its column in the targets table).
KEY_DTYPE = {s.key: name for name, specs in SPECS.items() for s in specs}


def _compare(dtype):
    """The comparison of :func:`bench.parity._verify` for a 16-bit case: csoftmax's
    ``out=`` result in ``dtype``, the float32 call's at float32's tolerance."""
    def compare(built, name, result, expected, tol, check):
        if name == "csoftmax_out":
            kept = to_arrays(result)[-1].dtype
            if kept != dtype:
                check.update(status="mismatch", message=f"output dtype {kept}, not {dtype}")
                return
        err = check["error"] = rel_error(built.outputs[name](result), expected)
        if not err <= (tol if name != "csoftmax_f32_out" else 1e-4):
            check.update(status="mismatch", message=f"error {err:.2e} vs float64 reference")

    return compare


def measure(spec, dtype_name, threads, budget=1.0, stat="min", seed=0, min_rounds=5,
            min_sample=1e-3, torch=None):
    """Verify and time one case, then judge its criteria (:func:`bench.parity.measure`,
    checked at the 16-bit dtype's tolerance)."""
    def verify(built):
        return parity._verify(built, TOLERANCE[dtype_name], _compare(numpy_dtype(dtype_name)))

    return parity.measure(spec, threads, budget, stat, seed, min_rounds, min_sample, torch,
                          dtype=dtype_name, verify=verify)


def run(dtypes, threads=2, budget=1.0, stat="min", seed=0, min_rounds=5, min_sample=1e-3,
        stream=None):
    """Measure the cases of the 16-bit ``dtypes`` (names; bfloat16 needs ml_dtypes).

    Returns
    -------
    results : list of dict
        See :func:`bench.parity.measure`; ``dtype`` is the 16-bit dtype's name.
    skipped : dict of str to str
        The dtypes left out, and why.
    """
    try:
        torch = importlib.import_module("torch")
    except Exception:  # noqa: BLE001 - optional: its calls are left out
        torch = None
    saved = torch.get_num_threads() if torch is not None else None
    results, skipped = [], {}
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        for name in dtypes:
            if numpy_dtype(name) is None:
                skipped[name] = "ml_dtypes not installed"
                continue
            for spec in SPECS[name]:
                if stream is not None:
                    print(f"16-bit: {spec.key} {shape_label(spec.shape)} t={threads}",
                          file=stream, flush=True)
                results.append(measure(spec, name, threads, budget, stat, seed, min_rounds,
                                       min_sample, torch))
                if stream is not None and results[-1]["status"] != "ok":
                    print(f"!! 16-bit {spec.key}: {results[-1]['status'].upper()}: "
                          f"{results[-1]['message']}", file=stream, flush=True)
    finally:
        if torch is not None:
            torch.set_num_threads(saved)
    return results, skipped


def table_lines(results, skipped=None, simd=None):
    """The Markdown lines of the 16-bit timings table (as :func:`bench.parity.table_lines`)."""
    lines = parity.table_lines(results, simd)
    threads = results[0]["threads"] if results else "?"
    lines[0] = (f"## bfloat16 / float16: timings (SIMD path: {simd or 'unknown'}; {threads} "
                "thread(s); error: relative to the float64 reference, first rows)")
    lines += [f"- skipped: {name} ({why})" for name, why in (skipped or {}).items()]
    return lines

