"""Tunes a ticket search with keras-tuner: prune rate, output rate, scope, rewinding point,
learning rate and criterion (see `tf_lottery.tuning`).

Each trial is a short ticket search kept under --output_dir; a table of every trial and
the best trial's ticket (and how to export it) are printed at the end. Run the same command again to resume
an interrupted tuning run (finished trials are not run again):

    python examples/tune_ticket.py --output_dir=runs/tune --max_trials=10 --target_density=0.2
    python examples/tune_ticket.py --output_dir=runs/tune_bo --oracle=bayesian --objective=density

--model and --data take what examples/find_ticket.py takes: a built-in network or a saved Keras
model, PATH.keras, and a built-in dataset, npz:PATH, images:DIR or tfds:NAME:

    python examples/tune_ticket.py --model=my_model.keras --data=npz:my_data.npz --output_dir=runs/tune_mine

Many trials at once: keras-tuner's distributed tuning. Run the same command as a chief, which serves
the oracle (and prints the table and the best ticket once the study ends), and as any number of
workers, which run the trials, all sharing --output_dir; each worker may train its trials under a
tf.distribute --strategy. Restart a killed worker with its own KERASTUNER_TUNER_ID: it resumes its trial.

    export KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000   # the chief's address, on every machine
    KERASTUNER_TUNER_ID=chief python examples/tune_ticket.py --output_dir=/shared/runs/tune
    KERASTUNER_TUNER_ID=tuner0 python examples/tune_ticket.py --output_dir=/shared/runs/tune --strategy=mirrored

Both objectives score validation accuracy (val_accuracy), so the model must be a classifier that
reports accuracy: the built-in networks do; compile a saved model with metrics=["accuracy"]. A saved
compiled model trains with its own optimizer, so its learning rate is not tuned.
"""

import os

from absl import app, flags

from tf_lottery import cli, distribute, tuning
from tf_lottery.search import SearchConfig

flags.DEFINE_integer("max_trials", 10, "Trials to run (random and bayesian oracles).", lower_bound=1)
flags.DEFINE_float("target_density", 0.2, "Density of the scored ticket (accuracy objective); where every "
                   "search stops (both objectives).")
flags.DEFINE_enum("objective", "accuracy", sorted(tuning.OBJECTIVES),
                  "accuracy: validation accuracy at --target_density; density: lowest density whose validation "
                  "accuracy is within --tolerance of the dense network's.")
flags.DEFINE_float("tolerance", 0.005, "Largest validation-accuracy drop for --objective=density.", lower_bound=0)
flags.DEFINE_enum("oracle", "random", sorted(tuning.ORACLES), "keras-tuner oracle.")
cli.define_model_and_data_flags()
flags.DEFINE_integer("epochs", 2, "Training epochs per round (hyperband: the maximum).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "One seed for the oracle and every trial's search.")
flags.DEFINE_string("output_dir", "runs/tune_ticket", "Tuning project directory: one folder per trial.")
flags.DEFINE_boolean("overwrite", False, "Delete an existing project in --output_dir and start again "
                     "(default: resume it). Distributed: only the chief deletes it.")
flags.DEFINE_string("strategy", "default", f"tf.distribute strategy each trial trains under: one of "
                    f"{distribute.STRATEGIES}. Distributed: each worker's own (the chief trains nothing).")
FLAGS = flags.FLAGS


def _format(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_results(rows, fixed=()):
    """Prints one line per trial: id, status, objective and the hyperparameters it tried (not those in `fixed`)."""
    print(f"\n{'trial':<6} {'status':<10} {tuning.OBJECTIVES[FLAGS.objective].name:>12}  hyperparameters")
    for row in rows:
        tried = ", ".join(f"{name}={_format(value)}" for name, value in row["hyperparameters"].items()
                          if name not in fixed)
        print(f"{row['trial']:<6} {row['status']:<10} {_format(row['objective']):>12}  {tried}")


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output_dir = os.path.abspath(FLAGS.output_dir)
    role = tuning.distributed_role()
    strategy = None if role == "chief" else distribute.strategy_from_flag(FLAGS.strategy)
    config = SearchConfig(rounds=None, target_density=FLAGS.target_density, epochs=FLAGS.epochs, seed=FLAGS.seed)
    build, data = cli.model_and_data(seed=config.seed, batch_size=config.batch_size)
    # A compiled model trains with its own optimizer: the search's learning rate stays at its default.
    fixed = {"learning_rate": config.learning_rate} if build().compiled else {}
    hyperparameters = tuning.keras_tuner.HyperParameters()
    for name, value in fixed.items():
        hyperparameters.Fixed(name, value)
    tuner = tuning.LotteryTuner(build, data, config, FLAGS.oracle, objective=FLAGS.objective,
                                tolerance=FLAGS.tolerance, max_trials=FLAGS.max_trials,
                                hyperparameters=hyperparameters, directory=os.path.dirname(output_dir),
                                project_name=os.path.basename(output_dir), overwrite=FLAGS.overwrite,
                                distribution_strategy=strategy)
    if role == "chief":
        print(f"Serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']} "
              "until the workers have run every trial.", flush=True)
    tuner.search()
    if role == "worker":
        print(f"{tuner.tuner_id}: no trials left. The chief prints the results and the best ticket.")
        return
    print_results(tuner.results(), fixed=fixed)
    best = tuner.best_result()
    print(f"\nBest ticket: trial {best['trial']}, round {best['round']} of {best['run_dir']}: {best['ticket']}\n"
          f"Export it: python examples/export_ticket.py --run_dir={best['run_dir']} --round={best['round']} "
          "--output_dir=...")


if __name__ == "__main__":
    app.run(main)
