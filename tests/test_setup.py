"""`make test` and `make bench` get what they need themselves, or say at once what to install."""

import shutil
import subprocess
from pathlib import Path

import pytest

BASH = shutil.which("bash") or "/bin/bash"
CHMOD = shutil.which("chmod") or "/bin/chmod"
INSTALL = "apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


def fake_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!{BASH}\n{script}\n")
    path.chmod(0o755)


def need_chromium(repo_root: Path, bin_dir: Path, browser: str) -> subprocess.CompletedProcess[str]:
    """Run the check with nothing on PATH but the fakes in `bin_dir`."""
    return subprocess.run(
        [BASH, str(repo_root / ".ci" / "need-chromium"), browser],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_present_browser_needs_nothing(repo_root: Path, tmp_path: Path) -> None:
    fake_command(tmp_path, "fake-chromium", "exit 0")
    fake_command(tmp_path, "apt-get", f"echo called >> {tmp_path}/apt.log")
    result = need_chromium(repo_root, tmp_path, "fake-chromium")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (tmp_path / "apt.log").exists()


@pytest.mark.parametrize(
    ("user_id", "apt_get"), [("1000", True), ("0", False)], ids=["not root", "no apt-get"]
)
def test_a_missing_browser_that_cannot_be_installed_fails_in_one_line(
    repo_root: Path, tmp_path: Path, user_id: str, apt_get: bool
) -> None:
    fake_command(tmp_path, "id", f"echo {user_id}")
    if apt_get:
        fake_command(tmp_path, "apt-get", f"echo called >> {tmp_path}/apt.log")
    result = need_chromium(repo_root, tmp_path, "no-such-chromium")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert INSTALL in result.stderr
    assert not (tmp_path / "apt.log").exists()


def test_a_missing_browser_is_installed_as_root(repo_root: Path, tmp_path: Path) -> None:
    fake_command(tmp_path, "id", "echo 0")
    log = tmp_path / "apt.log"
    # The fake apt-get records its arguments, and "installs" the browser.
    fake_command(
        tmp_path,
        "apt-get",
        f'echo "$*" >> {log}\n'
        f'if [ "$1" = install ]; then printf "#!{BASH}\\n" > {tmp_path}/fake-chromium; '
        f"{CHMOD} +x {tmp_path}/fake-chromium; fi",
    )
    result = need_chromium(repo_root, tmp_path, "fake-chromium")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "update -q",
        "install -y -q --no-install-recommends chromium fonts-dejavu-core",
    ]


def test_the_metrics_tools_name_what_is_missing_and_the_packages(
    repo_root: Path, tmp_path: Path
) -> None:
    fake_command(tmp_path, "id", "echo 1000")
    fake_command(tmp_path, "prometheus", "exit 0")
    result = subprocess.run(
        [BASH, str(repo_root / ".ci" / "need"), "the metrics tests", "prometheus promtool", "p q"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (
        1,
        "error: the metrics tests need promtool: as root, "
        "apt-get install -y --no-install-recommends p q\n",
    )


def test_make_test_and_make_bench_get_what_they_need(repo_root: Path) -> None:
    makefile = (repo_root / "Makefile").read_text()
    test, bench = makefile.split("\ntest:")[1], makefile.split("\nbench:")[1]
    assert ".ci/need-chromium" in test.split("pytest")[0]
    assert "prometheus prometheus-pushgateway" in test.split("pytest")[0]
    assert ".ci/need" in bench and "wrk" in bench
