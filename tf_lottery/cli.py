"""absl flags generated from a config dataclass, so binaries and configs never drift apart."""

import dataclasses
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
