"""Import of the published dual-write templates (``dualwrite.model.templates``).

Every template in ``../shared/data/msdocs-dualwrite-templates/`` is parsed, converted, rendered
and loaded back with the map loader. The data is read in place, never copied into the repo.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dualwrite.errors import MapSyntaxError, TemplateError
from dualwrite.model.maps import parse_map_document
from dualwrite.model.notation import parse_ref
from dualwrite.model.templates import (
    Template,
    fo_filter_to_odata,
    guess_key,
    parse_template,
    render_map_yaml,
    reversed_filter_to_odata,
    template_comments,
    template_to_map,
)
from dualwrite.model.yamlio import load_yaml

TEMPLATES_DIR = (Path(__file__).resolve().parents[2].parent / "shared" / "data"
                 / "msdocs-dualwrite-templates")
NOT_TEMPLATES = {"README.md", "dual-write-symbols.md"}
MISSING = (f"the published templates are not at {TEMPLATES_DIR}: the `shared` directory must "
           "sit beside the checkout (../shared/data/msdocs-dualwrite-templates)")

_MULTI_HOP_RE = re.compile(r"\|\s*[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*\s*\|")


def _notation_reads_multi_hop() -> bool:
    try:
        parse_ref("a.b.c")
    except MapSyntaxError:
        return False
    return True


def _template_params() -> list[Any]:
    if not TEMPLATES_DIR.is_dir():
        return [pytest.param(None, id="templates-folder-missing")]
    params: list[Any] = []
    multi_hop_ok = _notation_reads_multi_hop()
    for path in sorted(TEMPLATES_DIR.glob("*.md")):
        if path.name in NOT_TEMPLATES:
            continue
        marks = []
        if not multi_hop_ok and _MULTI_HOP_RE.search(path.read_text(encoding="utf-8")):
            marks.append(pytest.mark.xfail(
                raises=MapSyntaxError, strict=True,
                reason="lookup through several tables (a.b.c) is not in the map notation yet"))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


TEMPLATE_PARAMS = _template_params()


def _read(name: str) -> str:
    path = TEMPLATES_DIR / name
    if not path.is_file():
        pytest.fail(MISSING)
    return path.read_text(encoding="utf-8")


def _filters_module() -> ModuleType | None:
    try:
        return importlib.import_module("dualwrite.model.filters")
    except ModuleNotFoundError as exc:
        if exc.name != "dualwrite.model.filters":
            raise
        return None


def count_table_rows(text: str) -> int:
    """Rows of the mapping table, counted without the importer: `|` lines after `---|`."""
    lines = text.splitlines()
    sep = next(i for i, line in enumerate(lines) if line.startswith("---|"))
    return sum(1 for line in lines[sep + 1:] if "|" in line)


def count_value_pairs(text: str) -> int:
    """Value-map entries in the markdown: each follows a `<br>` in a Map type cell."""
    lines = text.splitlines()
    sep = next(i for i, line in enumerate(lines) if line.startswith("---|"))
    return sum(line.count("<br>") for line in lines[sep + 1:])


def _entry(item: Any) -> tuple[str, Mapping[str, Any]]:
    if isinstance(item, str):
        return item, {}
    assert isinstance(item, Mapping) and len(item) == 1, item
    text, options = next(iter(item.items()))
    return text, options


def _norm(value: Any) -> Any:
    """One comparable form for a template cell's text and its typed YAML value: numbers as
    Decimal (``'192350000'`` == ``192350000``), booleans and words case-folded."""
    if isinstance(value, bool):
        return str(value).casefold()
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return str(value).casefold()


def _keys(pairs: Any) -> list[tuple[Any, Any]]:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return [(_norm(a), _norm(b)) for a, b in items]


def _convert(text: str, source: str) -> tuple[Template, dict[str, Any], str]:
    t = parse_template(text, source=source)
    doc = template_to_map(t)
    return t, doc, render_map_yaml(doc, comments=template_comments(t))


# ---------------------------------------------------------------------------------------------
# every published template


@pytest.mark.parametrize("path", TEMPLATE_PARAMS)
def test_every_template_imports_and_loads(path: Path | None) -> None:
    if path is None:
        pytest.fail(MISSING)
    text = path.read_text(encoding="utf-8")
    n_rows = count_table_rows(text)
    t, doc, rendered = _convert(text, path.name)

    assert len(t.rows) == n_rows
    assert sum(len(r.values) for r in t.rows) == count_value_pairs(text)
    assert t.left_table and t.right_table
    data = load_yaml(rendered, file=path.name)
    assert data == doc, "the rendered YAML must load back to the same document"
    assert rendered.startswith("# Imported from")
    assert "KEY GUESSED" in rendered
    assert len(data["fields"]) == n_rows

    # every row survived with its value map and default, in order
    for row, item in zip(t.rows, data["fields"], strict=True):
        line, options = _entry(item)
        assert line == row.text
        if row.values:
            assert _keys(options["values"]) == _keys(row.values), row.line
        else:
            assert "values" not in options
        if row.default is not None:
            assert _norm(options["default"]) == _norm(row.default), row.line
        else:
            assert "default" not in options

    # filters were converted from the F&O syntax; the reversed one is OData already
    flt = data.get("filter", {})
    if "Source filter:" in text:
        assert not re.search(r'==|&&|\|\||"|`', flt["left"]), flt["left"]
    else:
        assert "left" not in flt
    if "Reversed source filter:" in text:
        assert flt["right"] and "`" not in flt["right"]
    else:
        assert "right" not in flt
    filters = _filters_module()
    if filters is not None:
        for expr in flt.values():
            filters.parse_filter(expr)

    table_map = parse_map_document(data, file=path.name)
    assert len(table_map.fields) == n_rows
    assert (table_map.left, table_map.right) == (t.left_table, t.right_table)
    for row, fm in zip(t.rows, table_map.fields, strict=True):
        if row.values:
            assert fm.values is not None
            assert _keys(fm.values.pairs) == _keys(row.values)
        if row.default is not None:
            assert fm.has_default and _norm(fm.default) == _norm(row.default)


FILTER_PARAMS = [p for p in TEMPLATE_PARAMS
                 if p.values[0] is not None and "filter:" in p.values[0].read_text("utf-8")]


@pytest.mark.parametrize("path", [pytest.param(p.values[0], id=p.id) for p in FILTER_PARAMS])
def test_template_filters_parse_as_odata(path: Path) -> None:
    filters = pytest.importorskip("dualwrite.model.filters")
    t = parse_template(path.read_text(encoding="utf-8"), source=path.name)
    flt = template_to_map(t)["filter"]
    assert flt
    for expr in flt.values():
        filters.parse_filter(expr)


# ---------------------------------------------------------------------------------------------
# CustomersV3-accounts: the `##` layout


def test_customers_v3_accounts() -> None:
    text = _read("CustomersV3-accounts.md")
    t, doc, rendered = _convert(text, "CustomersV3-accounts.md")
    assert t.title == "Customers V3 to accounts"
    assert (t.left_table, t.right_table) == ("CustomersV3", "accounts")
    assert t.left_filter_raw == '((PartyType == "Organization"))'
    assert t.right_filter_raw == "customertypecode eq 3"
    assert t.left_filter_line == 13 and t.right_filter_line == 15
    assert t.header[1] == "Map type"
    assert t.warnings == []
    assert t.rows[0].text == "CUSTOMERACCOUNT = accountnumber" and t.rows[0].line == 19

    assert doc["name"] == "accounts"
    assert doc["left"] == "CustomersV3" and doc["right"] == "accounts"
    assert doc["master"] == "left"
    assert doc["key"] == {"left": ["CUSTOMERACCOUNT"], "right": ["accountnumber"]}
    assert doc["filter"] == {"left": "PartyType eq 'Organization'",
                             "right": "customertypecode eq 3"}
    fields = doc["fields"]
    assert "SALESCURRENCYCODE = transactioncurrencyid.isocurrencycode" in fields
    assert "CUSTOMERGROUPID = msdyn_customergroupid.msdyn_groupid" in fields
    assert "CONTACTPERSONID = primarycontactid.msdyn_contactpersonid" in fields
    assert "INVOICEADDRESSLATITUDE > address2_latitude" in fields
    assert "CREDITLIMITISMANDATORY >< msdyn_creditlimitismandatory" in fields
    assert {"none >> customertypecode": {"default": 3}} in fields
    assert {"none >> address1_addresstypecode": {"default": 2}} in fields
    assert {"LANGUAGEID << none": {"default": "en-us"}} in fields
    assert {"PARTYTYPE << none": {"default": "Organization"}} in fields

    assert "# KEY GUESSED - CHECK IT" in rendered
    assert "CUSTOMERACCOUNT <-> accountnumber from line 19" in template_comments(t)[1]
    assert "\n  - none >> customertypecode: {default: 3}\n" in rendered
    assert "\n  - LANGUAGEID << none: {default: en-us}\n" in rendered
    table_map = parse_map_document(load_yaml(rendered))
    by_text = {f.text: f for f in table_map.fields}
    assert by_text["none >> customertypecode"].default == 3
    assert by_text["LANGUAGEID << none"].default == "en-us"
    lookup = by_text["SALESCURRENCYCODE = transactioncurrencyid.isocurrencycode"].right
    assert lookup.column == "transactioncurrencyid" and lookup.targets[0].key == "isocurrencycode"
    assert table_map.filter_left == "PartyType eq 'Organization'"
    assert table_map.filter_right == "customertypecode eq 3"


def test_left_entity_falls_back_to_the_title_without_a_source() -> None:
    t = parse_template(_read("CustomersV3-accounts.md"))
    assert (t.left_table, t.right_table) == ("CustomersV3", "accounts")
    t = parse_template(_read("LegalEntities-Companies.md"), source="LegalEntities-Companies.md")
    assert (t.left_table, t.right_table) == ("LegalEntities", "cdm_companies")


def test_map_name_can_be_given() -> None:
    t = parse_template(_read("CustomersV3-accounts.md"), source="CustomersV3-accounts.md")
    assert template_to_map(t, name="customers")["name"] == "customers"


# ---------------------------------------------------------------------------------------------
# mt-217 sales order headers: the `###` layout, polymorphic lookups, value maps


def test_mt217_sales_order_headers() -> None:
    name = "mt-217-cds-sales-order-headers-salesorders.md"
    t, doc, rendered = _convert(_read(name), name)
    assert t.title == "CDS sales order headers (salesorders)"
    assert (t.left_table, t.right_table) == ("CdsSalesOrderHeaders", "salesorders")
    assert t.left_filter_raw is None
    assert doc["filter"] == {"right": "msdyn_ordertype eq 192350000"}
    assert doc["key"] == {"left": ["SALESORDERNUMBER"], "right": ["msdyn_salesordernumber"]}

    rows = {r.left: r for r in t.rows}
    assert rows["AREPRICESINCLUDINGSALESTAX"].values == (("no", "False"), ("yes", "True"))
    assert rows["SALESORDERPROMISINGMETHOD"].values[0] == ("none", "192350000")
    assert len(rows["LANGUAGEID"].values) == 42

    table_map = parse_map_document(load_yaml(rendered))
    by_left = {str(f.left): f for f in table_map.fields if not f.left.is_none}
    customer = by_left["ORDERINGCUSTOMERACCOUNTNUMBER"].right
    assert customer.column == "customerid" and customer.is_polymorphic
    assert [(x.table, x.key) for x in customer.targets] == [
        ("Account", "accountnumber"), ("Contact", "msdyn_contactpersonid")]
    invoice = by_left["INVOICECUSTOMERACCOUNTNUMBER"].right
    assert invoice.column == "msdyn_invoicecustomerid" and len(invoice.targets) == 2

    prices = by_left["AREPRICESINCLUDINGSALESTAX"]
    assert prices.values is not None and prices.values.invertible
    assert prices.values.to_right("no") == (True, False)
    assert prices.values.to_left(True) == (True, "yes")
    country = by_left["DELIVERYADDRESSCOUNTRYREGIONISOCODE"]
    assert country.values is not None
    assert country.values.to_right("no") == (True, "norway")  # `no` stays text, not false
    assert by_left["ISINVOICEADDRESSPRIVATE"].direction.value == ">>"
    order_type = next(f for f in table_map.fields if f.text == "none >> msdyn_ordertype")
    assert order_type.default == 192350000
    assert by_left["LANGUAGEID"].values is not None
    assert by_left["LANGUAGEID"].values.to_right("en-us") == (True, 192350015)


# ---------------------------------------------------------------------------------------------
# fo_filter_to_odata


@pytest.mark.parametrize(("fo", "odata"), [
    ('((PartyType == "Organization"))', "PartyType eq 'Organization'"),
    ("(AssociatedContactType = 1)", "AssociatedContactType eq 1"),
    ('`((PartyType == "Person"))`', "PartyType eq 'Person'"),
    ('`(SalesOrderNumber != "")`', "SalesOrderNumber ne ''"),
    ('((CURRENCYCODE != "999"))', "CURRENCYCODE ne '999'"),
    ('((TypeId == "Note") || (TypeId == "URL"))', "TypeId eq 'Note' or TypeId eq 'URL'"),
    ('((A == "x") || (B == "y")) && C != 2', "(A eq 'x' or B eq 'y') and C ne 2"),
    ("(A || B) && (C || D)", "(A or B) and (C or D)"),
    ("A && B || C", "A and B or C"),
    ("!(A == 1)", "not (A eq 1)"),
    ("!IsActive", "not IsActive"),
    ("Qty >= -1.5 && Qty < 10 && Qty <= 9 && Qty > 0",
     "Qty ge -1.5 and Qty lt 10 and Qty le 9 and Qty gt 0"),
    ('Name == "it\'s"', "Name eq 'it''s'"),
    ("Flag == True", "Flag eq true"),
    ("  ", ""),
])
def test_fo_filter_to_odata(fo: str, odata: str) -> None:
    assert fo_filter_to_odata(fo) == odata


@pytest.mark.parametrize(("fo", "message"), [
    ("PartyType ==", "unexpected end"),
    ('(PartyType == "Person"', "missing ')'"),
    ("A == 1)", "unexpected ')'"),
    ("A ~ 1", "unexpected '~' at position 2"),
    ("A == == 1", "expected a field or a value but found '=='"),
])
def test_fo_filter_errors(fo: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)) as info:
        fo_filter_to_odata(fo)
    assert info.value.code == "DW121"
    assert "&&" in info.value.hint


def test_reversed_filter_is_kept() -> None:
    assert reversed_filter_to_odata(" `customertypecode eq 3` ") == "customertypecode eq 3"
    assert reversed_filter_to_odata("msdyn_sellable eq true  and x ne null") == \
        "msdyn_sellable eq true  and x ne null"


# ---------------------------------------------------------------------------------------------
# odd tables, warnings and errors (small synthetic templates)

HEAD = "## Things V1 to msdyn_things\n\nSome words.\n\n"
TABLE = ("Finance and operations field | Map type | Customer engagement column | Default value\n"
         "---|---|---|---\n")


def test_odd_cells_are_unescaped() -> None:
    text = HEAD + TABLE + (
        "| `THING\\_ID` | = | msdyn\\_thingid |\n"
        "STATUS | &gt;&lt;<br>`on\\_hold` : `1`<br>`open` : `2` | msdyn_status | \n"
        "none | >> | msdyn_kind | `7`   \n"
        "RATE | > | msdyn_rate | 1.50\n"
        "\n"
        "Text after the table | with a pipe\n")
    t = parse_template(text, source="Things-msdyn-things.md")
    assert [r.text for r in t.rows] == [
        "THING_ID = msdyn_thingid", "STATUS >< msdyn_status", "none >> msdyn_kind",
        "RATE > msdyn_rate"]
    assert t.rows[1].values == (("on_hold", "1"), ("open", "2"))
    assert t.rows[2].default == "7"
    assert [r.line for r in t.rows] == [7, 8, 9, 10]
    doc = template_to_map(t)
    assert doc["fields"][1] == {"STATUS >< msdyn_status": {"values": {"on_hold": 1, "open": 2}}}
    assert doc["fields"][2] == {"none >> msdyn_kind": {"default": 7}}
    assert doc["fields"][3] == {"RATE > msdyn_rate": {"default": 1.5}}
    assert any("line 10" in w and "default value" in w for w in t.warnings)
    assert doc["name"] == "msdyn_things" and doc["left"] == "Things"
    parse_map_document(load_yaml(render_map_yaml(doc, comments=template_comments(t))))


def test_non_invertible_bidirectional_value_map_imports_with_a_warning() -> None:
    text = HEAD + TABLE + (
        "THINGID | = | msdyn_thingid |\n"
        "KIND | ><<br>`a` : `1`<br>`b` : `1`<br>`c` : `2` | msdyn_kind |\n")
    t = parse_template(text, source="Things-msdyn-things.md")
    assert len(t.rows) == 2
    [warning] = t.warnings
    assert warning.startswith("line 8:") and "not one-to-one" in warning
    doc = template_to_map(t)
    assert doc["fields"][1] == {"KIND >< msdyn_kind": {"values": {"a": 1, "b": 1, "c": 2}}}
    rendered = render_map_yaml(doc, comments=template_comments(t))
    assert "# WARNING: this >< value map is not one-to-one" in rendered
    assert "# warning: line 8:" in rendered
    table_map = parse_map_document(load_yaml(rendered))  # loads; `validate` rejects it
    kind = table_map.fields[1]
    assert kind.values is not None and not kind.values.invertible


def test_value_entry_without_backticks_is_kept_as_text() -> None:
    text = HEAD + TABLE + (
        "THINGID | = | msdyn_thingid |\n"
        "CLASS | ><<br>`full` : `1`<br>blank : `2` | msdyn_class |\n")
    t = parse_template(text)
    assert t.rows[1].values == (("full", "1"), ("blank", "2"))
    assert any("'blank' without backticks" in w for w in t.warnings)


def test_key_guess_prefers_a_plain_bidirectional_row() -> None:
    text = HEAD + TABLE + (
        "GROUPID | = | msdyn_group.msdyn_groupid |\n"
        "NAME | > | msdyn_name |\n"
        "CODE | = | msdyn_code |\n")
    row, why = guess_key(parse_template(text))
    assert row.text == "CODE = msdyn_code" and "first `=` row" in why


def test_key_guess_falls_back_to_a_one_way_row_and_says_so() -> None:
    text = HEAD + TABLE + (
        "GROUPID | = | msdyn_group.msdyn_groupid |\n"
        "FLAG | >> | msdyn_flag |\n"
        "NAME | > | msdyn_name |\n")
    t = parse_template(text)
    row, why = guess_key(t)
    assert row.text == "NAME > msdyn_name" and "mapped both ways" in why
    assert template_to_map(t)["key"] == {"left": ["NAME"], "right": ["msdyn_name"]}
    assert "mapped both ways" in " ".join(template_comments(t))


def test_no_mapping_table_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no mapping table found") as info:
        parse_template(_read("dual-write-symbols.md"), source="dual-write-symbols.md")
    assert info.value.file == "dual-write-symbols.md"
    assert "Map type" in info.value.hint
    assert str(info.value).startswith("dual-write-symbols.md: DW120 no mapping table found")


def test_wrong_number_of_cells_is_an_error() -> None:
    text = HEAD + TABLE + "THINGID | = | msdyn_thingid |\nNAME | = | msdyn_name | x | y\n"
    with pytest.raises(TemplateError, match=r"table row has 5 cell\(s\), expected 3 or 4") as info:
        parse_template(text, source="t.md")
    assert (info.value.file, info.value.line) == ("t.md", 8)
    assert str(info.value).startswith("t.md:8: DW120 ")
    assert "\\|" in info.value.hint

    with pytest.raises(TemplateError, match=r"has 2 cell\(s\)") as info:
        parse_template(HEAD + TABLE + "THINGID | =\n", source="t.md")
    assert info.value.line == 7


def test_unknown_map_type_symbol_is_an_error() -> None:
    text = HEAD + TABLE + "THINGID | = | msdyn_thingid |\nNAME | <> | msdyn_name |\n"
    with pytest.raises(TemplateError, match="unknown map type symbol '<>'") as info:
        parse_template(text, source="t.md")
    assert info.value.line == 8
    assert "= >< > >> < <<" in info.value.hint


@pytest.mark.parametrize(("rows", "message"), [
    ("THINGID |  = |  |\n", "the right field cell is empty"),
    ("none | >> | msdyn_kind |\n", "maps `none` but has no default value"),
    ("none | = | msdyn_kind | 3\n", "writes into `none` on the left"),
    ("THINGID | = | msdyn/thingid |\n", "is not a valid field line"),
    ("THINGID | =<br>`a` : `b` | msdyn_thingid |\n", "not a transformed one"),
    ("THINGID | ><<br>`a` `b` | msdyn_thingid |\n", "value map entry '`a` `b`' does not parse"),
])
def test_bad_rows_are_errors(rows: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)) as info:
        parse_template(HEAD + TABLE + rows, source="t.md")
    assert info.value.line == 7 and info.value.hint


def test_empty_table_and_unnamed_tables_are_errors() -> None:
    with pytest.raises(TemplateError, match="the mapping table has no rows"):
        parse_template(HEAD + TABLE + "\n", source="t.md")
    with pytest.raises(TemplateError, match="cannot tell which tables") as info:
        parse_template("## Things\n\n" + TABLE + "THINGID | = | msdyn_thingid |\n")
    assert info.value.line == 1


def test_bad_source_filter_names_the_line() -> None:
    text = "## Things V1 to msdyn_things\n\nSource filter: (A == )\n\n" + TABLE + \
        "THINGID | = | msdyn_thingid |\n"
    t = parse_template(text, source="t.md")
    with pytest.raises(TemplateError, match="does not convert") as info:
        template_to_map(t)
    assert (info.value.file, info.value.line) == ("t.md", 3)


def test_repeated_left_value_keeps_the_first_entry_with_a_warning() -> None:
    text = HEAD + TABLE + (
        "THINGID | = | msdyn_thingid |\n"
        "KIND | >><br>`a` : `1`<br>`A` : `2`<br>`b` : `3` | msdyn_kind |\n")
    t = parse_template(text)
    assert t.rows[1].values == (("a", "1"), ("A", "2"), ("b", "3"))
    assert any("line 8" in w and "twice" in w for w in t.warnings)
    assert template_to_map(t)["fields"][1] == {"KIND >> msdyn_kind": {"values": {"a": 1, "b": 3}}}


def test_render_quotes_what_yaml_needs_and_loads_back_equal() -> None:
    doc: dict[str, Any] = {
        "name": "things", "description": "two\nlines: # not a comment", "left": "Things",
        "right": "msdyn_things", "key": {"left": ["THINGID"], "right": ["msdyn_thingid"]},
        "master": "left",
        "filter": {"right": "name eq 'a: b' and code ne '#1'"},
        "fields": ["THINGID = msdyn_thingid",
                   {"FLAG >< msdyn_flag": {"values": {"no": False, "yes": True, "on": "off"}}},
                   {"none >> msdyn_when": {"default": "1/1/1900"}},
                   {"none >> msdyn_n": {"default": "007"}}],
    }
    rendered = render_map_yaml(doc, comments=["first\nsecond", "third"])
    assert rendered.startswith("# first\n# second\n# third\n\nname: things\n")
    assert load_yaml(rendered) == doc
    assert parse_map_document(load_yaml(rendered)).fields[1].values is not None
