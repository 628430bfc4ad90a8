"""One writer of a model: only `app/registry/publishing.py` stores or deletes model objects and model rows."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLISHING = REPO / "app" / "registry" / "publishing.py"
# names, or layout's constants and key builders
OBJECTS = {"model.safetensors", "metadata.json", "snapshots/", "analyses/", "MODEL_FILE", "METADATA_FILE", "SNAPSHOTS",
           "ANALYSES", "snapshot_key", "snapshots_prefix", "analysis_key"}
ROW_WRITES = ("insert", "update", "delete")  # also in helper names: `insert_absent(conn, Model, row)`
OBJECT_WRITES = {"put", "put_json", "put_file", "delete"}


def _mentions(node: ast.AST) -> set[str]:
    """The names, attributes and model object names (also inside strings) an expression or function uses."""
    found = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Name):
            found.add(part.id)
        elif isinstance(part, ast.Attribute):
            found.add(part.attr)
        elif isinstance(part, ast.Constant) and isinstance(part.value, str):
            found.update(name for name in OBJECTS if name in part.value)
    return found


def writes(path: Path) -> list[str]:
    """The lines of `path` that store or delete a model object, or insert, update or delete a model row: directly,
    or in a function that names the model objects or the `Model` table (`for table in (Model, Job)`, `key=key`)."""
    tree = ast.parse(path.read_text())
    scope = {}  # call -> the innermost function around it (the module at the top level)
    for outer in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
        for node in ast.walk(outer):
            scope[node] = outer
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        keywords = {k.arg: k.value for k in node.keywords}
        around = _mentions(scope[node]) if scope[node] is not tree else set()
        row = func.lstrip("_").startswith(ROW_WRITES) and "Model" in around.union(*map(_mentions, node.args))
        model_object = func in OBJECT_WRITES and "key" in keywords and bool(
            around.union(_mentions(keywords["key"])) & OBJECTS)
        whole_version = func == "delete_prefix" and isinstance(call := keywords.get("prefix"), ast.Call) and (
            isinstance(call.func, ast.Attribute) and call.func.attr in ("prefix", "snapshots_prefix"))  # all of them
        if row or model_object or whole_version:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_only_publishing_writes_model_objects_and_rows():
    modules = [*(REPO / "app").rglob("*.py"), *(REPO / "bench").rglob("*.py")]
    assert [line for path in modules if path != PUBLISHING for line in writes(path)] == []
    assert len(writes(PUBLISHING)) >= 8  # the check checks: objects stored and deleted, rows inserted, updated, deleted
