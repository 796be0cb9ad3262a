"""The baseline of bench_serving.py: a plain FastAPI + model script doing the same work as the
suite's server with the libraries' fastest public APIs, and nothing else (no registry
following, no canary, no request log, no metrics).

    MLOPS_HOME=... python benchmarks/plain_serving.py MODEL_DIR PORT

MODEL_DIR holds the registered model as downloaded from MLflow (its skops file); the features
are read from the same Feast online store with `get_online_features(...).to_dict()`.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from mlops_assets.features import feature_refs
from mlops_assets.spec import load_spec
from mlops_resources.feast_store import FeastResource

spec = load_spec()
[model_file] = Path(sys.argv[1]).glob("*.skops")
model = sio.load(model_file, trusted=sio.get_untrusted_types(file=model_file))
classes = list(model.classes_)
positive = classes.index(spec.classes[-1])
store = FeastResource().store()
refs = feature_refs(spec)
store.get_online_features(features=refs, entity_rows=[{spec.entity_key: "warm-up"}]).to_dict()


class Entity(BaseModel):
    customer_id: str


class Request(BaseModel):
    entities: list[Entity]


app = FastAPI()


@app.post("/predict")
def predict(body: Request) -> dict:
    rows = [{spec.entity_key: e.customer_id} for e in body.entities]
    values = store.get_online_features(features=refs, entity_rows=rows).to_dict()
    frame = pd.DataFrame({name: values[name] for name in spec.feature_names})
    proba = model.predict_proba(frame)
    labels = np.asarray(classes)[proba.argmax(axis=1)]
    return {
        "predictions": [
            {"customer_id": r[spec.entity_key], "label": str(label), "score": float(p)}
            for r, label, p in zip(rows, labels, proba[:, positive], strict=True)
        ]
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
