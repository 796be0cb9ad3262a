"""Pure ML code of the suite, with no Dagster in it: what the asset modules call.

    dataset.py      the training set's split and weight columns, split(), content_hash()
    evaluation.py   model_output, output_metrics, evaluate, monitored_output, positive_class
    estimators.py   build_estimator: the scikit-learn pipeline of a spec
    model_kinds.py  one ModelKind interface (SklearnKind, TorchKind): fit, log, tags
    gate.py         the promotion gate's decide() and its Blessing
    windows.py      label time and training windows
    governance/     lineage, slices, fairness, calibration, the report, plots, model card,
                    reproduction

Importing any of these imports neither Dagster nor an asset module (mlops_assets.ml imports no
asset module); heavy libraries (pandas, sklearn, mlflow, torch) load inside functions.

>>> from mlops_assets.ml.gate import decide
>>> from mlops_assets.spec import METRICS_BY_TASK, GateSpec
>>> gate = GateSpec(value_thresholds={"roc_auc": {"min": 0.7}})
>>> decide(gate, METRICS_BY_TASK["binary_classification"], {"roc_auc": 0.8}, None, None).blessed
True
"""
