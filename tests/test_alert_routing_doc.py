"""docs/alert-routing.md's Alertmanager recipe works with the labels the product emits: the
labels it keeps are the same on every alert of one problem (so a `resolved` alert resolves the
firing one), routes match on those, and no inhibit rule mutes beyond what it says."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

DOC = (ROOT / "docs/alert-routing.md").read_text()
EXAMPLES = ROOT / "schemas/examples/qris.alerts/valid"
# Alerts of one problem each, as the product sends them: (opened or updated, resolved).
LIFECYCLES = [
    ("failure-burst-opened.json", "failure-burst-resolved.json"),
    ("failure-burst-updated-with-holds.json", "failure-burst-resolved-with-holds.json"),
    ("feed-silent-topic-opened.json", "feed-silent-topic-resolved.json"),
]


def _section(start: str, end: str) -> str:
    return DOC[DOC.index(start) : DOC.index(end)]


def _fenced(text: str, lang: str) -> str:
    m = re.search(rf"```{lang}\n(.*?)```", text, re.S)
    assert m, f"no {lang} block"
    return m.group(1)


def _alert(name: str) -> dict[str, object]:
    value: dict[str, object] = json.loads((EXAMPLES / name).read_text())
    return value


def test_the_alertmanager_labels_are_the_same_for_every_alert_of_one_problem() -> None:
    recipe = _section("**Alertmanager**", "**PagerDuty")
    [example] = json.loads(_fenced(recipe, "json"))
    kept = set(example["labels"]) - {"dedup_key"}
    for first, resolved in LIFECYCLES:
        a, b = _alert(first), _alert(resolved)
        assert a["dedup_key"] == b["dedup_key"] and b["status"] == "resolved"
        labels_a, labels_b = a["labels"], b["labels"]
        assert isinstance(labels_a, dict) and isinstance(labels_b, dict)
        assert {k: labels_a.get(k) for k in kept} == {k: labels_b.get(k) for k in kept}, (first, resolved)
    routes = _fenced(recipe, "yaml")
    matched = set(re.findall(r"\b([a-z_]+)=~?\"", routes.split("inhibit_rules:")[0]))
    # (`severity` only routes alerts without a status: those are never resolved.)
    assert matched - {"severity"} <= kept, matched - kept


def test_every_inhibit_rule_is_scoped_or_mutes_only_what_its_source_covers() -> None:
    rules = _fenced(_section("**Alertmanager**", "**PagerDuty"), "yaml").split("inhibit_rules:")[1]
    rules = rules.split("receivers:")[0]
    for rule in re.split(r"\n  - ", rules)[1:]:
        assert "equal:" in rule or 'scope_type="all"' in rule.split("target_matchers")[0], rule


def test_every_alert_kind_of_the_schema_has_its_routing_documented() -> None:
    # A new kind gets its dedup key and lifecycle (or its place among the kinds never resolved)
    # here, and its fields in the schemas' README, in the same change.
    kinds = json.loads((ROOT / "schemas/qris.alerts.schema.json").read_text())["properties"]["kind"]["enum"]
    kind_row = next(
        line for line in (ROOT / "schemas/README.md").read_text().splitlines() if line.startswith("| `kind` |")
    )
    for kind in kinds:
        assert f"`{kind}`" in DOC, kind
        assert f"`{kind}`" in kind_row, kind


def test_the_scope_id_label_is_escaped_as_the_doc_and_the_schema_say() -> None:
    # A label is matched against routes, not read: right-to-left letters stay as the scope id has
    # them (a route written for that id matches), while the summary escapes them for people.
    from stream.core.incidents import scope_name
    from stream.core.routing import labels

    merchant = "\u05d0\u05d1-7\u200f"
    got = labels({"kind": "FAILURE_BURST", "severity": "warning", "scope": {"type": "merchant", "id": merchant}})
    assert got["scope_id"] == "\u05d0\u05d1-7\\u200f"
    assert scope_name("merchant", merchant) == "Merchant \\u05d0\\u05d1-7\\u200f"
    schema = json.loads((ROOT / "schemas/qris.alerts.schema.json").read_text())
    assert "right-to-left letters kept" in schema["properties"]["labels"]["description"]
    assert "right-to-left letters kept" in DOC
