"""A time limit on a step that cannot be interrupted from inside (Numba kernels, numpy).

``within(seconds, what, fn, *args)`` runs ``fn`` in a daemon thread and waits at most ``seconds``; past that it raises
``StepTimeout`` naming ``what``. The kernels release the GIL (``nogil=True``), so the wait returns on time even
while one runs; the abandoned thread ends with the process (the CLI exits on the error).
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from fusion.errors import StepTimeout

T = TypeVar("T")


def within(seconds: float | None, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    if seconds is None:
        return fn(*args, **kwargs)
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread unchanged
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"fusion: {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise StepTimeout(f"{what} took longer than {seconds:g} s (--timeout)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
