"""What happened in a pipeline, read from the Dagster instance as alerts (docs/alerts.md).

Seven streams, each read after its own position (an event log storage id) or, without one,
after a point in time:

    validated_data materializations with valid=False -> data_blocked (rules and sample values
        from the blocking GX check's evaluation in the same run)
    drift_report materializations with drift_detected -> drift
    model_performance materializations with degraded  -> performance_degraded
    model_promotion materializations                  -> gate_verdict
    RUN_START of the retrain job                      -> retraining (its mlops/trigger tag)
    RUN_SUCCESS of the rollback job                   -> rollback (the op's output metadata)
    RUN_FAILURE of any of the pipeline's jobs         -> run_failed (root cause: cli.failed_steps)

Every alert's id names its event (`drift:<storage id>`, `run_failed:<run id>`), so an event read
twice is one alert. Links: the Dagster run and asset (under the UI's base URL) and the MLflow
model version (MLflowResource.model_version_url); events that name no version link the champion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from dagster import (
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    RunsFilter,
    RunStatusChangeRecordsFilter,
)

from mlops_assets.keys import (
    CHANGE_DAY_TAG,
    RETRAIN_JOB,
    ROLLBACK_JOB,
    SENSOR_NAME_TAG,
    TRIGGER_TAG,
    Meta,
    asset_key,
    base_name,
    scoped_name,
    step_key,
)
from mlops_assets.spec import PipelineSpec
from mlops_assets.validation import GX_CHECK
from mlops_resources.notify import Alert

READ_LIMIT = 200  # events per stream per tick; the rest on the next tick
MAX_RULES = 10
BLOCKING_CHECK_ERROR = "DagsterAssetCheckFailedError"  # how failed_steps names a blocked step
SEVERITY = {"WARN": "warning", "ERROR": "error"}
FAILURE_EVENTS = {
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.RESOURCE_INIT_FAILURE,
    DagsterEventType.RUN_FAILURE,
}


@dataclass
class Links:
    """Where a message points: the Dagster UI and the MLflow model registry."""

    dagster_ui_url: str
    model_version_url: Callable[[str], str]
    champion: Callable[[], str | None]  # may raise (registry down): then no champion link

    def run(self, run_id: str | None) -> list[tuple[str, str]]:
        return [("Dagster run", f"{self.dagster_ui_url}/runs/{run_id}")] if run_id else []

    def asset(self, key: Any, partition: str | None, view: str = "partitions") -> list:
        url = f"{self.dagster_ui_url}/assets/{'/'.join(quote(p) for p in key.path)}?view={view}"
        if partition:
            url += f"&partition={quote(partition)}"
        return [(f"Dagster asset {key.to_user_string()}", url)]

    def version(self, version: Any, label: str = "MLflow model") -> list[tuple[str, str]]:
        if version in (None, "", "none"):
            return []
        try:
            return [(f"{label} v{version}", self.model_version_url(str(version)))]
        except Exception:  # the `mlflow` resource cannot start: the alert goes out unlinked
            return []

    def current_champion(self) -> list[tuple[str, str]]:
        try:
            return self.version(self.champion(), "MLflow champion")
        except Exception:  # the registry cannot be read: the alert goes out without it
            return []


def meta_of(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


class AlertReader:
    """Reads one pipeline's new events from the instance and turns them into alerts."""

    def __init__(
        self, spec: PipelineSpec, instance: DagsterInstance, links: Links, jobs: list[str]
    ) -> None:
        self.spec, self.instance, self.links, self.jobs = spec, instance, links, set(jobs)
        self.asset_streams: dict[str, Callable[[Any, dict], Alert | None]] = {
            "validated_data": self.data_blocked,
            "drift_report": self.drift,
            "model_performance": self.performance,
            "model_promotion": self.gate_verdict,
        }
        self.run_streams = {
            "retrain_started": (
                DagsterEventType.RUN_START,
                {scoped_name(spec, RETRAIN_JOB)},
                self.retraining,
            ),
            "rollback_succeeded": (
                DagsterEventType.RUN_SUCCESS,
                {scoped_name(spec, ROLLBACK_JOB)},
                self.rollback,
            ),
            "run_failed": (DagsterEventType.RUN_FAILURE, self.jobs, self.run_failed),
        }

    def read(self, positions: dict[str, int], since: float) -> tuple[list[Alert], dict[str, int]]:
        """The alerts of events after `positions` (a stream without one: after `since`), oldest
        first, and the new positions."""
        found: list[tuple[float, Alert]] = []
        positions = dict(positions)
        for asset, build in self.asset_streams.items():
            after = positions.get(asset)
            page = self.instance.fetch_materializations(
                AssetRecordsFilter(
                    asset_key=asset_key(self.spec, asset),
                    after_storage_id=after,
                    after_timestamp=None if after is not None else since,
                ),
                limit=READ_LIMIT,
                ascending=True,
            )
            for record in page.records:
                positions[asset] = record.storage_id
                meta = meta_of(record.asset_materialization.metadata)
                alert = build(record, meta)
                if alert is not None:
                    found.append((record.timestamp, alert))
        for stream, (event_type, jobs, build) in self.run_streams.items():
            for record, run in self.run_events(stream, event_type, jobs, positions, since):
                alert = build(record, run)
                if alert is not None:
                    found.append((record.timestamp, alert))
        return [a for _, a in sorted(found, key=lambda item: item[0])], positions

    def run_events(
        self, stream: str, event_type: Any, jobs: set[str], positions: dict, since: float
    ) -> list[tuple[Any, Any]]:
        """(record, run) of the stream's run status changes of `jobs`; the position moves past
        every record read, of these jobs or not."""
        after = positions.get(stream)
        storage = self.instance.event_log_storage
        by_job = storage.supports_run_status_change_job_name_filter
        records = self.instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=event_type,
                after_storage_id=after,
                after_timestamp=None if after is not None else since,
                job_names=sorted(jobs) if by_job else None,
            ),
            limit=READ_LIMIT,
            ascending=True,
        ).records
        if not records:
            return []
        positions[stream] = records[-1].storage_id
        run_ids = list({r.event_log_entry.run_id for r in records})
        runs = {
            run.run_id: run
            for run in self.instance.get_runs(filters=RunsFilter(run_ids=run_ids))
            if run.job_name in jobs
        }
        return [
            (r, runs[r.event_log_entry.run_id]) for r in records if r.event_log_entry.run_id in runs
        ]

    # One alert per kind ---------------------------------------------------------------------

    def alert(
        self, kind: str, key: str, severity: str, title: str, details: list, links: list, at: float
    ) -> Alert:
        return Alert(
            id=f"{kind}:{key}",
            kind=kind,
            severity=severity,
            pipeline=self.spec.name,
            title=f"{self.spec.name}: {title}",
            details=tuple(str(d) for d in details if d),
            links=tuple(links),
            occurred_at=at,
        )

    def run_link(self, run_id: str | None) -> list[tuple[str, str]]:
        """A link to the run that wrote the event (none for a runless event)."""
        return self.links.run(run_id) if run_id else []

    def data_blocked(self, record: Any, meta: dict) -> Alert | None:
        if meta.get("valid", True):
            return None
        day = record.partition_key
        check = self.check_evaluation(record.run_id, day)
        rules = check.get("failed_expectations") or []
        details = [
            f"{check.get('expectations_failed', len(rules))} of "
            f"{check.get('expectations_evaluated', '?')} expectations failed; nothing downstream "
            "of validated_data runs on this day until its data passes",
            *(
                f"- {r['rule']}: {r['unexpected_count']} of {r['element_count']} rows, e.g. "
                f"{', '.join(map(str, r.get('sample_bad_values') or [])) or '(no sample)'}"
                for r in rules[:MAX_RULES]
            ),
            f"... and {len(rules) - MAX_RULES} more rules" if len(rules) > MAX_RULES else "",
            f"source: {check['source']}" if check.get("source") else "",
        ]
        key = asset_key(self.spec, "validated_data")
        return self.alert(
            "data_blocked",
            str(record.storage_id),
            "error",
            f"data of {day} blocked by the GX gate ({len(rules)} failed rule(s))",
            details,
            self.run_link(record.run_id)
            + self.links.asset(key, day, view="checks")
            + self.links.current_champion(),
            record.timestamp,
        )

    def check_evaluation(self, run_id: str | None, partition: str | None) -> dict[str, Any]:
        """The metadata of the GX check's evaluation in the run that wrote validated_data."""
        if not run_id:
            return {}
        key = asset_key(self.spec, "validated_data")
        entries = self.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        for entry in entries:
            evaluation = entry.dagster_event.event_specific_data
            if evaluation.asset_key == key and evaluation.check_name == GX_CHECK:
                if partition is None or getattr(evaluation, "partition", None) in (None, partition):
                    return meta_of(evaluation.metadata)
        return {}

    def drift(self, record: Any, meta: dict) -> Alert | None:
        if not meta.get(Meta.DRIFT_DETECTED):
            return None
        day, version = record.partition_key, meta.get(Meta.MODEL_VERSION)
        drifted = meta.get(Meta.DRIFTED_COLUMNS) or {}
        share, threshold = meta.get(Meta.DRIFT_SHARE, 0.0), meta.get(Meta.DRIFT_SHARE_THRESHOLD)
        report = meta.get(Meta.DRIFT_REPORT_HTML)
        report_links = [("Evidently report", report)] if str(report).startswith("http") else []
        details = [
            "drifted columns: "
            + (", ".join(f"{c} ({s:.3g})" for c, s in drifted.items()) or "none"),
            f"prediction drift: {'yes' if meta.get(Meta.PREDICTION_DRIFT) else 'no'}"
            + (
                f" (score {meta['prediction_drift_score']:.3g})"
                if isinstance(meta.get(Meta.PREDICTION_DRIFT_SCORE), float)
                else ""
            ),
            f"report: {report}" if report and not report_links else "",
        ]
        return self.alert(
            "drift",
            str(record.storage_id),
            SEVERITY[self.spec.monitoring.drift.severity],
            f"drift on {day}: drift share {share:.2f}"
            + (f" (threshold {threshold})" if threshold is not None else "")
            + f" against v{version}",
            details,
            self.run_link(record.run_id)
            + self.links.asset(record.asset_key, day)
            + self.links.version(version)
            + report_links,
            record.timestamp,
        )

    def performance(self, record: Any, meta: dict) -> Alert | None:
        if not meta.get(Meta.DEGRADED):
            return None
        day, version = record.partition_key, meta.get(Meta.MODEL_VERSION)
        degraded = list(meta.get(Meta.DEGRADED_METRICS) or [])
        tolerance = self.spec.monitoring.performance.max_degradation
        details = [
            f"{m}: live {fmt(meta.get(f'live_{m}'))} vs holdout {fmt(meta.get(f'holdout_{m}'))}"
            f" (tolerance {tolerance.get(m, '?')})"
            for m in degraded
        ]
        details.append(f"labelled rows: {meta.get('labelled_rows', '?')}")
        if meta.get(Meta.ROLLBACK_RECOMMENDED):
            details.append(
                f"worse than the version it replaced (v{meta.get(Meta.REPLACED_VERSION)}): a "
                "rollback is requested"
            )
        champion = meta.get(Meta.CHAMPION_VERSION)
        if champion not in (None, "none", str(version)):
            details.append(f"v{champion} is the champion now")
        return self.alert(
            "performance_degraded",
            str(record.storage_id),
            SEVERITY[self.spec.monitoring.performance.severity],
            f"served v{version} degraded on {day}: {', '.join(degraded)}",
            details,
            self.run_link(record.run_id)
            + self.links.asset(record.asset_key, day)
            + self.links.version(version),
            record.timestamp,
        )

    def gate_verdict(self, record: Any, meta: dict) -> Alert | None:
        day, candidate = record.partition_key, meta.get(Meta.CANDIDATE_VERSION)
        before, after = meta.get(Meta.CHAMPION_BEFORE), meta.get(Meta.CHAMPION_AFTER)
        if meta.get(Meta.CHAMPION_MOVED):
            title = f"v{candidate} promoted to champion (was {vname(before)})"
        elif meta.get(Meta.CHALLENGER):
            title = f"v{candidate} blessed: now the challenger beside champion {vname(after)}"
        elif meta.get(Meta.BLESSED):
            title = f"v{candidate} blessed; champion stays {vname(after)}"
        else:
            title = f"v{candidate} not promoted: champion stays {vname(after)}"
        details = [
            f"gate: {meta.get(Meta.MESSAGE, '')}",
            f"champion before {vname(before)}, after {vname(after)}; judged for {day}",
        ]
        links = self.run_link(record.run_id) + self.links.asset(record.asset_key, day)
        links += self.links.version(candidate, "MLflow candidate")
        if after not in (None, "none", candidate):
            links += self.links.version(after, "MLflow champion")
        return self.alert(
            "gate_verdict",
            str(record.storage_id),
            "info",
            title,
            details,
            links,
            record.timestamp,
        )

    def retraining(self, record: Any, run: Any) -> Alert:
        tags = run.tags
        why = tags.get(TRIGGER_TAG) or "no mlops/trigger tag: launched by hand or by another tool"
        by = (
            f"sensor {tags['dagster/sensor_name']}"
            if SENSOR_NAME_TAG in tags
            else f"schedule {tags['dagster/schedule_name']}"
            if "dagster/schedule_name" in tags
            else "a person or another tool"
        )
        partition = tags.get("dagster/partition")
        details = [
            f"launched by {by}",
            f"training window starts at the change of {tags[CHANGE_DAY_TAG]}"
            if CHANGE_DAY_TAG in tags
            else "",
        ]
        return self.alert(
            "retraining",
            run.run_id,
            "info",
            f"retraining started{f' for {partition}' if partition else ''}: {why}",
            details,
            self.links.run(run.run_id) + self.links.current_champion(),
            record.timestamp,
        )

    def rollback(self, record: Any, run: Any) -> Alert:
        out: dict[str, Any] = {}
        for entry in self.instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_OUTPUT):
            out.update(meta_of(entry.dagster_event.event_specific_data.metadata))
        if out.get(Meta.SKIPPED):
            return self.alert(
                "rollback",
                run.run_id,
                "info",
                "rollback skipped: the champion already moved",
                [out.get(Meta.MESSAGE, "")],
                self.links.run(run.run_id) + self.links.current_champion(),
                record.timestamp,
            )
        source, target = out.get(Meta.FROM_VERSION), out.get(Meta.TO_VERSION)
        return self.alert(
            "rollback",
            run.run_id,
            "warning",
            f"champion rolled back from v{source} to v{target}",
            [f"reason: {out.get(Meta.REASON, '?')}", f"by: {out.get(Meta.BY, '?')}"],
            self.links.run(run.run_id)
            + self.links.version(target, "MLflow champion")
            + self.links.version(source, "MLflow rolled back"),
            record.timestamp,
        )

    def run_failed(self, record: Any, run: Any) -> Alert | None:
        """The failed run and its root cause; None for a run stopped only by the GX gate (its
        data_blocked alert tells that, with the rules)."""
        from mlops_assets.cli import failed_steps  # the CLI's root-cause reading, not a copy

        events = [
            entry.dagster_event
            for entry in self.instance.all_logs(run.run_id, of_type=FAILURE_EVENTS)
            if entry.dagster_event is not None
        ]
        failures = failed_steps(events)
        gate = step_key(self.spec, "validated_data")
        if failures and all(
            f["step"] == gate and f["error"].startswith(BLOCKING_CHECK_ERROR) for f in failures
        ):
            return None
        partition = run.tags.get("dagster/partition")
        cause = failures[0]["error"] if failures else "unknown"
        details = [f"step {f['step']}: {f['error']}" for f in failures]
        for failure in failures:
            details += [f"  caused by: {c}" for c in failure.get("causes", [])[:-1]]
        return self.alert(
            "run_failed",
            run.run_id,
            "error",
            f"{base_name(run.job_name)} run failed"
            + (f" for {partition}" if partition else "")
            + f": {cause[:300]}",
            details,
            self.links.run(run.run_id) + self.links.current_champion(),
            record.timestamp,
        )


def vname(version: Any) -> str:
    return "none" if version in (None, "", "none") else f"v{version}"


def fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"
