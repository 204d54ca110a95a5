"""The run directory: nothing a user owns is deleted, damage is found before training, leftovers are cleared."""

import json
import os
import stat

import keras
import numpy as np
import pytest

from tf_lottery import storage
from tf_lottery.run_store import RunDirError, RunStore
from tf_lottery.search import RoundDivergedError, SearchConfig, TicketSearch

from conftest import DIGITS as DATA, files_under


def _build():
    inputs = keras.Input(DATA.input_shape)
    hidden = keras.layers.Dense(16, activation="relu", name="fc1")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(DATA.num_classes, name="output")(hidden))


def _search(run_dir, *, resume=False, overwrite=False, verbose=0, **config):
    config = SearchConfig(**{"rounds": 2, "epochs": None, "iterations": 10, "batch_size": 64, **config})
    return TicketSearch(_build, DATA, config, str(run_dir), resume=resume, overwrite=overwrite, verbose=verbose)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed run of rounds 0 to 2; tests copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("finished")
    _search(run_dir).run()
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    for name, content in files_under(finished_run).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(content)
    return copy


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("draft")
    before = files_under(precious)
    with pytest.raises(RunDirError, match=r"Not deleting .*precious.*holds no tf_lottery run"):
        _search(precious, overwrite=True).run()
    assert files_under(precious) == before and (precious / "sub").is_dir()


def test_a_folder_that_is_not_a_run_is_refused_without_offering_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"not empty and holds no tf_lottery run \(it has notes.txt\)") as error:
        _search(tmp_path).run()
    assert "overwrite" not in str(error.value)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_overwrite_refuses_a_run_that_holds_other_files(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    before = files_under(run_copy)
    with pytest.raises(RunDirError, match="also holds notes.txt, which no run writes"):
        _search(run_copy, overwrite=True).run()
    assert files_under(run_copy) == before


def test_overwrite_deletes_a_run_and_says_what_it_deleted(run_copy, capsys):
    history = _search(run_copy, overwrite=True, verbose=1, rounds=1).run()
    assert "Deleted the run in" in capsys.readouterr().out
    assert len(history["rounds"]) == 2 and not (run_copy / "round_002").exists()


def test_resume_rebuilds_a_damaged_history_from_the_round_folders(run_copy, finished_run):
    (run_copy / "history.json").write_text("garbage")
    with pytest.raises(storage.CorruptFileError, match="Resume the run once"):
        RunStore(run_copy).read_history()
    _search(run_copy, resume=True).run()
    assert RunStore(run_copy).read_history() == RunStore(finished_run).read_history()


def test_a_missing_middle_round_is_an_error_before_any_training(run_copy):
    for name in os.listdir(run_copy / "round_001"):
        os.remove(run_copy / "round_001" / name)
    os.rmdir(run_copy / "round_001")
    before = files_under(run_copy)
    with pytest.raises(RunDirError, match=r"no folder for round 1, but has folders of later rounds \(round_002\)"):
        _search(run_copy, resume=True, rounds=3).run()
    assert files_under(run_copy) == before


def test_leftovers_of_a_killed_write_are_removed_on_resume(run_copy, capsys):
    (run_copy / ".tmp-abc.json").write_text("{")
    (run_copy / "round_001" / ".tmp-def.npz").write_bytes(b"PK")
    (run_copy / "round_003.partial").mkdir()
    _search(run_copy, resume=True, verbose=1).run()
    out = capsys.readouterr().out
    for name in (".tmp-abc.json", os.path.join("round_001", ".tmp-def.npz"), "round_003.partial"):
        assert f"Removed {name}" in out
        assert not (run_copy / name).exists()


def test_run_files_follow_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        _search(tmp_path, rounds=1).run()
    finally:
        os.umask(previous)
    for path in (tmp_path / "run.json", tmp_path / "history.json", tmp_path / "round_000" / "masks.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE((tmp_path / "round_000").stat().st_mode) == 0o755


def test_a_file_given_as_the_run_directory_is_an_error(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        _search(tmp_path / "file").run()
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_a_read_only_run_directory_is_an_error_before_any_training(run_copy):
    os.chmod(run_copy, 0o555)
    try:
        with pytest.raises(RunDirError, match="Cannot write to"):
            _search(run_copy, resume=True, rounds=3).run()
    finally:
        os.chmod(run_copy, 0o755)
    assert not (run_copy / "round_003").exists()


def test_a_diverged_round_is_not_saved_and_resumes_with_a_smaller_learning_rate(tmp_path):
    _search(tmp_path, rounds=1).run()
    with pytest.raises(RoundDivergedError, match=r"Round 2 diverged.*keeps its 2 completed round.*smaller "
                                                 "learning_rate"):
        _search(tmp_path, resume=True, learning_rate=1e30).run()
    assert not (tmp_path / "round_002").exists()
    history = _search(tmp_path, resume=True, learning_rate=1e-3).run()
    assert [r["learning_rate"] for r in history["rounds"]] == [1.2e-3, 1.2e-3, 1e-3]
    assert all(np.isfinite(r["train_loss"]) for r in history["rounds"])


def test_a_plan_naming_a_missing_layer_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"names layers the model does not have: \['conv9'\]"):
        _search(tmp_path / "run", layer_rates="conv9=0.1").run()
    assert not (tmp_path / "run").exists()


def test_replaying_masks_from_a_missing_run_names_it(tmp_path):
    config = SearchConfig(rounds=1, epochs=None, iterations=10, batch_size=64)
    search = TicketSearch(_build, DATA, config, str(tmp_path / "control"), replay_masks_from=str(tmp_path / "no"),
                          verbose=0)
    with pytest.raises(RunDirError, match="no holds no completed rounds to replay masks from"):
        search.run()
    assert not (tmp_path / "control").exists()


def test_restoring_a_round_the_run_lacks_names_it(finished_run):
    with pytest.raises(RunDirError, match="has no completed round 5"):
        RunStore(finished_run).restore_round(_build(), 5)


def test_history_must_match_the_round_folders(run_copy):
    history = json.loads((run_copy / "history.json").read_text())
    history["rounds"].pop()
    (run_copy / "history.json").write_text(json.dumps(history))
    with pytest.raises(storage.CorruptFileError, match="does not match the run's round folders"):
        RunStore(run_copy).read_history()
