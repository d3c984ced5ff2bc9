"""The code's layout as the README draws it, the one way imports run between the packages, and the one place
the process environment is touched."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tests", "bench", "deploy", "docs"}  # not shipped packages, but a reader looks for them too


def shipped_packages() -> set[str]:
    return {path.parent.name for path in ROOT.glob("*/__init__.py")} - FOLDERS


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Layout")
    end = readme.index("\n## ", start)
    return readme[start:end]


def bullets() -> dict[str, str]:
    """Each bullet of the README's layout section by the folder it opens with."""
    found: dict[str, str] = {}
    for bullet in re.split(r"\n(?=- )", layout_section()):
        head = re.match(r"- \*\*`([a-z_]+)/`\*\*", bullet)
        if head:
            found[head.group(1)] = bullet
    return found


def test_the_readme_layout_names_every_top_level_package_and_only_those() -> None:
    named = set(re.findall(r"\*\*`([a-z_]+)/`\*\*", layout_section()))
    assert named == shipped_packages() | FOLDERS, f"README layout names {sorted(named)}"


def test_the_readme_layout_names_only_modules_that_exist() -> None:
    """Every `module.py`, `pattern*.py` or `folder/` a package's bullet names is in that package."""
    missing = [
        f"{package}/{name}"
        for package, bullet in bullets().items()
        if package in shipped_packages()
        for name in re.findall(r"`([a-z_*]+(?:\.py|/))`", bullet)
        if name != f"{package}/" and not list((ROOT / package).glob(name.rstrip("/")))
    ]
    assert not missing, f"README layout names what does not exist: {missing}"
    for package in shipped_packages():
        named = re.findall(r"`([a-z_*]+\.py)`", bullets()[package])
        assert named, f"the layout says what {package}/ holds"


def test_only_config_touches_the_process_environment() -> None:
    """Configuration is read through `Settings` and the environment written through `config.environment`."""
    packages = [ROOT / name for name in shipped_packages() - {"config"}]
    touching = [
        f"{source.relative_to(ROOT)}:{number}"
        for package in packages
        for source in package.rglob("*.py")
        for number, line in enumerate(source.read_text().splitlines(), 1)
        if re.search(r"\bos\.(environ|getenv|putenv)\b", line)
    ]
    assert not touching, f"os.environ outside config/: {touching}"


# Which of our packages each may import: the contract at the bottom, media and the queue (tasks) on it, the store
# above them, the API and the workers on top and never on each other; `cli` starts them all.
MAY_IMPORT = {
    "config": set(),
    "contract": {"config"},
    "media": {"config", "contract"},
    "tasks": {"config", "contract"},
    "jobstore": {"config", "contract", "media", "tasks"},
    "api": {"config", "contract", "media", "tasks", "jobstore"},
    "workers": {"config", "contract", "media", "tasks", "jobstore"},
    "cli": {"config", "contract", "media", "tasks", "jobstore", "api", "workers"},
}


def imported_packages(package: Path) -> dict[str, set[str]]:
    """Our top-level packages each module of `package` imports (at any depth of the module)."""
    ours = shipped_packages()
    found: dict[str, set[str]] = {}
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        found[str(source.relative_to(ROOT))] = {name.split(".")[0] for name in names} & ours
    return found


def test_imports_run_one_way_between_the_packages() -> None:
    assert set(MAY_IMPORT) == shipped_packages()
    wrong = [
        f"{module} imports {sorted(imported - MAY_IMPORT[package] - {package})}"
        for package in MAY_IMPORT
        for module, imported in imported_packages(ROOT / package).items()
        if imported - MAY_IMPORT[package] - {package}
    ]
    assert not wrong, wrong


def route_modules() -> set[str]:
    """The modules that define a router (`router = APIRouter(...)`): what `api/app.py` collects."""
    found = set()
    for source in (ROOT / "api").rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                called = node.value.func
                if isinstance(called, ast.Name) and called.id == "APIRouter":
                    found.add(module_name(source))
    return found


def module_name(source: Path) -> str:
    return ".".join(source.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports_of(source: Path) -> set[str]:
    """Every module `source` imports, at any depth, `if TYPE_CHECKING:` included: a circle drawn for the type
    checker alone is still a circle a reader has to walk."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Our modules, each with the modules of ours it imports."""
    sources = {
        module_name(source): source for package in shipped_packages() for source in (ROOT / package).rglob("*.py")
    }
    return {name: imports_of(source) & set(sources) - {name} for name, source in sources.items()}


def test_no_route_module_imports_another() -> None:
    """Routes call services (`api/intake/`); only the app factory collects the routers."""
    routes = route_modules()
    assert {"api.routes.jobs", "api.openai.serving"} <= routes
    wrong = [
        f"{module} imports {sorted(imported & routes)}"
        for module, imported in import_graph().items()
        if module != "api.app" and imported & routes
    ]
    assert not wrong, wrong


def test_no_package_has_an_import_circle() -> None:
    graph = import_graph()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                circles.append([*path[path.index(imported) :], imported])
            elif imported.split(".")[0] == module.split(".")[0] and imported not in done:
                visit(imported, [*path, imported])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not circles, circles[:5]
