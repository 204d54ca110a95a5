"""Tunes a ticket search with keras-tuner: prune rate, output rate, scope, rewinding point,
learning rate and criterion (see `tf_lottery.tuning`).

Each trial is a short ticket search kept under --output_dir; a table of every trial and
the best trial's ticket (and how to export it) are printed at the end. Run the same command again to resume
an interrupted tuning run (finished trials are not run again):

    python examples/tune_ticket.py --output_dir=runs/tune --max_trials=10 --target_density=0.2
    python examples/tune_ticket.py --output_dir=runs/tune_bo --oracle=bayesian --objective=density
"""

import os

from absl import app, flags

from tf_lottery import cli, datasets, models, tuning
from tf_lottery.search import SearchConfig

flags.DEFINE_integer("max_trials", 10, "Trials to run (random and bayesian oracles).", lower_bound=1)
flags.DEFINE_float("target_density", 0.2, "Density of the scored ticket (accuracy objective); where every "
                   "search stops (both objectives).")
flags.DEFINE_enum("objective", "accuracy", sorted(tuning.OBJECTIVES),
                  "accuracy: validation accuracy at --target_density; density: lowest density whose validation "
                  "accuracy is within --tolerance of the dense network's.")
flags.DEFINE_float("tolerance", 0.005, "Largest validation-accuracy drop for --objective=density.", lower_bound=0)
flags.DEFINE_enum("oracle", "random", sorted(tuning.ORACLES), "keras-tuner oracle.")
flags.DEFINE_enum("model", "lenet300_100", sorted(models.MODELS), "Network to prune.")
flags.DEFINE_enum("dataset", "mnist_subset", list(datasets.NAMES), "Dataset (all offline).")
flags.DEFINE_string("data_dir", None, "Folder holding the dataset files, for datasets that need them.")
flags.DEFINE_integer("epochs", 2, "Training epochs per round (hyperband: the maximum).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "One seed for the oracle and every trial's search.")
flags.DEFINE_string("output_dir", "runs/tune_ticket", "Tuning project directory: one folder per trial.")
flags.DEFINE_boolean("overwrite", False, "Delete an existing project in --output_dir and start again "
                     "(default: resume it).")
FLAGS = flags.FLAGS


def _format(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_results(rows):
    """Prints one line per trial: id, status, objective and the hyperparameters it tried."""
    print(f"\n{'trial':<6} {'status':<10} {tuning.OBJECTIVES[FLAGS.objective].name:>12}  hyperparameters")
    for row in rows:
        tried = ", ".join(f"{name}={_format(value)}" for name, value in row["hyperparameters"].items())
        print(f"{row['trial']:<6} {row['status']:<10} {_format(row['objective']):>12}  {tried}")


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output_dir = os.path.abspath(FLAGS.output_dir)
    config = SearchConfig(rounds=None, target_density=FLAGS.target_density, epochs=FLAGS.epochs, seed=FLAGS.seed)
    data = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir, seed=config.seed)
    build = models.get(FLAGS.model)
    tuner = tuning.LotteryTuner(lambda: build(data.input_shape, data.num_classes), data, config,
                                FLAGS.oracle, objective=FLAGS.objective, tolerance=FLAGS.tolerance,
                                max_trials=FLAGS.max_trials, directory=os.path.dirname(output_dir),
                                project_name=os.path.basename(output_dir), overwrite=FLAGS.overwrite)
    tuner.search()
    print_results(tuner.results())
    best = tuner.best_result()
    print(f"\nBest ticket: trial {best['trial']}, round {best['round']} of {best['run_dir']}: {best['ticket']}\n"
          f"Export it: python examples/export_ticket.py --run_dir={best['run_dir']} --round={best['round']} "
          "--output_dir=...")


if __name__ == "__main__":
    app.run(main)
