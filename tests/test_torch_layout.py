"""The Torch executor's layout: small files, a light import, and stored state that survives
moves inside the package (pickles and launch commands name the package, not its files)."""

import doctest
import importlib.util
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

import mlops_resources.torch_executor as torch_executor
from mlops_resources.torch_executor import TorchExecutorResource, TorchTabularModel
from mlops_resources.torch_executor.launch import WORKER_MODULE, torchrun_command
from tests.test_torch_executor import MetricRecorder, binary_data, fit_binary

PACKAGE = Path(torch_executor.__file__).parent
MAX_LINES = 400


def test_every_file_of_the_package_is_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert len(sizes) >= 8, sizes  # one concern a file, not one big module
    assert max(sizes.values()) <= MAX_LINES, sizes


def test_import_does_not_load_torch_or_mlflow() -> None:
    code = (
        "import sys, mlops_resources.torch_executor, mlops_resources.torch_executor.ddp_worker\n"
        "heavy = ('torch', 'mlflow', 'sklearn', 'pandas', 'numpy')\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pickled_model_round_trips_under_the_package_names(tmp_path: Path) -> None:
    train, holdout = binary_data(n=300)
    model = fit_binary(
        TorchExecutorResource(max_epochs=1), tmp_path, MetricRecorder(), data=(train, holdout)
    )
    named: set[tuple[str, str]] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            named.add((module, name))
            return super().find_class(module, name)

    restored = Recording(io.BytesIO(pickle.dumps(model))).load()
    assert isinstance(restored, TorchTabularModel)
    np.testing.assert_array_equal(restored.predict_proba(holdout), model.predict_proba(holdout))
    # the names pickles carried before the package was split: stored models keep loading
    ours = {(m, n) for m, n in named if m.startswith("mlops_resources")}
    assert ours == {
        ("mlops_resources.torch_executor", "TorchTabularModel"),
        ("mlops_resources.torch_executor", "TabularSpec"),
        ("mlops_resources.torch_executor", "TabularNet"),
    }


def test_stored_markers_and_the_worker_module_stay_valid() -> None:
    assert torch_executor.LOADER_MARKER == "mlops_resources.torch_executor.load_torch_model"
    command = torchrun_command("job.json", nproc_per_node=2, master_port=29500)
    assert command[command.index(WORKER_MODULE) - 1] == "-m"  # what torchrun runs per rank
    assert importlib.util.find_spec(WORKER_MODULE) is not None


def test_the_usage_example_in_the_package_docstring_runs() -> None:
    result = doctest.testmod(torch_executor, raise_on_error=False, verbose=False)
    assert result.attempted >= 5 and result.failed == 0, result
