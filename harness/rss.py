"""Peak resident memory of a process while a block runs, sampled from a thread (shared by the memory benchmarks)."""

from __future__ import annotations

import threading
import time


class PeakRSS:
    """Samples a process's RSS every few milliseconds; .peak is the largest seen (bytes)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    rss += child.memory_info().rss
            except Exception:  # the process ended between two samples
                break
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
