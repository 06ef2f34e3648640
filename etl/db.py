"""Connections: the MongoDB client, the embedded server, and the collections the project uses."""

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import make_read_preference, read_pref_mode_from_name
from pymongo.write_concern import WriteConcern

from etl.settings import EMBEDDED, Settings

Doc = dict[str, Any]
REQUESTS = "requests"
USAGE_DAILY = "usage_daily"
USAGE_MONTHLY = "usage_monthly"


class DatabaseUnavailable(Exception):
    """The database could not be reached; the message is one plain line."""


def mask_uri(uri: str) -> str:
    """Hide the password in a MongoDB URI."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@]*@", r"\1:***@", uri)


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

    def requests(self) -> Collection[Doc]:
        mode = read_pref_mode_from_name(self.settings.read_preference)
        return self.source.get_collection(
            REQUESTS, read_preference=make_read_preference(mode, None)
        )

    def usage_daily(self) -> Collection[Doc]:
        return self.rollup.get_collection(USAGE_DAILY, write_concern=WriteConcern("majority"))

    def usage_monthly(self) -> Collection[Doc]:
        return self.rollup.get_collection(USAGE_MONTHLY, write_concern=WriteConcern("majority"))

    def reader(self, name: str) -> Collection[Doc]:
        """A rollup collection for readers: one snapshot per query, never a half-replaced day."""
        if not self.supports_transactions():
            return self.rollup[name]
        return self.rollup.get_collection(name, read_concern=ReadConcern("snapshot"))

    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise DatabaseUnavailable(plain_error(exc, self.uri)) from None

    def supports_transactions(self) -> bool:
        try:
            kind = self.client.topology_description.topology_type_name
        except AttributeError:  # mongomock has no topology
            return False
        return kind in ("ReplicaSetWithPrimary", "Sharded", "LoadBalanced")

    def close(self) -> None:
        self.client.close()


def connect(settings: Settings, uri: str) -> Databases:
    """Open a client on `uri` (no I/O until first use)."""
    client: MongoClient[Doc] = MongoClient(
        uri,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
        connectTimeoutMS=settings.server_selection_timeout_ms,
        appname="usage-analytics",
        tz_aware=False,
    )
    return Databases(
        client=client,
        source=client[settings.source_db],
        rollup=client[settings.rollup_db_name],
        uri=uri,
        settings=settings,
    )


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


@contextlib.contextmanager
def embedded_server(data_dir: Path, port: int = 0) -> Iterator[str]:
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
            server = SecantusDBServer(host="127.0.0.1", port=port, storage_path=str(data_dir))
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
            uri = stack.enter_context(embedded_server(settings.data_dir))
        dbs = connect(settings, uri)
        stack.callback(dbs.close)
        yield dbs
