"""The benchmarked operations: their seeded inputs and a float64 reference.

Every operation is described once, by an :class:`Op`; the peers (see
:mod:`bench.peers`) translate an ``Op`` into their own calls, so nothing here
is repeated per operation or per peer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``ignore_index`` and ``label_smoothing`` of the weighted cross-entropy case.
IGNORE_INDEX = -100
LABEL_SMOOTHING = 0.1
#: Standard deviation of the random logits.
LOGIT_SCALE = 2.0


@dataclass(frozen=True)
class Op:
    """One benchmarked operation.

    Attributes
    ----------
    name : str
        Name used on the command line and in the results.
    func : str
        Name of the csoftmax function it calls.
    title : str
        One-line description.
    target : {None, "index", "prob"}
        Kind of cross-entropy target, or None for the softmax family.
    weighted : bool
        Whether class weights, ``ignore_index`` and label smoothing are used.
    """

    name: str
    func: str
    title: str
    target: str | None = None
    weighted: bool = False
    linear: bool = False

    @property
    def is_cross_entropy(self):
        """Whether this is a cross-entropy operation."""
        return self.target is not None

    @property
    def with_grad(self):
        """Whether the gradient is computed as well as the loss."""
        return self.func in {"cross_entropy_with_grad", "linear_cross_entropy_with_grad"}

    @property
    def memory_units(self):
        """Logits-sized arrays the call must move, in np.copyto's (one read,
        one write): its memory floor is this times the copy's time.  None for
        ``linear_cross_entropy`` (bounded by its GEMMs)."""
        if self.linear:
            return None
        arrays = 1 + (self.target == "prob") + (self.func == "softmax_backward")
        written = self.with_grad or self.func in {"softmax", "log_softmax",
                                                  "softmax_backward"}
        return (arrays + written) / 2

    @property
    def has_out(self):
        """Whether csoftmax's function takes a full-size ``out=`` array."""
        return self.func in {"softmax", "log_softmax", "softmax_backward",
                             "cross_entropy_with_grad"}


OPS = {op.name: op for op in (
    Op("softmax", "softmax", "softmax over the last axis"),
    Op("log_softmax", "log_softmax", "log-softmax over the last axis"),
    Op("logsumexp", "logsumexp", "logsumexp over the last axis"),
    Op("softmax_backward", "softmax_backward",
       "dL/dx from dL/da and a = softmax(x)"),
    Op("cross_entropy", "cross_entropy", "mean loss, integer targets (no grad)",
       target="index"),
    Op("cross_entropy_with_grad", "cross_entropy_with_grad",
       "mean loss and grad, integer targets", target="index"),
    Op("cross_entropy_with_grad_prob", "cross_entropy_with_grad",
       "mean loss and grad, probability targets", target="prob"),
    Op("cross_entropy_with_grad_weighted", "cross_entropy_with_grad",
       "mean loss and grad, integer targets with weight, ignore_index="
       f"{IGNORE_INDEX}, label_smoothing={LABEL_SMOOTHING}",
       target="index", weighted=True),
    Op("linear_cross_entropy", "linear_cross_entropy_with_grad",
       "mean loss of x @ W.T + b (shape NxDxV) and its three gradients, integer targets",
       target="index", linear=True),
)}

#: Shapes ``(rows, classes)`` by family.
SHAPE_GROUPS = {
    "tall-narrow": [(65536, 10), (262144, 2)],
    "medium": [(8192, 1000)],
    "vocab-wide": [(1024, 32000), (16, 131072), (4, 262144)],
    "square": [(4096, 4096)],
    # class counts past the short-row tiles, where each row's chain of reductions bounds
    # the row loops (float32: 64 and 100 columns)
    "classes": [(32768, 64), (16384, 100)],
    "tiny": [(1, 10), (1, 1000), (32, 1000)],
    # the calls of inference: one sample to a small batch
    "small-call": [(1, 10), (1, 1000), (32, 1000), (256, 1000)],
    # linear_cross_entropy's (N, D, V): the LM heads of the issue, and a small one
    "lm-head": [(64, 256, 1000), (4096, 1024, 32000), (2048, 2048, 128256), (8192, 768, 50257)],
}
SHAPES = list(dict.fromkeys(shape for group in SHAPE_GROUPS.values() for shape in group
                            if len(shape) == 2))


def shape_label(shape):
    """Return ``"NxC"`` for a shape ``(N, C)``."""
    return "x".join(str(n) for n in shape)


def parse_shapes(text):
    """Parse ``"8192x1000,1x10,tiny"`` into a list of ``(N, C)`` tuples.

    Parameters
    ----------
    text : str
        Comma-separated ``NxC`` shapes or names of :data:`SHAPE_GROUPS`
        (``all`` for every shape).

    Returns
    -------
    list of tuple of int
    """
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item == "all":
            shapes.extend(SHAPES)
            shapes.extend(SHAPE_GROUPS["lm-head"])
        elif item in SHAPE_GROUPS:
            shapes.extend(SHAPE_GROUPS[item])
        else:
            try:  # NxC, or NxDxV for linear_cross_entropy
                sizes = tuple(int(v) for v in item.lower().split("x"))
                if len(sizes) not in (2, 3):
                    raise ValueError
            except ValueError:
                raise ValueError(f"bad shape {item!r}: expected NxC, e.g. 8192x1000 (NxDxV for "
                                 f"linear_cross_entropy), or one of {sorted(SHAPE_GROUPS)}"
                                 ) from None
            if min(sizes) < 1:
                raise ValueError(f"bad shape {item!r}: every size must be >= 1")
            shapes.append(sizes)
    return list(dict.fromkeys(shapes))


def make_inputs(op, shape, dtype, seed=0):
    """Make the seeded inputs of one operation.

    The logits depend only on ``(seed, shape, dtype)``, so every operation and
    thread count of a shape sees the same logits.

    Parameters
    ----------
    op : Op
    shape : tuple of int
        ``(N, C)``.
    dtype : numpy.dtype
        Floating dtype of the arrays (integer targets are int64).
    seed : int, optional

    Returns
    -------
    dict
        ``x`` (logits) and, as the operation needs them, ``grad_output`` and
        ``output`` (softmax backward), ``target``, ``weight``.
    """
    if op.linear:
        return _linear_inputs(shape, dtype, seed)
    n, c = shape
    rng = np.random.default_rng([seed, n, c])
    x = (LOGIT_SCALE * rng.standard_normal((n, c))).astype(dtype)
    inputs = {"x": x}
    if op.func == "softmax_backward":
        inputs["grad_output"] = rng.standard_normal((n, c)).astype(dtype)
        inputs["output"] = _softmax64(x).astype(dtype)
    if op.target == "index":
        target = rng.integers(0, c, size=n)
        if op.weighted:
            target[3::10] = IGNORE_INDEX
        inputs["target"] = target
    elif op.target == "prob":
        prob = rng.random((n, c))
        inputs["target"] = (prob / prob.sum(axis=1, keepdims=True)).astype(dtype)
    if op.weighted:
        inputs["weight"] = (0.5 + rng.random(c)).astype(dtype)
    return inputs


def call_args(op, inputs):
    """Arguments of the csoftmax-style call of ``op``.

    Parameters
    ----------
    op : Op
    inputs : dict
        As made by :func:`make_inputs`.

    Returns
    -------
    args : tuple
    kwargs : dict
        Without ``num_threads`` and ``out``, which the caller adds.
    """
    if op.func == "softmax_backward":
        return (inputs["grad_output"], inputs["output"]), {}
    if op.linear:
        return (inputs["input"], inputs["linear_weight"], inputs["target"]), \
            {"linear_bias": inputs["linear_bias"]}
    if not op.is_cross_entropy:
        return (inputs["x"],), {}
    kwargs = {}
    if op.weighted:
        kwargs = {"weight": inputs["weight"], "ignore_index": IGNORE_INDEX,
                  "label_smoothing": LABEL_SMOOTHING}
    return (inputs["x"], inputs["target"]), kwargs


def reference(op, inputs):
    """Compute the results of ``op`` in float64, independently of csoftmax.

    Cross-entropy follows ``torch.nn.functional.cross_entropy`` (mean
    reduction; weights and ignored rows in the mean's denominator; label
    smoothing spread with the class weights).

    Parameters
    ----------
    op : Op
    inputs : dict
        As made by :func:`make_inputs`.

    Returns
    -------
    tuple of numpy.ndarray
        The outputs in the order csoftmax returns them.
    """
    if op.func == "softmax_backward":
        a = inputs["output"].astype(np.float64)
        g = inputs["grad_output"].astype(np.float64)
        return (a * (g - np.sum(g * a, axis=-1, keepdims=True)),)
    if op.linear:
        return _linear_reference(inputs)
    x = inputs["x"].astype(np.float64)
    logp = x - _logsumexp64(x)[:, None]
    if op.func == "softmax":
        return (np.exp(logp),)
    if op.func == "log_softmax":
        return (logp,)
    if op.func == "logsumexp":
        return (_logsumexp64(x),)
    q, denominator = _target_weights(op, inputs)
    loss = np.asarray(np.sum(q * -logp) / denominator)
    if not op.with_grad:
        return (loss,)
    grad = (np.exp(logp) * q.sum(axis=1, keepdims=True) - q) / denominator
    return loss, grad


def _logsumexp64(x):
    m = x.max(axis=-1)
    return m + np.log(np.sum(np.exp(x - m[:, None]), axis=-1))


def _softmax64(x):
    x = x.astype(np.float64)
    return np.exp(x - _logsumexp64(x)[:, None])


def _target_weights(op, inputs):
    """Return ``q`` with loss ``sum(q * -log_softmax(x)) / denominator``."""
    n, c = inputs["x"].shape
    weight = inputs.get("weight")
    weight = np.ones(c) if weight is None else weight.astype(np.float64)
    smoothing = LABEL_SMOOTHING if op.weighted else 0.0
    if op.target == "prob":
        q = inputs["target"].astype(np.float64) * (1 - smoothing) + smoothing / c
        return q * weight, n
    target = inputs["target"]
    rows = np.flatnonzero(target != IGNORE_INDEX)
    q = np.zeros((n, c))
    q[rows] = smoothing / c
    q[rows, target[rows]] += 1 - smoothing
    return q * weight, weight[target[rows]].sum()


def _linear_inputs(shape, dtype, seed):
    """``input`` (N, D), ``linear_weight`` (V, D), ``linear_bias`` (V,), ``target`` (N,)
    of a linear cross-entropy case ``(N, D, V)``: logits of standard deviation
    about LOGIT_SCALE."""
    if len(shape) != 3:
        raise ValueError(f"linear_cross_entropy takes NxDxV shapes, got {shape_label(shape)}")
    n, d, v = shape
    rng = np.random.default_rng([seed, n, d, v])
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    w = (rng.standard_normal((v, d), dtype=np.float32) * (LOGIT_SCALE / np.sqrt(d))).astype(dtype)
    b = (0.1 * rng.standard_normal(v)).astype(dtype)
    return {"input": x, "linear_weight": w, "linear_bias": b,
            "target": rng.integers(0, v, size=n), "x": x}


def _linear_reference(inputs):
    """(loss, grad_input, grad_linear_weight, grad_linear_bias) in float64, by chunks."""
    x = inputs["input"].astype(np.float64)
    w = inputs["linear_weight"].astype(np.float64)
    b = inputs["linear_bias"].astype(np.float64)
    t = inputs["target"]
    n = x.shape[0]
    gx, gw, gb, loss = np.empty_like(x), np.zeros_like(w), np.zeros_like(b), 0.0
    step = max(1, (32 << 20) // (8 * w.shape[0]))
    for s in range(0, n, step):
        z = x[s:s + step] @ w.T + b
        lse = _logsumexp64(z)
        rows = np.arange(z.shape[0])
        loss += float(np.sum(lse - z[rows, t[s:s + step]]))
        g = np.exp(z - lse[:, None])
        g[rows, t[s:s + step]] -= 1
        g /= n
        gx[s:s + step] = g @ w
        gw += g.T @ x[s:s + step]
        gb += g.sum(0)
    return np.asarray(loss / n), gx, gw, gb
