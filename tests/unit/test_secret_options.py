"""Server secrets never on the command line: URL passwords refused in argv, 0600 URL files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasklift.cli.secret_options import read_secret_file, refuse_secrets_in_argv
from tasklift.errors import ConfigError


def test_a_url_password_on_the_command_line_is_refused_without_showing_it() -> None:
    url = "postgresql+psycopg://tasklift:s3cr%40t@db/tasklift"
    with pytest.raises(ConfigError) as caught:
        refuse_secrets_in_argv(["tasklift", "server", "--db", url], db=url)
    assert "/proc/PID/cmdline" in str(caught.value) and "--db-url-file" in str(caught.value)
    assert "s3cr" not in str(caught.value)
    refuse_secrets_in_argv(["tasklift", "server"], db=url)  # from the environment: fine
    refuse_secrets_in_argv(["tasklift", "--db", "sqlite:///x.db"], db="sqlite:///x.db")


def test_url_files_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "db-url"
    path.write_text("postgresql+psycopg://u:pw@db/x\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_secret_file(str(path), "database URL")
    os.chmod(path, 0o600)
    assert read_secret_file(str(path), "database URL") == "postgresql+psycopg://u:pw@db/x"
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(str(tmp_path / "missing"), "database URL")


def test_the_server_command_refuses_a_password_on_its_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, TASKLIFT_HOME=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasklift.cli",
            "server",
            "--db",
            "postgresql+psycopg://tasklift:hunter2pw@127.0.0.1:1/none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "/proc/PID/cmdline" in proc.stderr and "hunter2pw" not in proc.stderr + proc.stdout
