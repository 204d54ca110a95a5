"""Run files are written whole or not at all, and JSON reports print what they store."""

import json

import numpy as np
import pytest

from tf_lottery import storage


def test_json_round_trip_adds_the_format_version(tmp_path):
    path = tmp_path / "nested" / "report.json"
    storage.write_json(path, {"density": 0.2})
    assert json.loads(path.read_text()) == {"format_version": storage.FORMAT_VERSION, "density": 0.2}
    assert storage.read_json(path) == {"density": 0.2}


def test_publish_json_prints_exactly_what_it_writes(tmp_path, capsys):
    path = tmp_path / "report.json"
    storage.publish_json({"seconds": 1.5, "modes": {"imp": 3}}, path)
    assert json.loads(capsys.readouterr().out) == json.loads(path.read_text())
    storage.publish_json({"seconds": 2.0})
    assert json.loads(capsys.readouterr().out)["seconds"] == 2.0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "masks.npz"
    storage.write_arrays(path, {"dense": np.ones(3, "float32")})
    with pytest.raises(RuntimeError), storage.atomic_path(path, ".npz") as temporary:
        with open(temporary, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["masks.npz"]
    np.testing.assert_array_equal(storage.read_arrays(path)["dense"], np.ones(3))
