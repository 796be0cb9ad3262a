"""The served versions follow the registry: what the `champion` (and `challenger`) alias points
to, loaded off the request path and swapped in atomically.

A request reads `ModelHolder.current` once and answers every row with what it holds, so a swap
between two requests never gives one request two champion versions, and a load never delays
or fails a request: the new version is loaded first, then one reference is replaced.

Models load only through the suite's safe loader (MLflowResource.load_model ->
mlops_resources.model_loading.load_model_uri: skops with the suite's trust list, torch
weights-only), never through mlflow.pyfunc. A registry error or a failed load keeps what is
serving (it was blessed) and is reported by /ready, /metrics and the log. An alias that no
longer exists is honoured: no champion means nothing is served (503), a deleted challenger
means the champion answers every entity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_assets.serving.scoring import predict, probe_frame
from mlops_resources.mlflow_tracking import CHALLENGER_ALIAS, CHAMPION_ALIAS

if TYPE_CHECKING:
    from mlops_assets.spec import PipelineSpec
    from mlops_resources.mlflow_tracking import MLflowResource

log = logging.getLogger("mlops_assets.serving")

# Loaded versions kept beyond the ones the aliases name, so that a rollback to the version just
# replaced swaps in at once instead of downloading it again.
KEEP_LOADED = 2


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    model: Any
    loaded_at: float  # time.time()


@dataclass(frozen=True)
class Served:
    """What one request is answered with: read once per request."""

    champion: LoadedVersion | None
    challenger: LoadedVersion | None


@dataclass(frozen=True)
class RefreshError:
    message: str
    at: float  # time.time()


class ModelHolder:
    """The served versions of one registered model, refreshed every `refresh_seconds` by a
    background thread (or on demand with `refresh()`)."""

    def __init__(
        self,
        spec: PipelineSpec,
        mlflow: MLflowResource,
        on_swap: Callable[[str, LoadedVersion | None], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.model_name
        self.mlflow = mlflow
        self.on_swap = on_swap or (lambda alias, loaded: None)
        self.on_error = on_error or (lambda message: None)
        self._current = Served(None, None)
        self._client: Any = None  # MlflowClient, made on the first refresh
        self._loaded: dict[str, LoadedVersion] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: RefreshError | None = None
        self.last_refresh: float | None = None  # time.time() of the last successful refresh

    @property
    def current(self) -> Served:
        return self._current

    def start(self) -> None:
        """Follow the registry in a daemon thread: load the current versions now, then read the
        aliases every `serving.refresh_seconds`. Until the first load, `current` serves none."""
        self._thread = threading.Thread(
            target=self._follow, name=f"registry-{self.spec.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def following(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # the follower must outlive any one refresh
                self._failed(f"refresh failed: {exc!r}")
            if self._stop.wait(self.spec.serving.refresh_seconds):
                return

    def refresh(self) -> Served:
        """Read both aliases and swap in what they name; returns what is served afterwards."""
        with self._refresh_lock:
            try:
                aliases = self.read_aliases()
                champion, challenger = aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS)
            except Exception as exc:  # an outage is never "no champion": keep serving
                self._failed(f"registry read failed, still serving what was loaded: {exc!r}")
                return self._current
            current = self._current
            errors = []
            new_champion = self._resolve(champion, current.champion, errors)
            if challenger == champion:
                challenger = None
            new_challenger = self._resolve(challenger, current.challenger, errors, keep=False)
            served = Served(new_champion, new_challenger)
            self._current = served  # the atomic swap: one reference replaced
            for alias, old, new in (
                (CHAMPION_ALIAS, current.champion, new_champion),
                (CHALLENGER_ALIAS, current.challenger, new_challenger),
            ):
                if old is not new:
                    log.info(
                        f"{self.name}: {alias} now {f'v{new.version}' if new else 'none'} "
                        f"(was {f'v{old.version}' if old else 'none'})"
                    )
                    self.on_swap(alias, new)
            self._evict(served)
            if errors:
                self._failed("; ".join(errors))
            else:
                self.last_error = None
                self.last_refresh = time.time()
            return served

    def read_aliases(self) -> dict[str, str]:
        """The registered model's aliases and their versions, in one registry read (as
        MLflowResource.alias_version reads them: {} when the model does not exist; any other
        registry error raises, it is never "no champion")."""
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = self.mlflow.client()
        try:
            model = self._client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def _resolve(
        self,
        version: str | None,
        serving: LoadedVersion | None,
        errors: list[str],
        keep: bool = True,
    ) -> LoadedVersion | None:
        """The loaded `version` (None when the alias names none). When it fails to load, the
        version serving now if `keep` (the champion), else none (the challenger: the champion
        then answers everyone)."""
        if version is None:
            return None
        if serving is not None and serving.version == version:
            return serving
        if version in self._loaded:
            return self._loaded[version]
        try:
            started = time.monotonic()
            model = self.mlflow.load_model(f"models:/{self.name}/{version}")
            predict(model, probe_frame(self.spec), self.spec)  # it scores the spec's features
        except Exception as exc:  # refused (unsafe format), missing artifact, outage, no fit
            kept = f"v{serving.version} keeps serving" if keep and serving else "not served"
            errors.append(f"loading {self.name} v{version} failed ({kept}): {exc!r}")
            return serving if keep else None
        loaded = LoadedVersion(version, model, time.time())
        self._loaded[version] = loaded
        log.info(f"{self.name}: loaded v{version} in {time.monotonic() - started:.2f}s")
        return loaded

    def _evict(self, served: Served) -> None:
        """Keep the served versions and the KEEP_LOADED most recently loaded others."""
        live = {v.version for v in (served.champion, served.challenger) if v is not None}
        others = sorted(
            (v for v in self._loaded.values() if v.version not in live),
            key=lambda v: v.loaded_at,
            reverse=True,
        )
        for stale in others[KEEP_LOADED:]:
            del self._loaded[stale.version]

    def _failed(self, message: str) -> None:
        self.last_error = RefreshError(message, time.time())
        log.error(f"{self.name}: {message}")
        self.on_error(message)
