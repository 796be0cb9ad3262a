"""Tests of the Torch executor (CPU only): learning, determinism, resume, DDP via Pipes, MLflow.

Its layout (file sizes, light import, pickled names) is tested in test_torch_layout.py."""

import inspect
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetExecutionContext, DagsterInstance, MaterializeResult, asset, materialize

from mlops_resources.torch_executor import (
    TabularColumns,
    TorchExecutorResource,
    TorchTabularModel,
    collect_job_result,
    ecs_pipes_launch_config,
    k8s_gpu_tags,
    load_torch_model,
    log_torch_model,
    resolve_precision,
    select_device,
)

LOG = logging.getLogger("tests.torch_executor")
FEATURES = {"numeric": ["a", "b"], "categorical": ["c"]}


def binary_data(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A learnable binary task; the last quarter (in time) is the holdout."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.choice(["x", "y", "z"], size=n),
        }
    )
    logit = 2.0 * df["a"] - 1.5 * df["b"] + df["c"].map({"x": 1.5, "y": -1.5, "z": 0.0})
    df["label"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    df.loc[rng.random(n) < 0.05, "a"] = np.nan  # missing numerics are imputed
    cut = int(n * 0.75)
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


class MetricRecorder:
    """A log_metric callback that records (name, value, step) and can fail at a given epoch."""

    def __init__(self, fail_at_epoch: int | None = None) -> None:
        self.calls: list[tuple[str, float, int]] = []
        self.fail_at_epoch = fail_at_epoch

    def __call__(self, name: str, value: float, step: int) -> None:
        self.calls.append((name, value, step))
        if step == self.fail_at_epoch:
            raise KeyboardInterrupt(f"simulated interruption at epoch {step}")

    def steps(self, name: str = "train_loss") -> list[int]:
        return [s for n, _, s in self.calls if n == name]

    def series(self, name: str) -> list[float]:
        return [v for n, v, _ in self.calls if n == name]


def fit_binary(
    resource: TorchExecutorResource,
    checkpoint_dir: Path,
    log_metric: MetricRecorder,
    *,
    seed: int = 7,
    data: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> TorchTabularModel:
    train, holdout = data or binary_data()
    return resource.fit(
        train,
        holdout,
        TabularColumns(
            **FEATURES, label="label", task="binary_classification", classes=["stay", "churn"]
        ),
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        log=LOG,
        log_metric=log_metric,
    )


def auc(model: TorchTabularModel, holdout: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    positive = list(model.classes_).index("churn")
    return roc_auc_score(holdout["label"] == "churn", model.predict_proba(holdout)[:, positive])


# ---------------------------------------------------------------------------------------------


def test_binary_learns_and_same_seed_gives_same_metrics(tmp_path: Path) -> None:
    train, holdout = binary_data()
    resource = TorchExecutorResource(max_epochs=8, batch_size=256, learning_rate=3e-3)
    first, second = MetricRecorder(), MetricRecorder()
    model = fit_binary(resource, tmp_path / "one", first, data=(train, holdout))
    again = fit_binary(resource, tmp_path / "two", second, data=(train, holdout))

    assert auc(model, holdout) > 0.75
    assert first.steps() == list(range(1, 9))
    assert {n for n, _, _ in first.calls} == {"train_loss", "holdout_loss", "epoch_holdout_roc_auc"}
    assert first.calls == second.calls  # same seed -> same metrics, exactly
    np.testing.assert_array_equal(model.predict_proba(holdout), again.predict_proba(holdout))
    assert list(model.classes_) == ["stay", "churn"]
    proba = model.predict_proba(holdout)
    assert proba.shape == (len(holdout), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(holdout)) <= {"stay", "churn"}
    # unseen categories and missing numerics at predict time
    odd = holdout.head(3).assign(c=["never-seen", None, "x"], b=[np.nan, 1.0, np.nan])
    assert model.predict_proba(odd).shape == (3, 2)
    # the final model is also left next to the checkpoint, loadable safely
    reloaded = TorchTabularModel.load(tmp_path / "one" / "final")
    np.testing.assert_array_equal(reloaded.predict_proba(holdout), proba)
    restored = pickle.loads(pickle.dumps(model))  # IO managers may pickle it
    np.testing.assert_array_equal(restored.predict_proba(holdout), proba)


def test_regression_and_multiclass_smoke(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 800
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.choice(["u", "v", "w", "q"], size=n),
        }
    )
    df["target"] = 3 * df["a"] - df["b"] + 10 + rng.normal(scale=0.1, size=n)
    df["kind"] = np.select([df["a"] > 0.5, df["a"] < -0.5], ["hi", "lo"], "mid")
    train, holdout = df.iloc[:600], df.iloc[600:]
    resource = TorchExecutorResource(max_epochs=3, hidden_sizes=[16], embedding_dim=0)

    metrics = MetricRecorder()
    reg = resource.fit(
        train,
        holdout,
        TabularColumns(**FEATURES, label="target", task="regression", classes=None),
        seed=1,
        checkpoint_dir=tmp_path / "reg",
        log=LOG,
        log_metric=metrics,
    )
    pred = reg.predict(holdout)
    assert pred.shape == (len(holdout),) and pred.dtype == np.float64
    assert abs(pred.mean() - holdout["target"].mean()) < 3  # target scaling is undone
    assert "epoch_holdout_rmse" in {n for n, _, _ in metrics.calls}
    assert not hasattr(reg, "classes_")

    multi = resource.fit(
        train,
        holdout,
        TabularColumns(
            **FEATURES, label="kind", task="multiclass_classification", classes=["lo", "mid", "hi"]
        ),
        seed=1,
        checkpoint_dir=tmp_path / "multi",
        log=LOG,
        log_metric=MetricRecorder(),
    )
    assert list(multi.classes_) == ["lo", "mid", "hi"]
    assert multi.predict_proba(holdout).shape == (len(holdout), 3)
    labels = multi.predict(holdout)
    assert labels.shape == (len(holdout),) and set(labels) <= {"lo", "mid", "hi"}

    with pytest.raises(ValueError, match="not among classes"):
        resource.fit(
            train,
            holdout,
            TabularColumns(
                **FEATURES, label="kind", task="multiclass_classification", classes=["lo", "mid"]
            ),
            seed=1,
            checkpoint_dir=tmp_path / "bad",
            log=LOG,
            log_metric=MetricRecorder(),
        )


def test_kill_and_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = binary_data(n=1600)
    resource = TorchExecutorResource(max_epochs=6, patience=10, batch_size=128)
    reference = fit_binary(resource, tmp_path / "reference", MetricRecorder(), data=data)

    interrupted = MetricRecorder(fail_at_epoch=3)
    with pytest.raises(KeyboardInterrupt):
        fit_binary(resource, tmp_path / "run", interrupted, data=data)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert interrupted.steps() == [1, 2, 3]

    resumed = MetricRecorder()
    model = fit_binary(resource, tmp_path / "run", resumed, data=data)
    assert resumed.steps() == [4, 5, 6]  # epochs 1-3 were not trained again
    np.testing.assert_allclose(
        model.predict_proba(data[1]), reference.predict_proba(data[1]), atol=1e-6
    )
    assert [h["epoch"] for h in model.history] == [1, 2, 3, 4, 5, 6]
    assert model.best_epoch == reference.best_epoch

    # a finished run is not trained again
    again = MetricRecorder()
    fit_binary(resource, tmp_path / "run", again, data=data)
    assert again.calls == []

    # a checkpoint of a different configuration is set aside, not resumed or deleted
    other = TorchExecutorResource(max_epochs=1, batch_size=64)
    fit_binary(other, tmp_path / "run", (fresh := MetricRecorder()), data=data)
    assert fresh.steps() == [1]
    assert list((tmp_path / "run").glob("checkpoint.stale-*.pt"))


def test_early_stopping_keeps_best_epoch(tmp_path: Path) -> None:
    data = binary_data(n=1200)
    resource = TorchExecutorResource(max_epochs=40, patience=2, learning_rate=0.05, batch_size=32)
    metrics = MetricRecorder()
    model = fit_binary(resource, tmp_path, metrics, data=data)
    losses = metrics.series("holdout_loss")
    assert len(losses) < 40 and model.stop_reason == "early_stopping"
    assert model.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) == model.best_epoch + 2


def test_ddp_two_gloo_processes_through_pipes(tmp_path: Path) -> None:
    train, holdout = binary_data(n=2000)
    settings = {"max_epochs": 4, "batch_size": 256, "learning_rate": 3e-3}
    single = fit_binary(
        TorchExecutorResource(**settings),
        tmp_path / "single",
        MetricRecorder(),
        data=(train, holdout),
    )
    ddp_metrics = MetricRecorder()

    @asset
    def ddp_model(
        context: AssetExecutionContext, torch_executor: TorchExecutorResource
    ) -> MaterializeResult:
        model = torch_executor.fit(
            train,
            holdout,
            TabularColumns(
                **FEATURES, label="label", task="binary_classification", classes=["stay", "churn"]
            ),
            seed=7,
            checkpoint_dir=tmp_path / "ddp",
            log=context.log,
            log_metric=ddp_metrics,
            pipes_context=context,
        )
        np.save(tmp_path / "ddp_proba.npy", model.predict_proba(holdout))
        return MaterializeResult(metadata={"best_epoch": model.best_epoch})

    instance = DagsterInstance.ephemeral()
    result = materialize(
        [ddp_model],
        resources={"torch_executor": TorchExecutorResource(nproc_per_node=2, **settings)},
        instance=instance,
    )
    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("DDP worker: world_size=2 backend=gloo" in m for m in messages)
    assert any("epoch 4/4" in m for m in messages)  # rank 0's progress streamed through Pipes
    assert any("rank 0 wrote the final model" in m for m in messages)

    ddp_proba = np.load(tmp_path / "ddp_proba.npy")
    # same global batches, loss scaled for DDP's gradient averaging: equal up to float order
    np.testing.assert_allclose(ddp_proba, single.predict_proba(holdout), atol=1e-4)
    single_auc = auc(single, holdout)
    ddp_auc = float(
        __import__("sklearn.metrics").metrics.roc_auc_score(
            holdout["label"] == "churn", ddp_proba[:, 1]
        )
    )
    assert abs(single_auc - ddp_auc) < 0.02
    assert ddp_metrics.steps() == [1, 2, 3, 4]  # per-epoch metrics reach log_metric too


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    assert select_device("cpu").type == "cpu"
    with pytest.raises(RuntimeError, match="device='cuda' was requested but CUDA is not"):
        select_device("cuda")
    with pytest.raises(RuntimeError, match="MPS backend is not available"):
        select_device("mps")
    with pytest.raises(ValueError, match="device must be one of"):
        select_device("tpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        TorchExecutorResource(device="cuda").device_info()

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto") == torch.device("mps")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("auto") == torch.device("cuda", 0)  # cuda wins over mps
    assert select_device("cuda", 1) == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="only 2 CUDA"):
        select_device("cuda", 5)


def test_precision_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    assert resolve_precision("cpu", "fp32") == ("fp32", None)
    assert resolve_precision("cpu", "bf16") == ("bf16", None)
    assert resolve_precision("cuda", "fp16") == ("fp16", None)
    effective, message = resolve_precision("cpu", "fp16")
    assert effective == "fp32" and "falling back to fp32" in message
    assert resolve_precision("mps", "bf16")[0] == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("cuda", "bf16")[0] == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("cpu", "int8")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = binary_data(n=400)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        model = fit_binary(
            TorchExecutorResource(device="cpu", precision="fp16", max_epochs=1),
            tmp_path / "fp16",
            MetricRecorder(),
            data=data,
        )
    assert "precision='fp16' is not supported on cpu" in caplog.text
    assert model.predict_proba(data[1]).shape == (len(data[1]), 2)
    info = TorchExecutorResource(device="cpu", precision="fp16").device_info()
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert {"device_name", "device_memory"} <= set(info)

    bf16 = fit_binary(
        TorchExecutorResource(precision="bf16", max_epochs=1),
        tmp_path / "bf16",
        MetricRecorder(),
        data=data,
    )  # CPU autocast in bfloat16 runs
    assert np.isfinite(bf16.predict_proba(data[1])).all()


def test_mlflow_log_and_safe_load_round_trip(tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch

    train, holdout = binary_data(n=800)
    model = fit_binary(
        TorchExecutorResource(max_epochs=2),
        tmp_path / "ckpt",
        MetricRecorder(),
        data=(train, holdout),
    )
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment(
        "torch-executor", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    features = holdout[FEATURES["numeric"] + FEATURES["categorical"]]
    with mlflow.start_run(experiment_id=experiment):
        info = log_torch_model(
            model, name="model", registered_model_name="torch-churn", input_example=features.head(5)
        )
    assert info.registered_model_version == 1
    assert "pytorch" in info.flavors and info.signature is not None
    assert info.metadata["loader"] == "mlops_resources.torch_executor.load_torch_model"

    loaded = load_torch_model("models:/torch-churn/1")
    np.testing.assert_array_equal(loaded.predict_proba(features), model.predict_proba(features))
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)

    # nothing pickled: the flavor is the pt2 export, which mlflow itself loads pickle-free
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert (local / "data" / "model.pt2").exists() and not (local / "data" / "model.pth").exists()
    exported = mlflow.pytorch.load_model(info.model_uri)
    import torch

    with torch.no_grad():
        raw = exported(torch.from_numpy(model.spec.encode_flat(features))).numpy()
    np.testing.assert_allclose(raw, model.predict_proba(features), atol=1e-5)


def test_remote_gpu_launch_configs(tmp_path: Path) -> None:
    from botocore.session import get_session
    from botocore.validate import ParamValidator
    from dagster_aws.pipes import PipesECSClient

    cfg = ecs_pipes_launch_config(
        cluster="ml",
        task_definition="trainer:3",
        container_name="trainer",
        job_path="/mnt/efs/ckpt/ddp/job.json",
        gpus=4,
        cpu=16384,
        memory_mib=61440,
        subnets=["subnet-1"],
        security_groups=["sg-1"],
    )
    inspect.signature(PipesECSClient.run).bind(None, context=None, **cfg)
    params = cfg["run_task_params"]
    shape = get_session().get_service_model("ecs").operation_model("RunTask").input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    override = params["overrides"]["containerOverrides"][0]
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "4"}]
    assert "--nproc-per-node=4" in override["command"]
    assert params["launchType"] == "EC2"  # Fargate has no GPUs

    train, holdout = binary_data(n=200)
    job_path = TorchExecutorResource(precision="bf16").prepare_remote_job(
        train,
        holdout,
        TabularColumns(
            **FEATURES, label="label", task="binary_classification", classes=["stay", "churn"]
        ),
        seed=1,
        checkpoint_dir=tmp_path / "shared",
    )
    job = json.loads(job_path.read_text())
    assert job["backend"] == "nccl" and job["settings"]["precision"] == "bf16"
    assert Path(job["train"]).exists() and Path(job["holdout"]).exists()
    with pytest.raises(RuntimeError, match="left no result"):
        collect_job_result(job_path, log=LOG, log_metric=MetricRecorder())

    tags = k8s_gpu_tags(gpus=2, cpu="8", memory="32Gi", node_selector={"gpu": "a10g"})
    config = tags["dagster-k8s/config"]
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert config["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    try:
        from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_SCHEMA
    except ImportError:  # dagster-k8s is not a dependency; the keys follow its documented schema
        assert set(config) <= {
            "container_config",
            "pod_spec_config",
            "pod_template_spec_metadata",
            "job_spec_config",
            "job_metadata",
            "merge_behavior",
        }
    else:  # pragma: no cover - only where dagster-k8s is installed
        from dagster._config import process_config

        assert process_config(USER_DEFINED_K8S_CONFIG_SCHEMA, config).success
