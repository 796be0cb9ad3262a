"""The suite's resources, one module (or package) per external system: mlflow_tracking
(MLflowResource), feast_store (FeastResource), validation (GreatExpectationsResource),
drift_detection (EvidentlyResource), storage (MLOPS_HOME, IO manager, reports),
torch_executor (TorchExecutorResource), spark (SparkResource and its IO manager, for
`engine: spark`) and profiles (every resource of a profile, shared by all pipelines of a code
location). Import them from their modules; importing this package loads nothing.

>>> from mlops_resources.profiles import profile_resources
>>> sorted(profile_resources("local"))  # doctest: +NORMALIZE_WHITESPACE
['evidently', 'feast', 'gx', 'io_manager', 'mlflow', 'reports', 'spark', 'spark_io_manager',
 'torch_executor']
"""
