"""What the binaries share: absl flags generated from a config dataclass (so binaries and configs never
drift apart), and errors a user can fix reported as messages, not tracebacks."""

import dataclasses
import functools
import sys
import typing

from absl import flags


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
