"""Secrets of MongoDB URIs never reach output: passwords and secret-looking options."""

import pytest

from etl.db import mask_uri


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
