"""Off the response path: the other version's shadow prediction, the canary's labelled pairs and
the Parquet request log.

The scoring of a batch of requests (see batching) hands its answered rows to
`RequestWorker.submit`, which never blocks: the queue is bounded, and a full queue drops the
batch from the log (counted in /metrics). A thread takes them in order; while a challenger
exists it scores each row with the version that did not answer it (the challenger shadows the
champion; for canary rows the champion shadows the challenger), gives both predictions to the
canary monitor, and appends the rows to the log.
The log is flushed at most every `FLUSH_SECONDS` (or `FLUSH_ROWS` rows) as one Parquet file per
day and batch, written to a temporary name and renamed, so a reader sees whole files only:

    $MLOPS_HOME/serving/<pipeline>/requests/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<n>.parquet
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_assets.serving.scoring import Outputs, predict
from mlops_resources.storage import mlops_home

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from mlops_assets.serving.canary import CanaryMonitor
    from mlops_assets.serving.metrics import ServingMetrics
    from mlops_assets.serving.models import Served
    from mlops_assets.spec import PipelineSpec

log = logging.getLogger("mlops_assets.serving")

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 20_000
CHAMPION, CHALLENGER = "champion", "challenger"


def request_log_folder(pipeline: str) -> Path:
    """Where a pipeline's request log lives: one folder per UTC day below it."""
    return mlops_home() / "serving" / pipeline / "requests"


@dataclass
class AnsweredBatch:
    """What the rows of one scored batch of requests were answered with, for the worker; the
    per-row lists are aligned with `keys`."""

    request_ids: list[str]  # per row: its request's id
    received_at: list[datetime]  # per row: when its request arrived (UTC)
    latency_ms: list[float]  # per row: its request's time to answer
    keys: list[str]
    frame: pd.DataFrame
    missing: list[list[str]]
    served: Served
    canary: list[bool]  # per row: answered by the challenger
    answers: Outputs


def log_schema(spec: PipelineSpec) -> pa.Schema:
    """The request log's columns: the features as the model saw them, what answered, both
    versions' predictions when a challenger existed, and the latency."""
    import pyarrow as pa

    label = pa.string() if spec.is_classification else pa.float64()
    features = [
        pa.field(f.name, pa.float64() if f.type == "numeric" else pa.string())
        for f in spec.features
    ]
    return pa.schema(
        [
            pa.field("request_id", pa.string()),
            pa.field("requested_at", pa.timestamp("us", tz="UTC")),
            pa.field(spec.entity_key, pa.string()),
            *features,
            pa.field("missing_features", pa.list_(pa.string())),
            pa.field("answered_by", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("prediction", label),
            pa.field("score", pa.float64()),
            pa.field("champion_version", pa.string()),
            pa.field("champion_prediction", label),
            pa.field("champion_score", pa.float64()),
            pa.field("challenger_version", pa.string()),
            pa.field("challenger_prediction", label),
            pa.field("challenger_score", pa.float64()),
            pa.field("latency_ms", pa.float64()),
        ]
    )


class RequestWorker:
    """The thread behind the response path of one pipeline (see the module docstring)."""

    def __init__(
        self,
        spec: PipelineSpec,
        metrics: ServingMetrics,
        monitor: CanaryMonitor,
        folder: Path | None = None,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.monitor = monitor
        self.folder = folder or request_log_folder(spec.name)
        self.schema = log_schema(spec) if spec.serving.request_log else None
        self._queue: queue.Queue[AnsweredBatch] = queue.Queue(spec.serving.log_queue_size)
        self._rows: dict[str, list[Any]] = self._empty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files = 0
        self._dropped = metrics.log_dropped.labels(spec.name)
        self._written = metrics.log_rows.labels(spec.name)

    def _empty(self) -> dict[str, list[Any]]:
        return {name: [] for name in self.schema.names} if self.schema is not None else {}

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"request-log-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Process what is queued, flush, and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, item: AnsweredBatch) -> bool:
        """Queue a batch for shadow scoring and the log; never waits. False when dropped."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._dropped.inc(len(item.keys))
            return False

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        flushed = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self.process(item)
                except Exception:  # one bad request must not stop the log
                    self._dropped.inc(len(item.keys))
                    log.exception(f"{self.spec.name}: {len(item.keys)} answered rows not logged")
            rows = len(self._rows.get("request_id", []))
            due = time.monotonic() - flushed >= FLUSH_SECONDS
            stopping = self._stop.is_set() and self._queue.empty()
            if rows and (due or rows >= FLUSH_ROWS or stopping):
                self.flush()
                flushed = time.monotonic()
            elif due:
                flushed = time.monotonic()
            if stopping:
                return

    def process(self, item: AnsweredBatch) -> None:
        """Shadow-score the rows with the version that did not answer them, pass both
        predictions to the canary monitor, and buffer the log rows."""
        champion, challenger = item.served.champion, item.served.challenger
        n = len(item.keys)
        by_champion: Outputs | None = item.answers
        by_challenger: Outputs | None = None
        if challenger is not None and champion is not None:
            by_champion, by_challenger = self.both(item, champion.model, challenger.model)
            self.monitor.record(
                item.request_ids, item.keys, challenger.version, by_champion, by_challenger
            )
        if self.schema is None:
            return
        versions = {
            CHAMPION: champion.version if champion else None,
            CHALLENGER: challenger.version if challenger else None,
        }
        rows = self._rows
        rows["request_id"] += item.request_ids
        rows["requested_at"] += item.received_at
        rows[self.spec.entity_key] += item.keys
        for name in self.spec.feature_names:
            column = item.frame[name]
            rows[name] += [None if v != v else v for v in column.tolist()]  # NaN -> null
        rows["missing_features"] += item.missing
        roles = [CHALLENGER if c else CHAMPION for c in item.canary]
        rows["answered_by"] += roles
        rows["model_version"] += [versions[r] for r in roles]
        rows["prediction"] += [self.label(v) for v in item.answers.prediction]
        rows["score"] += item.answers.score
        for role, outputs in ((CHAMPION, by_champion), (CHALLENGER, by_challenger)):
            rows[f"{role}_version"] += [versions[role]] * n
            rows[f"{role}_prediction"] += (
                [self.label(v) for v in outputs.prediction] if outputs else [None] * n
            )
            rows[f"{role}_score"] += outputs.score if outputs else [None] * n
        rows["latency_ms"] += item.latency_ms

    def both(self, item: AnsweredBatch, champion: Any, challenger: Any) -> tuple[Outputs, Outputs]:
        """Both versions' outputs for every row: the answers, completed by the version that did
        not give them (scored here, off the response path)."""
        outputs = {
            role: Outputs(list(item.answers.prediction), list(item.answers.score))
            for role in (CHAMPION, CHALLENGER)
        }
        shadows = (
            (CHALLENGER, challenger, item.served.challenger, False),
            (CHAMPION, champion, item.served.champion, True),
        )
        for role, model, loaded, canary in shadows:
            rows = [
                i
                for i, answered_by_challenger in enumerate(item.canary)
                if answered_by_challenger == canary
            ]
            if not rows:
                continue
            shadow = predict(model, item.frame.iloc[rows], self.spec)
            target = outputs[role]
            for at, i in enumerate(rows):
                target.prediction[i] = shadow.prediction[at]
                target.score[i] = shadow.score[at]
            self.metrics.shadow_rows.labels(self.spec.name, loaded.version).inc(len(rows))
        return outputs[CHAMPION], outputs[CHALLENGER]

    def label(self, value: Any) -> Any:
        if value is None:
            return None
        return str(value) if self.spec.is_classification else float(value)

    def flush(self) -> None:
        """Write the buffered rows, one file per UTC day, each atomically (temp + rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._rows = self._rows, self._empty()
        count = len(rows["request_id"])
        try:
            table = pa.Table.from_pydict(rows, schema=self.schema)
            days = [t.date().isoformat() for t in rows["requested_at"]]
            for day in sorted(set(days)):
                part = table.filter(pa.array([d == day for d in days]))
                folder = self.folder / day
                folder.mkdir(parents=True, exist_ok=True)
                self._files += 1
                name = f"{datetime.now().strftime('%H%M%S%f')}-{os.getpid()}-{self._files}.parquet"
                tmp = folder / f".{name}.tmp"
                pq.write_table(part, tmp)
                os.replace(tmp, folder / name)
            self._written.inc(count)
        except Exception:  # a full disk or an unwritable folder loses the batch, not the server
            self._dropped.inc(count)
            log.exception(f"{self.spec.name}: {count} request log rows not written")
