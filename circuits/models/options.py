"""The two model options every entry point takes, checked in one place: ``device`` and ``dtype``.

``load_model``, the command line (``--device``, ``--dtype``) and sweep files all resolve through
:func:`resolve_device` and :func:`resolve_dtype`, so a device this torch cannot use or a dtype that does not exist
fails at once, with the option, the value and the fix, instead of deep inside torch.
"""

from __future__ import annotations

import torch

from circuits.errors import CircuitsError

#: dtype names a user may write (torch's own names, and the usual short ones).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
DEVICE_KINDS = ("cpu", "cuda", "mps")


class ModelOptionError(CircuitsError, ValueError):
    """A ``device`` or ``dtype`` this torch cannot use (unknown name, or hardware it was not built for)."""


def resolve_dtype(dtype: torch.dtype | str | None, option: str = "dtype") -> torch.dtype | None:
    """The floating-point ``torch.dtype`` that ``dtype`` names (None stays None: the checkpoint's own)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise ModelOptionError(f"{option} {dtype!r} is not a floating-point dtype; use one of float32, bfloat16, "
                           "float16, float64 (or leave it out for the checkpoint's own)")


def parse_device(device: str | torch.device, option: str = "device") -> torch.device:
    """The ``torch.device`` that ``device`` names, without asking whether this machine has it (a sweep's driver
    checks names; its workers, which may have GPUs the driver lacks, resolve them)."""
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ModelOptionError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type not in DEVICE_KINDS:
        raise ModelOptionError(f"{option} {device!r}: this package runs on {', '.join(DEVICE_KINDS)}; use "
                               f"{option} cpu") from None
    return dev


def resolve_device(device: str | torch.device | None, option: str = "device") -> torch.device:
    """The ``torch.device`` that ``device`` names, checked against what this torch can use.

    None: CUDA when available, else CPU. ``"cuda"`` / ``"cuda:N"`` need a CUDA build with that GPU,
    ``"mps"`` Apple's Metal backend."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device, option)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ModelOptionError(f"{option} {device!r}: {why} (torch.cuda.is_available() is False); use "
                                   f"{option} cpu, or leave it out to pick the best device there is")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelOptionError(f"{option} {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                                   f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelOptionError(f"{option} {device!r}: Apple's MPS backend is not available in this torch or machine; "
                               f"use {option} cpu")
    return dev
