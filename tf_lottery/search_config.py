"""The settings of a ticket search: `SearchConfig`, checked when it is made.

Every field has a default and a help text (`dataclasses.fields(SearchConfig)`,
each field's `metadata["help"]` and `["choices"]`), which the command-line
examples turn into their flags. A bad value, or a combination the search cannot
run, is a `ValueError` that names the fix, raised before any training.
"""

import dataclasses

from tf_lottery import criteria, saliency
from tf_lottery.callbacks import UNITS, parse_rewind_point
from tf_lottery.pruning import SCOPES, PruningPlan, parse_block
from tf_lottery.structure import UNIT_SCORES
from tf_lottery.trainer import COSINE_FLOOR, monitor_mode

REWIND_MODES = ("init", "step:K", "epoch:K", "lr", "finetune", "auto")
#: The iterations `rewind="auto"` tests by default, as fractions of a round: 0 and early points.
AUTO_REWIND_FRACTIONS = (0, 0.01, 0.02, 0.05, 0.1)
CONTROLS = ("reinit", "random_mask")
GRANULARITIES = ("weight", "unit")
OPTIMIZERS = ("adam", "sgd", "momentum")
LR_SCHEDULES = ("constant", "cosine")
MODES = ("auto", "min", "max")


def _field(default, help, choices=None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of a ticket search; each field's metadata carries its help text."""

    rounds: int | None = _field(5, "Pruning rounds after the dense round 0 (None: until target_density).")
    target_density: float | None = _field(None, "Stop once the global density is at or below this fraction.")
    prune_rate: float = _field(0.2, "Fraction of surviving weights pruned per round.")
    output_prune_rate: float | None = _field(0.1, "Rate for the output layer (None: same as prune_rate).")
    layer_rates: str | None = _field(None, "Per-layer rates overriding the two above, 'layer=rate,...' (e.g. "
                                           "'conv1=0.1,conv2=0.1': the paper's Conv-2 prunes convolutions at 10%).")
    scope: str = _field("layerwise", "Rank weights per layer, globally, or globally with each layer keeping its "
                                      "Erdos-Renyi-Kernel share of the survivors (erk, as RigL).", SCOPES)
    block: str | None = _field(None, "Prune 2-D kernels in blocks, 'RxC' in TFLite's [out, in] layout: "
                                     "'1x4' (fast sparse float TFLite) or '1x16' (fast sparse int8).")
    granularity: str = _field("weight", "Prune single weights, or whole units: Dense units and convolution filters, "
                                        "each with the rows of the layers that read it, its BatchNormalization and "
                                        "depthwise channels and its residual partners (see tf_lottery.structure; "
                                        "tf_lottery.compact then builds the narrower network).", GRANULARITIES)
    unit_score: str = _field("weights", "How a unit plan ranks units: the mean of the criterion's scores over a "
                                        "unit's weights, or the |scale| of its BatchNormalization channels "
                                        "(bn_scale, network slimming).", UNIT_SCORES)
    criterion: str = _field("magnitude", "Pruning criterion. snip, grasp and synflow score the weights as each "
                                         "round starts (round 0: at initialization; see tf_lottery.saliency): with "
                                         "one_shot, the pruning-at-initialization baselines.", tuple(criteria.CRITERIA))
    movement_every: str = _field("step", "How often criterion movement_rate adds up |Δw|: every step, or every "
                                         "epoch (evaluation period).", UNITS)
    rewind: str = _field("init", f"Where survivors restart each round: {REWIND_MODES}. auto: the earliest of "
                                 "rewind_candidates from which training is stable (two copies trained on two data "
                                 "orders meet with an error barrier under stability_threshold; see "
                                 "tf_lottery.stability), measured on the dense network before round 0.")
    rewind_candidates: str | None = _field(None, "Iterations that rewind=auto tests, 'k1,k2,...' (default: 0 and "
                                                 "1%, 2%, 5% and 10% of a round). Each costs two rounds' training.")
    stability_threshold: float = _field(0.02, "The error barrier under which rewind=auto calls training stable, "
                                              "in the validation accuracy's units (0.02: Frankle et al.'s 2 "
                                              "points).")
    control: str | None = _field(None, "Run a control instead of a ticket search: reinit (the masks, a fresh "
                                       "initialization) or random_mask (random masks of the same per-layer density, "
                                       "in the same blocks).", CONTROLS)
    one_shot: bool = _field(False, "Prune straight to the target density (or `rounds` rounds' worth) at once.")
    rounds_to_target: int | None = _field(None, "Reach target_density in this many pruning rounds, each removing "
                                                "the same share of what the plan's rates remove on the way there "
                                                "(1 is one_shot).")
    early_bird: float | None = _field(None, "Early-bird tickets (You et al., 2020): end the dense round once the "
                                            "mask drawn at the final density changes by less than this fraction "
                                            "(e.g. 0.1) in early_bird_patience evaluations in a row, then prune "
                                            "to it at once, as one_shot does.")
    early_bird_patience: int = _field(5, "Consecutive stable evaluations that end an early-bird dense round.")
    epochs: int | None = _field(5, "Training epochs per round (exclusive with iterations).")
    iterations: int | None = _field(None, "Training iterations per round (exclusive with epochs).")
    interim_iterations: int | None = _field(None, "Training iterations of every round before the last (round 0 "
                                                  "too), which only have to find the masks; the last round trains "
                                                  "for the full epochs/iterations. With rewind='lr': gradual "
                                                  "pruning at the cost of a few dense trainings.")
    gradual_iterations: int | None = _field(None, "Prune every round after round 0 gradually, over its first this "
                                                  "many iterations (Zhu & Gupta's cubic schedule, see "
                                                  "GradualPruning): from the previous round's masks to as many "
                                                  "survivors as the plan keeps, chosen by the criterion as the "
                                                  "weights train. With rewind='lr' and rounds_to_target=1: gradual "
                                                  "magnitude pruning after a dense round.")
    gradual_every: int = _field(100, "Iterations between the pruning steps of gradual_iterations.")
    eval_every: int | None = _field(None, "Iterations between evaluations (default: one epoch, or 100).")
    batch_size: int = _field(60, "Training batch size of (x, y) arrays (a tf.data pipeline batches itself).")
    optimizer: str = _field("adam", "Optimizer of an uncompiled model ('momentum': SGD with momentum 0.9); a "
                                    "compiled model trains with its own.", OPTIMIZERS)
    learning_rate: float = _field(1.2e-3, "Initial learning rate of an uncompiled model's optimizer.")
    lr_schedule: str = _field("constant", f"Learning-rate schedule within a round of an uncompiled model (cosine: "
                                          f"down to {COSINE_FLOOR:g} of learning_rate).", LR_SCHEDULES)
    monitor: str = _field("val_loss", "Validation metric that picks each round's early-stop evaluation (its best) "
                                      "and the best round: 'val_' and a compiled metric's name (val_loss, "
                                      "val_accuracy, val_auc, ...).")
    mode: str = _field("auto", "Whether monitor improves as it falls (min) or rises (max); auto reads it from the "
                               "name, as Keras' callbacks do.", MODES)
    tolerance: float = _field(0.005, "How much worse than round 0's final monitored value a round's may be for it "
                                     "to be the best round, in the metric's units (0.005 of accuracy: half a "
                                     "point).")
    seed: int = _field(0, "One seed for initialization, data order, dropout and random masks.")
    jit_compile: bool = _field(False, "Compile the train step with XLA (the path TPUs take).")

    def __post_init__(self):
        self.plan()  # Validates the pruning fields.
        for field in dataclasses.fields(self):
            allowed = field.metadata["choices"]
            value = getattr(self, field.name)
            if allowed and value not in allowed and not (value is None and field.default is None):
                raise ValueError(f"{field.name} must be one of {allowed}; got {value!r}.")
        if self.rewind not in ("init", "lr", "finetune", "auto"):
            try:
                parse_rewind_point(self.rewind)
            except ValueError:
                raise ValueError(f"rewind must be one of {REWIND_MODES}; got {self.rewind!r}.") from None
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("Give exactly one of epochs or iterations per round.")
        for name in ("rounds", "epochs", "iterations", "interim_iterations", "gradual_iterations", "gradual_every",
                     "eval_every", "batch_size", "early_bird_patience", "rounds_to_target"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if self.rounds is None and self.target_density is None:
            raise ValueError("Give rounds, target_density, or both, so the search knows when to stop.")
        if self.rounds_to_target is not None and (self.target_density is None or self.prunes_once):
            raise ValueError("rounds_to_target needs target_density (the density its rounds reach) and excludes "
                             "one_shot and early_bird (which prune to it in one round).")
        for name in ("iterations", "interim_iterations"):
            value = getattr(self, name)
            if value and self.eval_every and value % self.eval_every:
                raise ValueError(f"{name} ({value}) must be a multiple of eval_every ({self.eval_every}).")
        if ":" in self.rewind:  # Round 0 trains for interim_iterations, if given.
            unit, count = parse_rewind_point(self.rewind)
            if unit == "step":
                length = self.interim_iterations or self.iterations
            else:
                length = None if self.interim_iterations else self.epochs
            if length is not None and count > length:
                raise ValueError(f"The rewind point {self.rewind} lies beyond round 0, which trains for {length} "
                                 f"{unit}{'s' * (length != 1)}: rewind earlier, or train round 0 longer.")
        if self.rewind == "auto" and self.interim_iterations:
            raise ValueError("rewind='auto' tests rewind points with rounds of full length, so it excludes "
                             "interim_iterations: choose the rewind point with rewind='step:K'.")
        if not 0 < self.stability_threshold < 1:
            raise ValueError(f"stability_threshold must be in (0, 1); got {self.stability_threshold!r}.")
        self.auto_rewind_candidates(1)  # Validates rewind_candidates.
        if self.gradual_iterations and self.iterations and self.gradual_iterations > self.iterations:
            raise ValueError(f"gradual_iterations ({self.gradual_iterations}) exceeds a round's iterations "
                             f"({self.iterations}): prune over fewer iterations, or train longer.")
        if self.gradual_iterations and self.control:
            raise ValueError("A control trains given masks from the start of every round, so it cannot prune "
                             "gradually: run it without gradual_iterations.")
        if self.granularity == "unit" and (self.block or self.scope != "layerwise" or self.prunes_once
                                           or self.rounds_to_target or self.gradual_iterations):
            raise ValueError("granularity='unit' prunes each layer's units round by round at its own rate: it "
                             "excludes block, scope='global' or 'erk', one_shot, early_bird, rounds_to_target and "
                             "gradual_iterations.")
        if self.criterion in saliency.METHODS and (self.early_bird is not None or self.gradual_iterations):
            raise ValueError(f"criterion={self.criterion!r} scores the weights once, as a round starts, so it "
                             "excludes early_bird and gradual_iterations, which prune as the weights train.")
        if self.early_bird is not None and not 0 < self.early_bird <= 1:
            raise ValueError(f"early_bird must be a mask distance in (0, 1], e.g. 0.1; got {self.early_bird!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive; got {self.learning_rate!r}.")
        if not self.monitor.startswith("val_"):
            raise ValueError(f"monitor must be a validation metric, 'val_' and its name (e.g. 'val_loss'); got "
                             f"{self.monitor!r}. The test set is recorded, never used to choose.")
        monitor_mode(self.monitor, self.mode)
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be at least 0; got {self.tolerance!r}.")

    @property
    def prunes_once(self):
        """Whether round 1 prunes straight to the final density (one-shot and early-bird searches)."""
        return self.one_shot or self.early_bird is not None

    def round_length(self, steps_per_epoch):
        """The iterations of a full round: `iterations`, or `epochs` of `steps_per_epoch` batches."""
        return self.iterations or self.epochs * steps_per_epoch

    def auto_rewind_candidates(self, length):
        """The iterations `rewind="auto"` tests in rounds of `length` iterations, in order."""
        if self.rewind_candidates is None:
            return sorted({round(fraction * length) for fraction in AUTO_REWIND_FRACTIONS})
        try:
            candidates = sorted({int(k) for k in self.rewind_candidates.split(",")})
        except ValueError:
            candidates = [-1]
        if candidates[0] < 0:
            raise ValueError(f"rewind_candidates must look like '0,100,500' (iterations >= 0, comma-separated); "
                             f"got {self.rewind_candidates!r}.")
        return candidates

    def changed_fields(self, names):
        """`{name: value}` of the fields among `names` that differ from their defaults."""
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        return {name: getattr(self, name) for name in names if getattr(self, name) != defaults[name]}

    def plan(self):
        """The `PruningPlan` these settings describe."""
        return PruningPlan(rate=self.prune_rate, output_rate=self.output_prune_rate,
                           layer_rates=parse_layer_rates(self.layer_rates), scope=self.scope,
                           target_density=self.target_density, block=parse_block(self.block))


def parse_layer_rates(text):
    """`"conv1=0.1,conv2=0.1"` -> `{"conv1": 0.1, "conv2": 0.1}`; `None` -> `{}`."""
    rates = {}
    for item in filter(None, (text or "").split(",")):
        name, _, rate = item.partition("=")
        try:
            rates[name.strip()] = float(rate)
        except ValueError:
            raise ValueError(f"layer_rates must look like 'conv1=0.1,conv2=0.1' (layer=rate, comma-separated); "
                             f"got {text!r}.") from None
    return rates
