"""A fault injector for tests/faults and benchmarks/soak.py, kept out of the package.

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that holds one, so putting
this folder first on ``PYTHONPATH`` arms it in a subprocess (and in every torchrun worker). It does nothing
unless ``OPENSEER_FAULT`` is set:

``OPENSEER_FAULT=<point>:<n>`` sends SIGKILL to the process the ``n``-th time it reaches ``<point>``:

* ``forward``: inside a convolution of a forward pass (``torch.nn.Conv2d.forward``);
* ``save``: inside ``torch.save``, after the first half of a checkpoint's bytes reached the file;
* ``replace``: right after an ``os.replace`` (a file just renamed into place: last.pt, metrics, config ...);
* ``step``: right after an optimizer step, between two training steps (``Optimizer.zero_grad``);
* ``count``: kill nothing; at exit, write how often each point was reached to ``$OPENSEER_FAULT_COUNTS``.

``OPENSEER_FAULT_RANK=r`` arms it only in the process whose ``RANK`` is r, and only on the first attempt of a
torchrun group (``TORCHELASTIC_RESTART_COUNT`` 0), so that the restarted group runs clean.
"""

from __future__ import annotations

import os

_SPEC = os.environ.get("OPENSEER_FAULT", "")


def _armed() -> bool:
    if not _SPEC:
        return False
    rank = os.environ.get("OPENSEER_FAULT_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return False
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def _install() -> None:
    import atexit
    import io
    import json
    import signal

    import torch

    point, _, n = _SPEC.partition(":")
    target = int(n or 1)
    counts = {"forward": 0, "save": 0, "replace": 0, "step": 0}

    def reached(name: str) -> bool:
        counts[name] += 1
        return point == name and counts[name] == target

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    conv_forward = torch.nn.Conv2d.forward

    def forward(self, x):
        if reached("forward"):
            die()
        return conv_forward(self, x)

    torch_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not reached("save"):
            return torch_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        torch_save(obj, buf, *args, **kwargs)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(f, "write"):
            f.write(half)
            f.flush()
        else:
            with open(f, "wb") as out:
                out.write(half)
        die()

    os_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        os_replace(src, dst, *args, **kwargs)
        if reached("replace"):
            die()

    zero_grad = torch.optim.Optimizer.zero_grad

    def step_done(self, *args, **kwargs):
        zero_grad(self, *args, **kwargs)
        if reached("step"):
            die()

    torch.nn.Conv2d.forward = forward
    torch.save = save
    os.replace = replace
    torch.optim.Optimizer.zero_grad = step_done
    if point == "count" and os.environ.get("OPENSEER_FAULT_COUNTS"):
        path = os.environ["OPENSEER_FAULT_COUNTS"]
        atexit.register(lambda: open(path, "w").write(json.dumps(counts)))


if _armed():
    _install()
