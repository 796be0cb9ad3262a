"""MLflow: experiment tracking, the model registry and the `champion` alias."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dagster import Backoff, ConfigurableResource, InitResourceContext, RetryPolicy
from pydantic import Field, PrivateAttr

from mlops_resources.relocation import check_home
from mlops_resources.storage import disable_telemetry, mlops_home

if TYPE_CHECKING:
    from mlflow import ActiveRun, MlflowClient

CHAMPION_ALIAS = "champion"
# Steps that talk to MLflow retry transient outages a bounded number of times, then fail.
MLFLOW_RETRY_POLICY = RetryPolicy(max_retries=2, delay=1, backoff=Backoff.EXPONENTIAL)
CHALLENGER_ALIAS = "challenger"
# The lease that makes move_champion atomic across processes and machines (see promotion_lock).
LOCK_SUFFIX = ".promotion-lock"
LOCK_WAIT_SECONDS = 120.0
LOCK_STALE_SECONDS = 300.0
LOCK_OWNER_TAG = "mlops.lock_owner"
LOCK_HOST_TAG = "mlops.lock_host"
LOCK_PID_TAG = "mlops.lock_pid"
LEASE_TAKEN_CODES = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


class PromotionConflict(RuntimeError):
    """The champion alias moved while a promotion was being decided."""


class MLflowResource(ConfigurableResource):
    """Tracking and registry access with embedded defaults (sqlite + local artifacts)."""

    tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI; default sqlite:///$MLOPS_HOME/mlflow/mlflow.db.",
    )
    artifact_location: str = Field(
        default="",
        description="Artifact root for new experiments; default $MLOPS_HOME/mlflow/artifacts.",
    )
    experiment_name: str = Field(default="mlops-suite", description="Experiment for all runs.")
    ui_url: str = Field(
        default="http://127.0.0.1:5000",
        description="Base URL of an MLflow UI serving this tracking store, used for links.",
    )

    _experiment_id: str = PrivateAttr(default="")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # No request here: an unreachable server then fails inside the step, where the step's
        # RetryPolicy applies, instead of failing resource initialization.
        if not self.tracking_uri:  # the embedded store: refuse a moved home (relocation.py)
            check_home(mlops_home())
        self._point_fluent_api()

    def _point_fluent_api(self) -> None:
        """Point MLflow's process-wide fluent API (runs, log_model, registry) at this store."""
        import mlflow

        mlflow.set_tracking_uri(self.resolved_tracking_uri)
        mlflow.set_registry_uri(self.resolved_tracking_uri)

    def _activate(self) -> None:
        self._point_fluent_api()
        if not self._experiment_id:
            self._experiment_id = self._ensure_experiment()

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            if urlsplit(self.tracking_uri).password:
                raise ValueError(
                    "MLflowResource.tracking_uri must not carry a password (it would be echoed "
                    "in errors and logs); set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
                )
            return self.tracking_uri
        folder = mlops_home() / "mlflow"
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}"

    @property
    def resolved_artifact_location(self) -> str | None:
        """Artifact root for new experiments. None for a tracking server (http/https): the
        server decides (its --artifacts-destination, e.g. S3, proxied over HTTP)."""
        if self.artifact_location:
            return self.artifact_location
        if self.resolved_tracking_uri.startswith(("http://", "https://")):
            return None
        return (mlops_home() / "mlflow" / "artifacts").as_uri()

    def client(self) -> MlflowClient:
        disable_telemetry()
        from mlflow import MlflowClient

        return MlflowClient(
            tracking_uri=self.resolved_tracking_uri, registry_uri=self.resolved_tracking_uri
        )

    def _ensure_experiment(self) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(
            self.experiment_name, artifact_location=self.resolved_artifact_location
        )

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> Iterator[ActiveRun]:
        """Start a run in the configured experiment; it ends (FAILED on error) on exit."""
        import mlflow

        self._activate()
        with mlflow.start_run(
            experiment_id=self._experiment_id, run_name=run_name, tags=tags or {}
        ) as run:
            yield run

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self._experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.ui_url}/#/models/{name}/versions/{version}"

    def champion(self, name: str) -> str | None:
        """The version number the `champion` alias points at (a string), or None."""
        return self.alias_version(name, CHAMPION_ALIAS)

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version number `alias` points at (a string), or None when the registered model
        or the alias does not exist. Fail closed: any other registry error (an outage, a
        corrupted store) raises, so it is never read as "no champion"."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client().get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = dict(model.aliases or {}).get(alias)
        return None if version is None else str(version)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self.client().set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.client().delete_registered_model_alias(name, alias)

    def version_tags(self, name: str, version: str | int) -> dict[str, str]:
        return dict(self.client().get_model_version(name, str(version)).tags)

    def version_run_id(self, name: str, version: str | int) -> str:
        """The MLflow run that logged a registered version."""
        return self.client().get_model_version(name, str(version)).run_id

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client().get_run(run_id).data.metrics)

    def download_run_artifact(self, run_id: str, path: str, dst: str) -> str:
        """Download one artifact of a run into `dst`; returns the local path."""
        return self.client().download_artifacts(run_id, path, dst)

    def tag_version(self, name: str, version: str | int, tags: dict[str, Any]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))

    @contextmanager
    def promotion_lock(self, name: str, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Hold the promotion lease of registered model `name` across processes and machines.

        MLflow has no conditional alias update, but creating a registered model is atomic (its
        name is unique in every backend), so the lease is a registered model `<name>` +
        LOCK_SUFFIX, deleted on exit. A lease whose holder process is gone (same host, pid not
        alive) or older than LOCK_STALE_SECONDS (a holder on another host died) is broken.
        Raises PromotionConflict, naming the holder, if the lease stays taken for `wait_seconds`.
        """
        from mlflow.exceptions import MlflowException

        client = self.client()
        lock = name + LOCK_SUFFIX
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                client.create_registered_model(
                    lock,
                    tags={
                        LOCK_OWNER_TAG: owner,
                        LOCK_HOST_TAG: socket.gethostname(),
                        LOCK_PID_TAG: str(os.getpid()),
                    },
                    description=f"Lease held while a promotion moves the aliases of {name}.",
                )
                break
            except MlflowException as exc:
                # Taken: "already exists", or "not found" when the holder released it while
                # MLflow was looking up the name that failed its unique constraint.
                if exc.error_code not in LEASE_TAKEN_CODES:
                    raise
            holder = break_stale_lease(client, lock)
            if time.monotonic() > deadline:
                raise PromotionConflict(
                    f"the promotion lease {lock} stayed taken for {wait_seconds:.0f} s "
                    f"(held by {holder}; it is broken once that process is gone, or after "
                    f"{LOCK_STALE_SECONDS:.0f} s)"
                )
            time.sleep(random.uniform(0.05, 0.3))
        try:
            yield
        finally:
            release_lease(client, lock, owner)

    def move_champion(self, name: str, version: str | int, expected: str | None) -> None:
        """Compare-and-set: point `champion` at `version` only if it still points at `expected`,
        under the model's promotion lease, so two processes cannot both move it.

        Raises PromotionConflict when another promotion moved the alias meanwhile, so the caller
        re-evaluates against the new champion instead of overwriting it blindly.
        """
        with self.promotion_lock(name):
            current_version = self.champion(name)
            if current_version != expected:
                raise PromotionConflict(
                    f"champion of {name} moved from {expected} to {current_version} "
                    "during evaluation"
                )
            self.client().set_registered_model_alias(name, CHAMPION_ALIAS, str(version))

    def load_model(self, model_uri: str) -> Any:
        """Load a model in the format the suite wrote (skops or torch weights), never a pickle."""
        from mlops_resources.model_loading import load_model_uri

        self._point_fluent_api()
        return load_model_uri(model_uri)


def release_lease(client: MlflowClient, lock: str, owner: str) -> None:
    """Delete the promotion lease `lock` if `owner` still holds it: a lease broken as stale
    meanwhile may already be a successor's, which must stay."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # broken as stale meanwhile, and not retaken
        if client.get_registered_model(lock).tags.get(LOCK_OWNER_TAG) == owner:
            client.delete_registered_model(lock)


def break_stale_lease(client: MlflowClient, lock: str) -> str:
    """Delete the promotion lease `lock` if its holder died: a process of this host that is no
    longer alive, or any holder after LOCK_STALE_SECONDS. Returns who holds it, in words."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(lock)
    except MlflowException:  # released (or broken) by someone else meanwhile
        return "nobody (released)"
    host, pid = held.tags.get(LOCK_HOST_TAG, ""), held.tags.get(LOCK_PID_TAG, "")
    age = time.time() - held.creation_timestamp / 1000
    dead = host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
    if dead or age > LOCK_STALE_SECONDS:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)
    return f"pid {pid or '?'} on {host or '?'} for {age:.0f} s"


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (signal 0 probes, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
