"""Lookups in the model: the notation (plain, company-scoped, polymorphic, chained) and how
binding decides that a lookup resolves within the row's company (pure: no database)."""

from __future__ import annotations

from typing import Any

import pytest

from dualwrite.errors import Issue, MapSyntaxError
from dualwrite.model.binding import BoundMap, bind_maps
from dualwrite.model.maps import Side, parse_map_document
from dualwrite.model.notation import LookupTarget, parse_field_line, parse_ref
from dualwrite.model.schema import Column, ForeignKey, Kind, TableSchema
from dualwrite.model.yamlio import load_yaml


@pytest.mark.parametrize("text, targets", [
    ("groupref.groupcode", [LookupTarget("groupcode")]),
    ("msdyn_customergroupid.(msdyn_company,msdyn_groupid)",
     [LookupTarget("msdyn_groupid", None, "msdyn_company")]),
    ("col.( company ,  key )", [LookupTarget("key", None, "company")]),
    ("col.rel.(company,key)", [LookupTarget("rel.key", None, "company")]),
    ("customerid.Account(company,accountnumber).Contact(msdyn_contactpersonid)",
     [LookupTarget("accountnumber", "Account", "company"),
      LookupTarget("msdyn_contactpersonid", "Contact")]),
])
def test_lookup_notation_parses(text: str, targets: list[LookupTarget]) -> None:
    ref = parse_ref(text)
    assert list(ref.targets) == targets
    assert parse_ref(str(ref)) == ref  # what a map file would say, read back alike


def test_spaces_inside_parentheses_do_not_split_a_field_line() -> None:
    line = parse_field_line("CUSTOMERGROUPID = msdyn_customergroupid.( msdyn_company, "
                            "msdyn_groupid )")
    assert line.right.targets == (LookupTarget("msdyn_groupid", None, "msdyn_company"),)
    assert str(line.right) == "msdyn_customergroupid.(msdyn_company,msdyn_groupid)"


@pytest.mark.parametrize("text, says, hint", [
    ("col.(key)", "hold a company column and a key column", "write col.key"),
    ("col.()", "has an empty column name", "company column, then its key"),
    ("col.(a,)", "has an empty column name", "company column, then its key"),
    ("col.(a,b,c)", "has 3 columns", "column.(company,key)"),
    ("col.(1a,b)", "'1a', not a column name", "company column"),
    ("col.(a,b", "must be one parenthesised list", "column.(company,naturalkey)"),
    ("col.(a,b).x", "does not parse", "column.(company,naturalkey)"),
    ("col.Account(a,b,c)", "has 3 columns", "column.Table(company,key)"),
])
def test_malformed_lookups_say_what_to_write(text: str, says: str, hint: str) -> None:
    with pytest.raises(MapSyntaxError) as info:
        parse_ref(text)
    assert says in info.value.detail and text in info.value.detail
    assert hint in info.value.hint


def test_a_malformed_lookup_in_a_map_file_names_the_line() -> None:
    doc = load_yaml("name: m\nleft: A\nright: b\nkey: {left: [K], right: [k]}\nfields:\n"
                    "  - K = k\n  - G = groupref.(company)\n", file="m.yaml")
    with pytest.raises(MapSyntaxError) as info:
        parse_map_document(doc, file="m.yaml")
    assert info.value.code == "DW001" and info.value.line == 7


# -- binding ------------------------------------------------------------------------------------
def table(name: str, *cols: str, pk: tuple[str, ...],
          unique: tuple[tuple[str, ...], ...] = (), fks: dict[str, str] | None = None
          ) -> TableSchema:
    """A table whose columns are all nullable text (required columns are not the point)."""
    return TableSchema(name, {c: Column(c, Kind.STRING) for c in cols}, pk,
                       [ForeignKey((c,), t, (f"{t}_id",)) for c, t in (fks or {}).items()],
                       list(unique))


ERP = {t.name: t for t in [
    table("Customers", "dataAreaId", "ACCOUNT", "GROUPID", "CUSTOMER",
          pk=("dataAreaId", "ACCOUNT")),
    table("Groups", "dataAreaId", "GROUPID", pk=("dataAreaId", "GROUPID")),
    table("Lines", "dataAreaId", "ORDER", "LINE", pk=("dataAreaId", "ORDER", "LINE")),
]}
CRM = {t.name: t for t in [
    table("accounts", "accounts_id", "company", "accountnumber", "groupref", "customerid",
          "catref", pk=("accounts_id",), unique=(("company", "accountnumber"),),
          fks={"groupref": "groups", "catref": "categories"}),
    table("categories", "categories_id", "hierref", pk=("categories_id",),
          fks={"hierref": "hierarchies"}),
    table("hierarchies", "hierarchies_id", "company", "name", pk=("hierarchies_id",),
          unique=(("company", "name"),)),
    table("groups", "groups_id", "company", "groupcode", pk=("groups_id",),
          unique=(("company", "groupcode"),)),
    table("contacts", "contacts_id", "contactnumber", pk=("contacts_id",),
          unique=(("contactnumber",),)),
    table("lines", "lines_id", "company", "orderref", "line", pk=("lines_id",),
          fks={"orderref": "orders"}),
    table("orders", "orders_id", "company", "ordernumber", pk=("orders_id",),
          unique=(("ordernumber",),)),
]}

GROUPS = """name: groups
left: Groups
right: groups
key: {left: [GROUPID], right: [groupcode]}
company: {left: dataAreaId, right: company}
fields: [GROUPID = groupcode]
"""


def customers(field: str, *, striped: bool = True) -> str:
    company = "company: {left: dataAreaId, right: company}\n" if striped else ""
    return ("name: customers\nleft: Customers\nright: accounts\n"
            "key: {left: [ACCOUNT], right: [accountnumber]}\n" + company +
            f"fields:\n  - ACCOUNT = accountnumber\n  - {field}\n")


def bind(*texts: str) -> tuple[dict[str, BoundMap], list[Issue]]:
    maps = [parse_map_document(load_yaml(t, file=f"m{i}.yaml"), file=f"m{i}.yaml")
            for i, t in enumerate(texts)]

    def schema(side: Side, name: str) -> TableSchema | None:
        return (ERP if side is Side.LEFT else CRM).get(name)

    bound, issues = bind_maps(maps, schema, lambda s: list(ERP if s is Side.LEFT else CRM))
    return {b.name: b for b in bound}, issues


def lookup_of(b: BoundMap) -> Any:
    return next(f.right for f in b.fields if f.right.is_lookup)


def test_a_lookup_into_a_striped_maps_table_resolves_within_the_company() -> None:
    bound, issues = bind(GROUPS, customers("GROUPID = groupref.groupcode"))
    assert issues == []
    end = lookup_of(bound["customers"])
    assert end.scoped and end.targets[0].company == "company"
    assert end.targets[0].describe() == "groups.(company,groupcode)"


def test_without_the_groups_map_the_lookup_names_the_company_column() -> None:
    bound, issues = bind(customers("GROUPID = groupref.groupcode"))
    [warning] = issues  # groupcode alone is not unique in groups
    assert warning.code == "DW130" and not warning.is_error and "customers" in bound
    assert "groupref.(company,groupcode)" in warning.hint
    bound, issues = bind(customers("GROUPID = groupref.(company,groupcode)"))
    assert issues == [] and lookup_of(bound["customers"]).targets[0].company == "company"


def test_an_unstriped_map_cannot_scope_its_lookups() -> None:
    bound, issues = bind(GROUPS, customers("GROUPID = groupref.groupcode", striped=False))
    [warning] = issues
    assert warning.code == "DW130" and "stripe this map" in warning.hint
    assert not lookup_of(bound["customers"]).scoped
    bound, issues = bind(customers("GROUPID = groupref.(company,groupcode)", striped=False))
    [error] = issues
    assert error.code == "DW132" and error.is_error and "customers" not in bound
    assert "not company-striped" in error.message and "groupref.groupcode" in error.hint


def test_a_named_company_column_must_exist() -> None:
    _, issues = bind(customers("GROUPID = groupref.(nosuch,groupcode)"))
    [error] = issues
    assert error.code == "DW107" and "no company column 'nosuch'" in error.message


def test_polymorphic_candidates_are_scoped_each_on_its_own() -> None:
    contacts = ("name: contacts\nleft: Groups\nright: contacts\n"
                "key: {left: [GROUPID], right: [contactnumber]}\n"
                "fields: [GROUPID = contactnumber]\n")
    accounts_striped = customers("CUSTOMER = customerid.Account(accountnumber)."
                                 "Contact(contactnumber)")
    bound, issues = bind(accounts_striped, contacts)
    assert issues == []
    account, contact = lookup_of(bound["customers"]).targets
    assert account.company == "company" and contact.company is None


def test_a_key_column_through_a_lookup_is_refused_with_what_to_do() -> None:
    lines = ("name: lines\nleft: Lines\nright: lines\n"
             "key: {left: [ORDER, LINE], right: [orderref.ordernumber, line]}\n"
             "company: {left: dataAreaId, right: company}\n"
             "fields:\n  - ORDER = orderref.ordernumber\n  - LINE = line\n")
    bound, issues = bind(lines)
    assert "lines" not in bound
    [error] = issues  # one issue for the pair, not also "no such column" and "not mapped"
    assert error.code == "DW131" and "'orderref.ordernumber'" in error.message
    assert "`- ORDER = ordernumber`" in error.hint
    assert "`- ORDER > orderref.ordernumber`" in error.hint


def test_a_chained_lookup_is_found_within_the_company_on_its_last_table() -> None:
    bound, issues = bind(customers("CUSTOMER = catref.hierref.(company,name)"))
    assert issues == []
    [target] = lookup_of(bound["customers"]).targets
    assert (target.table, target.company) == ("categories", None)
    assert target.next is not None and target.next.company == "company"
    assert target.scoped and target.describe() == "hierarchies.(company,name)"
