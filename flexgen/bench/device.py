"""What the device can do: its peak TFLOP/s (vendors' datasheets for GPUs, an estimate from the clock and vector
units for CPUs) and the GMAC/s of a large matmul on it."""

from __future__ import annotations

import os
import platform
import time

import torch

# Dense peak TFLOP/s (no sparsity) from the vendors' datasheets: (name in torch.cuda.get_device_name, bf16 / fp16
# tensor cores, fp32 without TF32). Checked in order (H100 PCIe before H100 SXM).
GPU_PEAKS = (("H200", 989.4, 66.9), ("H100 PCIe", 756.0, 51.2), ("H100", 989.4, 66.9), ("A100", 312.0, 19.5),
             ("L40S", 362.1, 91.6), ("L4", 121.0, 30.3))


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float | None, str]:
    """(device name, peak TFLOP/s or None where unknown, where the number comes from)."""
    low = dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, single in GPU_PEAKS:
            if key in name:
                return name, half if low else single, "datasheet, dense"
        return name, None, "unknown device"
    flags, mhz, model = set(), None, platform.processor() or "cpu"
    lines = []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
        elif key == "model name":
            model = value.strip()
    if mhz is None:
        return model, None, "unknown clock"
    # FLOPs per cycle per core: two FMA units × vector lanes × 2; AMX tiles for bf16 / fp16 (oneDNN uses them)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    if low and "amx_bf16" in flags:
        per_cycle = 1024
    threads = torch.get_num_threads()
    return (f"{model} ({threads} threads)", threads * mhz * 1e6 * per_cycle / 1e12,
            "estimate: threads × clock × FLOPs per cycle")


def calibrate(device: torch.device, dtype: torch.dtype) -> float:
    """GMAC/s of a large matmul: the first guess of how fast a model runs, before one has been timed."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 3 * n ** 3 / (time.perf_counter() - start) / 1e9
