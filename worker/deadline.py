"""Deadlines for whole tries at a file, kept by one thread per process.

A socket timeout bounds each wait for bytes, never a whole transfer: a host sending a byte
every few seconds satisfies it for as long as it likes (and a buffered read keeps waiting to
fill its buffer). When a try outlives DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS, this thread shuts its
connection down: the read blocked on it returns at once, and the fetcher, seeing the deadline
passed, fails the try as it would a timeout. One thread serves every try of the process, as
one renewal thread serves every lock (a thread per try would cost as much as a small file).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator


class Watch:
    """One try's deadline; ``expired`` once it passed and the try was cut off."""

    def __init__(self, deadline: float, cut: Callable[[], None]) -> None:
        self.deadline = deadline
        self.cut = cut
        self.expired = False
        self.done = False


class Watchdog:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, deadline: float, cut: Callable[[], None]) -> Iterator[Watch]:
        """Call ``cut`` (from this thread) if the block is still running at ``deadline``
        (a :attr:`clock` time)."""
        watch = Watch(deadline, cut)
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="casefetch-deadlines",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._wake.notify()
        try:
            yield watch
        finally:
            with self._wake:
                watch.done = True  # dropped from the heap when it comes up

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                wait = self._heap[0][0] - self.clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                _, _, watch = heapq.heappop(self._heap)
                # Under the lock: a try that ends meanwhile is never cut after it ended
                # (its connection may be serving the next file by then).
                watch.expired = True
                with contextlib.suppress(OSError):
                    watch.cut()
