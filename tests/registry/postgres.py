"""PostgreSQL for the registry tests: a cluster per session, a fresh database per test (import the fixtures)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-postgres.sh"


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the session (scripts/setup-postgres.sh start), stopped at its end.

    Skipped with the reason when PostgreSQL is not installed here, except in CI (``$CI`` set, as
    .ci/run does), where its absence fails: CI installs it (the README's test command).
    """
    if not in_ci():
        pytest.importorskip("psycopg")  # NOTE: in CI the dev extra installs it; its absence fails there
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    if started.returncode == 3 and not in_ci():
        pytest.skip(f"no PostgreSQL here ({started.stderr.strip()}); `bash scripts/setup-postgres.sh` installs it")
    assert started.returncode == 0, f"setup-postgres.sh start failed: {started.stderr}"
    folder, uri = started.stdout.strip().splitlines()[-1].split(" ", 1)
    try:
        yield uri
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=120, check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry store: an SQLite file, or a new database in the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    import psycopg

    server: str = request.getfixturevalue("postgres_cluster")
    database = f"registry_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    return server.rsplit("/", 1)[0] + "/" + database
