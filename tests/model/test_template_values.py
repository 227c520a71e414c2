"""The template importer writes value maps where the templates have them: a transformed row
without one takes the values another template publishes for the same two columns (said in
a header comment), and a row nobody publishes values for gets a skeleton comment to fill
in (issue 10, section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualwrite.cli import main
from dualwrite.model.maps import parse_map_document
from dualwrite.model.templates import (
    borrowed_values,
    known_values,
    parse_template,
    render_map_yaml,
    template_comments,
    template_to_map,
)
from dualwrite.model.yamlio import load_yaml

from conftest import shared_path


def _template(name: str) -> tuple[Path, str]:
    path = shared_path("data", "msdocs-dualwrite-templates", name)
    return path, path.read_text(encoding="utf-8")


def test_values_published_by_another_template_are_taken_and_said() -> None:
    _, mt101 = _template("mt-101-customers-v3-accounts.md")
    _, v3 = _template("CustomersV3-accounts.md")
    known = known_values([parse_template(mt101, source="mt-101-customers-v3-accounts.md")])
    t = parse_template(v3, source="CustomersV3-accounts.md")
    taken = {row.text for row, _, _ in borrowed_values(t, known)}
    assert "ONHOLDSTATUS >< msdyn_onholdstatus" in taken
    doc = template_to_map(t, known=known)
    rendered = render_map_yaml(doc, comments=template_comments(t, known))
    assert load_yaml(rendered) == doc
    m = parse_map_document(load_yaml(rendered))
    onhold = next(f for f in m.fields if f.text == "ONHOLDSTATUS >< msdyn_onholdstatus")
    assert onhold.values is not None and onhold.values.to_right("invoice") == (True, 806380001)
    assert "VALUES FROM ANOTHER TEMPLATE - CHECK THEM: `ONHOLDSTATUS >< msdyn_onholdstatus`" \
        in " ".join(rendered.replace("#  ", "").split())
    # a transformed row that no template has values for: a skeleton to fill in, as a comment
    assert "# VALUE MAP TO FILL IN: the template gives none for `INVOICEADDRESS >< " \
        "msdyn_invoiceaddress`" in rendered
    # without other templates, nothing is invented
    assert "ONHOLDSTATUS >< msdyn_onholdstatus" in template_to_map(t)["fields"]


def test_import_template_reads_the_templates_beside_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _template("CustomersV3-accounts.md")
    out = tmp_path / "accounts.yaml"
    assert main(["import-template", str(path), "-o", str(out)]) == 0
    m = parse_map_document(load_yaml(out.read_text()))
    by_text = {f.text: f for f in m.fields}
    assert by_text["ONHOLDSTATUS >< msdyn_onholdstatus"].values is not None
    assert by_text["ISONETIMECUSTOMER >< msdyn_onetimecustomer"].values is not None
