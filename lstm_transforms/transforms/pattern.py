"""Rewrite rules as data, matched with networkx's VF2 (`DiGraphMatcher`).

A `Rule` is ``(pattern, replace, filter)``:

- ``pattern``: a small `nx.DiGraph`; each node has ``class_name`` (a string or a set of strings)
  and optionally ``where``, a predicate on the matched node's attribute dict. Exactly one pattern
  node has no successor: the match's output.
- ``filter(graph, match) -> bool``: a last veto on a match (``match`` maps pattern node -> graph node).
- ``replace(graph, match)``: edits the graph in place with the helpers of `graph`.

`apply_rules` runs rounds: find every match of every rule on the current graph, drop matches
whose interior (any matched node but the output) feeds a node outside the match or a model output,
deduplicate symmetric matches, apply the non-overlapping ones, then match again - only if
something changed (a flattened nested model can reveal new matches). Each round is linear in the
graph size; the number of rounds is bounded by what the rules reveal (nesting depth), not by the
number of matches.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import networkx as nx
from networkx.algorithms import isomorphism

__all__ = ["Rule", "find_matches", "apply_rules"]


def _always(graph, match):
    return True


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    pattern: nx.DiGraph
    replace: Callable[[nx.DiGraph, dict], None]
    filter: Callable[[nx.DiGraph, dict], bool] = _always

    @property
    def output(self):
        (sink,) = [n for n in self.pattern if self.pattern.out_degree(n) == 0]
        return sink


def _class_names(spec):
    return {spec} if isinstance(spec, str) else set(spec)


def _node_match(graph_attrs, pattern_attrs):
    if graph_attrs["class_name"] not in _class_names(pattern_attrs["class_name"]):
        return False
    where = pattern_attrs.get("where")
    return where is None or bool(where(graph_attrs))


def _interior_escapes(graph, rule, match):
    outputs = {node for node, _ in graph.graph.get("outputs", ())}
    matched = set(match.values())
    for p, n in match.items():
        if p == rule.output:
            continue
        if n in outputs or any(s not in matched for s in graph.successors(n)):
            return True
    return False


def find_matches(graph, rule):
    """Every acceptable match of `rule`, as ``{pattern node: graph node}``, deduplicated."""
    wanted = set().union(*(_class_names(d["class_name"]) for _, d in rule.pattern.nodes(data=True)))
    candidates = [n for n, d in graph.nodes(data=True) if d["class_name"] in wanted]
    if len(candidates) < rule.pattern.number_of_nodes():
        return []
    # Match on the subgraph of candidate nodes only: linear in the candidates, not the model.
    region = graph.subgraph(candidates)
    matcher = isomorphism.DiGraphMatcher(region, rule.pattern, node_match=_node_match)
    found = [{p: n for n, p in m.items()} for m in matcher.subgraph_monomorphisms_iter()]
    seen, matches = set(), []
    for match in found:
        key = frozenset(match.values())
        if key in seen or _interior_escapes(graph, rule, match):
            continue
        seen.add(key)
        matches.append(match)
    return matches


def apply_rules(graph, rules, max_rounds=16):
    """Apply `rules` until none matches; returns ``{rule name: times applied}``."""
    counts = {rule.name: 0 for rule in rules}
    for _ in range(max_rounds):
        changed = False
        for rule in rules:
            taken = set()
            for match in find_matches(graph, rule):
                nodes = set(match.values())
                if nodes & taken or not all(n in graph for n in nodes) or not rule.filter(graph, match):
                    continue
                rule.replace(graph, match)
                taken |= nodes
                counts[rule.name] += 1
                changed = True
        if not changed:
            break
    return counts
