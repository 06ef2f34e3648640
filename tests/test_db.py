"""Connecting: secrets of MongoDB URIs never reach output; the embedded server gets its settings."""

from pathlib import Path
from typing import Any

import pytest

from etl.db import DatabaseUnreachable, connect, mask_uri, open_databases
from etl.settings import Settings


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "mongodb://ops:s3cret@db1:27017,db2:27017/tiledesk?replicaSet=rs0",
            "mongodb://ops:***@db1:27017,db2:27017/tiledesk?replicaSet=rs0",
        ),
        (
            "mongodb+srv://ops:p%40ss@cluster0.example.net/?retryWrites=true&w=majority",
            "mongodb+srv://ops:***@cluster0.example.net/?retryWrites=true&w=majority",
        ),
        (
            "mongodb://ops:pa/ss?w@rd@db:27017/tiledesk",
            "mongodb://ops:***@db:27017/tiledesk",
        ),
        (
            "mongodb://db/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:FQoGZXIvYXdzEJr",
            "mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***",
        ),
        (
            "mongodb://db/?authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN%3Aabc",
            "mongodb://db/?authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***",
        ),
        (
            "mongodb://db/?tls=true&tlsCertificateKeyFile=/etc/c.pem"
            "&tlsCertificateKeyFilePassword=hunter2",
            "mongodb://db/?tls=true&tlsCertificateKeyFile=/etc/c.pem"
            "&tlsCertificateKeyFilePassword=***",
        ),
        ("mongodb://db/?password=hunter2", "mongodb://db/?password=***"),
        (
            "mongodb://db/?authSource=admin&apiKey=abc&x_secret=def&sslClientCertificateKeyPassword=g",
            "mongodb://db/?authSource=admin&apiKey=***&x_secret=***"
            "&sslClientCertificateKeyPassword=***",
        ),
        ("mongodb://ops@db/tiledesk", "mongodb://ops@db/tiledesk"),
        (
            "mongodb://db:27017/?appname=usage:analytics",
            "mongodb://db:27017/?appname=usage:analytics",
        ),
        (
            "cannot reach MongoDB at mongodb://a:b@db/?password=c (timed out)",
            "cannot reach MongoDB at mongodb://a:***@db/?password=*** (timed out)",
        ),
        ("embedded", "embedded"),
    ],
)
def test_uri_secrets_are_masked(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown


def test_the_embedded_server_gets_the_cache_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import secantus

    started: list[dict[str, Any]] = []

    class Recording(secantus.SecantusDBServer):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            started.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(secantus, "SecantusDBServer", Recording)
    settings = Settings(_env_file=None, data_dir=tmp_path, embedded_cache="256M")  # type: ignore[call-arg]
    with open_databases(settings) as dbs:
        dbs.ping()
    assert [kwargs["cache_size"] for kwargs in started] == ["256M"]


def test_every_look_at_a_database_that_does_not_answer_says_it_is_unreachable(
    dead_uri: str,
) -> None:
    """The API tells an outage (probed, failed fast) from a refusal by this class alone."""
    settings = Settings(_env_file=None, server_selection_timeout_ms=200)  # type: ignore[call-arg]
    down = connect(settings, dead_uri)
    try:
        for look in (down.ping, down.supports_transactions, down.server_time):
            with pytest.raises(DatabaseUnreachable, match="cannot reach MongoDB at"):
                look()
    finally:
        down.close()
