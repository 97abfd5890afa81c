"""Storage URLs never show a password, and a broken storage is named for what it is."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from tests.helpers import one_error_line
from tuner.cli import main
from tuner.errors import StorageError
from tuner.storage import open_storage, redact, storage_cause


def test_passwords_are_masked_in_the_user_part_and_the_query() -> None:
    # The password is hidden wherever it is given, user part or query string, and nothing else changes.
    shown = redact("postgresql://tuner:hunter2@db.example/studies?password=hunter2&sslmode=require")
    assert "hunter2" not in shown and "sslmode=require" in shown and "db.example/studies" in shown


def test_a_malformed_url_is_never_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    # A URL that cannot be parsed may still hold a secret: the error names the problem, not the text.
    with pytest.raises(StorageError) as refused:
        open_storage("postgres ql://u:hunter2@h/db")
    assert "hunter2" not in str(refused.value) and "not a database URL" in str(refused.value)
    assert redact("::hunter2::") == "<unparseable storage URL>"


def test_a_file_that_is_not_a_database_is_named_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    assert main(["show", "--storage", f"sqlite:///{bad}"]) == 1
    # One line with the real cause, not Optuna's "invalid data in the commit".
    line = one_error_line(capsys.readouterr().err)
    assert "not a database" in line and "invalid data" not in line
    # And the file is left as it was.
    assert bad.read_bytes() == b"this is not sqlite" * 100


@pytest.mark.parametrize(
    ("database_says", "cause"),
    [
        ("attempt to write a readonly database", "the storage is read-only"),
        ("database or disk is full", "the disk is full"),
        ("file is not a database", "the file is not a database"),
    ],
)
def test_optunas_commit_error_is_traced_to_its_cause(database_says: str, cause: str) -> None:
    # Optuna wraps every failed commit as "invalid data in the commit"; the real reason is deeper in the chain.
    inner = sqlite3.OperationalError(database_says)
    wrapped = sqlalchemy.exc.OperationalError("INSERT ...", {}, inner)
    try:
        try:
            raise wrapped
        except sqlalchemy.exc.OperationalError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from error
    except optuna.exceptions.StorageInternalError as outer:
        assert storage_cause(outer).startswith(cause) and database_says in storage_cause(outer)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_storage_in_memory_is_refused_before_anything_is_measured(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing measured into it would outlive the command: one line naming a file instead, exit 1.
    assert main(["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    assert "is in memory and keeps nothing" in err and "\n" not in err


def test_a_storage_that_can_be_read_but_not_written_is_refused_before_anything_is_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    open_storage(f"sqlite:///{db}")  # made, with its tables
    db.chmod(0o444)  # read-only for a user; root passes permission checks, so an immutable file for root
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode == 0
    if os.geteuid() == 0 and not immutable:
        pytest.skip("root here, and chattr +i does not work on this file system: the file stays writable")
    try:
        before = db.read_bytes()
        # Readers still open it; a command that would store (tune, run, benchmark) is refused in one line,
        # before any probe: its measurements would be lost at the first write.
        open_storage(f"sqlite:///{db}", create=False)
        argv = ["tune", "--model", "tiny", "--cores", "1", "--mode", "infer", "--storage", f"sqlite:///{db}"]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "cannot write storage" in err and "readonly" in err and "\n" not in err
        assert db.read_bytes() == before
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)], check=True)
