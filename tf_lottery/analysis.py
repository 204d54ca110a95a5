"""How robust a ticket is, and whether it transfers: weight noise, adversarial inputs, other data.

Every function takes a masked logits classifier (e.g. a round of a search,
`RunStore.restore_round`) and test images in [0, 1]; `replay` and `transfer`
train the controls with `TicketSearch`, so they are checkpointed and resumable.

    ticket = RunStore("runs/lenet").restore_round(tf_lottery.mask(build()), 10)
    analysis.weight_noise_accuracy(ticket, data.x_test, data.y_test)      # {0.0: 0.97, 0.5: 0.95, ...}
    analysis.adversarial_accuracy(ticket, data.x_test, data.y_test, attack="pgd")

`instability`, the linear mode connectivity that picks a rewind point, is `tf_lottery.stability.instability`.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from tf_lottery import masking, stability
from tf_lottery.run_store import RunStore
from tf_lottery.search import TicketSearch, read_run_config
from tf_lottery.stability import instability  # noqa: F401 (tf_lottery.analysis.instability)

#: Noise scales s: each weight gets N(0, (s x its layer's weight std)^2).
NOISE_SCALES = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
#: L-infinity attack budgets, in units of the [0, 1] pixel range.
EPSILONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
#: The attacks: keyword arguments of `attack`.
ATTACKS = {"fgsm": {}, "pgd": {"steps": 10, "random_start": True}}
#: What `transfer` compares: this run's ticket, the transferred masks, the random-mask control.
TRANSFER_COLUMNS = ("ticket", "transferred", "random_mask")


def accuracy(model, images, labels, batch_size=1024):
    """Top-1 accuracy of a classifier on `images`."""
    hits = sum(int(np.sum(np.argmax(model(images[start:start + batch_size], training=False), -1)
                          == labels[start:start + batch_size]))
               for start in range(0, len(images), batch_size))
    return hits / len(images)


def weight_noise_accuracy(model, images, labels, scales=NOISE_SCALES, repeats=3, seed=0):
    """Accuracy when every masked weight gets Gaussian noise of `s` times its layer's weight std.

    The std is that of the weight's surviving entries (so a sparse ticket and
    a dense network get noise of the same relative size), and pruned weights
    stay at zero. The weights are restored afterwards.

    Returns:
        `{s: mean accuracy over `repeats` draws}` (one draw for s = 0).
    """
    variables, masks = masking.get_prunable_variables(model), masking.get_masks(model)
    saved = {key: variable.numpy() for key, variable in variables.items()}
    stds = {key: saved[key][masks[key] > 0].std() for key in saved}
    rng = np.random.default_rng(seed)
    result = {}
    try:
        for scale in scales:
            draws = []
            for _ in range(repeats if scale else 1):
                for key, variable in variables.items():
                    noise = rng.standard_normal(saved[key].shape) * scale * stds[key]
                    variable.assign((saved[key] + noise.astype(saved[key].dtype)) * masks[key])
                draws.append(accuracy(model, images, labels))
            result[float(scale)] = float(np.mean(draws))
    finally:
        for key, variable in variables.items():
            variable.assign(saved[key])
    return result


def attack(model, images, labels, epsilon, *, steps=1, step_size=None, random_start=False, seed=0):
    """Adversarial images within an L-infinity ball of `epsilon` around `images`.

    With the defaults this is FGSM (Goodfellow et al., 2015): one step of
    `epsilon` along the sign of the loss gradient. With `steps > 1` and
    `random_start` it is PGD (Madry et al., 2018): a uniform random start in
    the ball, then `steps` signed steps of `step_size` (default 2.5 epsilon /
    steps), each projected back onto the ball and onto [0, 1].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if step_size is None:
        step_size = epsilon if steps == 1 else 2.5 * epsilon / steps
    adversarial = images
    if random_start:
        adversarial += tf.random.stateless_uniform(images.shape, (seed, 0), -epsilon, epsilon)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(adversarial)
            loss = keras.losses.sparse_categorical_crossentropy(labels, model(adversarial, training=False),
                                                                from_logits=True)
        adversarial += step_size * tf.sign(tape.gradient(loss, adversarial))
        adversarial = tf.clip_by_value(tf.clip_by_value(adversarial, images - epsilon, images + epsilon), 0, 1)
    return adversarial.numpy()


def adversarial_accuracy(model, images, labels, epsilons=EPSILONS, attack_name="fgsm", batch_size=500, seed=0):
    """`{epsilon: accuracy}` under the attack `attack_name` (a key of `ATTACKS`); epsilon 0 is the clean accuracy."""
    if attack_name not in ATTACKS:
        raise ValueError(f"Unknown attack {attack_name!r}; choose one of {sorted(ATTACKS)}.")
    result = {}
    for epsilon in epsilons:
        adversarial = np.concatenate([
            attack(model, images[start:start + batch_size], labels[start:start + batch_size], epsilon,
                   seed=seed + start, **ATTACKS[attack_name])
            for start in range(0, len(images), batch_size)])
        result[float(epsilon)] = accuracy(model, adversarial, labels)
    return result


def replay(run_dir, masks_from, output_dir, build_model, data, rounds, control=None, verbose=0):
    """Trains the masks of rounds 0 to `rounds` of `masks_from` on `data`, with the settings of `run_dir`.

    Controls at a ticket's densities (`control="reinit"` / `"random_mask"`,
    `masks_from=run_dir`) and transferred masks (`masks_from` a run on other
    data). Weights start from this run's initialization (for a run with the
    same model and seed as `masks_from`: the ticket's own). Resumes a replay
    already in `output_dir`. Returns its history.
    """
    config = dataclasses.replace(read_run_config(run_dir), rounds=rounds, target_density=None, control=control,
                                 one_shot=False, early_bird=None)
    store = RunStore(run_dir)
    if config.rewind == "auto" and store.has_instability():  # Where this run rewound, whatever masks_from chose.
        chosen = store.read_instability()["rewind_iteration"]
        config = dataclasses.replace(config, rewind=stability.rewind_setting(chosen))
    return TicketSearch(build_model, data, config, output_dir, replay_masks_from=masks_from, resume=True,
                        verbose=verbose).run()


def last_round_control(run_dir, output_dir, build_model, data, control, verbose=0):
    """The `control` (`"reinit"` or `"random_mask"`) of the last round of the run in `run_dir`, alone.

    Trains round 0 and that round's masks only (as `replay` does, with the
    run's settings), in `output_dir`. Returns the control's last-round metrics.
    """
    store = RunStore(run_dir)
    last = store.completed_rounds() - 1
    masks_from = store.copy_masks([last], os.path.join(output_dir, "masks")) if last > 1 else run_dir
    return replay(run_dir, masks_from, os.path.join(output_dir, "run"), build_model, data, 1, control,
                  verbose)["rounds"][-1]


def transfer(run_dir, source_dir, output_dir, build_model, data, rounds, verbose=0):
    """Masks found on other data (`source_dir`), rewound and trained on this run's `data`.

    Compares, round by round up to `rounds`, the test accuracy of this run's
    own ticket (found on `data`), of the transferred masks, and of random masks
    of the same per-layer densities (the `random_mask` control), all trained
    with this run's settings. The replays go to `output_dir/transferred` and
    `output_dir/random_mask`.

    Returns:
        `{"source": source_dir, "rounds": [{"round", "density", "ticket",
        "transferred", "random_mask"}]}`, accuracies on the test set.
    """
    source = RunStore(source_dir).read_record()["signature"]["dataset"]
    shape = source["shapes"]["test"][1:]
    if shape != list(data.input_shape):
        raise ValueError(f"Masks found on {source['name']} (images {shape}) cannot be trained on {data.name} "
                         f"(images {list(data.input_shape)}): transfer between datasets of one input shape, "
                         "e.g. mnist_subset and fashion_mnist.")
    ticket = RunStore(run_dir).read_history()["rounds"]
    replays = {name: replay(run_dir, masks_from, os.path.join(output_dir, name), build_model, data, rounds,
                            control, verbose)["rounds"]
               for name, masks_from, control in (("transferred", source_dir, None),
                                                 ("random_mask", run_dir, "random_mask"))}
    rows = zip(ticket, replays["transferred"], replays["random_mask"])
    return {"source": source_dir, "rounds": [
        {"round": own["round"], "density": own["density"], "ticket": own["test_accuracy"],
         "transferred": moved["test_accuracy"], "random_mask": random["test_accuracy"]}
        for own, moved, random in rows]}
