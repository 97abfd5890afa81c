"""Optuna RDB storage: a SQLite file by default, PostgreSQL when many machines share studies.

Heartbeats are on, so a trial whose process was killed outright is failed by the next worker instead of
staying RUNNING forever. URLs are shown with their password hidden.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from tuner.errors import StorageError

DEFAULT_STORAGE = "sqlite:///studies/tuner.db"
STORAGE_VARIABLE = "TUNER_STORAGE"  # as Optuna's CLI reads OPTUNA_STORAGE


def default_storage() -> str:
    """``$TUNER_STORAGE`` where set, else the SQLite file under studies/."""
    return os.environ.get(STORAGE_VARIABLE) or DEFAULT_STORAGE


HEARTBEAT_S = 10
GRACE_S = 60
CREATE_ATTEMPTS = 5


SECRET_KEYS = {"password", "passwd", "pwd", "pass", "sslpassword", "secret", "token", "access_token"}


def redact(url: str) -> str:
    """The URL with any password replaced by ***, in the user part and in the query
    (``?password=...``), for messages, metadata and the report; an unparseable URL is never echoed."""
    try:
        parsed = make_url(url)
        query = {k: ("***" if k.lower() in SECRET_KEYS else v) for k, v in parsed.query.items()}
        return str(parsed.set(query=query).render_as_string(hide_password=True))
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        return "<unparseable storage URL>"


def sqlite_missing(url: str) -> str | None:
    """The file of a SQLite storage URL that does not exist yet, or None (it exists, or it is not SQLite)."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return None if Path(parsed.database).exists() else str(parsed.database)
    return None


def remove_if_empty(storage: optuna.storages.RDBStorage, database: str) -> bool:
    """Delete ``database``, the SQLite file this command made for ``storage``, where it holds no study (an
    import that refused everything, or was stopped before its first study); True if it did."""
    try:
        if storage.get_all_studies():
            return False
        storage.engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, OSError):
        return False  # unreadable now: left for the user, never deleted blind
    for path in (database, database + "-journal", database + "-wal", database + "-shm"):
        Path(path).unlink(missing_ok=True)
    return True


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """Open the storage at ``url`` (a missing SQLite file is made only if ``create``); errors are one line."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(f"the storage URL is not a database URL (e.g. {DEFAULT_STORAGE})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Every study, trial and record would be gone when the command ends, and no other worker sees them.
        raise StorageError(
            f"storage {redact(url)} is in memory and keeps nothing: name a file (e.g. {DEFAULT_STORAGE})"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database is not None:
        folder = Path(parsed.database).parent
        if not create and not Path(parsed.database).exists():
            raise StorageError(f"no storage at {redact(url)}: {parsed.database} does not exist")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create folder {folder} for storage {redact(url)}: {error.strerror}") from None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we need here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    engine_kwargs=_engine_kwargs(parsed.get_backend_name()),
                )
            if create and parsed.get_backend_name() == "sqlite" and parsed.database is not None:
                _check_sqlite_writable(parsed.database, url)
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            # Two processes creating the same fresh database race on its tables ("already exists") or its
            # version row: the loser retries. Any other operational error is a real one.
            if isinstance(error, sqlalchemy.exc.OperationalError) and "already exists" not in str(error):
                reason = storage_cause(error)
                raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None
            if attempt == CREATE_ATTEMPTS - 1:
                raise StorageError(f"cannot open storage {redact(url)}: another process keeps creating it") from None
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError) as error:
            reason = storage_cause(error)
            raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None
    raise AssertionError("unreachable")


def _check_sqlite_writable(database: str, url: str) -> None:
    """Refuse a SQLite file this process can read but not write (a read-only or immutable file or folder;
    root passes every permission check, so only a write tells) before anything is measured into it: a
    table made and rolled back. Another writer's lock only delays this (30 s), and is no refusal."""
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=30, isolation_level=None)) as connection:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE tuner_write_check (x)")
            connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise StorageError(f"cannot write storage {redact(url)}: {error} (nothing would be kept)") from None


# What the database's own message says, mapped to what the user can do about it.
_CAUSES = (
    ("disk is full", "the disk is full"),
    ("no space left", "the disk is full"),
    ("readonly database", "the storage is read-only"),
    ("read-only", "the storage is read-only"),
    ("not a database", "the file is not a database (corrupted, or not a tuner storage)"),
    ("malformed", "the database file is corrupted"),
    ("unable to open database", "the database file cannot be opened"),
    ("could not connect", "the database server cannot be reached"),
    ("connection refused", "the database server cannot be reached"),
    ("password authentication failed", "the database refused the user or password"),
)


def storage_cause(error: BaseException) -> str:
    """The real reason behind a storage failure, from the innermost database error in the chain (Optuna
    wraps a full disk, a read-only file and a corrupted one alike as 'invalid data in the commit')."""
    seen: BaseException | None = error
    innermost = error
    while seen is not None:
        innermost = getattr(seen, "orig", None) or seen
        seen = seen.__cause__ or seen.__context__
    text = (str(innermost).strip().splitlines() or [""])[0]
    lowered = text.lower()
    plain = next((cause for sign, cause in _CAUSES if sign in lowered), None)
    return f"{plain} ({text})" if plain else text


def _engine_kwargs(backend: str) -> dict[str, object]:
    if backend == "sqlite":
        return {"connect_args": {"timeout": 30}}
    if backend == "postgresql":
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}
