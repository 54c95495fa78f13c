"""db/lifecycle.py owns the life of jobs and job keys: the source tree is read (AST) for a change of
a job's or a key's row, or a state or origin name written as a literal, anywhere else; the
dashboard's templates for a state name in their logic."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from db import lifecycle

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "db" / "lifecycle.py"
STATES = set(lifecycle.JOB_STATES) | set(lifecycle.KEY_STATES)
ROWS = {"Job", "JobKey"}


def _sources() -> list[Path]:
    skip = {"tests", ".venv", "site", "build"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts) and p != OWNER]


def _state_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in STATES


def _origin_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in (lifecycle.QUEUED_ORIGIN, lifecycle.LOCAL_ORIGIN)


def _names_state(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "state" or isinstance(node, ast.Name) and node.id == "state"


def _row_type(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in ROWS) or (isinstance(node, ast.Name) and node.id in ROWS)


def offences(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "update" \
                and node.args and _row_type(node.args[0]):
            found.append((node.lineno, f"update({ast.unparse(node.args[0])})"))
        elif isinstance(node, ast.Assign) and any(_names_state(t) and isinstance(t, ast.Attribute) for t in node.targets):
            found.append((node.lineno, f"assignment {ast.unparse(node)}"))
        elif isinstance(node, ast.Compare) and any(_names_state(x) for x in [node.left, *node.comparators]) \
                and any(_state_literal(x) for x in [node.left, *node.comparators]):
            found.append((node.lineno, f"comparison {ast.unparse(node)}"))
        elif isinstance(node, ast.keyword) and node.arg == "state" and _state_literal(node.value):
            found.append((node.value.lineno, f"state={node.value.value!r}"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 \
                and all(_state_literal(e) for e in node.elts):
            found.append((node.lineno, f"state names {ast.unparse(node)}"))
        elif isinstance(node, ast.keyword) and node.arg == "origin" and _origin_literal(node.value):
            found.append((node.value.lineno, f"origin={node.value.value!r}"))
        elif isinstance(node, ast.Compare) and any(isinstance(x, ast.Attribute) and x.attr == "origin"
                                                   for x in [node.left, *node.comparators]) \
                and any(_origin_literal(x) for x in [node.left, *node.comparators]):
            found.append((node.lineno, f"comparison {ast.unparse(node)}"))
    return found


def test_no_job_state_change_or_state_literal_outside_the_lifecycle_module():
    bad = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in _sources()
           for line, what in offences(ast.parse(p.read_text(), str(p)))]
    assert not bad, "write a job's or a key's state through db/lifecycle.py:\n" + "\n".join(bad)


def test_the_scan_finds_what_it_looks_for():
    """Each kind of offence is caught (so an empty scan means something)."""
    src = '''
s.execute(update(models.Job).where(models.Job.id == j).values(error="x"))
s.execute(update(JobKey).values(error="x"))
row.state = "done"
if job.state == "queued": pass
q.values(state="failed")
q.where(models.Job.state.in_(("queued", "running")))
ok = ("done", "failed", "cancelled")
create_job(s, origin="queued")
if job.origin == "local": pass
'''
    assert sorted(line for line, _ in offences(ast.parse(src))) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    # a trial's outcome, another table's update, an origin's constant are not a job's state
    assert not offences(ast.parse('create(origin=lifecycle.QUEUED_ORIGIN)\nupdate(models.Worker)\nx = {"failed": 1}\n'))


TEMPLATES = ROOT / "tuner" / "api" / "templates"
_TAG = re.compile(r"\{[%{](.*?)[%}]\}", re.S)  # a Jinja statement or expression
_QUOTED = re.compile(r"""["']([a-z]+)["']""")


def template_offences(text: str) -> list[str]:
    """State names written as literals in a template's logic (its markup's words are not states)."""
    return [tag.strip() for tag in _TAG.findall(text) if any(w in STATES for w in _QUOTED.findall(tag))]


def test_no_state_literal_in_the_dashboard_s_templates():
    bad = [f"{p.name}: {tag}" for p in sorted(TEMPLATES.glob("*.html")) for tag in template_offences(p.read_text())]
    assert not bad, "a template reads the states from JOB_STATES / END_STATES (tuner/api/render.py):\n" + "\n".join(bad)


def test_the_template_scan_finds_a_state_literal():
    assert template_offences('{% if job.state not in ("done", "failed") %}x{% endif %}') == [
        'if job.state not in ("done", "failed")']
    assert template_offences("{% for s in ['queued'] %}{% endfor %}{{ 'running' }}") == ["for s in ['queued']",
                                                                                      "'running'"]
    assert not template_offences('<p>queued work</p>{% if c.no_live_worker %}done{% endif %}{{ job.state }}')
