"""The kernel the chapters run in, and the environment they see.

The kernel is always the interpreter running the book (``sys.executable``): :func:`write_kernelspec` writes a
kernelspec named ``python3`` pointing at it to ``<out>/<preset>/.jupyter``, and the runner puts that folder first on
``JUPYTER_PATH`` while the notebooks run (:func:`patched_environ`), so the executed notebooks keep their ``python3``
kernel name. ``kernel=`` uses another installed kernelspec instead (:func:`check_kernelspec` says when it is missing).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from ..errors import UniversalityError

KERNEL_NAME = "python3"


def write_kernelspec(prefix: Path) -> Path:
    """A ``python3`` kernelspec under ``prefix/kernels`` whose argv[0] is ``sys.executable``; returns ``prefix``
    (the folder to put on ``JUPYTER_PATH``)."""
    kdir = prefix / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        # log_level=ERROR hides ipykernel's "running over TCP without encryption" warning (the
        # kernel only listens on localhost); cell output, warnings included, is unaffected
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (universality)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return prefix


def check_kernelspec(name: str) -> None:
    """Raise a :class:`UniversalityError` unless Jupyter finds the kernelspec ``name`` (and, for ``python3``, unless
    it runs this interpreter)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel as e:
        raise UniversalityError(f"no Jupyter kernel named {name!r} (see `jupyter kernelspec list`).") from e
    if name == KERNEL_NAME and spec.argv and spec.argv[0] != sys.executable:
        raise UniversalityError(  # pragma: no cover - guards write_kernelspec / JUPYTER_PATH
            f"kernel {name!r} runs {spec.argv[0]}, not this interpreter ({sys.executable})."
        )


@contextlib.contextmanager
def patched_environ(changes: dict[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` applied (None: unset) inside the block, restored after it."""
    old = {k: os.environ.get(k) for k in changes}

    def apply(values: dict[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    try:
        apply(changes)
        yield
    finally:
        apply(old)


def prepend_path(var: str, *entries: str) -> str:
    """The value of the path-list variable ``var`` with ``entries`` put first."""
    parts = [e for e in entries if e]
    rest = os.environ.get(var)
    if rest:
        parts.append(rest)
    return os.pathsep.join(parts)
