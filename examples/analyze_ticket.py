"""Robustness and transfer of a ticket from a search run directory.

Compares the ticket of one round (default: the run's best round) with the
dense network (round 0) and the reinit control at the ticket's density
(trained here, into --output_dir/reinit_control, unless already there):
accuracy under Gaussian weight noise and under FGSM and PGD attacks on the
test set. With --transfer_from (a run of the same model on other data of the
same input shape), it also trains that run's masks on this run's data and
compares them, round by round, with this run's ticket and the random-mask
control (see `tf_lottery.analysis.transfer`).

    python examples/analyze_ticket.py --run_dir=runs/fashion --transfer_from=runs/lenet

The network is rebuilt from the run's model.keras; runs started before it was
kept need --model, the built-in network they searched. The analysis measures
accuracy, so it serves classifiers with one input.

Writes analysis.json and analysis.png to --output_dir (default: RUN_DIR/analysis).
"""

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

import keras  # noqa: E402

from tf_lottery import analysis, cli, data_sources, masking, models, plots, storage, weights  # noqa: E402
from tf_lottery.run_store import MODEL_FILE, RunStore  # noqa: E402
from tf_lottery.search import read_run_config  # noqa: E402

flags.DEFINE_string("run_dir", None, "Run directory of a ticket search (examples/find_ticket.py).", required=True)
flags.DEFINE_string("output_dir", None, "Where to write the results and the control runs (default: RUN_DIR/analysis).")
flags.DEFINE_enum("model", None, sorted(models.MODELS), "For runs without model.keras: the built-in network the "
                  "run searched.")
flags.DEFINE_string("data_dir", None, "Folder holding the dataset files, for datasets that need them.")
flags.DEFINE_integer("round", None, "Round whose ticket to analyze (default: the run's best round).", lower_bound=1)
flags.DEFINE_list("noise_scales", [str(s) for s in analysis.NOISE_SCALES], "Weight noise scales s (x layer std).")
flags.DEFINE_integer("noise_repeats", 3, "Noise draws averaged per scale.", lower_bound=1)
flags.DEFINE_list("epsilons", [str(e) for e in analysis.EPSILONS],
                  "FGSM and PGD budgets (L-infinity, pixels in [0, 1]).")
flags.DEFINE_integer("samples", 1000, "Test images the noise and the attacks are measured on.", lower_bound=1)
flags.DEFINE_string("transfer_from", None, "A run on other data whose masks to train on this run's data.")
flags.DEFINE_enum("verbose", "0", ["0", "1"], "1: Keras' progress bars while training controls.")
FLAGS = flags.FLAGS


def _print_table(title, columns, rows):
    print(f"\n{title:<14}" + "".join(f"{column:>8}" for column in columns))
    for name, values in rows.items():
        print(f"{name:<14}" + "".join(f"{value:8.3f}" for value in values))


def _builder(store, data):
    """The network of the run: its model.keras (with its starting weights), or --model for older runs."""
    if FLAGS.model:
        return functools.partial(models.get(FLAGS.model), data.input_shape, data.num_classes)
    if not os.path.exists(store.path(MODEL_FILE)):
        raise app.UsageError(f"{store.run_dir} has no {MODEL_FILE} (it was started before runs kept their model): "
                             "pass --model, the built-in network it searched.")
    return functools.partial(keras.saving.load_model, store.path(MODEL_FILE))


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run_dir, output_dir = FLAGS.run_dir, FLAGS.output_dir or os.path.join(FLAGS.run_dir, "analysis")
    try:
        config = read_run_config(run_dir)
        store = RunStore(run_dir)
        history, signature = store.read_history(), store.read_record()["signature"]
        scales, epsilons = [float(s) for s in FLAGS.noise_scales], [float(e) for e in FLAGS.epsilons]
    except (storage.CorruptFileError, ValueError) as error:
        raise app.UsageError(f"Cannot analyze {run_dir}: {error}") from None
    index = FLAGS.round or history["best_round"]
    if not index or index >= len(history["rounds"]):
        raise app.UsageError(f"{run_dir} has rounds 0 to {len(history['rounds']) - 1} and its best round is "
                             f"{history['best_round']}; pass --round=N for a pruned round (N >= 1) it has.")
    dataset = signature["dataset"]["name"]
    data = data_sources.load(dataset, data_dir=FLAGS.data_dir, seed=config.seed, batch_size=config.batch_size)
    build = _builder(store, data)
    shapes = {path: list(value.shape) for path, value in weights.snapshot(build()).items()}
    if shapes != signature["weights"]:
        raise app.UsageError(f"{run_dir} did not search --model={FLAGS.model} (its weights differ); "
                             "pass the --model it searched.")
    verbose = int(FLAGS.verbose)
    control_dir = os.path.join(output_dir, "reinit_control")
    analysis.replay(run_dir, run_dir, control_dir, build, data, index, control="reinit", verbose=verbose)
    networks = {"ticket": store.restore_round(masking.mask(build()), index),
                "dense": store.restore_round(masking.mask(build()), 0),
                "reinit": RunStore(control_dir).restore_round(masking.mask(build()), index)}
    images, labels = data.take("test" if data.test is not None else "validation", FLAGS.samples)
    report = {
        "run_dir": os.path.abspath(run_dir), "dataset": dataset, "round": index, "samples": len(images),
        "density": {name: masking.sparsity_report(model)["density"] for name, model in networks.items()},
        "noise": {name: analysis.weight_noise_accuracy(model, images, labels, scales, FLAGS.noise_repeats,
                                                       config.seed)
                  for name, model in networks.items()},
        "adversarial": {attack: {name: analysis.adversarial_accuracy(model, images, labels, epsilons, attack,
                                                                     seed=config.seed)
                                 for name, model in networks.items()}
                        for attack in analysis.ATTACKS},
    }
    if FLAGS.transfer_from:
        try:
            report["transfer"] = analysis.transfer(run_dir, FLAGS.transfer_from, os.path.join(output_dir, "transfer"),
                                                   build, data, index, verbose)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    storage.write_json(os.path.join(output_dir, "analysis.json"), report)
    plots.plot_analysis(report, os.path.join(output_dir, "analysis.png"))
    print(f"Round {index} of {run_dir} on {dataset}: ticket {report['density']['ticket']:.1%} of weights, "
          f"reinit control {report['density']['reinit']:.1%}, dense round 0; test accuracy on {len(images)} images.")
    _print_table("noise s", scales, {name: curve.values() for name, curve in report["noise"].items()})
    for attack, curves in report["adversarial"].items():
        _print_table(f"{attack} eps", epsilons, {name: curve.values() for name, curve in curves.items()})
    if "transfer" in report:
        rows = report["transfer"]["rounds"]
        _print_table("transfer", [f"{row['density']:.1%}" for row in rows],
                     {key: [row[key] for row in rows] for key in analysis.TRANSFER_COLUMNS})
    print(f"\nResults: {os.path.join(output_dir, 'analysis.json')} and analysis.png")


if __name__ == "__main__":
    app.run(main)
