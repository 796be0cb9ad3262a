"""The `spark` engine (spec `engine: spark`): the data plane as Spark DataFrames.

Each module mirrors a pandas stage and gives the same answers on the same partitions
(tests/integration/test_spark_engine.py compares them):

- reading: a day's source files (Parquet/CSV, `{date}` partitions) read by Spark;
- validation: the spec's types applied, and the GX suite of mlops_assets.validation run on the
  Spark DataFrame (same rules, same failing-rule report);
- offline: the day's features written to Feast's offline store as a Spark table and the
  point-in-time training set built by Feast's Spark offline store;
- scoring: batch scoring of the champion on the executors, loaded by the suite's safe loader;
- sampling: the bounded sample drift is computed on, drawn by Spark.

Nothing here imports pyspark at module load: it is imported inside the functions, so
`import mlops_assets` works without the `integration` extra.
"""
