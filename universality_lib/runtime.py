"""Where code runs: the device of a model, a checked ``--device``, the machine in words, CPU threads.

One home for what every module needs to know about the hardware (before, each module had its own copy).
"""
from __future__ import annotations

import os
import platform

import torch

from .errors import UniversalityError


def model_device(model) -> torch.device:
    """The device of a model's (first) parameter."""
    return next(model.parameters()).device


def default_device() -> torch.device:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: "str | torch.device | None") -> torch.device:
    """``device`` checked against this machine (None: :func:`default_device`); one clear error otherwise."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UniversalityError(f"unknown device {device!r}: use 'cpu' or 'cuda' (or 'cuda:N'), or leave it out to "
                                f"use the GPU when there is one.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UniversalityError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine "
                                f"(torch {torch.__version__}): use 'cpu', or leave the device out.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UniversalityError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                                f"GPU(s): use 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'.")
    if dev.type not in ("cpu", "cuda"):
        raise UniversalityError(f"device {device!r}: the library runs on 'cpu' or 'cuda'.")
    return dev


def cpu_name() -> str:
    """The CPU in words: ``x86_64 CPU x2 (Linux)``."""
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} ({platform.system()})"


def device_name(dev: torch.device) -> str:
    """What ran on ``dev``: the GPU's name, or :func:`cpu_name`."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def set_threads() -> None:
    """Use every core for intra-op work on CPU (the default can be lower inside notebooks)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))
