"""Fixtures: one embedded server per session, a fresh pair of databases per test."""

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etl.db import Databases, connect, embedded_server
from etl.settings import Settings

pytest_plugins = ["tests.live"]


@pytest.fixture(autouse=True)
def isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Keep the caller's USAGE_* variables and any .env file out of every test.

    Settings read `.env` from the working directory, so tests and the commands they start
    run in an empty one.
    """
    for name in list(os.environ):
        if name.startswith("USAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_server(tmp_path_factory.mktemp("secantus")) as uri:
        yield uri


def make_settings(uri: str, **overrides: object) -> Settings:
    name = "t" + uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "mongodb_uri": uri,
        "source_db": f"{name}_src",
        "rollup_db": f"{name}_usage",
        "lock_wait_seconds": 0,
        "cache_check_seconds": 0,
        "server_selection_timeout_ms": 3000,
    }
    values.update(overrides)
    # pydantic takes `_env_file` and typed values from a dict; mypy sees neither.
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


@pytest.fixture
def make_dbs(server_uri: str) -> Iterator[Callable[..., Databases]]:
    """Open fresh databases with settings overrides; dropped and closed after the test."""
    opened: list[Databases] = []

    def make(**overrides: object) -> Databases:
        settings = make_settings(server_uri, **overrides)
        opened.append(connect(settings, settings.mongodb_uri))
        return opened[-1]

    yield make
    for databases in opened:
        databases.client.drop_database(databases.settings.source_db)
        databases.client.drop_database(databases.settings.rollup_db_name)
        databases.close()


@pytest.fixture
def dbs(make_dbs: Callable[..., Databases]) -> Databases:
    return make_dbs()


@pytest.fixture
def settings(dbs: Databases) -> Settings:
    return dbs.settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_uri() -> str:
    """A URI on which nothing listens."""
    return f"mongodb://127.0.0.1:{free_port()}/"


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "server_uri" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
