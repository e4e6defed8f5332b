"""Optuna storage from a URL, and a subnet -> accuracy cache kept in that same storage, so every worker, run,
device and flow that shares the storage shares the evaluations (accuracy does not depend on the device)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

import optuna

from ..errors import UserError


def storage_file(url: str) -> Path | None:
    """The local file a storage URL writes (SQLite, journal), None for a server; a malformed URL is refused."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if "://" not in url:
        raise UserError(f"--storage {url!r}: give an RDB URL (sqlite:///studies.db, postgresql://...) or journal:PATH")
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_storage(url: str):
    """'sqlite:///x.db', 'postgresql://user@host/db' (any SQLAlchemy RDB URL) or 'journal:PATH' (Optuna's
    append-only journal file, safe for several processes on one machine)."""
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    engine = {"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}}
    with storage_errors(url):
        for attempt in range(5):
            try:
                # A worker on another machine that dies leaves its trial RUNNING: the heartbeat fails it after the
                # grace period and the callback queues its parameters again (same-machine workers are recovered
                # in place at once, see study.recover_stale_trials).
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=120,
                                                  heartbeat_stale_trial_callback=retry)
            except ImportError as exc:
                raise UserError(f"--storage {url}: the database driver is not installed (for PostgreSQL: "
                                "pip install 'psycopg[binary]')") from exc
            except Exception as exc:   # two workers creating the schema of a new database at once: retry
                if "IntegrityError" not in type(exc).__name__ and "OperationalError" not in type(exc).__name__ \
                        or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Database trouble (locked, corrupt, unreachable) becomes one line naming the storage."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # sqlalchemy / optuna errors have long multi-line messages
        module = type(exc).__module__
        if not module.startswith(("sqlalchemy", "optuna", "sqlite3", "psycopg")):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"study storage {url} is unusable ({type(exc).__name__}: {first}); check the URL, that "
                        "the database is reachable and not locked, or use another --storage") from exc


class AccuracyCache:
    """Accuracy-proxy values by subnet key, stored as trials of one dedicated study in the shared storage."""

    def __init__(self, storage, name: str) -> None:
        self.study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
        self.values: dict[str, float] = {}
        self.evaluations = 0                     # evaluations this process ran (cache misses)
        self.refresh()

    def refresh(self) -> None:
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            self.values.setdefault(trial.user_attrs["key"], trial.value)

    def get(self, key: str, compute: Callable[[], float]) -> float:
        """The cached value, else compute it once and store it for every other search."""
        if key not in self.values:
            self.refresh()                       # another worker may have evaluated it meanwhile
        if key not in self.values:
            value = float(compute())
            self.evaluations += 1
            self.study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"key": key}))
            self.values[key] = value
        return self.values[key]
