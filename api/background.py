"""Looks at the database off the request path.

What the API keeps in memory (what is served, which keys are valid) is looked at again every
few seconds. A request that finds its entry due must not wait for that look: under load every
request of those milliseconds would, and they are the slowest one in a hundred. So the request
is answered from the entry as it stands, and the look runs in a thread of its own, at most one
per entry at a time. An entry is used this way for one more period only: past it (a look that
failed or hangs, or no request for two periods), requests wait for the database again, and its
error reaches them. An entry's age counts from the moment its look began, and a look never
replaces an entry from a look that began later, so what a request sees is never more than two
periods older than the database.
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger("usage.api")

# A database that is down fails every look: one warning a minute says so.
WARN_EVERY_SECONDS = 60.0


class Looks:
    """At most one look per entry running at a time, each in a daemon thread."""

    def __init__(self) -> None:
        self._running: set[Hashable] = set()
        self._lock = threading.Lock()
        self._warned = -WARN_EVERY_SECONDS

    def start(self, entry: Hashable, look: Callable[[], object]) -> bool:
        """Starts `look` unless a look at `entry` is already running; true if it started."""
        with self._lock:
            if entry in self._running:
                return False
            self._running.add(entry)

        def run() -> None:
            try:
                look()
            except Exception as error:  # the stale entry ages out; a caller then sees the error
                self._warn(error)
            finally:
                self._done(entry)

        try:
            threading.Thread(target=run, name="usage-look", daemon=True).start()
        except RuntimeError as error:  # no thread to be had: the entry ages out instead
            self._done(entry)
            self._warn(error)
            return False
        return True

    def running(self, entry: Hashable) -> bool:
        """Whether a look at `entry` is under way."""
        with self._lock:
            return entry in self._running

    def _done(self, entry: Hashable) -> None:
        with self._lock:
            self._running.discard(entry)

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_SECONDS:
            self._warned = now
            log.warning("background look at the database failed: %s", error)
