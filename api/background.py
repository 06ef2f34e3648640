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

A database found unreachable is down for every caller until a probe, tried again in the
background, gets an answer (`Failures`): meanwhile requests that need it fail at once rather
than each waiting out its own timeout.
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable

from pymongo.errors import ConnectionFailure, PyMongoError

from etl.db import plain_error

log = logging.getLogger("usage.api")

# A database that is down fails every look: one warning a minute says so.
WARN_EVERY_SECONDS = 60.0
# How long, at most, callers fail at once after a request found the database unreachable.
FAIL_FAST_SECONDS = 5.0
# Between probes of a database that is down (each waits out the server selection first).
PROBE_PAUSE_SECONDS = 0.5
# Looks running at once, at most: past that, entries age out and requests wait instead.
MOST_LOOKS = 16


class KnownDown(ConnectionFailure):
    """A caller failed at once on a failure already known: no news of the database."""


class Failures:
    """The last failure to reach the database, so that callers fail fast while it is down:
    one after another, each would otherwise wait out its own timeout (seconds each). Only a
    connection failure (an unreachable server) or an operation that timed out counts.

    Given a `probe` (a cheap command), the database counts as down from the failure until
    the probe, tried again and again in the background, gets an answer: every caller fails at
    once meanwhile, and the first after the answer goes to the database. Without one, for a
    few seconds after the failure (at most `within`, at most FAIL_FAST_SECONDS)."""

    def __init__(
        self, probe: Callable[[], object] | None = None, describe: Callable[[Exception], str] = str
    ) -> None:
        self._at = float("-inf")
        self._error: ConnectionFailure | None = None
        self._probe = probe
        self._describe = describe
        self._looks = Looks(describe)
        self._lock = threading.Lock()
        self._began = 0.0  # when the outage under way began
        self._answered = 0  # 503s answered since it began

    def count_503(self) -> None:
        with self._lock:
            self._answered += 1

    def remember(self, error: PyMongoError) -> bool:
        """Take note of `error`; true if it begins an outage (logged once, with a probe).
        An operation that timed out counts too: a server too slow to answer in time is
        given the probe's pause before requests go to it again."""
        if not (isinstance(error, ConnectionFailure) or error.timeout):
            return False
        if isinstance(error, KnownDown):
            return False
        said = self._describe(error)  # a timeout as such, not as an unreachable server
        if not isinstance(error, ConnectionFailure):
            error = ConnectionFailure(str(error))
        with self._lock:
            began = self._error is None
            self._error, self._at = error, time.monotonic()
            if began:
                self._began, self._answered = self._at, 0
        if self._probe is None:
            return False
        if began:
            log.error("database unavailable: %s", said)
        self._looks.start("probe", self._probing)
        return began

    def down(self, within: float) -> ConnectionFailure | None:
        """The failure callers should fail with now, if any: with a probe, until it gets
        an answer; without, if it is less than `within` seconds old (and FAIL_FAST_SECONDS)."""
        error = self._error
        if error is None:
            return None
        if self._probe is not None:
            self._looks.start("probe", self._probing)  # if none runs (it may have failed)
            return error
        return error if time.monotonic() - self._at < min(within, FAIL_FAST_SECONDS) else None

    def raise_recent(self, within: float) -> None:
        """Raise (a copy of) the failure if callers should fail with it now."""
        error = self.down(within)
        if error is not None:
            raise KnownDown(str(error))

    def _probing(self) -> None:
        assert self._probe is not None
        while self._error is not None:
            time.sleep(PROBE_PAUSE_SECONDS)
            try:
                self._probe()
            except ConnectionFailure as error:
                self._error, self._at = error, time.monotonic()
            except PyMongoError:
                break  # it answered, if only with an error
            else:
                break
        with self._lock:
            self._error = None
            lasted, answered, self._answered = time.monotonic() - self._began, self._answered, 0
        log.warning(
            "the database answers again after %.1f s; %d requests were answered 503 meanwhile",
            lasted,
            answered,
        )


class Looks:
    """At most one look per entry running at a time, each in a daemon thread, and at most
    `most` at once. A look that failed on the database is logged (`describe` gives its line)
    at most once a minute; any other failure is a fault, logged with its traceback."""

    def __init__(self, describe: Callable[[Exception], str] = str, most: int = MOST_LOOKS) -> None:
        self._running: set[Hashable] = set()
        self._lock = threading.Lock()
        self._warned = -WARN_EVERY_SECONDS
        self._describe = describe
        self._most = most

    def start(self, entry: Hashable, look: Callable[[], object]) -> bool:
        """Starts `look` unless a look at `entry` is already running or `most` are; true if
        it started."""
        with self._lock:
            if entry in self._running or len(self._running) >= self._most:
                return False
            self._running.add(entry)

        def run() -> None:
            try:
                look()
            except PyMongoError as error:  # the entry ages out; a caller then sees the error
                self._warn(error)
            except Exception:
                log.exception("background look failed")
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
        """One line a minute for a failure the database or the machine explains."""
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_SECONDS:
            self._warned = now
            log.warning("background look at the database failed: %s", self._describe(error))


def one_line(error: Exception, uri: str) -> str:
    """A failed look as one line: a database error without its topology dump or secrets."""
    return plain_error(error, uri) if isinstance(error, PyMongoError) else str(error)
