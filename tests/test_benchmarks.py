"""Smoke tests of the benchmarks in benchmarks/: they run and write the documented JSON.

Timings are not tested; only that they are measured (positive numbers) and that the ratios and verdicts
the benchmark reports follow from them.
"""

import importlib.util
import json
import re
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPT_ENV, run_script, run_scripts

MODEL_FIELDS = ("repeats", "steps", "batch_size", "constraint_ms", "elementwise_pass_ms")
TIMING_FIELDS = ("plain_ms_per_step", "masked_ms_per_step", "ratio")


def _quick_run(tmp_path, script, *flags):
    """Runs `benchmarks/<script>.py --quick` with `flags`: `(its JSON report, the run)`, the report checked to be
    what it printed."""
    output = tmp_path / f"{script}.json"
    result = run_script(f"benchmarks/{script}.py", "--quick", *flags, f"--output={output}")
    report = json.loads(output.read_text())
    assert json.loads(result.stdout) == report and report["quick"] is True
    return report, result


def _assert_ratios(entry, variant):
    """`ratio` is the median of the per-repeat ratios of `variant` to plain, which the per-repeat times give."""
    plain, other = entry["plain_ms_per_repeat"], entry[f"{variant}_ms_per_repeat"]
    assert len(plain) == len(other) == len(entry["ratio_per_repeat"]) == entry["repeats"]
    assert entry["ratio_per_repeat"] == pytest.approx([o / p for p, o in zip(plain, other)], rel=1e-12)
    assert entry["ratio"] == statistics.median(entry["ratio_per_repeat"])
    assert entry["plain_ms_per_step"] == statistics.median(plain)
    assert entry[f"{variant}_ms_per_step"] == statistics.median(other)


def test_mask_overhead_quick(tmp_path):
    report, _ = _quick_run(tmp_path, "mask_overhead")
    assert report["tensorflow"] and report["keras"] and report["cpu_count"] > 0
    target = re.fullmatch(r"ratio <= ([\d.]+) and below tfmot's; memory ratio <= ([\d.]+)", report["target"])
    assert target, report["target"]
    target_ratio, target_memory = map(float, target.groups())
    assert (target_ratio, target_memory) == (1.02, 0.25)
    peer = report["tfmot"]
    assert peer["model"] == "lenet300_100" and peer["plain_ms_per_step"] > 0 and peer["pruned_ms_per_step"] > 0
    _assert_ratios(peer, "pruned")
    assert set(report["models"]) == {"lenet300_100", "conv2", "bert"}
    for name, entry in report["models"].items():
        for field in MODEL_FIELDS:
            assert entry[field] > 0, (name, field, entry[field])
        for compilation in ("graph", "xla"):
            timing = entry[compilation]
            for field in TIMING_FIELDS:
                assert timing[field] > 0, (name, compilation, field, timing[field])
            _assert_ratios({**timing, "repeats": entry["repeats"]}, "masked")
            copies = [copy / plain for plain, copy in zip(timing["plain_ms_per_repeat"],
                                                          timing["plain_copy_ms_per_repeat"])]
            assert timing["plain_copy_ratio_per_repeat"] == pytest.approx(copies, rel=1e-12)
            assert timing["plain_copy_ratio"] == statistics.median(timing["plain_copy_ratio_per_repeat"])
            assert timing["plain_copy_ms_per_step"] == statistics.median(timing["plain_copy_ms_per_repeat"])
            constraint = [masked / unconstrained for masked, unconstrained in
                          zip(timing["masked_ms_per_repeat"], timing["unconstrained_ms_per_repeat"])]
            assert timing["constraint_ratio_per_repeat"] == pytest.approx(constraint, rel=1e-12)
            assert timing["constraint_ratio"] == statistics.median(constraint)
            assert timing["unconstrained_ratio"] == statistics.median(timing["unconstrained_ratio_per_repeat"])
            assert timing["unconstrained_revives_pruned_weights"] is True, (name, compilation)
            # The verdicts follow from the printed figures.
            assert timing["meets_target"] is (timing["ratio"] <= target_ratio), (name, compilation, timing["ratio"])
            assert timing["pruned_weights_zero"] is True, (name, compilation)
        graph = entry["graph"]
        assert graph["below_tfmot"] is (graph["ratio"] < peer["ratio"]), (name, graph["ratio"], peer["ratio"])
        assert "below_tfmot" not in entry["xla"]
        for cost in ("constraint", "elementwise_pass"):
            assert entry[f"{cost}_share"] == entry[f"{cost}_ms"] / graph["plain_ms_per_step"]
        assert 0 < entry["mask_density"] < 0.5
        memory = entry["memory"]
        assert memory["ratio"] == memory["mask_bytes"] / memory["masked_weight_bytes"] == 0.25  # bool over float32
        assert memory["meets_target"] is (memory["ratio"] <= target_memory)


# Run in its own process: loading the script defines its flags, whose names other benchmarks loaded by this
# worker share. Fits are stood in for by models that record their turn and run the timer's hooks.
_MASK_OVERHEAD_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("mask_overhead", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

class Recorder:
    def __init__(self, name, turns):
        self.name, self.turns = name, turns

    def fit(self, dataset, callbacks, **kwargs):
        for callback in callbacks:
            callback.on_epoch_begin(0)
        self.turns.append(self.name)
        for callback in callbacks:
            callback.on_epoch_end(0)

turns = []
variants = {name: (Recorder(name, turns), list) for name in ("plain", "masked", "plain_copy")}
timing = bench._interleaved(variants, None, repeats=4, steps=1, warmup_steps=1, label="probe")
settings = {}
for flags in ([], ["--steps=7"], ["--quick"]):
    bench.FLAGS.unparse_flags()
    bench.FLAGS(["mask_overhead.py", *flags])
    settings[" ".join(flags)] = {name: bench._settings(name) for name in bench.BATCH_SIZES}
print(json.dumps({"turns": turns, "timing": timing, "settings": settings, "steps": bench.STEPS,
                  "batch_sizes": bench.BATCH_SIZES, "quick": bench.QUICK}))
"""


def test_mask_overhead_rotates_the_variants_and_times_each_model_with_its_own_steps():
    result = subprocess.run([sys.executable, "-c", _MASK_OVERHEAD_PROBE, str(ROOT / "benchmarks" / "mask_overhead.py")],
                            capture_output=True, text=True, env=SCRIPT_ENV, timeout=300, check=True)
    probe = json.loads(result.stdout)
    warm_up, timed = probe["turns"][:3], probe["turns"][3:]
    assert warm_up == ["plain", "masked", "plain_copy"]
    # Each repeat starts one variant later, so each variant takes every place in turn.
    assert [timed[i:i + 3] for i in range(0, len(timed), 3)] == [
        ["plain", "masked", "plain_copy"], ["masked", "plain_copy", "plain"], ["plain_copy", "plain", "masked"],
        ["plain", "masked", "plain_copy"]]
    _assert_ratios({**probe["timing"], "repeats": 4}, "masked")
    steps, batch_sizes = probe["steps"], probe["batch_sizes"]
    assert len(set(steps.values())) > 1  # Each model its own length of fit.
    settings = probe["settings"]
    for name, batch_size in batch_sizes.items():
        assert settings[""][name] == {"repeats": 21, "steps": steps[name], "warmup_steps": min(steps[name], 20),
                                      "batch_size": batch_size}
        assert settings["--steps=7"][name] == {"repeats": 21, "steps": 7, "warmup_steps": 7, "batch_size": batch_size}
        assert settings["--quick"][name] == probe["quick"]
    # The published figures were measured with these settings.
    published = json.loads((ROOT / "benchmarks" / "results" / "mask_overhead.json").read_text())
    for name, entry in published["models"].items():
        assert {key: entry[key] for key in ("steps", "warmup_steps", "batch_size", "repeats")} == settings[""][name]


def test_search_cost_quick(tmp_path):
    output = tmp_path / "search_cost.json"
    asked = ["imp_short", "early_bird", "one_shot", "movement_rate", "two_rounds", "two_rounds_lr", "gradual_lr", "gmp"]
    result, bad = run_scripts(
        ["benchmarks/search_cost.py", "--quick", f"--modes={','.join(asked)}", "--output", str(output)],
        ["benchmarks/search_cost.py", "--quick", "--modes=three_rounds"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert bad.returncode != 0 and "--modes has ['three_rounds']" in bad.stderr
    report = json.loads(output.read_text())
    assert json.loads(result.stdout) == report
    modes = report["datasets"]["digits"]["modes"]
    assert set(report["modes"]) == set(modes) == {"imp", *asked}  # IMP, the baseline, runs unasked.
    for name, entry in modes.items():
        assert entry["seconds"] > 0 and entry["cpu_seconds"] > 0 and entry["iterations"] > 0, name
        assert len(entry["round_seconds"]) == entry["rounds"] and 0 < sum(entry["round_seconds"]) <= entry["seconds"]
        assert entry["density"] <= report["target_density"] + 0.01, name
        assert "digits: " + name in result.stderr
    distances = modes["early_bird"]["early_bird"]["distances"]
    assert distances and all(0 <= distance <= 1 for _, distance in distances)
    assert modes["imp"]["times_cheaper_iterations"] == 1.0
    assert modes["imp_short"]["rounds"] == modes["imp"]["rounds"]
    assert modes["imp_short"]["iterations"] < modes["imp"]["iterations"]
    # One-shot trains two rounds where IMP trains one per step down to the target.
    assert modes["one_shot"]["rounds"] == 2 < modes["imp"]["rounds"]
    assert modes["early_bird"]["dense_round_iterations"] <= modes["one_shot"]["dense_round_iterations"]
    for name in ("two_rounds", "two_rounds_lr"):  # Dense round and two pruning rounds, to IMP's density.
        assert modes[name]["rounds"] == 3 and modes[name]["density"] == pytest.approx(modes["imp"]["density"], abs=0.01)
    # Gradual: four short rounds (12 of 40 iterations) find the masks, the fifth trains the last one in full.
    assert modes["gradual_lr"]["rounds"] == 5 and modes["gradual_lr"]["iterations"] == 4 * 12 + 40
    assert modes["gradual_lr"]["density"] == pytest.approx(modes["imp"]["density"], abs=0.01)
    # Gradual magnitude pruning: a dense round of 4 iterations, then one of 100 that prunes over its first 33.
    assert modes["gmp"]["rounds"] == 2 and modes["gmp"]["iterations"] == 4 + 100
    assert modes["gmp"]["density"] == pytest.approx(modes["imp"]["density"], abs=0.01)


def test_round_overhead_quick(tmp_path):
    report, _ = _quick_run(tmp_path, "round_overhead", "--models=lenet300_100")
    entry = report["models"]["lenet300_100"]
    rounds = report["settings"]["rounds"]
    assert [len(fits) for fits in entry["plain_seconds"]] == [len(r) for r in entry["round_seconds"]] == [rounds]
    ratios = [r / p for fits, seconds in zip(entry["plain_seconds"], entry["round_seconds"])
              for r, p in zip(seconds, fits)]
    assert entry["round_ratio"] == statistics.median(ratios) > 0
    assert entry["search_ratio"] == statistics.median(
        [s / sum(fits) for s, fits in zip(entry["search_seconds"], entry["plain_seconds"])])
    assert entry["meets_target"] is (max(entry["round_ratio"], entry["search_ratio"]) <= 1.05)


def test_structured_tickets_quick(tmp_path):
    report, _ = _quick_run(tmp_path, "structured_tickets", "--models=lenet300_100")
    entry = report["models"]["lenet300_100"]
    densities, shipped = entry["round_densities"], entry["shipped_round"]
    assert len(densities["unit"]) == 3 and len(densities["unstructured"]) == len(densities["1x4"]) == shipped + 1
    assert densities["unstructured"][-1] == pytest.approx(densities["unit"][shipped], abs=0.01)
    assert densities["1x4"][-1] == pytest.approx(densities["unit"][shipped], abs=0.02)
    rounds = entry["unit_rounds"]
    assert [r["units"] for r in rounds] == [{"fc1": 150, "fc2": 50}, {"fc1": 75, "fc2": 25}]  # Half per round.
    assert [r["parameters"] for r in rounds] == [64 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10,
                                                 64 * 75 + 75 + 75 * 25 + 25 + 25 * 10 + 10]
    # The shipped round is the sparsest within 1 point of dense on validation, else the best on validation.
    dense_val = entry["dense_val_accuracy"]
    within = [r["round"] for r in rounds if r["val_accuracy"] >= dense_val - 0.01 - 1e-12]
    best = max(rounds, key=lambda r: r["val_accuracy"])["round"]
    assert entry["shipped_within_validation_tolerance"] is bool(within)
    assert shipped == (max(within) if within else best)
    networks = entry["networks"]
    chosen = rounds[shipped - 1]
    assert networks["unit"]["units"] == chosen["units"] and networks["unit"]["parameters"] == chosen["parameters"]
    assert networks["unit"]["files"] == chosen["files"]
    for record in rounds:
        assert record["compact_parity"]["top1_agreement"] == 1.0
        assert record["keras_latency_ratio"]["batch_256"] == pytest.approx(
            record["keras_latency_us"]["batch_256"] / networks["dense"]["keras_latency_us"]["batch_256"])
    for name, network in [*networks.items(), *((f"round {r['round']}", r) for r in rounds)]:
        for kind, figures in network["files"].items():
            assert figures["latency_us"] > 0 and figures["bytes"] > 0, (name, kind)
            dense = networks["dense"]["files"][kind]
            assert figures["latency_ratio"] == pytest.approx(figures["latency_us"] / dense["latency_us"])
    for name, network in networks.items():
        assert ("beats_reinit" in network) is (name != "dense")
        assert ("keras_latency_ratio" in network) is (name in ("dense", "unit"))
    targets = entry["targets"]
    assert targets["tflite_float_latency_ratio"]["value"] == networks["unit"]["files"]["float"]["latency_ratio"]
    assert set(targets) == {"accuracy_drop_points", "tflite_float_latency_ratio"}


def test_structured_tickets_ships_the_sparsest_round_within_tolerance_else_the_best_on_validation():
    # The function only: the script parses its flags when run as __main__.
    spec = importlib.util.spec_from_file_location("structured_tickets_under_test",
                                                  ROOT / "benchmarks" / "structured_tickets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rounds = [{"round": index, "val_accuracy": value} for index, value in enumerate([0.90, 0.85, 0.88, 0.86])]
    assert bench.shipped_round({"best_round": 3, "rounds": rounds}) == (3, True)
    assert bench.shipped_round({"best_round": 0, "rounds": rounds}) == (2, False)  # None within: best pruned round.


def test_structured_tickets_refuses_bad_per_model_values_before_any_work():
    wrong_count, not_a_number, zero = run_scripts(
        ["benchmarks/structured_tickets.py", "--models=conv2", "--iterations=1,2"],
        ["benchmarks/structured_tickets.py", "--rounds=x"],
        ["benchmarks/structured_tickets.py", "--rounds=0"])
    assert wrong_count.returncode and "--iterations needs one whole number, or one per model (1)" in wrong_count.stderr
    assert not_a_number.returncode and "--rounds needs one whole number, or one per model (2); got ['x']" in \
        not_a_number.stderr
    assert zero.returncode and "--rounds must be at least 1." in zero.stderr


def test_rewinding_depth_quick(tmp_path):
    report, result = _quick_run(tmp_path, "rewinding_depth", "--models=conv2")
    entry = report["models"]["conv2"]
    curves = entry["instability"]["curves"]
    assert [curve["rewind_iteration"] for curve in curves] == [0, 3]  # Fractions 0 and 0.5 of 6 iterations.
    stable = [curve["rewind_iteration"] for curve in curves if curve["barrier"] < 0.02]
    assert entry["rewind_chosen"] == (stable[0] if stable else 3)
    tickets = entry["tickets"]
    assert set(tickets) == {"auto", "init", "lr"}
    assert tickets["auto"]["rewind"] == (f"step:{entry['rewind_chosen']}" if entry["rewind_chosen"] else "init")
    for ticket in tickets.values():
        assert ticket["density"] < 1 and len(ticket["test_accuracy_per_round"]) == 2
        assert 0 <= ticket["reinit_test_accuracy"] <= 1 and 0 <= ticket["random_mask_test_accuracy"] <= 1
    assert entry["config"]["layer_rates"] == "conv1=0.1,conv2=0.1" and entry["config"]["learning_rate"] == 2e-4
    assert "| conv2 |" in result.stderr


def test_pruning_at_init_quick(tmp_path):
    report, result = _quick_run(tmp_path, "pruning_at_init")
    methods = report["models"]["lenet300_100"]["methods"]
    assert list(methods) == ["ticket", "snip", "grasp", "synflow"]
    ticket = methods["ticket"]
    for name, entry in methods.items():
        # Every method ends at the ticket's density, its output layer at the ticket's output density.
        assert entry["density"] == pytest.approx(ticket["density"], abs=1e-3), name
        assert entry["layer_density"]["output/kernel"] == pytest.approx(ticket["layer_density"]["output/kernel"],
                                                                        abs=1e-3), name
        assert entry["beats_random_mask"] == (entry["test_accuracy"] > entry["random_mask_test_accuracy"])
        assert 0 <= entry["reinit_test_accuracy"] <= 1
    assert "| lenet300_100 |" in result.stderr
