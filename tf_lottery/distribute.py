"""`tf.distribute` strategies for ticket searches, and the rules that keep masks correct.

Masks stay identical on every replica because:

- mask variables are created with `aggregation="only_first_replica"` and are
  only assigned in cross-replica context (`set_masks`, between rounds), which
  writes every replica's copy;
- pruned weights are zeroed by a variable constraint that the optimizer applies
  inside the compiled (and XLA-compilable) train step, after the gradients have
  been all-reduced, so every replica applies the same mask to the same values;
- scoring and pruning run once, on the host, between rounds.

Only the chief of a multi-worker cluster writes the run directory; the other
workers write to a private temporary folder, as TensorFlow recommends.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu[:ADDRESS]")


def strategy_from_flag(flag):
    """The `tf.distribute.Strategy` named by `flag`.

    Args:
        flag: `"default"` (one device), `"mirrored"` (all local GPUs, or CPU),
            `"multi_worker"` (a cluster described by the `TF_CONFIG` environment
            variable), or `"tpu"` / `"tpu:ADDRESS"` (a Cloud TPU; the address may
            be a TPU name or a `grpc://` address; empty for a TPU VM).
    """
    name, _, address = flag.partition(":")
    if name == "default" and not address:
        return tf.distribute.get_strategy()
    if name == "mirrored" and not address:
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker" and not address:
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable that describes "
                             "the cluster and this worker's task (see the README's 'Scaling out').")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {flag!r}; choose one of {STRATEGIES}.")


def is_chief(strategy):
    """Whether this process writes the run directory (always, outside a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def writable_dir(run_dir, strategy):
    """`run_dir` on the chief; a private temporary folder on the other workers."""
    if is_chief(strategy):
        return run_dir
    return tempfile.mkdtemp(prefix="tf_lottery_worker_")


def is_multi_worker(strategy):
    """Whether `strategy` spans several worker processes."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def fit_with_strategy_run(model, dataset, *, epochs, steps_per_epoch, callbacks, strategy):
    """`model.fit` for a compiled classifier, as a `strategy.run` loop.

    Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` ("Attempt to convert
    a value (PerReplica...) to a Tensor"); a custom loop is TensorFlow's
    documented way. The loss is the model's compiled loss per example, averaged
    over the global batch; the optimizer applies the mask constraints as in `fit`.
    Callbacks get the batch and epoch calls `fit` makes (without logs).
    """
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    global_batch = dataset.element_spec[0].shape[0]

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = model.loss.call(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)

    @tf.function(jit_compile=bool(model.jit_compile))
    def train_step():
        strategy.run(replica_step, args=next(iterator))

    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch)
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            train_step()
            callback_list.on_train_batch_end(step)
        callback_list.on_epoch_end(epoch)
    callback_list.on_train_end()


def evaluate_locally(model, images, labels, batch_size=1024):
    """Mean loss and accuracy of a logits classifier, computed by this process alone.

    Every replica holds the same weights, so each worker evaluates the whole set
    on its own; no collective is involved (unlike `model.evaluate` under a
    multi-worker strategy).
    """
    losses, hits = [], 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size], training=False)
        batch_labels = labels[start:start + batch_size]
        losses.append(keras.losses.sparse_categorical_crossentropy(batch_labels, logits, from_logits=True).numpy())
        hits += int((np.argmax(logits.numpy(), axis=-1) == batch_labels).sum())
    return {"loss": float(np.concatenate(losses).mean()), "accuracy": hits / len(images)}
