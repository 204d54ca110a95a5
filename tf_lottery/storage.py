"""Atomic, versioned, validated files: JSON metadata and `.npz` arrays (never pickle).

Every writer writes to a temporary name in the target folder and renames it
into place, so a process killed at any moment leaves either the old file or the
new one, never a truncated one.
"""

import contextlib
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 1
#: Names of files being written start with this; a process killed mid-write leaves them behind.
TEMPORARY_PREFIX = ".tmp-"


class CorruptFileError(ValueError):
    """A saved file is missing, truncated, or not in the expected format."""


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path next to `path`; renames it to `path` if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=suffix)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files private; the user's umask decides.
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_model(model, path):
    """Saves a Keras model as the `.keras` file `path`, atomically."""
    with atomic_path(path, ".keras") as temporary:
        model.save(temporary)


@contextlib.contextmanager
def atomic_folder(path):
    """Yields a temporary folder next to `path`; swaps it in for `path` if the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=TEMPORARY_PREFIX)
    os.chmod(temporary, 0o777 & ~_umask())
    try:
        yield temporary
        previous = temporary + ".previous"
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(temporary, path)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data):
    """Writes `data` (a dict) with a `format_version` field, atomically."""
    with atomic_path(path, ".json") as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump({"format_version": FORMAT_VERSION, **data}, f, indent=2, sort_keys=False)
        f.write("\n")


def publish_json(data, path=None):
    """Prints `data` as `write_json` stores it, and writes it to `path` too if one is given."""
    print(json.dumps({"format_version": FORMAT_VERSION, **data}, indent=2))
    if path:
        write_json(path, data)


def read_json(path):
    """Reads a file written by `write_json`, checking its format version."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}); the file is damaged.") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(
            f"{path} has format version {data.get('format_version') if isinstance(data, dict) else None}, "
            f"this tf_lottery reads version {FORMAT_VERSION}."
        )
    data.pop("format_version")
    return data


def write_arrays(path, arrays):
    """Writes `{name: array}` as an uncompressed `.npz`, atomically."""
    with atomic_path(path, ".npz") as temporary:
        np.savez(temporary, **{name: np.asarray(value) for name, value in arrays.items()})


def read_arrays(path):
    """Reads a file written by `write_arrays` (no pickle) into `{name: array}`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing.") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise CorruptFileError(f"{path} is truncated or damaged: it is not an .npz file of arrays.") from None
