"""Peak memory of one call: CUDA's allocator statistics, or on the CPU malloc's bytes in use sampled by a thread."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

import torch


class _MallocInfo(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc ≥ 2.33, malloc.h)."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _heap_in_use() -> Callable[[], int] | None:
    """Bytes malloc has handed out and not taken back (glibc's mallinfo2: arena chunks in use + mmapped chunks),
    where torch's CPU tensors live; None where the C library has no mallinfo2."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallocInfo

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd
    return in_use


class PeakMemory:
    """Peak memory of one call above what was allocated before it: CUDA's max_memory_allocated, or on the CPU the
    peak of malloc's bytes in use (mallinfo2; where it is missing, the resident set), sampled every 0.2 ms by a
    thread while the call runs. Freed memory the allocator keeps for reuse counts in the resident set but not in
    malloc's bytes in use, so on the CPU only the latter sees a warmed-up call's temporaries."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._heap = _heap_in_use() if device.type != "cuda" else None
        self.measured = ("max_memory_allocated" if device.type == "cuda" else
                         "malloc bytes in use" if self._heap is not None else "resident-set growth")

    def __call__(self, fn) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - before
        if self._heap is not None:
            return self._sampled_growth(fn, self._heap)
        if os.path.exists("/proc/self/statm"):
            return self._sampled_growth(fn, self._rss)
        fn()                                                 # (neither: unmeasured)
        return 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _sampled_growth(fn, read: Callable[[], int]) -> int:
        before, peak, done = read(), [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], read())
                done.wait(0.0002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            fn()
        finally:
            done.set()
            watcher.join()
        return max(0, max(peak[0], read()) - before)
