"""A PyTorch training step with ``csoftmax.torch.cross_entropy`` vs ``F.cross_entropy``.

``python -m bench --training``: an SGD step of ``Linear(d, C)`` + cross-entropy (label
smoothing 0.1), and the loss's forward + backward alone, timed interleaved at the same
thread count.  Needs torch; prints a Markdown table.
"""

from __future__ import annotations

import statistics
import time


def training_step_times(n=8192, c=1000, d=256, dtype="float32", threads=None,
                        label_smoothing=0.1, rounds=5, repeat=5, warmup=2):
    """Median seconds per step: ``{"full_step"|"loss_only": {"csoftmax", "torch"}}``."""
    import torch
    import torch.nn.functional as F

    import csoftmax
    import csoftmax.torch as ct

    if threads is not None:
        torch.set_num_threads(threads)
        csoftmax.set_num_threads(threads)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dt)
    y = torch.randint(0, c, (n,), generator=g)
    logits0 = torch.randn(n, c, generator=g, dtype=dt)

    def make_step(loss_fn, with_model):
        torch.manual_seed(0)
        model = torch.nn.Linear(d, c).to(dt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            if with_model:
                loss_fn(model(x), y, label_smoothing=label_smoothing).backward()
                opt.step()
            else:
                z = logits0.detach().requires_grad_()
                loss_fn(z, y, label_smoothing=label_smoothing).backward()
        return step

    out = {}
    for label, with_model in (("full_step", True), ("loss_only", False)):
        steps = {"csoftmax": make_step(ct.cross_entropy, with_model),
                 "torch": make_step(F.cross_entropy, with_model)}
        samples = {k: [] for k in steps}
        for step in steps.values():
            for _ in range(warmup):
                step()
        for _ in range(rounds):  # interleaved rounds
            for k, step in steps.items():
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    step()
                    samples[k].append(time.perf_counter() - t0)
        out[label] = {k: statistics.median(v) for k, v in samples.items()}
    return out


def main(threads):
    """Print the training-step table; return 0 (2 when torch is missing)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("note: --training needs torch (pip install 'csoftmax[torch]')")
        return 2
    print(f"| step (8192x256 -> Linear -> 1000 classes, float32, {threads} threads) "
          "| csoftmax.torch | F.cross_entropy | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for label, r in training_step_times(threads=threads).items():
        print(f"| {label} | {r['csoftmax'] * 1e3:.2f} ms | {r['torch'] * 1e3:.2f} ms "
              f"| {r['torch'] / r['csoftmax']:.2f}x |")
    return 0
