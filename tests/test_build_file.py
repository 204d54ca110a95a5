"""The Bazel BUILD file at the repository root covers every module, test and example.

Reads BUILD as text (Starlark is parsed with Python's `ast`; no Bazel needed)
and fails, naming the file and the target to add, when

* a module under tf_lottery/ is not in the `tf_lottery` py_library,
* a tests/test_*.py file has no py_test of its own,
* an examples/*.py or benchmarks/*.py script has no py_binary of its own,
* a py_test is not wired like the others (runner, conftest, args, deps),
* a test runs an examples/ or benchmarks/ script that is not in its `data`, or
* BUILD names a file that does not exist.
"""

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_PATH = ROOT / "BUILD"
RUNNER = "third_party/pytest_main.py"
CONFTEST = "tests/conftest.py"
LIBRARY = ":tf_lottery"
RULE_KINDS = {"py_library", "py_binary", "py_test"}
# How tests name the scripts they run: "examples/x.py" or ROOT / "examples" / "x.py".
SCRIPT_REFERENCE = re.compile(r"""\b(examples|benchmarks)(?:/|["']\s*/\s*["'])(\w+\.py)\b""")


# --- reading BUILD ---------------------------------------------------------


def _is_package_dir(directory: Path) -> bool:
    return (directory / "BUILD").is_file() or (directory / "BUILD.bazel").is_file()


def _glob(patterns, exclude=()):
    """Bazel's glob() for the root package: files only, not crossing sub-packages."""
    found = set()
    for pattern in patterns:
        for path in ROOT.glob(pattern):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT)
            # A directory with its own BUILD file is a separate package.
            if any(_is_package_dir(ROOT.joinpath(*rel.parts[:i])) for i in range(1, len(rel.parts))):
                continue
            found.add(rel.as_posix())
    return sorted(
        f for f in found if not any(fnmatch.fnmatch(f, pattern) or _double_star(f, pattern) for pattern in exclude)
    )


def _double_star(path, pattern):
    """`**/x` also matches `x` at the top (fnmatch's `*` already spans `/`)."""
    return pattern.startswith("**/") and fnmatch.fnmatch(path, pattern[3:])


def _evaluate(node):
    """Value of a BUILD expression: strings, lists, `+` and glob(); None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bool, int)):
        return node.value
    if isinstance(node, ast.List):
        items = [_evaluate(item) for item in node.elts]
        return None if any(item is None for item in items) else items
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left), _evaluate(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glob":
        args = [_evaluate(arg) for arg in node.args]
        kwargs = {kw.arg: _evaluate(kw.value) for kw in node.keywords}
        include = args[0] if args else kwargs.get("include")
        if include is None:
            return None
        return _glob(include, kwargs.get("exclude") or ())
    return None


def parse_build(text):
    """The py_* rules in BUILD as dicts of their (evaluated) attributes plus `kind`."""
    rules = []
    for statement in ast.parse(text, filename="BUILD").body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            continue
        if call.func.id not in RULE_KINDS:
            continue
        rule = {"kind": call.func.id, "lineno": call.lineno}
        for keyword in call.keywords:
            rule[keyword.arg] = _evaluate(keyword.value)
        rules.append(rule)
    return rules


@pytest.fixture(scope="module")
def rules():
    assert BUILD_PATH.is_file(), f"no BUILD file at the repository root ({BUILD_PATH})"
    parsed = parse_build(BUILD_PATH.read_text())
    assert parsed, "BUILD declares no py_library/py_binary/py_test rules"
    return parsed


def _of_kind(rules, kind):
    return [rule for rule in rules if rule["kind"] == kind]


def _files(rule, attribute):
    value = rule.get(attribute) or []
    return [value] if isinstance(value, str) else list(value)


def scripts_used_by(test_file):
    """examples/ and benchmarks/ scripts a test file mentions (and so may run)."""
    text = (ROOT / test_file).read_text()
    found = {f"{folder}/{name}" for folder, name in SCRIPT_REFERENCE.findall(text)}
    return sorted(script for script in found if (ROOT / script).is_file())


def _source_files(pattern):
    return sorted(
        path.relative_to(ROOT).as_posix() for path in ROOT.glob(pattern) if "__pycache__" not in path.parts
    )


# --- snippets suggested in failure messages ---------------------------------


def _py_test_snippet(test_file):
    name = Path(test_file).stem
    data = sorted(["pyproject.toml", *scripts_used_by(test_file)])
    return f"""
py_test(
    name = "{name}",
    size = "medium",
    srcs = [
        "{CONFTEST}",
        "{test_file}",
        "{RUNNER}",
    ],
    args = ["$(location {test_file})"],
    data = [{", ".join(f'"{item}"' for item in data)}],
    main = "{RUNNER}",
    python_version = "PY3",
    tags = ["tensorflow"],
    deps = ["{LIBRARY}"],
)"""


def _py_binary_snippet(script):
    name = Path(script).stem
    return f"""
py_binary(
    name = "{name}",
    srcs = ["{script}"],
    main = "{script}",
    python_version = "PY3",
    deps = ["{LIBRARY}"],
)"""


# --- the checks ---------------------------------------------------------------


def test_every_module_is_in_the_library(rules):
    libraries = [rule for rule in _of_kind(rules, "py_library") if rule.get("name") == "tf_lottery"]
    assert len(libraries) == 1, 'BUILD needs exactly one py_library(name = "tf_lottery", ...)'
    srcs = libraries[0].get("srcs")
    assert srcs is not None, (
        'could not read the srcs of py_library "tf_lottery"; use a plain list of strings '
        'or glob(["tf_lottery/**/*.py"])'
    )
    missing = [module for module in _source_files("tf_lottery/**/*.py") if module not in srcs]
    assert not missing, (
        "modules missing from py_library \"tf_lottery\" in BUILD: "
        + ", ".join(missing)
        + '\nadd them to its srcs (or use srcs = glob(["tf_lottery/**/*.py"]))'
    )


def test_every_test_file_has_a_py_test(rules):
    covered = {src for rule in _of_kind(rules, "py_test") for src in _files(rule, "srcs")}
    missing = [test for test in _source_files("tests/test_*.py") if test not in covered]
    assert not missing, "test files without a py_test in BUILD: " + ", ".join(missing) + (
        "\nadd to BUILD (Tests section):" + "".join(_py_test_snippet(test) for test in missing)
    )


@pytest.mark.parametrize("pattern", ["examples/*.py", "benchmarks/*.py"])
def test_every_script_has_a_py_binary(rules, pattern):
    binaries = _of_kind(rules, "py_binary")
    covered = {rule.get("main") for rule in binaries} | {
        src for rule in binaries if len(_files(rule, "srcs")) == 1 for src in _files(rule, "srcs")
    }
    missing = [script for script in _source_files(pattern) if script not in covered]
    section = pattern.split("/")[0].capitalize()
    assert not missing, f"{pattern} without a py_binary in BUILD: " + ", ".join(missing) + (
        f"\nadd to BUILD ({section} section):" + "".join(_py_binary_snippet(script) for script in missing)
    )


def test_py_tests_run_their_file_through_pytest(rules):
    problems = []
    for rule in _of_kind(rules, "py_test"):
        name = rule.get("name")
        where = f'py_test "{name}" (BUILD line {rule["lineno"]})'
        srcs = _files(rule, "srcs")
        tests = [src for src in srcs if fnmatch.fnmatch(src, "tests/test_*.py")]
        if len(tests) != 1:
            problems.append(f"{where}: srcs must hold exactly one tests/test_*.py file, not {tests}")
            continue
        test = tests[0]
        expected = {
            "name": Path(test).stem,
            "main": RUNNER,
            "args": [f"$(location {test})"],
        }
        for attribute, value in expected.items():
            if rule.get(attribute) != value:
                problems.append(f"{where}: {attribute} should be {value!r}, not {rule.get(attribute)!r}")
        for needed in (CONFTEST, RUNNER):
            if needed not in srcs:
                problems.append(f'{where}: srcs should include "{needed}"')
        data = _files(rule, "data")
        if "pyproject.toml" not in data:
            problems.append(f'{where}: data should include "pyproject.toml" (pytest settings, `-m "not slow"`)')
        for script in scripts_used_by(test):
            if script not in data:
                problems.append(f'{where}: {test} uses {script}; add "{script}" to its data')
        if LIBRARY not in _files(rule, "deps"):
            problems.append(f'{where}: deps should include "{LIBRARY}"')
    names = [rule.get("name") for rule in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"BUILD declares these target names more than once: {duplicates}")
    assert not problems, "\n".join(problems)


def test_build_names_only_existing_files(rules):
    missing = []
    for rule in rules:
        for attribute in ("srcs", "data", "main"):
            for path in _files(rule, attribute):
                if path.startswith((":", "//", "@")):
                    continue  # a label, not a file
                if not (ROOT / path).is_file():
                    missing.append(f'{rule["kind"]} "{rule.get("name")}" {attribute}: {path}')
    assert not missing, (
        "BUILD names files that do not exist (remove the target or fix the path):\n" + "\n".join(missing)
    )


def test_script_references_are_recognised():
    text = '''run("examples/find_ticket.py"); ROOT / "benchmarks" / "mask_overhead.py"; "tf_lottery/x.py"'''
    assert SCRIPT_REFERENCE.findall(text) == [("examples", "find_ticket.py"), ("benchmarks", "mask_overhead.py")]


def test_build_parser_sees_globs_and_lists():
    """The reader handles what BUILD uses: plain lists, `+` and glob(exclude=...)."""
    [rule] = parse_build(
        'py_library(name = "x", srcs = ["a.py"] + glob(["tf_lottery/*.py"], exclude = ["**/__init__.py"]))'
    )
    assert rule["srcs"][0] == "a.py"
    assert len(rule["srcs"]) > 1
    assert "tf_lottery/__init__.py" not in rule["srcs"]
