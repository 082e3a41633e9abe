"""Checks on the layout of the code itself (issue 21): no import cycles between the modules of a
crate, the README's folder table matches the repository's top level, and the gateway and
chain-svc build without ONNX Runtime or the image stack.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every crate's source folder with more than one module (the disease crates and the fuzz
# targets are one module each).
CRATES = [
    "shared/core/src",
    "shared/serving/src",
    "gateway/src",
    "chain-svc/src",
    "tests/src",
    "bench/src",
]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def module_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the crate at `root` → the modules it names through `crate::a::b` or
    `super::x` outside its test module. A module and its own submodules count as one (an
    `impl` may be split over them)."""
    files = {module_name(root, p): p for p in root.rglob("*.rs")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        text = path.read_text().split("#[cfg(test)]")[0]
        text = re.sub(r"//.*", "", text)
        deps: set[str] = set()
        for ref in re.findall(r"\bcrate::((?:\w+::)*\w+)", text):
            parts = ref.split("::")
            for k in range(len(parts), 0, -1):
                candidate = "::".join(parts[:k])
                if candidate in files:
                    deps.add(candidate)
                    break
        parent = name.split("::")[:-1] if name else []
        for ref in re.findall(r"\bsuper::(\w+)", text):
            candidate = "::".join(parent + [ref])
            if candidate in files:
                deps.add(candidate)
        graph[name] = {
            d
            for d in deps
            if d and d != name and not d.startswith(name + "::") and not name.startswith(d + "::")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    # The two shapes the review found: a ↔ b through `crate::`, and c ↔ d through `super::`.
    (tmp_path / "lib.rs").write_text("mod a; mod b; mod ml;\n")
    (tmp_path / "a.rs").write_text("use crate::b::thing;\n")
    (tmp_path / "b.rs").write_text("pub fn thing() { crate::a::other() }\n")
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "mod.rs").write_text("mod c; mod d;\n")
    (tmp_path / "ml" / "c.rs").write_text("use super::d::X;\n")
    (tmp_path / "ml" / "d.rs").write_text("use super::c::Y;\n#[cfg(test)]\nuse crate::a;\n")
    assert sorted(cycles(module_graph(tmp_path))) == [["a", "b"], ["ml::c", "ml::d"]]


@pytest.mark.parametrize("crate", CRATES)
def test_no_import_cycles_between_a_crates_modules(crate: str) -> None:
    graph = module_graph(ROOT / crate)
    assert len(graph) > 1, f"no modules read in {crate}"
    assert cycles(graph) == [], f"import cycles in {crate}"


def readme_paths() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| path | what it is |", 1)[1].split("\n\n", 1)[0]
    paths = set()
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        paths.update(p.rstrip("/") for p in re.findall(r"`([^`]+)`", first_cell))
    return paths


def test_the_readme_folder_table_matches_the_top_level() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    top = {t.split("/")[0] for t in tracked if not t.startswith(".")}
    # Folders with parts of their own are listed by those parts.
    listed = readme_paths()
    expanded = {p.split("/")[0] for p in listed}
    assert expanded - {"README.md"} == top - {"README.md"}, (
        f"in the README only: {sorted(expanded - top)}; in the repository only: "
        f"{sorted(top - expanded - {'README.md'})}"
    )
    for p in listed:
        assert (ROOT / p).exists(), f"the README lists {p}, which does not exist"
    # shared/ is two crates, and the table names both.
    shared = {p.name for p in (ROOT / "shared").iterdir() if (p / "Cargo.toml").exists()}
    assert {f"shared/{s}" for s in shared} <= listed


@pytest.mark.parametrize("package", ["medchain-gateway", "medchain-chain-svc", "medchain-core"])
def test_the_gateway_and_chain_svc_build_without_onnx_runtime_or_images(package: str) -> None:
    env = dict(os.environ)
    tree = subprocess.run(
        ["cargo", "tree", "--locked", "-p", package, "-e", "normal", "--prefix", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    names = {line.split()[0] for line in tree.splitlines() if line.strip()}
    assert package in names
    for heavy in ["ort", "ort-sys", "image", "jpeg-decoder", "zune-jpeg", "png", "ndarray",
                  "actix-multipart", "medchain-serving"]:
        assert heavy not in names, f"{package} depends on {heavy}"
