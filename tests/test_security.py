"""Security: no shell ever sees a data-derived string, and nothing is written outside the data root."""

from __future__ import annotations

import ast

from conftest import REPO, no_solve_config, read_ledger, run_cli, small_spec

from astep_cal.devtools.synthetic import make_night
from astep_cal.formats.names import cal_dir

PACKAGE = REPO / "daemon" / "astep_cal"
_SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            yield node, (node.func.value.id, node.func.attr)


def test_no_shell_anywhere_in_the_package():
    offenders = []
    for path in sorted(p for p in PACKAGE.rglob("*.py") if "devtools" not in p.parts):  # the runtime package
        tree = ast.parse(path.read_text(), str(path))
        for node, name in _calls(tree):
            if name in _SHELL_CALLS:
                offenders.append(f"{path.name}:{node.lineno} {'.'.join(name)}")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    offenders.append(f"{path.name}:{node.lineno} shell=")
            if name[0] == "subprocess" and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                offenders.append(f"{path.name}:{node.lineno} command as a string")
    assert offenders == []
    assert len(list(PACKAGE.rglob("*.py"))) > 10  # the scan saw the package


def test_a_cal_directory_linking_out_of_the_root_is_not_written_through(tmp_path, capsys):
    root = tmp_path / "data"
    truth = make_night(root, small_spec(n_science=1))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cal_dir(root, truth.spec.date).symlink_to(outside)
    code, _, events = run_cli(capsys, "once", root, "--config", no_solve_config(tmp_path))
    assert code == 1
    assert list(outside.iterdir()) == []
    failed = [e for e in events if e["event"] in ("frame_failed", "masters_failed")]
    assert failed and "links out of the data root" in failed[0]["error"]
    ledger = read_ledger(root)
    assert ledger["nights"][truth.spec.date]["frames"]  # recorded, visible in status
