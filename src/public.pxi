# The public functions as C-level functions (included by calls.pxi).
#
# csoftmax.softmax and the others were bound methods of the Frontend that the
# dispatch chose: a call went through a Python frame (argument binding, the
# `where` test, the lookup of the fast path) before it reached the fast path,
# 150 ns of a 1x1000 log_softmax's 930 ns and of a 1x10 one's 600 ns (AVX2).
# These functions take the same arguments, try the same fast path first (the
# common, unmasked call) and hand every other call, unchanged, to the bound
# method: the same results and the same errors, whichever runs.
# csoftmax/__init__.py binds them to the chosen Frontend (bind_public) and
# gives them its methods' docstrings; tests check that their signatures are
# the methods'.

cdef object _public_frontend = None


def bind_public(frontend):
    """Bind the public functions below to ``frontend`` (every call the fast
    path declines goes to its method of the same name) and return them by
    name."""
    global _public_frontend
    _public_frontend = frontend
    return {f.__name__: f for f in (softmax, log_softmax, logsumexp, softmax_backward,
                                    log_softmax_backward, cross_entropy,
                                    cross_entropy_with_grad)}


def softmax(x, axis=-1, *, out=None, where=None, num_threads=None):
    if where is None:
        r = fast_rows(OP_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
    return _public_frontend.softmax(x, axis, out=out, where=where, num_threads=num_threads)


def log_softmax(x, axis=-1, *, out=None, where=None, num_threads=None):
    if where is None:
        r = fast_rows(OP_LOG_SOFTMAX, x, axis, out, num_threads)
        if r is not None:
            return r
    return _public_frontend.log_softmax(x, axis, out=out, where=where,
                                        num_threads=num_threads)


def logsumexp(x, axis=-1, *, keepdims=False, b=None, return_sign=False, where=None,
              num_threads=None):
    if where is None and b is None and keepdims is False and return_sign is False:
        r = fast_logsumexp(x, axis, num_threads)
        if r is not None:
            return r
    return _public_frontend.logsumexp(x, axis, keepdims=keepdims, b=b,
                                      return_sign=return_sign, where=where,
                                      num_threads=num_threads)


def softmax_backward(grad_output, output, axis=-1, *, out=None, where=None, num_threads=None):
    if where is None:
        r = fast_backward(OP_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
    return _public_frontend.softmax_backward(grad_output, output, axis, out=out, where=where,
                                             num_threads=num_threads)


def log_softmax_backward(grad_output, output, axis=-1, *, out=None, where=None,
                         num_threads=None):
    if where is None:
        r = fast_backward(OP_LOG_SOFTMAX, grad_output, output, axis, out, num_threads)
        if r is not None:
            return r
    return _public_frontend.log_softmax_backward(grad_output, output, axis, out=out,
                                                 where=where, num_threads=num_threads)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                  return_z_loss=False, return_token_accuracy=False, num_threads=None):
    # with a return_* flag the result is a named tuple, which the method makes
    if return_z_loss is False and return_token_accuracy is False:
        r = fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                               label_smoothing, num_threads, False, None, weight, z_loss,
                               softcap, False, False)
        if r is not None:
            return r
    return _public_frontend.cross_entropy(
        logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy,
        num_threads=num_threads)


def cross_entropy_with_grad(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                            reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                            return_z_loss=False, return_token_accuracy=False, out=None,
                            num_threads=None):
    if return_z_loss is False and return_token_accuracy is False:
        r = fast_cross_entropy(logits, target, axis, ignore_index, reduction,
                               label_smoothing, num_threads, True, out, weight, z_loss,
                               softcap, False, False)
        if r is not None:
            return r
    return _public_frontend.cross_entropy_with_grad(
        logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        return_z_loss=return_z_loss, return_token_accuracy=return_token_accuracy, out=out,
        num_threads=num_threads)
