"""The cluster config of the spark engine (deploy/spark/kubernetes.yaml) cannot run here (no
cluster); it is validated the way the code location reads it at start-up: SparkResource's
own schema through $MLOPS_SPARK_CONFIG, the session settings it would start with, and the
resource config Dagster resolves for a spark pipeline's definitions. No Spark is started."""

from pathlib import Path

import pytest

from mlops_assets.pipeline import build_definitions
from mlops_assets.spec import load_spec
from mlops_resources.spark import (
    SPARK_CONFIG_ENV,
    SPARK_IO_MANAGER,
    SPARK_RESOURCE,
    SparkResource,
    spark_resources,
)
from tests.conftest import write_spec

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "spark" / "kubernetes.yaml"


def test_kubernetes_config_is_a_spark_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPARK_CONFIG_ENV, str(KUBERNETES))
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    resources = spark_resources()
    spark = resources[SPARK_RESOURCE]
    assert isinstance(spark, SparkResource) and resources[SPARK_IO_MANAGER].spark is spark
    assert spark.master.startswith("k8s://https://")
    assert spark.warehouse_uri.startswith("s3a://")
    conf = spark.spark_conf()
    # Cluster mode: no loopback binding or local ports; the pod's IP from the environment.
    assert conf["spark.driver.host"] == "10.1.2.3"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.kubernetes.container.image"]
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.session.timeZone"] == "UTC"  # the suite's defaults stay
    assert not any("secret" in k.lower() or "password" in k.lower() for k in conf)


def test_spark_pipeline_definitions_resolve_the_cluster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SPARK_CONFIG_ENV, str(KUBERNETES))
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", engine="spark", online_features=False))
    defs = build_definitions(spec)
    job = defs.resolve_job_def(f"{spec.name}__daily")
    needs_spark = {
        node.name
        for node in job.graph.nodes
        if SPARK_RESOURCE in node.definition.required_resource_keys
    }
    assert f"{spec.name}__raw_data" in needs_spark, needs_spark
    resource = defs.resources[SPARK_RESOURCE]
    assert resource.master.startswith("k8s://")


def test_a_wrong_field_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "spark.yaml"
    bad.write_text("master: local[2]\nexecutors: 4\n")
    monkeypatch.setenv(SPARK_CONFIG_ENV, str(bad))
    with pytest.raises(ValueError, match="spark.yaml"):
        spark_resources()
