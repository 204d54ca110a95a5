"""Exports a ticket from a search run as a SavedModel and TFLite files, and prints their sizes.

    python examples/export_ticket.py --run_dir=runs/lenet --output_dir=runs/lenet/export

The ticket is the round given by --round, or else the run's best round (the
sparsest whose monitored validation metric is within the run's tolerance of the
dense round 0's). The
run's dataset (from run.json) provides the inputs for int8 calibration, PQAT
fine-tuning and the parity checks. --output_dir receives `saved_model/`, one
`<variant>.tflite` per --variants entry (see `tf_lottery.export.VARIANTS`) and
`export_report.json` (sizes, density, parity of every file, and how each TFLite
file stores its weights).

--fastest also writes `fastest.tflite`: the quantization whose TFLite sparse
kernel matches the ticket's block structure (float for a 1x4 ticket, int8 for
1x16, dynamic-range int8 for an unstructured one; `export_tflite(...,
quantize="fastest")`), and prints whether the file stores its fully-connected
weights block-sparse as that kernel needs:

    python examples/export_ticket.py --run_dir=runs/b16 --output_dir=runs/b16/export --fastest --variants=float

--compact exports the narrower network instead (`tf_lottery.compact`): the
units no layer reads any more (all of a unit ticket's pruned units) are removed,
after a check that it computes what the masked ticket computes:

    python examples/export_ticket.py --run_dir=runs/units --output_dir=runs/units/export --compact
"""

import os

from absl import app, flags

import tf_lottery
from tf_lottery import cli, data_sources, export, extras, parity
from tf_lottery.run_store import RunStore

flags.DEFINE_string("run_dir", None, "A ticket-search run directory (examples/find_ticket.py --output_dir).")
flags.DEFINE_integer("round", None, "Round to export (default: the run's best round).", lower_bound=0)
flags.DEFINE_string("output_dir", None, "Folder for the exported files and export_report.json.")
flags.DEFINE_string("data_dir", None, "Folder holding the run's dataset files, for datasets that need them.")
# pqat needs the `pqat` extra (TF Model Optimization): the default leaves it out when that is not installed.
DEFAULT_VARIANTS = [name for name in export.VARIANTS if name != "pqat" or extras.available("pqat")]
flags.DEFINE_list("variants", DEFAULT_VARIANTS, f"TFLite files to write, from {list(export.VARIANTS)}.")
flags.DEFINE_bool("fastest", False, "Also write fastest.tflite, quantized to match the ticket's block structure "
                  "(float for 1x4 blocks, int8 for 1x16, dynamic for unstructured tickets).")
flags.DEFINE_bool("compact", False, "Export the narrower network without the units no layer reads "
                  "(tf_lottery.compact), checked against the masked ticket first.")
flags.mark_flags_as_required(["run_dir", "output_dir"])
flags.register_validator("variants", lambda names: bool(names) and set(names) <= set(export.VARIANTS),
                         f"--variants must be a non-empty subset of {list(export.VARIANTS)}.")
FLAGS = flags.FLAGS


def _load_run():
    """(the round's masked model, its metrics, its dataset) from --run_dir and the flags."""
    store = RunStore(FLAGS.run_dir)
    run, history = store.read_record(), store.read_history()
    rounds = history["rounds"]
    if not rounds:
        raise app.UsageError(f"{FLAGS.run_dir} has no completed round yet.")
    index = FLAGS.round if FLAGS.round is not None else history["best_round"]
    if index >= len(rounds):
        raise app.UsageError(f"--round={index}, but {FLAGS.run_dir} has rounds 0 to {len(rounds) - 1}.")
    dataset = run["signature"]["dataset"]
    data = data_sources.load(dataset["name"], data_dir=FLAGS.data_dir, seed=run["config"]["seed"],
                             batch_size=run["config"]["batch_size"])
    if data.describe()["shapes"] != dataset["shapes"]:
        raise app.UsageError(f"The {dataset['name']} data found has sets of shapes {data.describe()['shapes']}, "
                             f"the run used {dataset['shapes']}; point --data_dir at the run's data.")
    return export.load_ticket(FLAGS.run_dir, index), rounds[index], data


def _compacted(model, sample):
    """`tf_lottery.compact(model)`, checked to compute what `model` computes on `sample`; prints what it removed."""
    compacted = tf_lottery.compact(model)
    parity.check(model, lambda x: compacted.predict(x, verbose=0), sample, "compact")
    print(f"Compacted: {compacted.count_params():,} of {model.count_params():,} parameters "
          f"({compacted.count_params() / model.count_params():.1%}).")
    return compacted


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    model, metrics, data = _load_run()
    shown = ", ".join(f"{name} {metrics[name]:.4f}" for name in ("val_loss", "val_accuracy", "test_accuracy")
                      if name in metrics)
    print(f"Round {metrics['round']}: {metrics['density']:.2%} of weights remaining, {shown}.")
    sample = data.take("train", export.PARITY_SAMPLES)[0]
    if FLAGS.compact:
        model = _compacted(model, sample)
    entries = {"saved_model": export.export_saved_model(model, os.path.join(FLAGS.output_dir, "saved_model"),
                                                        representative_data=sample)}
    for variant in FLAGS.variants:
        entries[f"{variant}.tflite"] = export.export_tflite(
            model, os.path.join(FLAGS.output_dir, f"{variant}.tflite"), representative_data=sample,
            **export.VARIANTS[variant])
    if FLAGS.fastest:
        entries["fastest.tflite"] = export.export_tflite(
            model, os.path.join(FLAGS.output_dir, "fastest.tflite"), representative_data=sample,
            quantize=export.FASTEST)
    baseline = entries.get("float.tflite", {}).get("bytes")
    print(f"{'file':<20} {'bytes':>10} {'gzip bytes':>11} {'x float':>8} {'top-1 agreement':>16}")
    for name, entry in entries.items():
        ratio = f"{entry['bytes'] / baseline:.3f}" if baseline and name.endswith(".tflite") else "-"
        print(f"{name:<20} {entry['bytes']:>10,} {entry['gzip_bytes']:>11,} {ratio:>8} "
              f"{entry['parity']['top1_agreement']:>16.2%}")
    if FLAGS.fastest:
        entry = entries["fastest.tflite"]
        check = entry["block_sparse_check"]
        stored = ", ".join(f"{w['layer'] or w['tensor']}: {w['storage']}"
                           f"{' ' + 'x'.join(map(str, w['block'])) if w['block'] else ''}"
                           f"{' (densified at load)' if w['densified'] else ''}" for w in entry["weights"])
        verdict = ("not applicable (no TFLite block kernel fits this ticket)" if check["met"] is None else
                   "met" if check["met"] else "MISSED: " + "; ".join(check["problems"]))
        print(f"fastest.tflite: quantize={entry['quantize'] or 'float'} for a "
              f"{'x'.join(map(str, entry['block'])) if entry['block'] else 'unstructured'} ticket. "
              f"Weights: {stored}. Block-sparse check: {verdict}.")
    print(f"Report: {os.path.join(FLAGS.output_dir, export.REPORT_NAME)}")


if __name__ == "__main__":
    app.run(main)
