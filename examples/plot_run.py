"""Draws the figures of one ticket search from its history.json (PNG, matplotlib).

    python examples/plot_run.py --run_dir=runs/lenet [--output_dir=runs/lenet/plots] [--metric=val_mae]

Writes three (or four) PNG files to --output_dir (default: <run_dir>/plots):

    <name>_curves.png      the metric over training iterations, one line per round
    <name>_accuracy.png    the metric at early stop vs percent of weights remaining (log); for a
                           metric that is no accuracy, <name>_<metric>.png (e.g. run_val_loss.png)
    <name>_early_stop.png  early-stop iteration vs percent of weights remaining (log)
    <name>_instability.png (runs with --rewind=auto) the error between the two copies trained from
                           each candidate rewind point (tf_lottery.stability)

<name> is --name, by default the run directory's base name. The metric is --metric, by default the
first of test_accuracy, val_accuracy, test_loss and val_loss that the run recorded (a regression
run: val_loss). A round's early stop is its evaluation with the best value of the run's monitor
(read from its run.json).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from tf_lottery import cli, plots, storage  # noqa: E402
from tf_lottery.run_store import RunStore  # noqa: E402
from tf_lottery.search import SearchConfig, read_run_config  # noqa: E402

flags.DEFINE_string("run_dir", None, "Run directory of a ticket search (holds history.json).", required=True)
flags.DEFINE_string("output_dir", None, "Where to write the PNG files (default: <run_dir>/plots).")
flags.DEFINE_string("name", None, "File name prefix and figure title (default: the run directory's name).")
flags.DEFINE_string("metric", None, "Validation or test metric to plot, e.g. val_mae (default: the first the run "
                    f"recorded of {', '.join(plots.DEFAULT_METRICS)}).")
FLAGS = flags.FLAGS


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        history = plots.load_history(FLAGS.run_dir)
    except storage.CorruptFileError as error:
        raise app.UsageError(f"{error} Is --run_dir a ticket search's run directory?") from None
    if not history.get("rounds"):
        raise app.UsageError(f"{FLAGS.run_dir}/history.json holds no completed rounds yet.")
    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.run_dir)) or "run"
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.run_dir, "plots")
    # A history.json without its run.json (copied on its own): the default monitor.
    config = read_run_config(FLAGS.run_dir) if RunStore(FLAGS.run_dir).is_run() else SearchConfig()
    paths = plots.plot_run(history, output_dir, name=name, metric=FLAGS.metric, monitor=config.monitor,
                           mode=config.mode)
    store = RunStore(FLAGS.run_dir)
    if store.has_instability():
        paths["instability"] = plots.plot_instability(store.read_instability(),
                                                      os.path.join(output_dir, f"{name}_instability.png"),
                                                      title=f"{name}: instability by rewind point")
    for kind, path in paths.items():
        print(f"{kind:>11}: {path}")


if __name__ == "__main__":
    app.run(main)
