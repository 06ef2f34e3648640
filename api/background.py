"""Looks at the database off the request path.

What the API keeps in memory (what is served, which keys are valid) is looked at again every
few seconds. A request that finds its entry due must not wait for that look: under load every
request of those milliseconds would, and they are the slowest one in a hundred. So the request
is answered from the entry as it stands, and the look runs in a thread of its own, at most one
per entry at a time. An entry is used this way for one more period only: past it (a look that
failed or hangs), requests wait for the database again, and its error reaches them.
"""

import logging
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger("usage.api")


class Looks:
    """At most one look per entry running at a time, each in a daemon thread."""

    def __init__(self) -> None:
        self._running: set[Hashable] = set()
        self._lock = threading.Lock()

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
                log.warning("background look failed: %s", error)
            finally:
                with self._lock:
                    self._running.discard(entry)

        threading.Thread(target=run, name="usage-look", daemon=True).start()
        return True

    def running(self, entry: Hashable) -> bool:
        with self._lock:
            return entry in self._running
