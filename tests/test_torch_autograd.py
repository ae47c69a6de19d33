"""csoftmax.torch: autograd functions against torch.nn.functional (values, gradients,
gradcheck, a few SGD steps), and their errors (devices, dtypes, double backward)."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import csoftmax

torch = pytest.importorskip("torch")
ct = pytest.importorskip("csoftmax.torch")
F = torch.nn.functional

REDUCTIONS = ("mean", "sum", "none")
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-13)}


def make_case(kind, weighted, ignore, dtype, n=9, c=6, seed=0):
    """(logits, target, weight) tensors: integer or probability targets, optionally weighted,
    with two rows at ignore_index when ``ignore``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    if kind == "int":
        t = torch.randint(0, c, (n,), generator=g)
        if ignore:
            t[1] = t[n - 2] = -100
    else:  # soft labels that do not sum to one
        t = torch.rand(n, c, generator=g, dtype=torch.float64).to(dtype)
    w = torch.rand(c, generator=g, dtype=torch.float64).to(dtype) + 0.5 if weighted else None
    return x, t, w


_CE = [o for o in itertools.product(("int", "prob"), (False, True), (False, True), REDUCTIONS,
                                    (0.0, 0.25)) if not (o[0] == "prob" and o[2])]
_CE_IDS = ["-".join(map(str, o)) for o in _CE]


# ---------------------------------------------------------------------------------------------
# values and gradients equal to torch.nn.functional


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("kind", "weighted", "ignore", "reduction", "smoothing"), _CE, ids=_CE_IDS)
def test_cross_entropy_like_torch(kind, weighted, ignore, reduction, smoothing, dtype):
    x, t, w = make_case(kind, weighted, ignore, dtype)
    options = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = ct.cross_entropy(ours_x, t, **options)
    ref = F.cross_entropy(ref_x, t, **options)
    assert ours.dtype == ref.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    # a non-trivial upstream gradient (per row for "none")
    up = torch.linspace(0.5, 2.0, ref.numel(), dtype=dtype).reshape(ref.shape)
    ours.backward(up)
    ref.backward(up)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, **TOL[dtype])


def test_cross_entropy_ignore_index_other_value():
    x, t, w = make_case("int", True, False, torch.float64)
    t[0] = t[3] = 2
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ct.cross_entropy(ours_x, t, weight=w, ignore_index=2).backward()
    F.cross_entropy(ref_x, t, weight=w, ignore_index=2).backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, **TOL[torch.float64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_single_sample(reduction):
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    t = torch.tensor(1)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = ct.cross_entropy(ours_x, t, reduction=reduction)
    ref = F.cross_entropy(ref_x, t, reduction=reduction)
    assert ours.shape == ref.shape == ()
    torch.testing.assert_close(ours, ref)
    (ours * 3).backward()
    (ref * 3).backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("shape", "dim"), [((7, 5), 1), ((7, 5), 0), ((3, 4, 5), -1),
                                            ((3, 4, 5), 1), ((6,), 0)])
def test_softmax_like_torch(fn, dtype, shape, dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 4
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = getattr(ct, fn)(ours_x, dim)
    ref = getattr(F, fn)(ref_x, dim)
    assert ours.dtype == dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    up = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    ours.backward(up)
    ref.backward(up)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, **TOL[dtype])


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "cross_entropy"])
def test_non_contiguous_input(fn):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 10, generator=g, dtype=torch.float64)
    ours_x = base.clone().requires_grad_()
    ref_x = base.clone().requires_grad_()
    xo, xr = ours_x.t()[::2], ref_x.t()[::2]  # (5, 6), strided
    assert not xo.is_contiguous()
    if fn == "cross_entropy":
        t = torch.tensor([0, 5, 2, 3, 1])
        ours, ref = ct.cross_entropy(xo, t), F.cross_entropy(xr, t)
    else:
        ours, ref = getattr(ct, fn)(xo, 1), getattr(F, fn)(xr, 1)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()  # an expanded (zero-stride) upstream gradient
    ref.sum().backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


def test_inputs_not_modified():
    x, t, w = make_case("prob", True, False, torch.float64)
    x0, t0, w0 = x.clone(), t.clone(), w.clone()
    xg = x.requires_grad_()
    ct.cross_entropy(xg, t, weight=w, label_smoothing=0.1).backward()
    ct.softmax(xg, 1).sum().backward()
    assert torch.equal(x.detach(), x0) and torch.equal(t, t0) and torch.equal(w, w0)


# ---------------------------------------------------------------------------------------------
# gradcheck (float64, finite differences)

_GRADCHECK = [o for o in _CE if o[4] == 0.25 or o[3] == "mean"]


@pytest.mark.parametrize(("kind", "weighted", "ignore", "reduction", "smoothing"), _GRADCHECK,
                         ids=["-".join(map(str, o)) for o in _GRADCHECK])
def test_gradcheck_cross_entropy(kind, weighted, ignore, reduction, smoothing):
    x, t, w = make_case(kind, weighted, ignore, torch.float64, n=5, c=4)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: ct.cross_entropy(x, t, weight=w, reduction=reduction,
                                   label_smoothing=smoothing), (x,))


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gradcheck_softmax(fn, dim):
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: getattr(ct, fn)(x, dim), (x,))


# ---------------------------------------------------------------------------------------------
# training


def _train(loss_fn, steps=6):
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    for _ in range(steps):
        x = torch.randn(32, 20, generator=g)
        y = torch.randint(0, 7, (32,), generator=g)
        opt.zero_grad()
        loss = loss_fn(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], loss.item()


def test_training_matches_functional():
    ours, ours_loss = _train(ct.cross_entropy)
    ref, ref_loss = _train(F.cross_entropy)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours_loss == pytest.approx(ref_loss, rel=1e-5)


def test_retain_graph_backward_twice():
    x, t, _ = make_case("int", False, False, torch.float64)
    x.requires_grad_()
    loss = ct.cross_entropy(x, t, reduction="sum")
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_no_grad_forward_matches():
    x, t, w = make_case("int", True, True, torch.float64)
    with torch.no_grad():
        ours = ct.cross_entropy(x.requires_grad_(), t, weight=w)
    assert ours.grad_fn is None
    torch.testing.assert_close(ours, F.cross_entropy(x.detach(), t, weight=w))


# ---------------------------------------------------------------------------------------------
# errors


def _on_meta(t):
    return t.to("meta")


@pytest.mark.parametrize("where", ["input", "target", "weight"])
def test_non_cpu_tensor_is_a_clear_error(where):
    # no CUDA here: a tensor on the "meta" device takes the same path as a CUDA one
    x, t, w = make_case("int", True, False, torch.float32)
    args = {"input": x, "target": t, "weight": w}
    args[where] = _on_meta(args[where])
    with pytest.raises(ValueError, match=rf"CPU tensors only.*{where} is on device 'meta'"):
        ct.cross_entropy(args["input"], args["target"], weight=args["weight"])


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_non_cpu_tensor_softmax(fn):
    with pytest.raises(ValueError, match=r"CPU tensors only.*\.cpu\(\)"):
        getattr(ct, fn)(torch.zeros(2, 3, device="meta"), 1)


def test_cuda_device_message(monkeypatch):
    """The check reads ``tensor.device``: a tensor reporting a CUDA device is refused before
    any data is touched."""

    class FakeCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 0)

    x = torch.zeros(2, 3).as_subclass(FakeCuda)
    with pytest.raises(ValueError, match=r"device 'cuda:0'.*torch\.nn\.functional"):
        ct.cross_entropy(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("fn", ["softmax", "cross_entropy"])
def test_double_backward_is_refused(fn):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = ct.softmax(x, 1).sum() if fn == "softmax" else ct.cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(y, x, create_graph=True)


def test_grad_of_target_or_weight_is_refused():
    x, t, w = make_case("prob", True, False, torch.float64)
    with pytest.raises(NotImplementedError, match="target requires grad"):
        ct.cross_entropy(x, t.requires_grad_())
    with pytest.raises(NotImplementedError, match="weight requires grad"):
        ct.cross_entropy(x, t.detach(), weight=w.requires_grad_())


def test_bad_dtype_and_shape():
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        ct.softmax(torch.zeros(2, 3, dtype=torch.int64), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ct.softmax(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match=r"\(N, C\), \(C,\) or \(N, C, d1, ..., dK\)"):
        ct.cross_entropy(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(2, 4\)"):  # classes: dim 1
        ct.cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError):  # csoftmax's own checks come through
        ct.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        ct.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), reduction="avg")


# ---------------------------------------------------------------------------------------------
# imports


def test_import_csoftmax_does_not_import_torch():
    code = "import sys, csoftmax; assert 'torch' not in sys.modules, 'torch was imported'"
    root = os.path.dirname(os.path.dirname(os.path.abspath(csoftmax.__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr


def test_import_without_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    monkeypatch.delitem(sys.modules, "csoftmax.torch")
    with pytest.raises(ImportError, match=r"csoftmax\.torch needs PyTorch.*pip install"):
        importlib.import_module("csoftmax.torch")


def test_inputs_changed_in_place_before_backward_are_refused():
    """What backward reads again is saved through autograd, whose version check refuses a
    backward after an in-place change (as torch.nn.functional's own functions do): the inputs
    of linear_cross_entropy with reduction="none" (recomputed in backward), and the mask of
    softmax/log_softmax (once read again in place: log_softmax then gave 1, not 0, at the
    entries that were masked in the forward)."""
    torch.manual_seed(0)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for changed in ("linear_weight", "target", "linear_bias"):
        t = torch.tensor([0, 1, 2, 3])
        b = torch.randn(5, dtype=torch.float64)
        w2 = w.detach().clone().requires_grad_()
        loss = ct.linear_cross_entropy(h, w2, t, linear_bias=b, reduction="none")
        with torch.no_grad():
            {"linear_weight": w2, "target": t, "linear_bias": b}[changed].add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.sum().backward()
    for fn in (ct.softmax, ct.log_softmax):
        x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        mask = torch.tensor([True, True, False, False])
        y = fn(x, 1, mask=mask)
        mask[:] = True
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    # unchanged, the saved inputs give PyTorch's gradients
    t = torch.tensor([0, 1, 2, 3])
    ref = torch.autograd.grad(F.linear_cross_entropy(h, w, t, reduction="none").sum(), (h, w))
    got = torch.autograd.grad(ct.linear_cross_entropy(h, w, t, reduction="none").sum(), (h, w))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


# -- calls that autograd does not record run without Function.apply -----------

def _no_graph_calls():
    """(name, call) pairs over plain tensors: every reduction, weights, soft labels,
    (N, C, d1) and (C,) input, z-loss and soft cap; softmax / log_softmax over each dim,
    masked; bfloat16 and float16."""
    g = torch.Generator().manual_seed(3)
    calls = []
    for dtype in (torch.float32, torch.float64, torch.float16):
        x, t, w = make_case("int", True, True, dtype)
        xp, tp, _ = make_case("prob", False, False, dtype)
        x3 = torch.randn(4, 5, 6, generator=g).to(dtype)
        t3 = torch.randint(0, 5, (4, 6), generator=g)
        mask = torch.rand(x.shape[1], generator=g) < 0.6
        for r in REDUCTIONS:
            calls.append((f"ce {dtype} {r}", lambda r=r, x=x, t=t, w=w: ct.cross_entropy(
                x, t, w, reduction=r, label_smoothing=0.1)))
            calls.append((f"ce plain {dtype} {r}", lambda r=r, x=x, t=t: ct.cross_entropy(
                x, t, reduction=r)))
        calls += [
            (f"ce prob {dtype}", lambda x=xp, t=tp: ct.cross_entropy(x, t)),
            (f"ce N,C,d {dtype}", lambda x=x3, t=t3: ct.cross_entropy(x, t, reduction="none")),
            (f"ce (C,) {dtype}", lambda x=x: ct.cross_entropy(x[0], torch.tensor(2))),
            (f"ce z, cap {dtype}", lambda x=x, t=t: ct.cross_entropy(x, t, z_loss=1e-3,
                                                                     softcap=2.0)),
            (f"softmax {dtype}", lambda x=x3: ct.softmax(x, 1)),
            (f"log_softmax {dtype}", lambda x=x3: ct.log_softmax(x, -1)),
            (f"softmax masked {dtype}", lambda x=x, m=mask: ct.softmax(x, 1, mask=m)),
            (f"log_softmax transposed {dtype}", lambda x=x: ct.log_softmax(x.T, 0)),
            (f"linear_cross_entropy {dtype}", lambda x=x, t=t, w=w: ct.linear_cross_entropy(
                x[:, :4], x[:5, 1:5], t.clamp(-100, 4), linear_bias=x[0, :5], weight=w[:5],
                reduction="none")),
            (f"linear_cross_entropy one row {dtype}", lambda x=x: ct.linear_cross_entropy(
                x[0], x[1:6], torch.tensor(3), z_loss=1e-3)),
        ]
    return calls


def test_calls_without_graph_skip_apply(monkeypatch):
    """Under no_grad, or on tensors that do not require grad, the functions compute
    directly (Function.apply alone cost 4-5 us, three times a 1x1000 softmax): the same
    values, dtype and shape as through apply, no grad_fn; a tensor that requires grad in
    grad mode still goes through apply."""
    calls = _no_graph_calls()
    want = [(name, call()) for name, call in calls]  # through apply (not patched yet)
    applied = []
    for fn in (ct.CrossEntropy, ct.Softmax, ct.LogSoftmax, ct.LinearCrossEntropy):
        original = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _o=original: applied.append(1) or _o(*a))
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            for (name, call), (_, expected) in zip(calls, want):
                got = call()
                assert got.grad_fn is None and not got.requires_grad, name
                assert got.dtype == expected.dtype and got.shape == expected.shape, name
                assert torch.equal(got, expected) or (
                    torch.isnan(got).equal(torch.isnan(expected))
                    and torch.equal(got.nan_to_num(), expected.nan_to_num())), name
    assert not applied
    x = torch.randn(3, 4, requires_grad=True)
    ct.softmax(x, 1).sum().backward()
    ct.cross_entropy(x, torch.tensor([0, 1, 2])).backward()
    assert len(applied) == 2
    with torch.no_grad():  # requires_grad, but nothing recorded
        ct.cross_entropy(x, torch.tensor([0, 1, 2]))
    assert len(applied) == 2


def test_direct_path_same_as_checked(monkeypatch):
    """The common call (exactly a tensor, on the CPU, contiguous, of a NumPy dtype, not
    requiring grad; no weight, no mask) crosses to NumPy and back without the checked
    path's steps (csoftmax.torch._direct_numpy): the same values, dtype and shape as the
    checked path for every call of _no_graph_calls, and the plain calls take it."""
    calls = _no_graph_calls()
    original, direct = ct._direct_numpy, []

    def spy(t, logits=True):
        found = original(t, logits)
        direct.append(found is not None)
        return found

    monkeypatch.setattr(ct, "_direct_numpy", spy)
    got = []
    for name, call in calls:
        direct.clear()
        got.append(call())
        plain = name.startswith(("ce plain", "softmax torch", "log_softmax torch", "ce N,C,d",
                                 "ce (C,)", "ce z, cap", "ce prob"))
        assert (bool(direct) and all(direct)) == plain, name
    monkeypatch.setattr(ct, "_direct_numpy", lambda t, logits=True: None)
    for (name, call), fast in zip(calls, got):
        want = call()
        assert fast.dtype == want.dtype and fast.shape == want.shape, name
        assert torch.equal(fast, want) or (
            torch.isnan(fast).equal(torch.isnan(want))
            and torch.equal(fast.nan_to_num(), want.nan_to_num())), name


def test_direct_path_declines():
    """What the direct path leaves to the checked one: a subclass (nn.Parameter), a
    non-contiguous or bfloat16 tensor, a tensor that requires grad, a bfloat16 target."""
    x = torch.randn(3, 4)
    assert ct._direct_numpy(x) is not None
    assert ct._direct_numpy(torch.nn.Parameter(x, requires_grad=False)) is None
    assert ct._direct_numpy(x.T) is None
    assert ct._direct_numpy(x.to(torch.bfloat16)) is None
    assert ct._direct_numpy(x.clone().requires_grad_(True)) is None
    assert ct._direct_numpy(torch.tensor([1, 2])) is None  # an integer tensor as logits
    assert ct._direct_numpy(torch.tensor([1, 2]), logits=False) is not None
    assert ct._direct_numpy(x.to(torch.bfloat16), logits=False) is None
    assert ct._direct_numpy([1.0, 2.0]) is None


def test_direct_path_errors_are_the_checked_paths():
    """A tensor the direct path cannot cross (a dtype NumPy lacks) falls to the checked
    path, whose error names the first bad argument: the logits' before the target's."""
    target = torch.zeros(3, 4).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="input has dtype torch.int64"):
        ct.cross_entropy(torch.zeros(3, 4, dtype=torch.long), target)
    assert ct._direct_numpy(target, logits=False) is None


def _bad_call(case, x):
    """A call with one bad argument, over the float tensor x (3, 4)."""
    if case == "0-d input":
        return ct.cross_entropy(x[0, 0], torch.tensor(0))
    if case == "bool dim":
        return ct.log_softmax(x, True)
    if case == "int mask":
        return ct.softmax(x, 1, mask=torch.ones(4, dtype=torch.int64))
    if case == "(C,) input, (1,) target":
        return ct.cross_entropy(x[0], torch.tensor([1]))
    if case == "float8 target":  # a dtype NumPy lacks: the direct path leaves it
        return ct.cross_entropy(x, torch.zeros(3, 4).to(torch.float8_e4m3fn))
    if case == "int logits, float8 target":  # the logits' error, not the target's
        return ct.cross_entropy(x.long(), torch.zeros(3, 4).to(torch.float8_e4m3fn))
    return ct.cross_entropy(x, [0, 1, 2])  # a list target


@pytest.mark.parametrize("case", ["0-d input", "bool dim", "int mask", "list target",
                                  "(C,) input, (1,) target", "float8 target",
                                  "int logits, float8 target"])
def test_calls_without_graph_same_errors(case):
    """Bad input raises the same exception with the same message directly (no graph) and
    through apply (an input that requires grad)."""
    outcomes = []
    for requires_grad in (False, True):
        x = torch.randn(3, 4, requires_grad=requires_grad)
        with pytest.raises(Exception) as info:
            _bad_call(case, x)
        outcomes.append((type(info.value), str(info.value)))
    assert outcomes[0] == outcomes[1]
