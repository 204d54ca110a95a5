"""Entry point for the `py_test` targets in /BUILD: runs pytest on one file.

Bazel runs a py_test's `main` as a plain script, so every test target in BUILD
uses this file as `main` and passes its own test file as an argument, e.g.

    py_test(
        name = "test_masking",
        srcs = ["tests/test_masking.py", "tests/conftest.py", "third_party/pytest_main.py"],
        main = "third_party/pytest_main.py",
        args = ["$(location tests/test_masking.py)"],
        data = ["pyproject.toml"],
        ...
    )

The working directory is the target's runfiles tree, which mirrors the
repository, so `pyproject.toml` (listed in `data`) supplies the same pytest
settings as a plain `pytest` run - including `addopts = "-m 'not slow'"` (but not its
pytest-xdist workers).
Bazel's test-runner conventions are honoured: results go to $XML_OUTPUT_FILE
(JUnit XML) and `bazel test --test_filter=EXPR` becomes `pytest -k EXPR`.
Extra pytest flags can be given with `--test_arg=...`.
"""

import os
import sys

# Keep runfiles (symlinks into the source tree) free of __pycache__ and
# pytest's rewritten-assert caches.
sys.dont_write_bytecode = True

import pytest  # noqa: E402


def main(argv: list[str]) -> int:
    args = [
        "-c", "pyproject.toml",
        "--rootdir", os.getcwd(),
        "-p", "no:cacheprovider",
        "-n", "0",  # One file per target, and Bazel runs targets in parallel: no pytest-xdist workers.
    ]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args += ["--junitxml", xml_output]
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    return int(pytest.main(args + argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
