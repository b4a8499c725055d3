"""Deadlines for whole tries at a file, kept by one thread per fetcher.

A socket timeout bounds each wait for bytes, never a whole transfer: a host sending a byte
every few seconds satisfies it for as long as it likes (and a buffered read keeps waiting to
fill its buffer). When a try outlives DOWNLOAD_ATTEMPT_TIMEOUT_SECONDS, this thread shuts its
connection down: the read blocked on it returns at once, and the fetcher, seeing the deadline
passed, fails the try as it would a timeout. One thread serves every try, as one renewal
thread serves every lock: a thread per try would cost as much as a small file.
"""

from __future__ import annotations

import contextlib
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


class Watchdog:
    """Calls a try's ``cut`` if it is still running at its deadline.

    Every try of a fetcher has the same allowance, so deadlines come in the order tries
    start: the watches are kept in that order (a dict), each dropped the moment its try ends,
    and the thread only ever looks at the first.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._watches: dict[int, Watch] = {}
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, deadline: float, cut: Callable[[], None]) -> Iterator[Watch]:
        """Watch the block until ``deadline`` (a :attr:`clock` time)."""
        watch = Watch(deadline, cut)
        key = next(self._ids)
        with self._wake:
            self._watches[key] = watch
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="casefetch-deadlines", daemon=True
                )
                self._thread.start()
            elif len(self._watches) == 1:
                self._wake.notify()  # the thread waits without a time limit
        try:
            yield watch
        finally:
            with self._wake:
                self._watches.pop(key, None)

    def _run(self) -> None:
        with self._wake:
            while True:
                first = next(iter(self._watches.items()), None)
                if first is None:
                    self._wake.wait()
                    continue
                key, watch = first
                wait = watch.deadline - self.clock()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                # Under the lock: a try that ends meanwhile is never cut after it ended
                # (its connection may be serving the next file by then).
                del self._watches[key]
                watch.expired = True
                with contextlib.suppress(OSError):
                    watch.cut()
