"""Draws the figures of one ticket search from its history.json (PNG, matplotlib).

    python examples/plot_run.py --run_dir=runs/lenet [--output_dir=runs/lenet/plots]

Writes three PNG files to --output_dir (default: <run_dir>/plots):

    <name>_curves.png      test accuracy over training iterations, one line per round
    <name>_accuracy.png    test accuracy at early stop vs percent of weights remaining (log)
    <name>_early_stop.png  early-stop iteration vs percent of weights remaining (log)

<name> is --name, by default the run directory's base name.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from tf_lottery import cli, plots, storage  # noqa: E402

flags.DEFINE_string("run_dir", None, "Run directory of a ticket search (holds history.json).", required=True)
flags.DEFINE_string("output_dir", None, "Where to write the PNG files (default: <run_dir>/plots).")
flags.DEFINE_string("name", None, "File name prefix and figure title (default: the run directory's name).")
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
    for kind, path in plots.plot_run(history, output_dir, name=name).items():
        print(f"{kind:>10}: {path}")


if __name__ == "__main__":
    app.run(main)
