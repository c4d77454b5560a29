"""The import graph of the ``sde_jax`` package, read from its source with ``ast`` (nothing imported).

``python tools/import_graph.py`` prints the layers (longest import chain below each module), the
number of arrows, any cycle, any library module that imports a job, and any use of another
module's ``_private`` name. ``tests/test_import_graph.py`` asserts the same rules.

An arrow ``a -> b`` is an import of ``b`` anywhere in ``a``, at the top or inside a function:
an import inside a function still runs, so it cannot hide a cycle.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import sys

PACKAGE = 'sde_jax'
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
# The layer above the library: the command line and the jobs it runs.
JOB_PREFIXES = ('sde_jax.cli', 'sde_jax.jobs')


@dataclasses.dataclass
class Graph:
  modules: dict[str, pathlib.Path]
  arrows: dict[str, set[str]]          # module -> modules it imports
  private_uses: list[str]              # 'a: b._name' (a uses b's private name)


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name (a package by its ``__init__``)."""
  found = {}
  for path in sorted(root.rglob('*.py')):
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    found['.'.join(parts)] = path
  return found


def _target(name: str, modules) -> str | None:
  """The longest prefix of ``name`` that is a module of the package."""
  parts = name.split('.')
  for end in range(len(parts), 0, -1):
    candidate = '.'.join(parts[:end])
    if candidate in modules:
      return candidate
  return None


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  if not node.level:
    return node.module or ''
  base = module.split('.') if is_package else module.split('.')[:-1]
  base = base[:len(base) - node.level + 1]
  return '.'.join(base + ([node.module] if node.module else []))


def _imports(module: str, path: pathlib.Path, modules):
  """(imported modules, {alias: module}, private names imported from other modules)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == '__init__.py'
  targets, aliases, private = set(), {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        target = _target(alias.name, modules)
        if target:
          targets.add(target)
          aliases[alias.asname or alias.name.split('.')[0]] = (
              target if alias.asname else _target(alias.name.split('.')[0], modules))
    elif isinstance(node, ast.ImportFrom):
      source = _resolve_from(node, module, is_package)
      if not source.startswith(PACKAGE):
        continue
      for alias in node.names:
        sub = _target(f'{source}.{alias.name}', modules)
        if sub == f'{source}.{alias.name}':     # a submodule
          targets.add(sub)
          aliases[alias.asname or alias.name] = sub
          continue
        owner = _target(source, modules)
        if owner:
          targets.add(owner)
          if alias.name.startswith('_') and owner != module:
            private.append(f'{module}: from {owner} import {alias.name}')
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.attr.startswith('_') and not node.attr.startswith('__')
        and aliases.get(node.value.id) not in (None, module)):
      private.append(f'{module}: {aliases[node.value.id]}.{node.attr}')
  targets.discard(module)
  return targets, private


def build(root: pathlib.Path = ROOT) -> Graph:
  modules = module_files(root)
  arrows, private = {}, []
  for module, path in modules.items():
    arrows[module], uses = _imports(module, path, modules)
    private += uses
  return Graph(modules, arrows, sorted(set(private)))


def cycles(graph: Graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.arrows[node]):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        top = stack.pop()
        on_stack.discard(top)
        component.append(top)
        if top == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  sys.setrecursionlimit(10_000)
  for node in sorted(graph.arrows):
    if node not in index:
      visit(node)
  return found


def is_job(module: str) -> bool:
  return any(module == p or module.startswith(p + '.') for p in JOB_PREFIXES)


def upward_imports(graph: Graph) -> list[str]:
  """Library modules that import the jobs layer or the command line."""
  return sorted(f'{a} -> {b}' for a, targets in graph.arrows.items() if not is_job(a)
                for b in targets if is_job(b))


def layers(graph: Graph) -> dict[str, int]:
  """Each module's layer: 0 for a module that imports none, else 1 + the highest it imports.

  Modules of a package import their package's ``__init__`` implicitly; that arrow is not counted.
  Only defined for an acyclic graph.
  """
  depth = {}

  def layer(node):
    if node not in depth:
      depth[node] = 0  # guards a cycle from infinite recursion
      below = [layer(b) for b in graph.arrows[node] if not node.startswith(b + '.')]
      depth[node] = 1 + max(below) if below else 0
    return depth[node]

  for node in graph.arrows:
    layer(node)
  return depth


def package_graph(graph: Graph) -> Graph:
  """The same arrows between the package's top-level units (``sde_jax.train``, ``sde_jax.sde``,
  ...), the package's own ``__init__`` left out."""
  unit = lambda module: '.'.join(module.split('.')[:2])  # noqa: E731
  arrows = {}
  for a, targets in graph.arrows.items():
    if unit(a) != PACKAGE:
      arrows.setdefault(unit(a), set()).update(
          unit(b) for b in targets if unit(b) not in (unit(a), PACKAGE))
  return Graph({u: ROOT for u in arrows}, arrows, [])


def _summary(graph: Graph, what: str) -> str:
  depth = layers(graph)
  return (f'{len(graph.arrows)} {what}, {sum(len(t) for t in graph.arrows.values())} import '
          f'arrows, {max(depth.values()) + 1} layers, {len(cycles(graph))} cycles')


def main() -> int:
  graph = build()
  found = cycles(graph)
  depth = layers(graph)
  print(_summary(package_graph(graph), 'packages and top-level modules'))
  print(_summary(graph, 'modules'))
  for level in range(max(depth.values()) + 1):
    print(f'  layer {level}: ' + ', '.join(sorted(m for m, d in depth.items() if d == level)))
  for name, rows in (('cycles', [' <-> '.join(c) for c in found]),
                     ('library -> jobs imports', upward_imports(graph)),
                     ('private names used across modules', graph.private_uses)):
    print(f'{name}: {len(rows)}')
    for row in rows:
      print(f'  {row}')
  return int(bool(found or upward_imports(graph) or graph.private_uses))


if __name__ == '__main__':
  sys.exit(main())
