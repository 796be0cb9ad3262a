"""Asset values between steps: Parquet for tables, JSON for plain values, written atomically.

`AssetValueIOManager` is a dagster `UPathIOManager`, so one class serves a local folder and an
object store (``s3://bucket/prefix`` through universal_pathlib and s3fs). The format follows the
value, and the file name says which one it is:

- a pandas DataFrame: ``<asset key>/<partition>.parquet`` (pyarrow; dtypes, index and
  categoricals round-trip);
- a value that JSON holds exactly (dicts, lists, strings, numbers, booleans, None; numpy scalars
  become Python numbers): ``<partition>.json``;
- anything else (and a DataFrame that Parquet cannot hold, e.g. a column of ints and strings
  mixed): ``<partition>.pickle``, with a warning in the step's log.

An input whose metadata names `columns` (``AssetIn(metadata={"columns": [...]})``) loads a
table with those columns only; from Parquet only they are read. An input typed `ArrowTable`
(mlops_assets/frames.py) gets a pyarrow Table. Within one process and one run (the in-process
executor of `make demo`), the first step to load a DataFrame that an earlier step stored gets
that stored object itself instead of reading the file back (the file is written all the same).

Writes are atomic and per run: a local file is written as ``<file>.<run_id>.tmp`` beside its
final name and moved over it with one rename (os.replace); an object store gets one PUT (or one
multipart upload, which S3 also publishes at once). A reader therefore sees the previous value or
the new one, never half of one, even when two runs (two CLIs, or the daemon's concurrent runs)
write and read the same partition at the same time. After a write, the files of the other formats
under the same name are removed, so that a value never comes back from an older format.

Values stored by earlier versions of the suite (dagster's FilesystemIOManager and
S3PickleIOManager: a pickle at ``<asset key>/<partition>`` with no extension) still load: a name
with none of the three files falls back to that legacy pickle, and the next write of that
partition replaces it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import uuid
from typing import TYPE_CHECKING, Any

from dagster import (
    ConfigurableIOManagerFactory,
    InitResourceContext,
    InputContext,
    MetadataValue,
    OutputContext,
    UPathIOManager,
)
from pydantic import Field

if TYPE_CHECKING:
    from upath import UPath

PARQUET, JSON, PICKLE = ".parquet", ".json", ".pickle"
# The Dagster type name of an input to be loaded as a pyarrow Table (mlops_assets/frames.py).
ARROW_TABLE_TYPE = "ArrowTable"
# Read in this order; the legacy pickle (no extension) comes after all of them.
FORMATS = (PARQUET, JSON, PICKLE)


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def _plain(value: Any) -> Any:
    """json.dumps `default`: numpy scalars as Python numbers; anything else is refused."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _same(a: Any, b: Any) -> bool:
    """Equality of a value and its JSON round trip (NaN equals NaN; a tuple is not a list)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, tuple | set | frozenset | bytes):
        return False
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def as_json(obj: Any) -> str | None:
    """`obj` as JSON text when JSON gives the same value back, else None."""
    try:
        text = json.dumps(obj, default=_plain, allow_nan=True)
    except (TypeError, ValueError):
        return None
    return text if _same(obj, json.loads(text)) else None


def sibling(path: UPath, suffix: str) -> UPath:
    """`path` with `suffix` appended to its name (partition keys may hold dots of their own)."""
    return path.with_name(path.name + suffix)


class AssetValueIOManager(UPathIOManager):
    """Parquet / JSON / (last resort) pickle under `base_path`, atomic per run; see the module
    docstring. `base_path` is a local folder or an object-store URL as a UPath."""

    extension = None  # the format decides the suffix: see dump_to_path

    def __init__(self, base_path: UPath) -> None:
        super().__init__(base_path=base_path)
        self._written: dict[tuple[str, str], UPath] = {}
        # path -> (run id, DataFrame) written by this run and not loaded since: see load_from_path
        self._handoff: dict[str, tuple[str, Any]] = {}

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        """Partition keys never climb out of the asset's folder (`..` segments escaped)."""
        from dagster._core.storage.upath_io_manager import (
            escape_dotdot_segments,
            escape_leading_slash,
        )

        return base_path / escape_dotdot_segments(escape_leading_slash(partition))

    def make_directory(self, path: UPath) -> None:
        """Local folders are created; an object store has no folders to make."""
        if _is_local(path):
            path.mkdir(parents=True, exist_ok=True)

    def path_exists(self, path: UPath) -> bool:
        """A value exists under `path` in any format, the legacy pickle included."""
        return any(p.exists() for p in (*(sibling(path, s) for s in FORMATS), path))

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        """Write `obj` under `path` in the format its type allows (see the module docstring)."""
        import pandas as pd

        run_id = _run_id(context)
        target: UPath | None = None
        if isinstance(obj, pd.DataFrame):
            target = sibling(path, PARQUET)
            try:
                # no column statistics: a value is always read whole, and min/max of text
                # columns cost a quarter of the write (0.12 s of a 1,000,000-row day)
                self._atomic_write(
                    target, run_id, lambda f: obj.to_parquet(f, write_statistics=False)
                )
            except (ValueError, TypeError, NotImplementedError) as error:  # pyarrow's refusals
                context.log.warning(
                    f"{context.asset_key.to_user_string() if context.has_asset_key else 'output'}"
                    f": Parquet cannot hold this table ({error}); stored as a pickle instead"
                )
                target = None
        else:
            text = as_json(obj)
            if text is not None:
                target = sibling(path, JSON)
                data = text.encode("utf-8")
                self._atomic_write(target, run_id, lambda f: f.write(data))
        if target is None:
            target = sibling(path, PICKLE)
            self._atomic_write(target, run_id, lambda f: pickle.dump(obj, f, protocol=5))
        self._remove_other_formats(path, keep=target)
        self._written[(context.step_key, context.name)] = target
        if target.name.endswith(PARQUET):
            self._handoff[str(path)] = (run_id, obj)

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        """The value under `path`: Parquet, JSON, pickle, then the legacy pickle of earlier
        versions. Each file is opened directly (no exists-then-open race with a writer that
        removes an older format). With input metadata `columns`, a table is loaded with those
        columns only (from Parquet, only they are read). An input of Dagster type
        ARROW_TABLE_TYPE gets the table as a pyarrow Table, read without pandas.

        A DataFrame this IO manager stored in the same run (steps executed in one process) is
        handed over to the first step that loads it instead of being read back (0.35 s for a
        1,000,000-row day). Any load of that value drops it, so a frame is held no longer than
        until its first reader (one that no step of the run loads goes with the IO manager,
        which lives for one run)."""
        import pandas as pd
        import pyarrow as pa

        columns = context.definition_metadata.get("columns")
        arrow = context.dagster_type.key == ARROW_TABLE_TYPE
        written = self._handoff.pop(str(path), None)  # held until the first load, at most
        if written is not None and written[0] == _loading_run_id(context) and not arrow:
            value = written[1]  # the frame this run stored: handed over, not read back
        else:
            value = self._load(context, path, columns, arrow)
        if isinstance(value, pd.DataFrame) and arrow:
            value = pa.Table.from_pandas(value, preserve_index=False)
        if columns is None:
            return value
        if isinstance(value, pa.Table):
            return value.select(columns)
        if not isinstance(value, pd.DataFrame):
            raise TypeError(f"{path}: input metadata `columns` asks for a table, not a value")
        return value[columns]

    def _load(
        self, context: InputContext, path: UPath, columns: list[str] | None, arrow: bool
    ) -> Any:
        import pandas as pd
        import pyarrow.parquet as pq

        def parquet(source: Any) -> Any:
            if arrow:
                return pq.read_table(source, columns=columns)
            return pd.read_parquet(source, columns=columns)

        for suffix in FORMATS:
            candidate = sibling(path, suffix)
            try:
                if suffix == PARQUET and _is_local(candidate):
                    # pyarrow's own file reader: a third faster than through a Python file
                    return parquet(os.fspath(candidate.path))
                with candidate.open("rb") as handle:
                    if suffix == PARQUET:
                        return parquet(handle)
                    if suffix == JSON:
                        return json.loads(handle.read().decode("utf-8"))
                    return pickle.load(handle)
            except FileNotFoundError:
                continue
        try:
            with path.open("rb") as handle:
                value = pickle.load(handle)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(
                f"no stored value at {path} (.parquet, .json, .pickle or a legacy pickle); "
                "materialize the upstream asset for this partition first"
            ) from None
        context.log.info(f"loaded {path}: a pickle written by an earlier version of the suite")
        return value

    def get_metadata(self, context: OutputContext, obj: Any) -> dict[str, MetadataValue]:
        """The path of the file actually written (with its format's suffix)."""
        written = self._written.pop((context.step_key, context.name), None)
        return {"path": MetadataValue.path(str(written))} if written is not None else {}

    def _atomic_write(self, target: UPath, run_id: str, write: Any) -> None:
        """Run `write(binary file)` so that `target` appears whole or not at all."""
        if not _is_local(target):
            # Serialized in memory first: a file object of s3fs uploads what it holds when it
            # is closed, even after an error, so a failed write would publish part of a value.
            buffer = io.BytesIO()
            write(buffer)
            target.write_bytes(buffer.getvalue())  # one PUT (or multipart upload): atomic in S3
            return
        final = os.fspath(target.path)
        tmp = f"{final}.{run_id}.tmp"
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def _remove_other_formats(self, path: UPath, keep: UPath) -> None:
        """Delete the value's files in the other formats (and the legacy pickle), if any."""
        for other in (*(sibling(path, s) for s in FORMATS), path):
            if other == keep or (_is_local(other) and not other.is_file()):
                continue
            try:
                other.unlink()
            except FileNotFoundError:
                pass


def _run_id(context: OutputContext) -> str:
    try:
        return context.run_id
    except Exception:  # a context built outside a run (tests, direct invocation)
        return f"norun-{uuid.uuid4().hex}"


def _loading_run_id(context: InputContext) -> str | None:
    """The run of the step loading an input (None outside a run)."""
    try:
        return context.step_context.run_id
    except Exception:  # an InputContext built without a step (tests, direct invocation)
        return None


def storage_path(base_path: str) -> UPath:
    """`base_path` (a folder or an object-store URL) as a UPath; for S3, the endpoint and region
    come from AWS_ENDPOINT_URL / AWS_DEFAULT_REGION, credentials from the default AWS chain
    (environment variables, a profile or an IAM role): nothing secret is configured here."""
    from upath import UPath

    if not base_path.startswith("s3://"):
        return UPath(base_path)
    client_kwargs = {
        name: os.environ[env]
        for name, env in (
            ("endpoint_url", "AWS_ENDPOINT_URL"),
            ("region_name", "AWS_DEFAULT_REGION"),
        )
        if os.environ.get(env)
    }
    return UPath(base_path, client_kwargs=client_kwargs) if client_kwargs else UPath(base_path)


class AssetIOManager(ConfigurableIOManagerFactory):
    """The suite's IO manager resource: asset values under `base_path` as Parquet (tables) or
    JSON, atomically per run (mlops_resources/io_manager.py).

    >>> from mlops_resources.io_manager import AssetIOManager
    >>> AssetIOManager(base_path="s3://team-bucket/dagster").base_path
    's3://team-bucket/dagster'
    """

    base_path: str = Field(
        default="",
        description="Folder or s3://bucket/prefix for asset values; default $MLOPS_HOME/storage.",
    )

    def create_io_manager(self, context: InitResourceContext) -> AssetValueIOManager:
        from mlops_resources.storage import expand_home, mlops_home

        base = expand_home(self.base_path) if self.base_path else str(mlops_home() / "storage")
        return AssetValueIOManager(storage_path(base))
