"""The documentation cannot drift from the code: the site builds without a warning (broken links and
missing anchors are warnings, and ``--strict`` fails on them), the configuration keys and log events it
documents are exactly those of the code, the command lines and make targets it shows exist, the README's
links resolve and the README stays a front page.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
import subprocess
import sys
import tomllib
import unicodedata
from pathlib import Path

import pytest

from astep_cal.formats import keywords
from astep_cal.support import config

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "pages"
PACKAGE = REPO / "daemon" / "astep_cal"
README_MAX_BYTES = 15_000
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# Log calls whose event name is not a literal, and where the names come from (scanned below).
DYNAMIC_EVENTS = {
    "events.done", "events.failed",  # StageEvents(done=..., failed=...) in engine/stages.py
    "problem.event", "note.event",   # Problem(path, "event", reason) in formats/raw_night.py and engine/
    "event",                         # (level, "event", fields) tuples of science/lightcurve.py
}


# --- (a) the site builds ---------------------------------------------------------------------------

def test_the_site_builds_without_a_warning(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed in this environment (it comes with the `test` extra)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "docs" / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "operations.html").is_file()


# --- (b) configuration keys ------------------------------------------------------------------------

def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def settings_keys() -> set[str]:
    """Every key the typed settings accept, as ``section.key`` (top-level keys bare)."""
    keys = set(_fields(config._TopLevel))
    for section, cls in config._SECTIONS.items():
        keys |= {f"{section}.{name}" for name in _fields(cls)}
    keys |= {f"photometry.targets.{name}" for name in _fields(config.Target)}
    return keys


def example_file_keys() -> set[str]:
    """The keys of etc/astep-cal.toml (its ``targets`` list is empty: no target keys)."""
    data = tomllib.loads((REPO / "etc" / "astep-cal.toml").read_text())
    keys = set()
    for key, value in data.items():
        keys |= {f"{key}.{sub}" for sub in value} if isinstance(value, dict) else {key}
    return keys


def documented_keys() -> set[str]:
    """Rows ``| `key` | ...`` of docs/pages/configuration.md, under ``## `[section]` `` headings (``## Top
    level``: bare keys; ``### Each entry of `targets` ``: target keys)."""
    section, keys = "", set()
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("## "):
            found = re.search(r"`\[(\w+)\]`", line)
            section = found.group(1) + "." if found else ""
        elif line.startswith("### ") and "targets" in line:
            section = "photometry.targets."
        elif found := re.match(r"^\| `(\w+)` \|", line):
            keys.add(section + found.group(1))
    return keys


def test_configuration_page_documents_exactly_the_settings():
    typed, documented = settings_keys(), documented_keys()
    assert not documented - typed, f"documented but unknown to the settings: {sorted(documented - typed)}"
    assert not typed - documented, f"accepted but not documented: {sorted(typed - documented)}"


def test_example_file_has_exactly_the_settings():
    typed = {k for k in settings_keys() if not k.startswith("photometry.targets.")}
    example = example_file_keys()
    assert example == typed, (f"in etc/astep-cal.toml only: {sorted(example - typed)}; "
                              f"in the settings only: {sorted(typed - example)}")


# --- (c) log events --------------------------------------------------------------------------------

def _literals(node: ast.AST | None) -> set[str]:
    """String constants of an expression (``"a" if x else "b"`` gives both)."""
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)} if node else set()


def _event_positions(trees: list[ast.Module]) -> dict[str, int]:
    """Functions and dataclasses with a parameter or field named ``event``, and its position."""
    positions = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
            elif isinstance(node, ast.ClassDef):
                names = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            else:
                continue
            if "event" in names:
                positions[node.name] = names.index("event")
    return positions


def _assigned(function: ast.AST, name: str) -> set[str]:
    """The string constants assigned to ``name`` in a function (an event name kept in a variable)."""
    found: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            found |= _literals(node.value)
    return found


def _event_argument(call: ast.Call, position: int) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg == "event":
            return keyword.value
    return call.args[position] if len(call.args) > position else None


def emitted_events() -> tuple[set[str], list[str]]:
    """Every event name the runtime package can log, and the log calls whose name could not be read.

    Sources: ``log.<level>("name", ...)`` calls; ``StageEvents(done=..., failed=...)``; arguments named
    ``event`` (``Problem(path, "file_empty", reason)``, ``_give_up(result, status, "lightcurve_...")``),
    literals or variables assigned literals; and ``("warning", "name", {...})`` tuples, the events the
    pure science functions return for the engine to log. devtools is left out: the service never runs it.
    """
    paths = [p for p in PACKAGE.rglob("*.py") if "devtools" not in p.parts]
    trees = [ast.parse(p.read_text()) for p in paths]
    positions = _event_positions(trees)
    events: set[str] = set()
    unread: list[str] = []
    for path, tree in zip(paths, trees):
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple) and len(node.elts) >= 2 and all(isinstance(e, ast.Constant) for e in node.elts[:2]):
                if node.elts[0].value in LEVELS and isinstance(node.elts[1].value, str):
                    events.add(node.elts[1].value)
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if isinstance(func, ast.Attribute) and func.attr in LEVELS and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    events.add(first.value)
                elif ast.unparse(first) not in DYNAMIC_EVENTS:
                    unread.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(first)}")
            if name == "StageEvents":
                events |= {k.value.value for k in node.keywords if k.arg in ("done", "failed")
                           and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
            if name in positions:
                argument = _event_argument(node, positions[name])
                if isinstance(argument, ast.Name):
                    owner = next((f for f in functions if node in ast.walk(f)), tree)
                    events |= _assigned(owner, argument.id)
                elif argument is not None:
                    events |= _literals(argument)
    return {e for e in events if re.fullmatch(r"[a-z][a-z0-9_]*", e)}, unread


def documented_events() -> set[str]:
    """The first cell of each table row of docs/pages/log-events.md: ``| `event_name` | level | ...``."""
    text = (DOCS / "log-events.md").read_text()
    return set(re.findall(r"^\| `([a-z][a-z0-9_]*)` \|", text, re.M))


def test_log_event_page_documents_exactly_the_events_the_code_emits():
    emitted, unread = emitted_events()
    assert not unread, f"log calls whose event name this test cannot read (add the source to DYNAMIC_EVENTS): {unread}"
    documented = documented_events()
    assert not emitted - documented, f"emitted but not in docs/pages/log-events.md: {sorted(emitted - documented)}"
    assert not documented - emitted, f"documented but never emitted: {sorted(documented - emitted)}"


def test_the_event_scan_sees_every_kind_of_source():
    """The scan is not vacuous: one event of each source it reads is found."""
    emitted, _ = emitted_events()
    assert {"night_started", "frame_calibrated", "file_empty", "science_dir_missing", "lightcurve_frame_cloudy",
            "lightcurve_no_comparison"} <= emitted


# --- (d), (e) the README -------------------------------------------------------------------------

def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # no headings in code blocks
    return {slug(m) for m in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


def test_every_readme_link_resolves():
    readme = (REPO / "README.md").read_text()
    links = [target for target in re.findall(r"\]\(([^)\s]+)\)", readme) if "://" not in target]
    assert any(link.startswith("docs/") for link in links)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.is_file():
            broken.append(f"{link}: no file {path}")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {path}")
    assert not broken, broken


def test_readme_is_a_front_page():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}: move detail to docs/)"
    assert not re.search(r"\bissues? \d+", (REPO / "README.md").read_text(), re.I), "no issue numbers in the README"


# --- every header keyword astep-cal defines is explained ---------------------------------------------

def test_every_header_keyword_is_explained():
    page = (DOCS / "data-products.md").read_text()
    defined = {value.name for value in vars(keywords).values() if isinstance(value, keywords.Keyword)}
    missing = sorted(name for name in defined if f"`{name}`" not in page)
    assert defined and not missing, f"keywords of formats/keywords.py not in docs/pages/data-products.md: {missing}"


# --- the examples still run: every command line shown is accepted, every make target exists ------------

def shown_commands() -> list[tuple[str, str]]:
    """``astep-cal ...`` lines of the shell blocks of README.md and docs/ (comments cut off)."""
    found = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.M | re.S):
            for line in block.splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command.startswith("astep-cal "):
                    found.append((page.name, command))
    return found


def test_every_command_line_shown_is_accepted():
    from astep_cal.frontends.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    shown, wrong = shown_commands(), []
    assert len(shown) > 10
    for page, command in shown:
        words = command.split()
        sub = commands.get(words[1])
        if sub is None:
            wrong.append(f"{page}: {command}: no command {words[1]!r}")
        elif "[" in command or "|" in command:  # a synopsis: its options must exist
            unknown = [o for o in re.findall(r"--[a-z][a-z-]*", command) if o not in sub._option_string_actions]
            wrong += [f"{page}: {command}: unknown option {o}" for o in unknown]
        else:
            try:
                parser.parse_args(words[1:])
            except SystemExit:
                wrong.append(f"{page}: {command}: refused by the argument parser")
    assert not wrong, wrong


def test_every_make_target_named_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    named = set()
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        named |= set(re.findall(r"`make ([a-z][a-z0-9-]*)", page.read_text()))
        named |= set(re.findall(r"^make ([a-z][a-z0-9-]*)", page.read_text(), re.M))
    assert named and not named - targets, f"make targets named in the docs but not in the Makefile: {sorted(named - targets)}"


def test_the_layout_table_names_every_module():
    """development.md's layout table lists each sub-package's modules: a module added (or moved) without
    its row updated is a map a newcomer cannot trust."""
    package = REPO / "daemon" / "astep_cal"
    rows = {m.group(1): set(re.findall(r"`(\w+)`", m.group(2)))
            for m in re.finditer(r"^\| `(\w+)/` \|[^|]*\|([^|]*)\|", (DOCS / "development.md").read_text(), re.M)}
    for layer in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        modules = {f.stem for f in layer.glob("*.py")} - {"__init__"}
        assert modules <= rows.get(layer.name, set()), f"{layer.name}/: {sorted(modules - rows.get(layer.name, set()))}"
        assert rows[layer.name] <= modules, f"{layer.name}/ lists modules that do not exist"
