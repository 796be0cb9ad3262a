"""Moving MLOPS_HOME: MLflow records absolute artifact locations in its tracking database, so a
home copied or restored elsewhere would keep writing into (and reading from) the old folder.
The suite detects the move when it opens the embedded store and refuses to run, saying what
to do; `python -m mlops_assets relocate` rewrites the recorded locations to the new home.

    from mlops_resources.relocation import relocate_home

    relocate_home(Path("/restored/.mlops_home"))   # -> {"from": "/old/.mlops_home", ...}
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Columns of MLflow's tracking database that hold absolute artifact locations.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)
ARTIFACTS = Path("mlflow") / "artifacts"


class HomeMoved(RuntimeError):
    """MLOPS_HOME is not where MLflow's embedded store recorded it."""


def recorded_home(database: Path) -> Path | None:
    """The MLOPS_HOME the embedded store's experiments were created in, or None (no store, no
    experiment, or artifacts outside any MLOPS_HOME layout)."""
    if not database.is_file():
        return None
    with sqlite3.connect(database) as db:
        try:
            rows = db.execute("SELECT artifact_location FROM experiments").fetchall()
        except sqlite3.DatabaseError:
            return None  # a fresh or foreign database: nothing to compare
    for (location,) in rows:
        path = file_path(location or "")
        if path is not None and path.parts[-2:] == ARTIFACTS.parts:
            return path.parent.parent
    return None


def file_path(location: str) -> Path | None:
    """The local path of a file:// URI or plain path; None for other schemes."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" and location.startswith("/"):
        return Path(location)
    return None


def check_home(home: Path) -> None:
    """Raise HomeMoved when the embedded store under `home` was recorded elsewhere."""
    database = home / "mlflow" / "mlflow.db"
    old = recorded_home(database)
    if old is not None and old != home:
        raise HomeMoved(
            f"MLOPS_HOME is {home}, but its MLflow store {database} records artifacts under "
            f"{old}: the home was moved or restored elsewhere. Run `python -m mlops_assets "
            f"relocate` to point the records at {home}, or set MLOPS_HOME={old}."
        )


def relocate_home(home: Path) -> dict[str, object]:
    """Rewrite the artifact locations recorded under the old home to `home`; returns what
    changed. Idempotent: a home already in place changes nothing."""
    database = home / "mlflow" / "mlflow.db"
    old = recorded_home(database)
    if old is None or old == home:
        return {"from": str(old or home), "to": str(home), "rewritten": 0}
    rewritten = 0
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            for before, after in ((old.as_uri(), home.as_uri()), (str(old), str(home))):
                cursor = db.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE "{column}" = ? OR "{column}" LIKE ? ESCAPE "\\"',
                    (after, len(before) + 1, before, like_prefix(before + "/")),
                )
                rewritten += cursor.rowcount
    return {"from": str(old), "to": str(home), "rewritten": rewritten}


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with `prefix` literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"
