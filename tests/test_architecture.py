"""The shape of the code, checked on its syntax trees: which app may import which, and where
channels_app's models are written."""

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHANNELS_MODELS = {"Server", "Channel", "ChannelUser", "Message", "Notification"}
# Calls that write rows, whatever they are called on.
ALWAYS_WRITES = {
    "save",
    "delete",
    "bulk_create",
    "bulk_update",
    "get_or_create",
    "update_or_create",
}
# Calls that write only when made on a manager or queryset (`context.update(...)` is a dict's).
QUERYSET_WRITES = {"create", "update"}
# Where channels_app's rows may be written: its services (the gateway's bulk writes included:
# channels_app/services/ingest.py, which gateway/storage.py calls).
WRITERS = ("channels_app/services/",)
NOT_APP_CODE = ("tests/", "benchmarks/", ".venv/", "mutants/", "/migrations/")


def python_files(under: str = "") -> Iterator[Path]:
    for path in sorted((ROOT / under).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if not any(part in f"/{relative}" or relative.startswith(part) for part in NOT_APP_CODE):
            yield path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import that runs: at module level or in a function, but not under
    `if TYPE_CHECKING:` (the type checker's alone)."""

    def visit(node: ast.AST) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                yield from visit(branch)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


def test_tenancy_never_imports_accounts_at_run_time() -> None:
    """accounts builds on tenancy (sign-up provisions a schema, the admin deletes one); tenancy
    reaches the tenant and user models through the settings. An import of accounts from tenancy
    would close the circle again (tenancy/context.py says why this way round)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files("tenancy")
        for line, module in runtime_imports(ast.parse(path.read_text()))
        if module == "accounts" or module.startswith("accounts.")
    ]
    assert offenders == []


def test_the_import_check_sees_function_level_imports_and_skips_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from accounts.models import Account\n"
        "def f():\n    from accounts.services import sign_up\n"
    )
    modules = [module for _, module in runtime_imports(tree)]
    assert "accounts.services" in modules
    assert "accounts.models" not in modules


def _mentions_manager(node: ast.expr) -> bool:
    """The receiver is a manager or queryset chain (`X.objects...`, `qs.filter(...)`)."""
    return any(
        isinstance(n, ast.Call) or (isinstance(n, ast.Attribute) and n.attr == "objects")
        for n in ast.walk(node)
    )


def orm_writes(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, receiver = node.func.attr, node.func.value
        if name in ALWAYS_WRITES or (name in QUERYSET_WRITES and _mentions_manager(receiver)):
            yield node.lineno, f"{ast.unparse(receiver)}.{name}()"


def _uses_channels_models(tree: ast.AST) -> bool:
    return any(
        module.startswith("channels_app.models") for _, module in runtime_imports(tree)
    ) or any(
        isinstance(node, ast.ImportFrom) and node.module == "channels_app" and node.level == 0
        and any(alias.name == "models" for alias in node.names)
        for node in ast.walk(tree)
    )  # fmt: skip


def test_channels_app_models_are_written_only_by_services() -> None:
    """Views, tasks, selectors, slash commands and other apps call a service to write; only
    channels_app/services/ (and the gateway's ingest) write the chat's rows themselves."""
    offenders = []
    for path in python_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(WRITERS):
            continue
        tree = ast.parse(path.read_text())
        if not _uses_channels_models(tree):
            continue
        offenders += [f"{relative}:{line} {call}" for line, call in orm_writes(tree)]
    assert offenders == []


def test_the_write_check_sees_a_write_and_not_a_dict_update() -> None:
    tree = ast.parse(
        "context.update(a=1)\n"
        "Channel.objects.filter(pk=1).update(topic='x')\n"
        "server.save()\n"
        "Message.objects.create(text='x')\n"
    )
    assert [call for _, call in orm_writes(tree)] == [
        "Channel.objects.filter(pk=1).update()",
        "server.save()",
        "Message.objects.create()",
    ]
