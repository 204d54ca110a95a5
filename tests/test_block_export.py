"""Block-sparse tickets in TFLite: the exported file stores them in TFLite's fast block format, agrees with Keras,
and `quantize="fastest"` picks the quantization whose kernel matches the blocks (tf_lottery.export, issue 10).

LeNet-300-100 on scikit-learn's digits: fc1 has 64 inputs, fc2 300 and the output layer 100, so for 1x16 blocks
the last two need their inputs padded to 304 and 112 (TFLite's block kernels assume whole blocks).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_lottery
from tf_lottery import export, models
from tf_lottery.pruning import PruningPlan
from tf_lottery.search import SearchConfig, TicketSearch

from conftest import DIGITS as DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = DATA.x_train[:500]


def _ticket(block, *, layer_rates=None):
    """LeNet-300-100 pruned once to ~10% density in `block`s (magnitude at init), then trained with its mask."""
    keras.utils.set_random_seed(0)
    model = tf_lottery.mask(models.lenet300_100(DATA.input_shape, DATA.num_classes))
    plan = PruningPlan(rate=0.9, output_rate=0.5, block=block, layer_rates=layer_rates or {})
    tf_lottery.set_masks(model, plan.apply(model, {key: np.abs(value) for key, value in
                                                   tf_lottery.get_prunable_weights(model).items()}))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(DATA.x_train, DATA.y_train, epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def tickets():
    return {"1x16": _ticket((1, 16)), "1x4": _ticket((1, 4)), "unstructured": _ticket(None)}


@pytest.fixture(scope="module")
def fastest(tickets, tmp_path_factory):
    """`{ticket name: (path, entry)}` of each ticket exported with quantize="fastest"."""
    folder = tmp_path_factory.mktemp("fastest")
    return {name: (folder / f"{name}.tflite",
                   export.export_tflite(ticket, folder / f"{name}.tflite", quantize="fastest",
                                        representative_data=SAMPLE))
            for name, ticket in tickets.items()}


def _fully_connected(entry):
    return {w["layer"]: w for w in entry["weights"] if w["op"] == "FULLY_CONNECTED"}


def test_the_block_structure_is_read_from_the_zeros(tickets):
    assert export.block_structure(tickets["1x16"]) == (1, 16)
    assert export.block_structure(tf_lottery.strip(tickets["1x16"])) == (1, 16)
    assert export.block_structure(tickets["1x4"]) == (1, 4)
    assert export.block_structure(tickets["unstructured"]) is None
    assert export.block_structure(models.lenet300_100(DATA.input_shape, DATA.num_classes)) is None  # No zeros.


def test_fastest_picks_the_quantization_of_the_matching_kernel(fastest):
    picked = {name: (entry["quantize"], entry["requested_quantize"], entry["block"])
              for name, (_, entry) in fastest.items()}
    assert picked == {"1x16": ("int8", "fastest", [1, 16]), "1x4": (None, "fastest", [1, 4]),
                      "unstructured": ("dynamic", "fastest", None)}
    assert {name: entry["quantize"] for name, (_, entry) in fastest.items()} == {
        "1x16": export.FASTEST_QUANTIZE[(1, 16)], "1x4": export.FASTEST_QUANTIZE[(1, 4)],
        "unstructured": export.FASTEST_QUANTIZE[None]}


@pytest.mark.parametrize("name, block", [("1x16", [1, 16]), ("1x4", [1, 4])])
def test_the_file_stores_every_fully_connected_weight_in_blocks(fastest, name, block):
    path, entry = fastest[name]
    weights = _fully_connected(entry)
    assert set(weights) == {"fc1", "fc2", "output"}
    for layer, weight in weights.items():
        assert (weight["storage"], weight["block"], weight["densified"]) == ("block_sparse", block, False), layer
    assert entry["block_sparse_check"] == {"expected_block": block, "met": True, "problems": []}
    # What the flatbuffer says, as the LiteRT interpreter reads it: the blocked dimension and the block size.
    details = {tuple(t["shape"]): t["sparsity_parameters"] for t in export.load_interpreter(path).get_tensor_details()}
    for weight in weights.values():
        sparsity = details[tuple(weight["shape"])]
        assert list(sparsity["block_map"]) == [1] and sparsity["dim_metadata"][2]["dense_size"] == block[1]
    report = json.loads((path.parent / export.REPORT_NAME).read_text())["files"][path.name]
    assert report["weights"] == json.loads(json.dumps(entry["weights"]))
    assert report["block_sparse_check"]["met"] is True


def test_1x16_inputs_are_padded_to_whole_blocks_by_the_layer_before(fastest):
    path, entry = fastest["1x16"]
    assert entry["padded_inputs"] == {"fc2": [300, 304], "output": [100, 112]}
    assert entry["widened_outputs"] == {"fc1": [300, 304], "fc2": [100, 112]}  # Extra zero units, not PAD ops.
    assert [w["shape"] for w in _fully_connected(entry).values()] == [[304, 64], [112, 304], [10, 112]]
    ops = [op["op_name"] for op in export.load_interpreter(path)._get_ops_details()]
    assert ops.count("FULLY_CONNECTED") == 3 and "PAD" not in ops
    assert fastest["1x4"][1]["padded_inputs"] == fastest["1x4"][1]["widened_outputs"] == {}  # 64, 300, 100: x4.


def test_a_dense_layer_whose_input_no_dense_layer_alone_computes_reads_it_through_a_pad_op(tickets, tmp_path):
    """fc1's output (fc2's input) is also part of the model's output, so fc1 cannot grow: a PAD op pads it."""
    ticket = tickets["1x16"]  # Masked: exports as the plain network it is.
    both = keras.Model(ticket.input, keras.layers.Concatenate()([ticket.output, ticket.get_layer("fc1").output]))
    entry = export.export_tflite(both, tmp_path / "pad.tflite", quantize="int8", representative_data=SAMPLE)
    assert entry["padded_inputs"] == {"fc2": [300, 304], "output": [100, 112]}
    assert entry["widened_outputs"] == {"fc2": [100, 112]}
    ops = [op["op_name"] for op in export.load_interpreter(tmp_path / "pad.tflite")._get_ops_details()]
    assert ops.count("PAD") == 1 and entry["block_sparse_check"]["met"] is True


def test_an_unstructured_ticket_is_stored_sparse_and_expanded_at_load(fastest):
    _, entry = fastest["unstructured"]
    assert entry["block_sparse_check"] == {"expected_block": None, "met": None, "problems": []}
    for weight in _fully_connected(entry).values():
        assert weight["storage"] == "sparse" and weight["block"] is None and weight["densified"]


@pytest.mark.parametrize("name", ["1x16", "1x4", "unstructured"])
def test_outputs_match_the_keras_model(tickets, fastest, name):
    path, entry = fastest[name]
    expected = tickets[name].predict(DATA.x_test, verbose=0)
    actual = export.run_tflite(export.load_interpreter(path), DATA.x_test)
    tolerance = export.TOLERANCES[entry["quantize"] or "float"]
    assert np.abs(actual - expected).max() <= tolerance["max_abs_diff"] * np.abs(expected).max()
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= tolerance["top1_agreement"]
    assert entry["parity"]["samples"] == len(SAMPLE)


def test_without_padding_tflites_1x16_kernel_computes_wrong_outputs(tickets, tmp_path, monkeypatch):
    """Why the inputs are padded: TFLite's 1x16 kernel reads past a partial last block (300 and 100 inputs)."""
    monkeypatch.setattr(export, "_pad_dense_inputs", lambda plain, *args, **kwargs: (plain, {}, {}))
    with pytest.raises(export.ParityError, match="int8 export differs"):
        export.export_tflite(tickets["1x16"], tmp_path / "unpadded.tflite", quantize="int8",
                             representative_data=SAMPLE)


def test_each_weight_is_expected_in_the_block_of_its_stored_type(tickets, tmp_path):
    # Dynamic-range quantization keeps weights under 1,024 values (the 10x100 output layer) in float32.
    entry = export.export_tflite(tickets["1x4"], tmp_path / "dynamic.tflite", quantize="dynamic")
    weights = _fully_connected(entry)
    assert {layer: (w["dtype"], w["expected_block"]) for layer, w in weights.items()} == {
        "fc1": ("int8", None), "fc2": ("int8", None), "output": ("float32", [1, 4])}
    assert (weights["output"]["storage"], weights["output"]["block"]) == ("block_sparse", [1, 4])
    assert weights["fc1"]["storage"] == "sparse" and weights["fc1"]["densified"]  # No 1x16 blocks in a 1x4 ticket.
    assert entry["block_sparse_check"] == {"expected_block": None, "met": True, "problems": []}


def test_a_file_not_in_the_expected_blocks_warns_and_reports_it(tickets, tmp_path, monkeypatch):
    monkeypatch.setitem(export.STORED_BLOCKS, "float32", (1, 16))  # Pretend the float kernel read 1x16 blocks.
    with pytest.warns(export.BlockSparsityWarning,
                      match=r"'fc1' \(300x64, density 0\.\d+\) is stored block_sparse 1x4, not block_sparse 1x16"):
        entry = export.export_tflite(tickets["1x16"], tmp_path / "float.tflite", representative_data=SAMPLE)
    assert entry["block_sparse_check"]["met"] is False and len(entry["block_sparse_check"]["problems"]) == 3
    report = json.loads((tmp_path / export.REPORT_NAME).read_text())["files"]["float.tflite"]
    assert report["block_sparse_check"]["met"] is False


def test_block_argument_insists_or_switches_the_check_off(tickets, tmp_path):
    with pytest.raises(ValueError, match=r"block=\(1, 16\), but the zeros of Dense layer\(s\) \['fc1', 'fc2'"):
        export.export_tflite(tickets["1x4"], tmp_path / "a.tflite", block="1x16", representative_data=SAMPLE)
    with pytest.raises(ValueError, match="block must be 'auto', None"):
        export.export_tflite(tickets["1x4"], tmp_path / "a.tflite", block=(2, 4))
    with pytest.raises(ValueError, match="quantize='fastest' picks 'int8' for this 1x16 ticket; it needs "
                                         "representative_data"):
        export.export_tflite(tickets["1x16"], tmp_path / "a.tflite", quantize="fastest")
    entry = export.export_tflite(tickets["1x16"], tmp_path / "b.tflite", quantize="fastest", block=None,
                                 representative_data=SAMPLE)
    assert entry["quantize"] == "dynamic" and entry["block"] is None and entry["block_sparse_check"]["met"] is None
    entry = export.export_tflite(tickets["1x16"], tmp_path / "c.tflite", block=(1, 4), sparse=False,
                                 representative_data=SAMPLE)
    assert entry["block_sparse_check"]["met"] is None and entry["padded_inputs"] == {}
    assert {w["storage"] for w in entry["weights"]} == {"dense"}


def test_export_ticket_fastest_flag(tmp_path):
    run_dir = tmp_path / "run"
    TicketSearch(lambda: models.lenet300_100(DATA.input_shape, DATA.num_classes), DATA,
                 SearchConfig(rounds=1, epochs=1, batch_size=32, prune_rate=0.5, block="1x16"), str(run_dir),
                 verbose=0).run()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "export_ticket.py"),
                             f"--run_dir={run_dir}", f"--output_dir={tmp_path / 'export'}", "--round=1",
                             "--variants=float", "--fastest"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fastest.tflite: quantize=int8 for a 1x16 ticket." in result.stdout
    assert "fc1: block_sparse 1x16" in result.stdout and "Block-sparse check: met." in result.stdout
    report = json.loads((tmp_path / "export" / export.REPORT_NAME).read_text())["files"]
    assert report["fastest.tflite"]["quantize"] == "int8" and report["fastest.tflite"]["block_sparse_check"]["met"]


def test_benchmark_quick_prints_and_writes_the_documented_figures(tmp_path):
    output = tmp_path / "result.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "block_tickets.py"), "--quick",
                             f"--output={output}"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert json.loads(result.stdout) == report and report["quick"] is True and report["format_version"] == 1
    (figures,) = report["datasets"]
    assert figures["dataset"] == "digits" and figures["dense"]["file"]["bytes_ratio"] == 1.0
    (ticket,) = figures["tickets"].values()
    for structure in ("unstructured", "1x4", "1x16"):
        assert ticket[structure]["density"] == pytest.approx(ticket["unstructured"]["density"], abs=0.01)
        assert 0 <= ticket[structure]["reinit_test_accuracy"] <= 1
        assert set(ticket[structure]["files"]) == {"float", "dynamic", "int8"}
        for file in ticket[structure]["files"].values():
            assert file["latency_us"] > 0 and 0 < file["bytes_ratio"] < 1 and 0 <= file["test_accuracy"] <= 1
    assert [ticket[s]["fastest"] for s in ("unstructured", "1x4", "1x16")] == ["dynamic", "float", "int8"]
    reference = ticket["1x16"]["random_mask_file"]  # Same blocks and layer densities, other blocks kept.
    assert reference["quantize"] == "int8" and reference["block_sparse_check"]["met"] is True
    assert reference["density"] == pytest.approx(ticket["1x16"]["files"]["int8"]["density"], abs=0.01)
    assert reference["latency_us"] > 0 and "test_accuracy" not in reference
    assert report["targets"]["digits"]["latency_ratio"]["random_mask_file"] == reference["latency_ratio"]
    assert ticket["1x16"]["files"]["int8"]["storage"] == dict.fromkeys(["fc1", "fc2", "output"], "block_sparse 1x16")
    assert ticket["1x16"]["files"]["int8"]["block_sparse_check"]["met"] is True
    assert set(report["targets"]["digits"]) == {"round", "density", "latency_ratio", "bytes_ratio",
                                                 "accuracy_drop_points"}
    assert len(report["summary"]) == 3 and all(("HELD" in line) != ("MISSED" in line) for line in report["summary"])
    assert "| digits | 100% | dense |" in result.stderr


def test_benchmark_with_learning_rate_rewinding_has_no_reinit_control(tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "block_tickets.py"), "--quick", *flags],
                              capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    bad = run("--rewind=later")
    assert bad.returncode != 0 and "--rewind must be one of" in bad.stderr
    result = run("--rewind=lr")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["settings"]["rewind"] == "lr"
    (ticket,) = report["datasets"][0]["tickets"].values()
    for structure in ("unstructured", "1x4", "1x16"):
        assert ticket[structure]["reinit_test_accuracy"] is None and ticket[structure]["reinit_density"] is None
        assert 0 <= ticket[structure]["keras_test_accuracy"] <= 1
    assert "reinit" not in " ".join(report["datasets"][0]["seconds"])  # No control was trained.
    rows = [line.split("|") for line in result.stderr.splitlines() if line.startswith("| digits |")]
    assert [row[5].strip() for row in rows if row[3].strip() == "1x16"] == ["-"] * 3  # The reinit column.
