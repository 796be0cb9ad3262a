"""Online inference: the champion behind an HTTP endpoint (`python -m mlops_assets serve`).

Modules, one concern each (docs/serving.md):

- `models`: follows the registry; loads a version through the suite's safe loader and swaps it
  in atomically, so every request is answered by exactly one champion version.
- `scoring`: entity rows + Feast online features + request-time features -> the model's frame;
  the model's output -> label and score (classification) or value.
- `canary`: sticky routing of a fraction of entities to the challenger, its live metric on
  labelled traffic, and the automatic, audited stop.
- `request_log`: the other version's shadow prediction and the Parquet request log, both off
  the response path (a bounded queue; drops are counted).
- `metrics`: Prometheus counters, latency histogram and the versions served.
- `app`: the FastAPI application; `server`: builds it for the chosen pipelines and runs uvicorn.

Importing this package loads neither FastAPI nor MLflow, Feast or scikit-learn.
"""
