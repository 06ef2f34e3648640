"""Connections: the MongoDB client, the embedded server, and the collections the project uses."""

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import make_read_preference, read_pref_mode_from_name
from pymongo.write_concern import WriteConcern

from etl.settings import EMBEDDED, EMBEDDED_CACHE, Settings

Doc = dict[str, Any]
REQUESTS = "requests"
USAGE_DAILY = "usage_daily"
USAGE_MONTHLY = "usage_monthly"
USAGE_DAYS = "usage_days"
USAGE_ORG_DAILY = "usage_org_daily"
USAGE_ORG_MONTHLY = "usage_org_monthly"
USAGE_PLATFORM = "usage_platform"
# Months whose levels by month lag their day rows while a run replaces them in parts.
USAGE_STALE_MONTHS = "usage_stale_months"
ROLLUP_COLLECTIONS = (
    USAGE_DAILY,
    USAGE_MONTHLY,
    USAGE_ORG_DAILY,
    USAGE_ORG_MONTHLY,
    USAGE_PLATFORM,
    USAGE_STALE_MONTHS,
    USAGE_DAYS,
)


def generation_name(base: str, generation: int) -> str:
    """Generation 1 keeps the plain names; each rebuild writes a new set beside them."""
    return base if generation == 1 else f"{base}_g{generation}"


class DatabaseUnavailable(Exception):
    """The database could not be used; the message is one plain line."""


class DatabaseUnreachable(DatabaseUnavailable):
    """No answer from the database at all (rather than a refusal, such as bad credentials)."""


URI = re.compile(r"mongodb(?:\+srv)?://[^\s'\"]+")
# Up to the last "@", so an unescaped "@", "/" or "?" in a password is hidden with it.
USERINFO = re.compile(r"^(mongodb(?:\+srv)?://[^:@/?#]*):.*@")
SECRET_NAME = re.compile(r"pass|secret|token|credential|signature|key$", re.IGNORECASE)


def mask_uri(text: str) -> str:
    """Hide the secrets of every MongoDB URI in `text`: passwords and secret-looking options."""
    return URI.sub(lambda match: mask_one_uri(match.group()), text)


def mask_one_uri(uri: str) -> str:
    base, question, query = USERINFO.sub(r"\1:***@", uri).partition("?")
    if not question:
        return base
    return base + "?" + "&".join(mask_option(option) for option in query.split("&"))


def mask_option(option: str) -> str:
    """`password=***`; in a list of NAME:value pairs (authMechanismProperties), each secret one."""
    name, equals, value = option.partition("=")
    if SECRET_NAME.search(unquote(name)):
        return f"{name}=***"
    pairs = [pair.partition(":") for pair in unquote(value).split(",")]
    if not any(colon and SECRET_NAME.search(key) for key, colon, _ in pairs):
        return option
    shown = [
        f"{key}:***" if colon and SECRET_NAME.search(key) else key + colon + rest
        for key, colon, rest in pairs
    ]
    return name + equals + ",".join(shown)


def plain_error(exc: PyMongoError, uri: str) -> str:
    """One line for a database failure, with no secrets and no topology dump."""
    if isinstance(exc, ConnectionFailure):
        return f"cannot reach MongoDB at {mask_uri(uri)}"
    text = str(exc).split(", Timeout:")[0].split(", full error:")[0]
    return mask_uri(text)[:300]


@dataclass
class Databases:
    client: MongoClient[Doc]
    source: Database[Doc]
    rollup: Database[Doc]
    uri: str
    settings: Settings
    # None: learn from the server on first use; False forces writes without transactions.
    transactions: bool | None = None

    def requests(self) -> Collection[Doc]:
        mode = read_pref_mode_from_name(self.settings.read_preference)
        return self.source.get_collection(
            REQUESTS, read_preference=make_read_preference(mode, None)
        )

    def _writer(self, base: str, generation: int) -> Collection[Doc]:
        name = generation_name(base, generation)
        return self.rollup.get_collection(name, write_concern=WriteConcern("majority"))

    def level(self, base: str, generation: int = 1) -> Collection[Doc]:
        """A rollup collection of a generation, for the rollup's writes."""
        return self._writer(base, generation)

    def usage_daily(self, generation: int = 1) -> Collection[Doc]:
        return self._writer(USAGE_DAILY, generation)

    def usage_monthly(self, generation: int = 1) -> Collection[Doc]:
        return self._writer(USAGE_MONTHLY, generation)

    def usage_days(self, generation: int = 1) -> Collection[Doc]:
        """The day ledger: which definition, run and source read each computed day came from."""
        return self._writer(USAGE_DAYS, generation)

    def reader(self, base: str, generation: int) -> Collection[Doc]:
        """A rollup collection for readers: one snapshot per query, never a half-replaced day."""
        name = generation_name(base, generation)
        if not self.supports_transactions():
            return self.rollup[name]
        return self.rollup.get_collection(name, read_concern=ReadConcern("snapshot"))

    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: PyMongoError) -> DatabaseUnavailable:
        """`exc` as one plain line: unreachable when no answer came at all."""
        kind = DatabaseUnreachable if isinstance(exc, ConnectionFailure) else DatabaseUnavailable
        return kind(plain_error(exc, self.uri))

    def supports_transactions(self) -> bool:
        """Whether the server runs transactions; asks it once, as the topology is unknown
        until the client has talked to it."""
        if self.transactions is None:
            try:
                self.client.admin.command("ping")
                kind = self.client.topology_description.topology_type_name
            except AttributeError:  # mongomock has no topology
                kind = "Unknown"
            except PyMongoError as exc:
                raise self.unavailable(exc) from None
            self.transactions = kind in ("ReplicaSetWithPrimary", "Sharded", "LoadBalanced")
        return self.transactions

    def server_time(self) -> datetime:
        """The database server's clock (naive UTC), which stamps when a read began."""
        try:
            hello = self.client.admin.command("hello")
        except PyMongoError as exc:
            raise self.unavailable(exc) from None
        now = hello.get("localTime")
        if isinstance(now, datetime):
            return now.replace(tzinfo=None)
        return datetime.now(UTC).replace(tzinfo=None)

    def close(self) -> None:
        self.client.close()


def connect(
    settings: Settings,
    uri: str,
    transactions: bool | None = None,
    timeout_ms: int | None = None,
) -> Databases:
    """Open a client on `uri` (no I/O until first use). Given `timeout_ms`, an operation
    not done within it fails, its server selection and a retry included (None: it waits as
    long as the connection stays open)."""
    options: Doc = {} if timeout_ms is None else {"timeoutMS": timeout_ms}
    client: MongoClient[Doc] = MongoClient(
        uri,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
        connectTimeoutMS=settings.server_selection_timeout_ms,
        appname="usage-analytics",
        tz_aware=False,
        **options,
    )
    return Databases(
        client=client,
        source=client[settings.source_db],
        rollup=client[settings.rollup_db_name],
        uri=uri,
        settings=settings,
        transactions=transactions,
    )


@contextlib.contextmanager
def for_requests(dbs: Databases) -> Iterator[Databases]:
    """A client of the same database for the API: an operation that takes longer than
    `api_read_timeout_ms` (a retry included) fails its request (503) rather than holding it.
    The API reads whole results before it answers, so no cursor outlives one request."""
    reading = connect(dbs.settings, dbs.uri, dbs.transactions, dbs.settings.api_read_timeout_ms)
    try:
        yield reading
    finally:
        reading.close()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Longest `$in` list a query sends: a read with more values reads the whole range by an index
# and filters in the client instead. A long list costs the server more than the range does
# (and some servers match `$in` by scanning the list for every document).
LONG_IN = 200

# The embedded server keeps an oplog that nothing here reads. Once it reaches its cap (100,000
# entries by default), every commit also prunes as many old entries as it writes, so each
# transaction of a large backfill (tens of thousands of rows) takes longer, and the more so
# the more has been pruned before (20-30 % to several times, as measured on 20,000-row
# replacements). Entries older than an hour are pruned all the same, so a larger cap costs
# disk only during long runs.
EMBEDDED_OPLOG_ENTRIES = 5_000_000


@contextlib.contextmanager
def embedded_server(data_dir: Path, port: int = 0, cache: str = EMBEDDED_CACHE) -> Iterator[str]:
    """Run the embedded MongoDB-compatible server on loopback; yield its URI."""
    try:
        from secantus import SecantusDBServer
    except ImportError:
        raise DatabaseUnavailable(
            "the embedded server is not installed: pip install 'usage-analytics[embedded]' "
            "or set USAGE_MONGODB_URI"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The storage engine reports a busy directory on fd 2 itself; our one line says it.
        with _quiet_stderr():
            server = SecantusDBServer(
                host="127.0.0.1",
                port=port,
                storage_path=str(data_dir),
                oplog_max_entries=EMBEDDED_OPLOG_ENTRIES,
                cache_size=cache,
            )
        server.start()
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot open the embedded database in {data_dir} ({exc}); if `usage demo` or "
            "another command is using it, set USAGE_MONGODB_URI to the URI that one printed"
        ) from None
    try:
        yield str(server.uri)
    finally:
        server.stop()


@contextlib.contextmanager
def open_databases(settings: Settings) -> Iterator[Databases]:
    """Connect to the configured database, starting the embedded one when so configured."""
    with contextlib.ExitStack() as stack:
        uri = settings.mongodb_uri
        if uri == EMBEDDED:
            server = embedded_server(settings.data_dir, cache=settings.embedded_cache)
            uri = stack.enter_context(server)
        dbs = connect(settings, uri)
        stack.callback(dbs.close)
        yield dbs
