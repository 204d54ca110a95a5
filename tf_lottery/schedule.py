"""The round schedule of a ticket search: which masks, start weights and length each round gets.

Round 0 trains the dense network. Every later round prunes the previous round's
trained network with the plan (or takes replayed or random masks), resets the
survivors to the rewind weights (or keeps the trained weights for `lr` /
`finetune`, or draws fresh ones for the `reinit` control), and trains again.
The schedule holds the arrays later rounds start from; it reads and writes no files.
"""

import sys

import numpy as np

from tf_lottery import criteria, masking, structure, weights
from tf_lottery.pruning import compounded_plan, random_masks_like, simulate


def round_seed(seed, round_index):
    """The seed of one round, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


class RoundSchedule:
    """Decides each round of a search on `model`.

    Args:
        config: the `SearchConfig`.
        model: the search's masked model.
        round_seed: `index -> int`, the seed of round `index`.
        fresh_weights: `index -> weights`, a fresh initialization for round
            `index` of the `reinit` control.
        replayed: the masks of each round of a replayed run, or `None`.
    """

    def __init__(self, config, model, round_seed, fresh_weights, replayed=None):
        self.config, self.model, self.round_seed = config, model, round_seed
        self.fresh_weights, self.replayed = fresh_weights, replayed
        self.plan = config.plan()
        self.criterion = criteria.get(config.criterion, seed=config.seed)
        self.initial_weights = weights.snapshot(model)
        # The units of a unit plan and what depends on them; None when the plan prunes single weights.
        self.structure = structure.analyze(model) if config.granularity == "unit" else None
        self._state = None  # The arrays of the last round (see `keep`).

    def check_plan(self):
        """Raises a `ValueError` if the plan names layers it cannot prune (or, for units, the model has none)."""
        masks = masking.get_masks(self.model)
        if self.structure is None:
            self.plan.check_names(masks)
        else:  # A unit plan may also name attention layers, which hold no masks of their own.
            self.structure.check_plan(self.plan, masks)

    def state_names(self):
        """The arrays each round keeps: masks and weights, and what the criterion needs."""
        names = ["masks", "rewind", "trained"]
        return names + ["statistics"] if self.config.criterion in criteria.RECORDED else names

    def last_round(self):
        config = self.config
        if config.prunes_once:
            return 1
        if config.rounds_to_target:
            return min(config.rounds or sys.maxsize, config.rounds_to_target)
        if self.replayed is not None:
            return len(self.replayed) - 1 if config.rounds is None else min(len(self.replayed) - 1, config.rounds)
        return config.rounds if config.rounds is not None else sys.maxsize

    def done(self, rounds):
        """Whether the search ends after the completed `rounds` (their metrics)."""
        return len(rounds) > self.last_round() or bool(rounds) and self.at_target(rounds[-1]["density"])

    def at_target(self, density):
        return self.config.target_density is not None and density <= self.config.target_density + 1e-9

    def iterations(self, index, masks, steps_per_epoch):
        """The training length of round `index`, which ends with `masks`: interim, unless it is the last round."""
        config = self.config
        full = config.round_length(steps_per_epoch)
        if not config.interim_iterations or index == self.last_round() or self.at_target(masking.density(masks)):
            return full
        return config.interim_iterations

    def masks(self, index):
        """The masks round `index` ends with."""
        if index == 0:
            masks = masking.get_masks(self.model)
        elif self.replayed is not None:
            masks = self.replayed[index]
        else:
            masks = self._pruned_masks()
        if self.config.control == "random_mask" and index > 0:
            if self.structure is not None:
                masks = self.structure.random_like(masks, self.round_seed(index))
            else:
                masks = random_masks_like(masks, self.round_seed(index), self.plan.block)
        return masks

    def next_density(self, masks):
        """The global density the round after one that ends with `masks` prunes to."""
        if self.at_target(masking.density(masks)):
            return masking.density(masks)  # The search ends here.
        plan = self.one_shot_plan(masks) if self.config.prunes_once else self.plan
        return masking.density(simulate(plan, masks, self.output_layer()))

    def one_shot_plan(self, masks):
        """The plan that prunes `masks` to the search's final density at once."""
        return compounded_plan(self.plan, masks, self.output_layer(), self.config.rounds)

    def output_layer(self):
        return masking.output_layer(self.model)

    def prunes_gradually(self, index):
        return bool(self.config.gradual_iterations) and index > 0

    def start(self, index, masks):
        """Sets the weights and masks round `index` starts with: `masks`, or the last round's if it prunes gradually."""
        start = self._start_weights(index)
        masking.set_masks(self.model, self._state["masks"] if self.prunes_gradually(index) else masks)
        weights.restore(self.model, start)

    def keep(self, index, state):
        """Keeps the arrays of round `index` (`masks`, `rewind`, `trained`, maybe `statistics`) for the next round,
        and round 0's rewind weights: where later rounds restart.

        Round 0 trains every weight, so its rewind weights hold the rewind value
        of each one; a later round's have its pruned weights zeroed, and a mask
        that is not nested in the one before (the random_mask control) would
        restart some survivors from 0 if it rewound to them.
        """
        self._state = state
        if index == 0:
            self._rewind_point, self._first_masks = state["rewind"], state["masks"]

    def _pruned_masks(self):
        state = self._state
        final = masking.get_prunable_weights(self.model, state["trained"])
        initial = masking.get_prunable_weights(self.model, state["rewind"])
        scores = criteria.score(self.criterion, final, initial, state.get("statistics"))
        if self.structure is not None:
            units = self.structure.unit_scores(scores, state["trained"], self.config.unit_score)
            return self.structure.prune(self.plan, state["masks"], units)
        if self.config.prunes_once:
            plan = self.one_shot_plan(state["masks"])
        elif self.config.rounds_to_target:
            plan = compounded_plan(self.plan, self._first_masks, self.output_layer(),
                                   steps=self.config.rounds_to_target)
        else:
            plan = self.plan
        return plan.prune(state["masks"], scores, output_layer=self.output_layer())

    def _start_weights(self, index):
        """The weights round `index` starts from, before its masks are applied."""
        if self.config.control == "reinit":
            return self.fresh_weights(index)
        if index == 0:
            return self.initial_weights
        if self.config.rewind in ("lr", "finetune"):
            return self._state["trained"]
        return self._rewind_point
