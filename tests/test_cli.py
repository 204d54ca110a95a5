"""tf_lottery.cli: errors a user can fix end a binary with a message, not a traceback."""

import errno

import pytest

from tf_lottery import cli


def _main_raising(error):
    @cli.reports_user_errors
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize("error, message", [
    (ValueError("rounds must be a positive integer; got 0."), "Error: rounds must be a positive integer; got 0.\n"),
    (PermissionError(errno.EACCES, "Permission denied", "runs/x/run.json"),
     "Error: Permission denied: runs/x/run.json. Check the path and its permissions.\n"),
    (FileNotFoundError("runs/x holds no run."), "Error: runs/x holds no run.\n"),
])
def test_user_errors_end_with_their_message_and_exit_code_1(error, message, capsys):
    with pytest.raises(SystemExit) as exit:
        _main_raising(error)(["binary"])
    assert exit.value.code == 1
    assert capsys.readouterr().err == message


def test_other_errors_keep_their_traceback():
    with pytest.raises(KeyError):
        _main_raising(KeyError("bug"))(["binary"])
