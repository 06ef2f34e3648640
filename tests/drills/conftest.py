"""Drill fixtures: a database server in its own process that a drill may stop and restart."""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.db import EMBEDDED_OPLOG_ENTRIES, connect
from etl.settings import EMBEDDED_CACHE, Settings
from tests.conftest import free_port


class ServerProcess:
    """secantusd-py on a fixed port and storage, so a restart comes back at the same URI."""

    def __init__(self, storage: Path, cache: str = EMBEDDED_CACHE) -> None:
        self.storage = storage
        self.cache = cache
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("secantusd-py", path=str(Path(sys.executable).parent))
        assert exe, "secantusd-py is not installed"
        self.proc = subprocess.Popen(
            [
                exe,
                *("--port", str(self.port), "--storage-path", str(self.storage)),
                *("--oplog-max-entries", str(EMBEDDED_OPLOG_ENTRIES)),
                *("--cache-size", self.cache),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        probe = connect(
            Settings(_env_file=None, mongodb_uri=self.uri, server_selection_timeout_ms=500),  # type: ignore[call-arg]
            self.uri,
        )
        try:
            while True:
                try:
                    probe.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def db_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "db")
    server.start()
    yield server
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "drills" in str(item.path):
            item.add_marker(pytest.mark.drill)
