"""Spark: the session the `spark` engine runs its data plane on (docs/deployment.md).

A thin ConfigurableResource, in the manner of dagster-duckdb's: every field is described and
`session()` hands out a SparkSession. Where Spark runs is configuration only: the default
master `local[2]` runs in this process's JVM (Java 17), bound to 127.0.0.1 with the web UI off;
a cluster master (`spark://...`, `k8s://https://...`, `yarn`) and its settings go in `master`
and `conf`. pyspark is imported on first use, so this module loads without it (pyspark is in
the `integration` extra only).

    spark = SparkResource()                    # local[2], loopback only, no UI
    with spark.session_scope() as session:     # started here, stopped on exit
        session.read.parquet(path).count()
"""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InitResourceContext,
    InputContext,
    MetadataValue,
    OutputContext,
)
from pydantic import Field, PrivateAttr

from mlops_resources.storage import mlops_home

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

# Resource keys: the SparkResource and the IO manager of the spark engine's asset values.
SPARK_RESOURCE = "spark"
SPARK_IO_MANAGER = "spark_io_manager"
# A YAML file of SparkResource fields for every code location process (docs/deployment.md).
SPARK_CONFIG_ENV = "MLOPS_SPARK_CONFIG"
LOOPBACK = "127.0.0.1"
# Ports the local driver may listen on: below the usual ephemeral range (32768-60999), so they
# never collide with the outgoing connections the OS hands out.
LOCAL_PORT_RANGE = (20000, 32000)
# Settings every session gets unless `conf` says otherwise: UTC (the suite's partitions are UTC
# days), Arrow for pandas conversion (mapInPandas, toPandas of samples), few shuffle partitions
# for one machine (a cluster config raises it), no console progress bars.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.ui.showConsoleProgress": "false",
    # pandas writes Parquet timestamps in nanoseconds, which Spark refuses to read as timestamps;
    # read them as epoch nanoseconds (the spark engine turns them into timestamps, as pandas does)
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    # what Spark writes, pandas reads as UTC timestamps (INT96 would read as naive times)
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


class SparkUnavailable(RuntimeError):
    """pyspark (the `integration` extra) or Java is missing: the spark engine cannot run."""


def free_local_port(low: int = LOCAL_PORT_RANGE[0], high: int = LOCAL_PORT_RANGE[1]) -> int:
    """A port in [low, high) that nothing listens on at 127.0.0.1 right now."""
    for port in random.sample(range(low, high), 64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {LOOPBACK} in [{low}, {high})")


def is_local_master(master: str) -> bool:
    """Whether `master` runs executors inside the driver's JVM (`local`, `local[N]`, ...)."""
    return master == "local" or master.startswith("local[")


class SparkResource(ConfigurableResource):
    """A SparkSession for the spark engine: local[2] on loopback by default, a cluster by
    configuration. The session this resource started is stopped when the step ends."""

    master: str = Field(
        default="local[2]",
        description="Spark master: local[N] (in-process), spark://host:7077, k8s://https://"
        "<api-server>, yarn. A managed cluster launched through Dagster Pipes sets it itself.",
    )
    app_name: str = Field(default="dagster-mlops-suite", description="spark.app.name.")
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="Spark settings (spark.executor.memory, spark.kubernetes.container.image, "
        "spark.hadoop.fs.s3a.*, ...); they override the suite's defaults. Never put a secret "
        "here: config is shown in the UI (use the cluster's IAM role or its secret store).",
    )
    ui_port: int | None = Field(
        default=None,
        ge=1024,
        lt=32768,
        description="Serve the Spark web UI on this port (on 127.0.0.1 in local mode); "
        "None: no UI.",
    )
    warehouse_uri: str = Field(
        default="",
        description="Where the spark engine writes its tables (a folder, s3a://bucket/prefix, "
        "...); default $MLOPS_HOME/spark. Must be reachable by every executor.",
    )

    stop_after_step: bool = Field(
        default=True,
        description="Stop the session when the step ends (each step process starts its own). "
        "False keeps one session for every step of an in-process run (tests, notebooks).",
    )

    _session: Any = PrivateAttr(default=None)

    def spark_conf(self) -> dict[str, str]:
        """Every setting the session is built with: defaults, local-mode networking, `conf`."""
        settings = {**DEFAULT_CONF, "spark.ui.enabled": str(self.ui_port is not None).lower()}
        if self.ui_port is not None:
            settings["spark.ui.port"] = str(self.ui_port)
        if is_local_master(self.master):
            settings.update(
                {
                    "spark.driver.bindAddress": LOOPBACK,
                    "spark.driver.host": LOOPBACK,
                    "spark.driver.port": str(free_local_port()),
                    "spark.blockManager.port": str(free_local_port()),
                    "spark.port.maxRetries": "32",
                }
            )
        # ${VAR} in a value is read from the environment when the session starts (e.g. the
        # run pod's IP for spark.driver.host), so config shows the variable, not its value.
        return {**settings, **{k: os.path.expandvars(v) for k, v in self.conf.items()}}

    def session(self) -> SparkSession:
        """The session, started on first call (pyspark imported then)."""
        if self._session is not None:
            return self._session
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:
            raise SparkUnavailable(
                "engine 'spark' needs pyspark: pip install 'dagster-mlops-suite[integration]' "
                "(and Java 17 on the PATH)"
            ) from exc
        if is_local_master(self.master):
            # Python workers run this interpreter; the JVM resolves no host name.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        builder = SparkSession.builder.master(self.master).appName(self.app_name)
        for key, value in self.spark_conf().items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # Py4J / JVM start-up failures: name the likely cause
            raise SparkUnavailable(f"Spark did not start on {self.master}: {exc}") from exc
        session.sparkContext.setLogLevel("WARN")
        self._session = session
        return session

    def warehouse(self) -> str:
        """Where the spark engine's tables live: `warehouse_uri`, else $MLOPS_HOME/spark."""
        return (self.warehouse_uri or str(mlops_home() / "spark")).rstrip("/")

    def to_pandas(self, df: DataFrame) -> pd.DataFrame:
        """`df`'s rows in this process: written by the executors to a scratch Parquet folder
        under the warehouse (`_collected/`), read with pyarrow, then deleted. `toPandas` would
        first gather every row on the driver JVM's heap: a 2,000,000-row training window ran
        a local driver (1 GB heap) out of memory, and the rows would be held twice."""
        import uuid

        import pandas as pd

        path = f"{self.warehouse()}/_collected/{uuid.uuid4().hex}"
        try:
            df.write.parquet(path)
            return pd.read_parquet(readable_url(path))
        finally:
            remove_tree(path)

    def stop(self) -> None:
        """Stop the session this resource started (a no-op when none is running)."""
        if self._session is not None:
            self._session.stop()
            self._session = None

    @contextmanager
    def session_scope(self) -> Iterator[SparkSession]:
        """A session for the `with` block, stopped when it ends."""
        try:
            yield self.session()
        finally:
            self.stop()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self.stop_after_step:
            self.stop()


class SparkTableIOManager(ConfigurableIOManager):
    """Asset values of the spark engine as Parquet tables written by Spark: one folder per
    asset partition under `<warehouse>/<asset key>/<partition>`, written by the executors
    (nothing is collected to the driver). A Spark consumer gets a lazy Spark DataFrame of the
    folder; a pandas consumer (an asset whose input is a pandas DataFrame, e.g.
    model_performance) reads the folder with pandas."""

    spark: SparkResource

    def path(self, context: OutputContext | InputContext) -> str:
        """Where the value of `context`'s asset partition lives."""
        key = (context.upstream_output if isinstance(context, InputContext) else context).asset_key
        partition = context.asset_partition_key if context.has_asset_partitions else "all"
        return "/".join([self.spark.warehouse(), *key.path, partition])

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        path = self.path(context)
        if "://" in path:  # an object store: Spark's own overwrite (not atomic there)
            obj.write.mode("overwrite").parquet(path)
        else:
            replace_folder(path, context.run_id, lambda tmp: obj.write.parquet(tmp))
        context.add_output_metadata({"table": MetadataValue.path(path)})

    def load_input(self, context: InputContext) -> Any:
        path = self.path(context)
        if context.dagster_type.display_name == "DataFrame":  # a pandas consumer (Frame)
            import pandas as pd

            return pd.read_parquet(readable_url(path))
        return self.spark.session().read.parquet(path)


def spark_resources() -> dict[str, Any]:
    """The spark engine's resources, keyed as its assets expect them: local[2] by default, or
    the SparkResource fields in the YAML file named by $MLOPS_SPARK_CONFIG (a cluster, e.g.
    deploy/spark/kubernetes.yaml). Nothing starts until a spark asset runs, so every profile
    carries them."""
    spark = spark_resource_from_file(os.environ.get(SPARK_CONFIG_ENV, ""))
    return {SPARK_RESOURCE: spark, SPARK_IO_MANAGER: SparkTableIOManager(spark=spark)}


def spark_resource_from_file(path: str) -> SparkResource:
    """A SparkResource from a YAML file of its fields (empty path: the defaults); an unknown
    field or a wrong type names the file."""
    if not path:
        return SparkResource()
    import yaml
    from pydantic import ValidationError

    try:
        fields = yaml.safe_load(Path(path).read_text()) or {}
        unknown = sorted(set(fields) - set(SparkResource.model_fields) - {"_session"})
        if unknown:
            raise TypeError(
                f"unknown fields {unknown} (known: {sorted(SparkResource.model_fields)})"
            )
        return SparkResource(**fields)
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ValueError(f"{SPARK_CONFIG_ENV}={path}: not a SparkResource config: {exc}") from exc


def replace_folder(path: str, run_id: str, write: Any) -> None:
    """`write(folder)` into a per-run temporary folder, then put it in `path`'s place: a write
    that fails leaves the previous table whole and no temporary folder (a killed one leaves its
    `<path>.<run_id>.tmp` beside the table). The swap is two renames: a reader between them
    finds no table."""
    import shutil

    tmp, old = f"{path}.{run_id}.tmp", f"{path}.{run_id}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def readable_url(path: str) -> str:
    """A Spark path as pandas and pyarrow open it: Hadoop's `s3a://` is fsspec's `s3://`."""
    return "s3://" + path.removeprefix("s3a://") if path.startswith("s3a://") else path


def remove_tree(path: str) -> None:
    """Delete a folder Spark wrote (local or in an object store); nothing when it is absent."""
    if "://" not in path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(readable_url(path))
    if fs.exists(root):
        fs.rm(root, recursive=True)
