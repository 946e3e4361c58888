"""Inference precision: `auto`, `fp32`, `bf16` (CPU and CUDA) or `fp16` (CUDA), and the CPU capability check behind `auto`.

`auto` picks reduced precision only where the hardware runs it natively:

- CUDA: bf16 autocast when the GPU supports bf16 natively (Ampere and later), fp16 autocast otherwise.
- CPU: bf16 autocast when the CPU has native bf16 matrix instructions (x86 AVX512-BF16 or AMX-BF16; Arm BF16, e.g.
  Graviton 3 / Neoverse V1), fp32 otherwise. Without them, oneDNN emulates bf16 and a matrix product runs about 10x
  *slower* than in fp32 (measured on an AVX2-only AMD EPYC: 1-2 against 15-28 GFLOP/s), so `auto` never picks it there.
- anything else (MPS...): fp32.

The CPU check reads the instruction-set flags that PyTorch's own cpuinfo reports (`torch._C._cpu._get_cpu_capability()`,
a dict with `avx512_bf16` and `amx_bf16`), and falls back to the flags of /proc/cpuinfo (Linux: `avx512_bf16`, `amx_bf16`
on x86, `bf16` in the Features line on Arm). A flag check was chosen over a timed probe: it costs nothing, is deterministic
(a probe on a busy machine can decide either way), and the flags are exactly what oneDNN dispatches on. The environment
variable `STEMJEPA_CPU_BF16=1` (or `0`) overrides the check, e.g. for a CPU whose flags are hidden by a hypervisor.

The front-end (STFT, mel, log) always runs in fp32 (see audio/frontend.py); embeddings are returned in fp32.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from ..errors import StemJepaError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ENV_OVERRIDE = "STEMJEPA_CPU_BF16"


def _torch_cpu_flags() -> dict | None:
    """PyTorch's cpuinfo view of the CPU (x86 flags), None where this torch build does not offer it."""
    try:
        caps = torch._C._cpu._get_cpu_capability()  # private but stable since torch 2.4; guarded
    except Exception:  # noqa: BLE001 - any failure: fall back to /proc/cpuinfo
        return None
    return caps if isinstance(caps, dict) else None


def _proc_cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """Flags of the first CPU in /proc/cpuinfo (x86 `flags`, Arm `Features`); empty where the file is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _detect_cpu_flags(torch_keys: tuple[str, ...], proc_keys: tuple[str, ...], what: str) -> tuple[bool, str]:
    """(any of the flags on this CPU, how it was decided): PyTorch's cpuinfo where it knows the x86 flags, else
    /proc/cpuinfo (which also names Arm features); an unreadable CPU answers False, never a guess."""
    caps = _torch_cpu_flags()
    if caps is not None and any(k in caps for k in torch_keys):
        found = [k for k in torch_keys if caps.get(k)]
        if found:
            return True, "torch cpuinfo: " + ", ".join(found)
        if caps.get("architecture", "x86_64") in ("x86_64", "x86", "amd64"):
            return False, "torch cpuinfo: no " + " / ".join(torch_keys)
    flags = _proc_cpu_flags()
    found = sorted(flags & set(proc_keys))
    if found:
        return True, "/proc/cpuinfo: " + ", ".join(found)
    return False, f"no {what} flag ({', '.join(proc_keys)})" + ("" if flags else "; CPU flags not readable")


def detect_cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU, how it was decided). Not cached: see `cpu_has_native_bf16` for the cached answer."""
    env = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True, f"{ENV_OVERRIDE}={env}"
    if env in ("0", "false", "no", "off"):
        return False, f"{ENV_OVERRIDE}={env}"
    return _detect_cpu_flags(("avx512_bf16", "amx_bf16"), ("avx512_bf16", "amx_bf16", "bf16"), "native bf16")


def detect_cpu_int8() -> tuple[bool, str]:
    """(int8 dot-product instructions on this CPU, how it was decided): x86 AVX512-VNNI, AVX-VNNI or AMX-INT8, Arm
    dotprod (`asimddp`) or i8mm. Without them an x86 int8 matrix product goes through vpmaddubsw, whose 16-bit sums can
    saturate, and is no faster than fp32: `--quantize auto` (models/int8.py) needs this check to pass."""
    return _detect_cpu_flags(("avx512_vnni", "avx_vnni", "amx_int8"),
                             ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"), "int8 dot-product")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Cached `detect_cpu_bf16()[0]`. Tests mock this function (or clear its cache after setting the override)."""
    return detect_cpu_bf16()[0]


def _cuda_bf16(device: torch.device) -> bool:
    try:
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without including_emulation
        return bool(torch.cuda.is_bf16_supported())


def check_precision(precision: str | None) -> str:
    """The normalised name ('auto' for None), or a StemJepaError naming the choices."""
    p = "auto" if precision is None else str(precision).strip().lower()
    p = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}.get(p, p)
    if p not in PRECISIONS:
        raise StemJepaError(f"precision {precision!r} unknown (choose from {', '.join(PRECISIONS)})")
    return p


_warned: set[str] = set()


def resolve_precision(precision: str | None, device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`: None for fp32 (no autocast), torch.bfloat16 or torch.float16."""
    p = check_precision(precision)
    dev = torch.device(device)
    if p == "fp32":
        return None
    if dev.type == "cuda":
        if p == "auto":
            return torch.bfloat16 if _cuda_bf16(dev) else torch.float16
        if p == "bf16" and not _cuda_bf16(dev) and "cuda-bf16" not in _warned:
            _warned.add("cuda-bf16")
            warnings.warn("bf16 asked for on a GPU without native bf16: it is emulated and slow; use fp16 or auto",
                          RuntimeWarning, stacklevel=3)
        return _DTYPES[p]
    if dev.type == "cpu":
        if p == "auto":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        if p == "fp16":
            raise StemJepaError("precision fp16 is offered on CUDA only; on a CPU use bf16 (where it has native bf16) "
                                "or fp32, or auto to choose")
        if not cpu_has_native_bf16() and "cpu-bf16" not in _warned:
            _warned.add("cpu-bf16")
            warnings.warn("bf16 asked for on a CPU without native bf16 (" + detect_cpu_bf16()[1] + "): it is emulated "
                          "and about 10x slower than fp32 here; use auto or fp32", RuntimeWarning, stacklevel=3)
        return torch.bfloat16
    if p == "auto":
        return None
    return _DTYPES[p]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(dtype: torch.dtype | None, device) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype` on `device`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def describe(device="cpu") -> str:
    """One line for logs and benchmarks: what `auto` picks on `device` and why."""
    dev = torch.device(device)
    chosen = precision_name(resolve_precision("auto", dev))
    if dev.type == "cpu":
        return f"auto -> {chosen} on cpu ({detect_cpu_bf16()[1]})"
    return f"auto -> {chosen} on {dev}"


__all__ = ["PRECISIONS", "check_precision", "resolve_precision", "cpu_has_native_bf16", "detect_cpu_bf16", "autocast",
           "precision_name", "describe", "detect_cpu_int8"]
