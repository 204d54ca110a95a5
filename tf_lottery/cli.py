"""What the binaries share: absl flags generated from a config dataclass (so binaries and configs never
drift apart), the flags that name a search's model and data, and errors a user can fix reported as
messages, not tracebacks."""

import dataclasses
import functools
import sys
import typing

from absl import flags

from tf_lottery import data_sources, datasets, model_sources, models


def _base_type(annotation):
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return args[0] if args else annotation


def define_flags(config_class, flag_values=flags.FLAGS):
    """Defines one absl flag per field of `config_class` (help and choices from field metadata)."""
    for field in dataclasses.fields(config_class):
        kind, choices = _base_type(field.type), field.metadata.get("choices")
        args = (field.name, field.default, field.metadata["help"])
        if choices:
            flags.DEFINE_enum(*args[:2], list(choices), args[2], flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_boolean(*args, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(*args, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(*args, flag_values=flag_values)
        else:
            flags.DEFINE_string(*args, flag_values=flag_values)


def config_from_flags(config_class, flag_values=flags.FLAGS, **overrides):
    """Builds `config_class` from the parsed flags; `overrides` win."""
    values = {field.name: flag_values[field.name].value for field in dataclasses.fields(config_class)}
    return config_class(**{**values, **overrides})


def define_model_and_data_flags(flag_values=flags.FLAGS):
    """Defines --model, --dataset (alias --data), --data_dir and --image_size: what `model_and_data` reads."""
    flags.DEFINE_string("model", "lenet300_100", f"Network to prune: a built-in one "
                        f"({', '.join(sorted(models.MODELS))}) or a saved Keras model, PATH.keras (its compile "
                        "settings and weights included).", flag_values=flag_values)
    flags.DEFINE_string("dataset", "mnist_subset", f"Data: a built-in dataset ({', '.join(datasets.NAMES)}; all "
                        "offline), npz:PATH, images:DIR or tfds:NAME (see tf_lottery.data_sources).",
                        flag_values=flag_values)
    flags.DEFINE_alias("data", "dataset", flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Folder holding the dataset files, for datasets that need them (and "
                        "tfds:).", flag_values=flag_values)
    flags.DEFINE_list("image_size", None, "HEIGHT,WIDTH to resize images:DIR data to (default: the size they "
                      "share).", flag_values=flag_values)


def model_and_data(*, seed, batch_size, flag_values=flags.FLAGS):
    """`(build_model, SearchData)` that the flags of `define_model_and_data_flags` name; prints what data it read."""
    size = flag_values.image_size
    try:
        image_size = None if size is None else tuple(int(side) for side in size)
    except ValueError:
        raise ValueError(f"--image_size must be HEIGHT,WIDTH in pixels, e.g. 64,64; got {','.join(size)}.") from None
    data = data_sources.load(flag_values.dataset, data_dir=flag_values.data_dir, seed=seed, batch_size=batch_size,
                             image_size=image_size)
    print(f"Data: {data.summary()}.")
    return model_sources.builder(flag_values.model, data), data


def reports_user_errors(main):
    """Wraps an absl `main`: a `ValueError` or `OSError` (bad input, damaged or missing files, permissions) ends
    the program with its message on stderr and exit code 1, not a traceback."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, OSError) as error:
            print(f"Error: {_message(error)}", file=sys.stderr)
            sys.exit(1)

    return wrapped


def _message(error):
    if isinstance(error, OSError) and error.strerror and error.filename:  # Raised by the OS, not by tf_lottery.
        return f"{error.strerror}: {error.filename}. Check the path and its permissions."
    return str(error)
