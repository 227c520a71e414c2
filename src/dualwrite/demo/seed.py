"""Deterministic seed data for the demo's ERP and CRM.

:func:`seed` generates ONE dataset — customers, contacts, products, orders, invoices... as FO
(ERP) records — and renders both applications from it *through the demo maps*: a CRM row is
what the map makes of the ERP record (value maps applied, lookups written as the referenced
CRM row's GUID, ``none >>`` defaults set, the company copied into ``company``). So, per map:

* about 85 % of the rows in the map's scope exist on both sides and are identical through the
  map;
* about 5 % exist only in the ERP, about 5 % only in the CRM;
* about 5 % exist on both sides and differ in one or two bidirectional (``=``) plain fields
  (a phone number, a street, a date) — on either side.

Line maps inherit one-sidedness from their header (a line of an ERP-only order is ERP-only),
and add a few one-sided lines under shared headers. Outside the maps' scope the seed also
writes ERP customers of party type ``Person`` (excluded by the customers map's left filter),
CRM accounts that are not customers (competitors, partners: ``customertypecode`` ≠ 3) and
CRM work-based orders (``msdyn_ordertype`` ≠ 192350000); none of them may be synced.

Guarantees the demo relies on:

* Every reference points at a row that exists on both sides (a lookup of a CRM-only row
  resolves on the CRM now and, after the referenced map's sync, on the ERP too), and every CRM
  foreign-key value names an existing row.
* A one-sided row only holds values the initial sync can carry across: a CRM-only row has no
  value in fields that flow only ERP → CRM (they would stay empty in the ERP), an ERP-only row
  none in fields that flow only CRM → ERP. After an initial sync, both sides agree.
* Deterministic: the same ``rng_seed`` and ``scale`` give byte-identical tables (one
  ``random.Random``, GUIDs drawn from it, no wall clock; dates are relative to :data:`AS_OF`).
"""

from __future__ import annotations

import datetime as dt
import random
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import sqlalchemy as sa

from dualwrite.demo import vocab
from dualwrite.demo.catalog import load_maps
from dualwrite.demo.schema import crm_metadata, erp_metadata
from dualwrite.model.maps import Side, TableMap
from dualwrite.model.notation import Direction, FieldRef
from dualwrite.model.schema import find_table

__all__ = ["AS_OF", "BOTH", "CRM_ONLY", "DIFFER", "ERP_ONLY", "seed"]

#: "today" for the generated dates
AS_OF = dt.date(2026, 11, 25)
#: share of a map's rows that are ERP-only, CRM-only, and differing (each)
SHARE = 0.05
BATCH = 5_000

BOTH, ERP_ONLY, CRM_ONLY, DIFFER = "both", "erp", "crm", "differ"
ON_ERP = frozenset({BOTH, ERP_ONLY, DIFFER})
ON_CRM = frozenset({BOTH, CRM_ONLY, DIFFER})
SHARED = frozenset({BOTH, DIFFER})

#: values for unmapped CRM columns the database would default (kept explicit for executemany)
_CRM_DEFAULTS: dict[str, Any] = {"statecode": 0}

#: the `=` fields (left names) a differing row may differ in, per map
_DIFFER_FIELDS: dict[str, tuple[str, ...]] = {
    "customers": ("PRIMARYCONTACTPHONE", "PRIMARYCONTACTEMAIL", "DELIVERYADDRESSSTREET",
                  "CREDITLIMIT"),
    "contacts": ("PRIMARYPHONENUMBER", "PRIMARYEMAILADDRESS", "EMPLOYMENTPROFESSION",
                 "PRIMARYADDRESSSTREET"),
    "products": ("PRODUCTDESCRIPTION", "PRODUCTNAME"),
    "assets": ("WRKCTRID", "REPLACEMENTDATE", "REPLACEMENTVALUE"),
    "purchase_orders": ("REQUESTEDDELIVERYDATE", "CONFIRMEDDELIVERYDATE",
                        "VENDORORDERREFERENCE"),
    "purchase_order_lines": ("REQUESTEDDELIVERYDATE", "CONFIRMEDDELIVERYDATE",
                             "EXTERNALITEMNUMBER"),
    "inventory_onhand": ("ATPDATE",),
    "sales_orders": ("EMAIL", "REQUESTEDSHIPPINGDATE", "DELIVERYADDRESSSTREET"),
    "sales_order_lines": ("REQUESTEDSHIPPINGDATE", "CONFIRMEDSHIPPINGDATE"),
    "invoices": ("CUSTOMERSORDERREFERENCE", "INVOICEDATE"),
    "invoice_lines": ("CONFIRMEDSHIPPINGDATE",),
}

T = TypeVar("T")


@dataclass
class Rec:
    """One generated row in ERP terms (FO column → value) and where it exists.

    ``in_scope`` is False for rows outside the map's filters (person customers, non-customer
    accounts, work orders). ``crm_extra`` overrides columns of the rendered CRM row (unmapped
    columns, or a fixed difference when ``fixed_differ``).
    """

    data: dict[str, Any]
    status: str = BOTH
    crm_extra: dict[str, Any] = field(default_factory=dict)
    fixed_differ: bool = False
    in_scope: bool = True

    @property
    def shared(self) -> bool:
        return self.status in SHARED and self.in_scope


@dataclass(frozen=True)
class _Co:
    """One legal entity and the flavour of its data."""

    code: str
    prefix: str
    country: str
    country3: str
    currency: str
    language: str
    tld: str
    dial: str
    tax: Decimal
    share: float
    cities: tuple[vocab.City, ...]
    streets: tuple[str, ...]
    first_names: tuple[tuple[str, str], ...]
    last_names: tuple[str, ...]
    words: tuple[str, ...]
    industries: tuple[str, ...]
    suffixes: tuple[str, ...]
    roles: tuple[tuple[str, tuple[str, ...]], ...]
    notes: tuple[str, ...]
    warehouses: tuple[tuple[str, str, str, int], ...]
    currencies: tuple[tuple[str, int], ...]


_USMF = _Co("usmf", "US", "US", "USA", "USD", "en-us", "com", "+1", Decimal("0.08"), 0.6,
            vocab.US_CITIES, vocab.US_STREETS, vocab.US_FIRST_NAMES, vocab.US_LAST_NAMES,
            vocab.US_COMPANY_WORDS, vocab.US_INDUSTRIES, vocab.US_SUFFIXES, vocab.US_ROLES,
            vocab.US_NOTES, vocab.USMF_WAREHOUSES, (("USD", 90), ("CAD", 6), ("GBP", 4)))
_DEMF = _Co("demf", "DE", "DE", "DEU", "EUR", "de", "de", "+49", Decimal("0.19"), 0.4,
            vocab.DE_CITIES, vocab.DE_STREETS, vocab.DE_FIRST_NAMES, vocab.DE_LAST_NAMES,
            vocab.DE_COMPANY_WORDS, vocab.DE_INDUSTRIES, vocab.DE_SUFFIXES, vocab.DE_ROLES,
            vocab.DE_NOTES, vocab.DEMF_WAREHOUSES,
            (("EUR", 85), ("CHF", 6), ("DKK", 4), ("SEK", 3), ("GBP", 2)))
_COMPANIES = (_USMF, _DEMF)

_CENT = Decimal("0.01")
_DIAL = {c.name: c.dial for c in vocab.US_CITIES + vocab.DE_CITIES}


def _money(value: Decimal | float | int) -> Decimal:
    return Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP)


_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "&": " "})


def _slug(text: str, words: int = 2) -> str:
    """ASCII, lower-case, hyphenated: ``Müller & Koch GmbH`` → ``mueller-koch``."""
    plain = unicodedata.normalize("NFKD", text.lower().translate(_TRANSLIT))
    plain = plain.encode("ascii", "ignore").decode()
    parts = [p for p in re.split(r"[^a-z0-9]+", plain) if p]
    return "-".join(parts[:words]) or "mail"


def _plus_years(day: dt.date, years: int) -> dt.date:
    """The same day ``years`` later (28 February for 29 February in a common year)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def _ean13(rng: random.Random) -> str:
    digits = [rng.randint(0, 9) for _ in range(12)]
    check = (10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10
    return "".join(map(str, digits)) + str(check)


class _Seeder:
    """Generates the records (``recs``), then renders both sides (``render``)."""

    def __init__(self, scale: int, rng_seed: int) -> None:
        if scale < 1:
            raise ValueError(f"scale must be at least 1, not {scale}")
        self.rng = random.Random(rng_seed)
        self.scale = scale
        maps = load_maps()
        self.order = [m.name for m in maps]
        self.maps: dict[str, TableMap] = {m.name: m for m in maps}
        self.erp_md = erp_metadata()
        self.crm_md = crm_metadata()
        self.recs: dict[str, list[Rec]] = {name: [] for name in self.order}
        self.erp_rows: dict[str, list[dict[str, Any]]] = {t: [] for t in self.erp_md.tables}
        self.crm_rows: dict[str, list[dict[str, Any]]] = {t: [] for t in self.crm_md.tables}
        self._index_cache: dict[tuple[str, str], dict[Any, str]] = {}
        self._party = 4_000_000
        self._names: set[str] = set()
        # shared (both-sides) records by company, for references
        self.customers: dict[str, list[Rec]] = {c.code: [] for c in _COMPANIES}
        self.contacts_of: dict[str, list[Rec]] = {}
        self.contacts: dict[str, list[Rec]] = {c.code: [] for c in _COMPANIES}
        self.products: dict[str, list[Rec]] = {c.code: [] for c in _COMPANIES}
        self.purchase_orders: dict[str, list[Rec]] = {c.code: [] for c in _COMPANIES}

    # ------------------------------------------------------------------ small helpers

    def n(self, base: int) -> int:
        return base * self.scale

    def pick(self, items: Sequence[T]) -> T:
        return items[self.rng.randrange(len(items))]

    def weighted(self, pairs: Sequence[tuple[T, int]]) -> T:
        return self.rng.choices([p[0] for p in pairs], [p[1] for p in pairs])[0]

    def company(self) -> _Co:
        return _USMF if self.rng.random() < _USMF.share else _DEMF

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def party(self) -> str:
        self._party += self.rng.randint(1, 7)
        return f"{self._party:09d}"

    def statuses(self, n: int) -> list[str]:
        """Exactly round(5 %) each of ERP-only, CRM-only and differing, shuffled."""
        k = round(n * SHARE)
        out = [ERP_ONLY] * k + [CRM_ONLY] * k + [DIFFER] * k + [BOTH] * (n - 3 * k)
        self.rng.shuffle(out)
        return out

    def line_status(self, header: Rec) -> str:
        """A line of a one-sided header is one-sided too; under a shared header a few lines
        are one-sided or differ, so that each line map has about 5 % of each."""
        if header.status in (ERP_ONLY, CRM_ONLY):
            return header.status
        r = self.rng.random()
        if r < 0.01:
            return ERP_ONLY
        if r < 0.02:
            return CRM_ONLY
        if r < 0.075:
            return DIFFER
        return BOTH

    def past(self, lo: int, hi: int) -> dt.date:
        return AS_OF - dt.timedelta(days=self.rng.randint(lo, hi))

    def address(self, co: _Co) -> dict[str, Any]:
        city = self.pick(co.cities)
        street = self.pick(co.streets)
        line1 = (f"{self.rng.randint(100, 9899)} {street}" if co is _USMF
                 else f"{street} {self.rng.randint(1, 140)}")
        return {
            "street": line1, "city": city.name, "state": city.state,
            "zip": city.zipcode[:3] + f"{self.rng.randint(0, 99):02d}",
            "lat": Decimal(str(round(city.latitude + self.rng.uniform(-0.06, 0.06), 6))),
            "lon": Decimal(str(round(city.longitude + self.rng.uniform(-0.06, 0.06), 6))),
            "dial": city.dial,
        }

    def phone(self, co: _Co, dial: str) -> str:
        if co is _USMF:
            return f"+1 {dial}-555-{self.rng.randint(100, 9999):04d}"
        return f"+49 {dial} {self.rng.randint(1_000_000, 9_999_999)}"

    def company_name(self, co: _Co) -> str:
        for _attempt in range(40):
            pattern = self.rng.random()
            if pattern < 0.5:
                name = (f"{self.pick(co.words)} {self.pick(co.industries)} "
                        f"{self.pick(co.suffixes)}")
            elif pattern < 0.8:
                name = (f"{self.pick(co.last_names)} {self.pick(co.industries)} "
                        f"{self.pick(co.suffixes)}")
            else:
                a, b = self.pick(co.last_names), self.pick(co.last_names)
                name = f"{a} & {b} {self.pick(co.suffixes)}" if a != b else \
                    f"{a} {self.pick(co.industries)} {self.pick(co.suffixes)}"
            if name not in self._names:
                self._names.add(name)
                return name
        name = f"{self.pick(co.words)} {self.pick(co.industries)} {len(self._names)}"
        self._names.add(name)
        return name

    # ------------------------------------------------------------------ reference data

    def gen_currencies(self) -> None:
        table: tuple[tuple[str, str, str, str, str, dict[str, Any]], ...] = (
            # code, name, symbol, rounding, status, CRM difference
            ("USD", "US Dollar", "$", "0.01", BOTH, {}),
            ("EUR", "Euro", "€", "0.01", BOTH, {}),
            ("GBP", "Pound Sterling", "£", "0.01", BOTH, {}),
            ("CAD", "Canadian Dollar", "$", "0.01", BOTH, {}),
            ("CHF", "Swiss Franc", "CHF", "0.05", BOTH, {}),
            ("DKK", "Danish Krone", "kr", "0.01", DIFFER, {"currencyname": "Danish krone"}),
            ("SEK", "Swedish Krona", "kr", "0.01", BOTH, {}),
            ("JPY", "Japanese Yen", "¥", "1", BOTH, {}),
            ("AUD", "Australian Dollar", "$", "0.01", BOTH, {}),
            ("MXN", "Mexican Peso", "$", "0.01", BOTH, {}),
            ("PLN", "Polish Zloty", "zł", "0.01", ERP_ONLY, {}),
            ("NOK", "Norwegian Krone", "kr", "0.01", CRM_ONLY, {}),
        )
        for code, name, symbol, rounding, status, diff in table:
            extra: dict[str, Any] = {"currencyprecision": 0 if code == "JPY" else 2}
            extra.update(diff)
            self.recs["currencies"].append(Rec(
                {"CURRENCYCODE": code, "NAME": name, "SYMBOL": symbol,
                 "GENERALROUNDINGRULE": Decimal(rounding)},
                status, extra, fixed_differ=bool(diff)))

    def gen_customer_groups(self) -> None:
        table: tuple[tuple[_Co, str, str, str, str, str, dict[str, Any]], ...] = (
            # company, id, description, tax included, payment term, status, difference
            (_USMF, "US-10", "Wholesale customers", "No", "Net30", BOTH, {}),
            (_USMF, "US-20", "Retail customers", "No", "Net10", DIFFER,
             {"msdyn_description": "Retail and e-commerce customers"}),
            (_USMF, "US-30", "Intercompany customers", "No", "Net45", BOTH, {}),
            (_USMF, "US-40", "Government and public sector", "No", "Net60", ERP_ONLY, {}),
            (_DEMF, "DE-10", "Großhandelskunden", "Yes", "30T", BOTH, {}),
            (_DEMF, "DE-20", "Einzelhandelskunden", "Yes", "14T", BOTH, {}),
            (_DEMF, "DE-30", "Konzerninterne Kunden", "Yes", "30T", CRM_ONLY, {}),
        )
        for co, gid, desc, tax, term, status, diff in table:
            self.recs["customer_groups"].append(Rec(
                {"dataAreaId": co.code, "CUSTOMERGROUPID": gid, "DESCRIPTION": desc,
                 "ISSALESTAXINCLUDEDINPRICE": tax, "PAYMENTTERMID": term,
                 "CLEARINGPERIODPAYMENTTERMNAME": None,
                 "TAXGROUPID": "DOM" if co is _DEMF else "AV"},
                status, dict(diff), fixed_differ=bool(diff)))

    # ------------------------------------------------------------------ customers, contacts

    def customer_data(self, co: _Co, account: str, organization: bool) -> dict[str, Any]:
        addr = self.address(co)
        groups = (("US-10", 55), ("US-20", 40), ("US-30", 5)) if co is _USMF else \
            (("DE-10", 55), ("DE-20", 45))
        if organization:
            name = self.company_name(co)
            domain = f"{_slug(name)}.{co.tld}"
            email = f"{self.pick(('info', 'orders', 'purchasing', 'office'))}@{domain}"
            first = last = None
        else:
            first, _gender = self.pick(co.first_names)
            last = self.pick(co.last_names)
            name = None
            email = f"{_slug(first, 1)}.{_slug(last, 1)}@mail.{co.tld}"
        limit = self.weighted(((0, 10), (5_000, 15), (10_000, 20), (25_000, 20),
                               (50_000, 15), (100_000, 12), (250_000, 8)))
        return {
            "dataAreaId": co.code, "CUSTOMERACCOUNT": account,
            "PARTYTYPE": "Organization" if organization else "Person",
            "PARTYNUMBER": self.party(), "ORGANIZATIONNAME": name,
            "PERSONFIRSTNAME": first, "PERSONLASTNAME": last,
            "CUSTOMERGROUPID": self.weighted(groups) if organization else groups[1][0],
            "SALESCURRENCYCODE": self.weighted(co.currencies) if organization else co.currency,
            "CREDITLIMIT": Decimal(limit),
            "CREDITLIMITISMANDATORY": "Yes" if limit and self.rng.random() < 0.4 else "No",
            "ONHOLDSTATUS": self.weighted((("No", 90), ("Invoice", 3), ("All", 2),
                                           ("Payment", 2), ("Requisition", 1), ("Never", 2))),
            "PRIMARYCONTACTEMAIL": email, "PRIMARYCONTACTPHONE": self.phone(co, addr["dial"]),
            "CONTACTPERSONID": None,
            "DELIVERYADDRESSSTREET": addr["street"], "DELIVERYADDRESSCITY": addr["city"],
            "DELIVERYADDRESSSTATE": addr["state"], "DELIVERYADDRESSZIPCODE": addr["zip"],
            "DELIVERYADDRESSCOUNTRYREGIONISOCODE": co.country,
            "DELIVERYADDRESSLATITUDE": addr["lat"], "DELIVERYADDRESSLONGITUDE": addr["lon"],
        }

    def gen_customers(self) -> None:
        n_org, n_person = self.n(2000), self.n(100)
        kinds = [True] * n_org + [False] * n_person
        self.rng.shuffle(kinds)
        statuses = iter(self.statuses(n_org))
        seq = {c.code: 0 for c in _COMPANIES}
        for organization in kinds:
            co = self.company()
            seq[co.code] += 1
            data = self.customer_data(co, f"{co.prefix}-{seq[co.code]:05d}", organization)
            if organization:
                rec = Rec(data, next(statuses))
                if rec.shared:
                    self.customers[co.code].append(rec)
            else:
                rec = Rec(data, ERP_ONLY, in_scope=False)
            self.recs["customers"].append(rec)

    def gen_contacts(self) -> None:
        n = self.n(500)
        statuses = iter(self.statuses(n))
        seq = {c.code: 0 for c in _COMPANIES}
        for _ in range(n):
            co = self.company()
            seq[co.code] += 1
            customer = self.pick(self.customers[co.code])
            first, gender = self.pick(co.first_names)
            last = self.pick(co.last_names)
            department, titles = self.pick(co.roles)
            domain = customer.data["PRIMARYCONTACTEMAIL"].split("@", 1)[1]
            dial = _DIAL[customer.data["DELIVERYADDRESSCITY"]]
            middle = self.pick(co.first_names)[0] if self.rng.random() < 0.15 else None
            rec = Rec({
                "dataAreaId": co.code, "CONTACTPERSONID": f"{co.prefix}-CP{seq[co.code]:05d}",
                "CONTACTPERSONPARTYNUMBER": self.party(), "ASSOCIATEDCONTACTTYPE": "Customer",
                "ASSOCIATEDCONTACTNUMBER": customer.data["CUSTOMERACCOUNT"],
                "FIRSTNAME": first, "MIDDLENAME": middle, "LASTNAME": last,
                "PRIMARYADDRESSSTREET": customer.data["DELIVERYADDRESSSTREET"],
                "PRIMARYADDRESSCITY": customer.data["DELIVERYADDRESSCITY"],
                "PRIMARYADDRESSSTATEID": customer.data["DELIVERYADDRESSSTATE"],
                "PRIMARYADDRESSZIPCODE": customer.data["DELIVERYADDRESSZIPCODE"],
                "PRIMARYADDRESSCOUNTRYREGIONID": co.country3,
                "PRIMARYPHONENUMBER": self.phone(co, dial),
                "PRIMARYEMAILADDRESS": f"{_slug(first, 1)}.{_slug(last, 1)}@{domain}",
                "EMPLOYMENTDEPARTMENT": department, "EMPLOYMENTPROFESSION": self.pick(titles),
                "GENDER": gender if self.rng.random() < 0.85 else None,
                "MARITALSTATUS": self.weighted(((None, 60), ("Single", 12), ("Married", 22),
                                                ("Divorced", 4), ("Widowed", 2))),
                "ISRECEIVINGDIRECTMAIL": "Yes" if self.rng.random() < 0.7 else "No",
                "NOTES": self.pick(co.notes) if self.rng.random() < 0.2 else None,
            }, next(statuses))
            self.recs["contacts"].append(rec)
            if rec.shared:
                self.contacts[co.code].append(rec)
                self.contacts_of.setdefault(customer.data["CUSTOMERACCOUNT"], []).append(rec)
        # the first shared contact of a customer is its primary contact
        for rec in self.recs["customers"]:
            mine = self.contacts_of.get(rec.data["CUSTOMERACCOUNT"])
            if mine:
                rec.data["CONTACTPERSONID"] = mine[0].data["CONTACTPERSONID"]

    def gen_other_accounts(self) -> None:
        """CRM accounts that are not customers: outside the customers map's right filter."""
        for _ in range(self.n(40)):
            co = self.company()
            data = self.customer_data(co, "", True)
            data["CUSTOMERGROUPID"] = None
            self.recs["customers"].append(Rec(
                data, CRM_ONLY, {"accountnumber": None,
                                 "customertypecode": self.weighted(((1, 30), (5, 40), (10, 30)))},
                in_scope=False))

    # ------------------------------------------------------------------ products, assets

    def gen_products(self) -> None:
        n = self.n(1000)
        statuses = iter(self.statuses(n))
        seq = {c.code: 0 for c in _COMPANIES}
        weights = [18, 12, 12, 6, 14, 10, 8, 8, 4, 8]
        used: set[tuple[str, str]] = set()
        for _ in range(n):
            co = self.company()
            seq[co.code] += 1
            number = f"{co.prefix}-P{seq[co.code]:05d}"
            category, nouns, (lo, hi), ptype, stocked = self.rng.choices(
                vocab.PRODUCT_LINES, weights)[0]
            noun = self.pick(nouns)
            color = self.pick(vocab.PRODUCT_COLORS) if ptype == "Item" else None
            for _attempt in range(20):
                tier = self.pick(vocab.SERVICE_TIERS if ptype == "Service" else
                                 vocab.PRODUCT_MODELS)
                name = f"{self.pick(vocab.PRODUCT_SERIES)} {noun} {tier}"
                if (co.code, name) not in used:
                    break
            used.add((co.code, name))
            price = _money(self.rng.randint(lo, hi) - Decimal("0.01"))
            description = (f"{noun} from the {name.split(' ', 1)[0]} series"
                           + (f", {color.lower()} finish." if color else ".")
                           + f" Category: {category.lower()}.")
            rec = Rec({
                "dataAreaId": co.code, "PRODUCTNUMBER": number, "ITEMNUMBER": number,
                "PRODUCTNAME": name, "PRODUCTDESCRIPTION": description, "PRODUCTTYPE": ptype,
                "FIELDSERVICEPRODUCTTYPE": "Service" if ptype == "Service" else
                ("Inventory" if stocked else "NonInventory"),
                "ISSTOCKEDPRODUCT": "Yes" if stocked else "No", "ISCATCHWEIGHTPRODUCT": "No",
                "CURRENCYCODE": co.currency, "SALESUNITSYMBOL": "h" if ptype == "Service" else "ea",
                "SALESPRICE": price,
                "UNITCOST": _money(price * Decimal(str(round(self.rng.uniform(0.45, 0.7), 3)))),
                "SALESUNITDECIMALPRECISION": 2 if ptype == "Service" else 0,
                "PRODUCTCOLORID": color,
            }, next(statuses))
            self.recs["products"].append(rec)
            if rec.shared:
                self.products[co.code].append(rec)

    def gen_purchase_orders(self) -> None:
        n = self.n(400)
        statuses = iter(self.statuses(n))
        seq = {c.code: 0 for c in _COMPANIES}
        items = {code: [p for p in ps if p.data["ISSTOCKEDPRODUCT"] == "Yes"]
                 for code, ps in self.products.items()}
        for _ in range(n):
            co = self.company()
            seq[co.code] += 1
            number = f"{co.prefix}-PO{seq[co.code]:05d}"
            _site, warehouse, wh_name, city_ix = self.pick(co.warehouses)
            city = co.cities[city_ix]
            accounting = self.past(0, 365)
            requested = accounting + dt.timedelta(days=self.rng.randint(7, 30))
            confirmed = (requested + dt.timedelta(days=self.rng.randint(-2, 5))
                         if self.rng.random() < 0.6 else None)
            approval, status = self.weighted(((("Confirmed", "Invoiced"), 30),
                                              (("Confirmed", "Received"), 20),
                                              (("Confirmed", "Backorder"), 20),
                                              (("Approved", "Backorder"), 12),
                                              (("InReview", "Backorder"), 8),
                                              (("Draft", "Backorder"), 6),
                                              (("Confirmed", "Canceled"), 4)))
            first, _gender = self.pick(co.first_names)
            last = self.pick(co.last_names)
            header = Rec({
                "dataAreaId": co.code, "PURCHASEORDERNUMBER": number,
                "ORDERVENDORACCOUNTNUMBER": f"{co.prefix}-1{self.rng.randint(1, 40):02d}",
                "CURRENCYCODE": co.currency if self.rng.random() < 0.95 else "GBP",
                "LANGUAGEID": co.language, "ACCOUNTINGDATE": accounting,
                "REQUESTEDDELIVERYDATE": requested, "CONFIRMEDDELIVERYDATE": confirmed,
                "EMAIL": f"{_slug(first, 1)}.{_slug(last, 1)}@{co.code}.example.com",
                "VENDORORDERREFERENCE": (f"SO-{self.rng.randint(10000, 99999)}"
                                         if self.rng.random() < 0.7 else None),
                "TOTALDISCOUNTPERCENTAGE": Decimal(self.pick((0, 0, 0, 2, 5))),
                "AREPRICESINCLUDINGSALESTAX": "Yes" if co is _DEMF and
                self.rng.random() < 0.2 else "No",
                "DOCUMENTAPPROVALSTATUS": approval, "PURCHASEORDERSTATUS": status,
                "ISDELIVEREDDIRECTLY": "Yes" if self.rng.random() < 0.05 else "No",
                "DELIVERYADDRESSNAME": wh_name,
                "DELIVERYADDRESSSTREET": (f"{100 + 10 * int(warehouse)} Commerce Way"
                                          if co is _USMF else f"Industriestraße {warehouse}"),
                "DELIVERYADDRESSCITY": city.name, "DELIVERYADDRESSZIPCODE": city.zipcode,
                "DELIVERYADDRESSCOUNTRYREGIONISOCODE": co.country,
            }, next(statuses))
            self.recs["purchase_orders"].append(header)
            if header.shared:
                self.purchase_orders[co.code].append(header)
            for line_no in range(1, self.rng.randint(1, 5) + 1):
                product = self.pick(items[co.code])
                qty = Decimal(self.rng.randint(1, 40) * self.pick((1, 1, 5, 10)))
                price = product.data["UNITCOST"]
                pct = Decimal(self.pick((0, 0, 0, 0, 5, 10)))
                discount = _money(qty * price * pct / 100)
                self.recs["purchase_order_lines"].append(Rec({
                    "dataAreaId": co.code, "PURCHASEORDERNUMBER": number, "LINENUMBER": line_no,
                    "PRODUCTNUMBER": product.data["PRODUCTNUMBER"],
                    "LINEDESCRIPTION": product.data["PRODUCTNAME"],
                    "ORDEREDPURCHASEQUANTITY": qty, "PURCHASEUNITSYMBOL": "ea",
                    "PURCHASEPRICE": price, "LINEAMOUNT": _money(qty * price) - discount,
                    "LINEDISCOUNTAMOUNT": discount, "LINEDISCOUNTPERCENTAGE": pct,
                    "REQUESTEDDELIVERYDATE": requested, "CONFIRMEDDELIVERYDATE": confirmed,
                    "CURRENCYCODE": header.data["CURRENCYCODE"],
                    "PURCHASEORDERLINESTATUS": status,
                    "ISPARTIALDELIVERYPREVENTED": "Yes" if self.rng.random() < 0.1 else "No",
                    "BARCODE": _ean13(self.rng),
                    "EXTERNALITEMNUMBER": (f"V{self.rng.randint(10000, 99999)}"
                                           if self.rng.random() < 0.5 else None),
                    "CUSTOMERREFERENCE": (f"Project {self.rng.randint(100, 999)}"
                                          if self.rng.random() < 0.15 else None),
                }, self.line_status(header)))

    def gen_assets(self) -> None:
        n = self.n(300)
        statuses = iter(self.statuses(n))
        seq = {c.code: 0 for c in _COMPANIES}
        for _ in range(n):
            co = self.company()
            seq[co.code] += 1
            atype, lo, hi = self.pick(vocab.ASSET_TYPES)
            maker = self.pick(vocab.ASSET_MAKERS)
            _site, _wh, wh_name, _city = self.pick(co.warehouses)
            acquired = self.past(60, 3650)
            cost = _money(round(self.rng.randint(lo, hi), -2))
            po = (self.pick(self.purchase_orders[co.code]).data["PURCHASEORDERNUMBER"]
                  if self.rng.random() < 0.7 else None)
            retired = self.rng.random() < 0.05
            self.recs["assets"].append(Rec({
                "dataAreaId": co.code, "MAINTENANCEASSETID": f"{co.prefix}-AS{seq[co.code]:05d}",
                "NAME": f"{atype} {self.rng.randint(1, 12):02d} - {wh_name}",
                "MAINTENANCEASSETTYPEID": _slug(atype, 3).upper().replace("-", "_"),
                "SERIALID": f"{maker[:3].upper()}-{self.rng.randint(10**7, 10**8 - 1)}",
                "MODELYEAR": str(min(acquired.year, AS_OF.year) - self.rng.randint(0, 1)),
                "ACQUISITIONCOST": cost, "ACQUISITIONDATE": acquired,
                "ACTIVEFROM": acquired + dt.timedelta(days=self.rng.randint(1, 20)),
                "ACTIVETO": self.past(1, 50) if retired else None,
                "NOTES": self.pick(vocab.ASSET_NOTES) if self.rng.random() < 0.5 else None,
                "PURCHASEORDERID": po,
                "REPLACEMENTDATE": _plus_years(acquired, self.rng.randint(8, 15)),
                "REPLACEMENTVALUE": _money(cost * Decimal("1.15")),
                "VENDACCOUNT": f"{co.prefix}-1{self.rng.randint(1, 40):02d}",
                "WARRANTYDATEFROMVEND": _plus_years(acquired, self.rng.randint(1, 3)),
                "WRKCTRID": self.pick(vocab.WORK_CENTERS),
                "FIXEDASSETID": (f"FA-{self.rng.randint(1, 999_999):06d}"
                                 if self.rng.random() < 0.8 else None),
            }, next(statuses)))

    def gen_inventory(self) -> None:
        pairs: list[tuple[_Co, Rec, tuple[str, str, str, int]]] = [
            (co, p, wh) for co in _COMPANIES for p in self.products[co.code]
            if p.data["ISSTOCKEDPRODUCT"] == "Yes" for wh in co.warehouses]
        self.rng.shuffle(pairs)
        chosen = pairs[:self.n(2000)]
        chosen.sort(key=lambda t: (t[0].code, t[1].data["ITEMNUMBER"], t[2][0], t[2][1]))
        statuses = iter(self.statuses(len(chosen)))
        for i, (co, product, (site, warehouse, _name, _city)) in enumerate(chosen, 1):
            onhand = self.rng.randint(0, 500)
            reserved = min(onhand, self.rng.randint(0, 40))
            unavailable = min(onhand - reserved, self.rng.choice((0, 0, 0, 1, 2, 5)))
            available = onhand - reserved - unavailable
            ordered = self.pick((0, 0, 0, 50, 100, 200))
            reserved_ordered = min(ordered, self.rng.randint(0, 20))
            on_order = self.rng.randint(0, 60)
            total_available = available + ordered - reserved_ordered
            self.recs["inventory_onhand"].append(Rec({
                "dataAreaId": co.code, "ITEMNUMBER": product.data["ITEMNUMBER"],
                "INVENTORYSITEID": site, "INVENTORYWAREHOUSEID": warehouse,
                "PRODUCTNUMBER": product.data["PRODUCTNUMBER"],
                "REQUESTID": f"{co.prefix}-RQ{i:06d}",
                "ONHANDQUANTITY": Decimal(onhand), "AVAILABLEONHANDQUANTITY": Decimal(available),
                "RESERVEDONHANDQUANTITY": Decimal(reserved),
                "UNAVAILABLEONHANDQUANTITY": Decimal(unavailable),
                "ORDEREDQUANTITY": Decimal(ordered),
                "AVAILABLEORDEREDQUANTITY": Decimal(ordered - reserved_ordered),
                "RESERVEDORDEREDQUANTITY": Decimal(reserved_ordered),
                "ONORDERQUANTITY": Decimal(on_order),
                "TOTALAVAILABLEQUANTITY": Decimal(total_available),
                "PROJECTEDONHANDQUANTITY": Decimal(onhand + ordered - on_order),
                "ATPDATE": AS_OF + dt.timedelta(days=self.rng.randint(0, 21)),
                "ATPQUANTITY": Decimal(max(0, total_available - on_order)),
            }, next(statuses)))

    # ------------------------------------------------------------------ sales

    def gen_sales(self) -> None:
        n = self.n(1500)
        statuses = self.statuses(n)
        shared_ix = [i for i, s in enumerate(statuses) if s in SHARED]
        invoiced = set(self.rng.sample(shared_ix, min(len(shared_ix), self.n(1000))))
        seq = {c.code: 0 for c in _COMPANIES}
        headers: list[tuple[Rec, list[Rec], _Co]] = []
        for i, status in enumerate(statuses):
            co = self.company()
            seq[co.code] += 1
            number = f"{co.prefix}-SO{seq[co.code]:06d}"
            if i in invoiced:
                processing = "Invoiced"
                requested = self.past(10, 360)
            else:
                processing = self.weighted((("Active", 30), ("Confirmed", 25), ("Picked", 10),
                                            ("PartiallyDelivered", 5), ("Delivered", 20),
                                            ("Canceled", 5)))
                requested = self.past(-45, 60)
            confirmed = (requested + dt.timedelta(days=self.rng.randint(0, 3))
                         if processing != "Active" else None)
            if self.rng.random() < 0.06 and self.contacts[co.code]:
                person = self.pick(self.contacts[co.code]).data
                ordering, invoice_account, contact = person["CONTACTPERSONID"], None, None
                name = f"{person['FIRSTNAME']} {person['LASTNAME']}"
                email, currency = person["PRIMARYEMAILADDRESS"], co.currency
                street, city = person["PRIMARYADDRESSSTREET"], person["PRIMARYADDRESSCITY"]
                state, zipcode = person["PRIMARYADDRESSSTATEID"], person["PRIMARYADDRESSZIPCODE"]
            else:
                cust = self.pick(self.customers[co.code]).data
                ordering = invoice_account = cust["CUSTOMERACCOUNT"]
                mine = self.contacts_of.get(ordering, [])
                contact = (self.pick(mine).data["CONTACTPERSONID"]
                           if mine and self.rng.random() < 0.5 else None)
                name, email = cust["ORGANIZATIONNAME"], cust["PRIMARYCONTACTEMAIL"]
                currency = cust["SALESCURRENCYCODE"]
                street, city = cust["DELIVERYADDRESSSTREET"], cust["DELIVERYADDRESSCITY"]
                state, zipcode = cust["DELIVERYADDRESSSTATE"], cust["DELIVERYADDRESSZIPCODE"]
            header = Rec({
                "dataAreaId": co.code, "SALESORDERNUMBER": number, "SALESORDERNAME": name,
                "ORDERINGCUSTOMERACCOUNTNUMBER": ordering,
                "INVOICECUSTOMERACCOUNTNUMBER": invoice_account, "CONTACTPERSONID": contact,
                "CURRENCYCODE": currency, "EMAIL": email,
                "CUSTOMERREQUISITIONNUMBER": (f"REQ-{self.rng.randint(10000, 99999)}"
                                              if self.rng.random() < 0.6 else None),
                "DELIVERYADDRESSSTREET": street, "DELIVERYADDRESSCITY": city,
                "DELIVERYADDRESSSTATEID": state, "DELIVERYADDRESSZIPCODE": zipcode,
                "DELIVERYADDRESSCOUNTRYREGIONISOCODE": co.country,
                "REQUESTEDSHIPPINGDATE": requested, "CONFIRMEDSHIPPINGDATE": confirmed,
                "SALESORDERPROCESSINGSTATUS": processing,
                "ISSALESPROCESSINGSTOPPED": "Yes" if self.rng.random() < 0.03 else "No",
            }, status)
            line_status = {"Invoiced": "Invoiced", "Delivered": "Delivered",
                           "Canceled": "Canceled"}.get(processing, "Backorder")
            lines: list[Rec] = []
            for seq_no in range(1, self.rng.randint(1, 5) + 1):
                product = self.pick(self.products[co.code]).data
                service = product["PRODUCTTYPE"] == "Service"
                qty = Decimal(self.rng.randint(1, 8) if service else self.rng.randint(1, 20))
                price = product["SALESPRICE"]
                pct = Decimal(self.pick((0, 0, 0, 0, 0, 0, 5, 10, 15)))
                discount = _money(qty * price * pct / 100)
                amount = _money(qty * price) - discount
                lines.append(Rec({
                    "dataAreaId": co.code, "SALESORDERNUMBER": number,
                    "LINECREATIONSEQUENCENUMBER": seq_no,
                    "PRODUCTNUMBER": product["PRODUCTNUMBER"],
                    "PRODUCTNAME": product["PRODUCTNAME"],
                    "LINEDESCRIPTION": product["PRODUCTNAME"],
                    "ORDEREDSALESQUANTITY": qty, "SALESUNITSYMBOL": product["SALESUNITSYMBOL"],
                    "SALESPRICE": price, "LINEDISCOUNTAMOUNT": discount,
                    "LINEDISCOUNTPERCENTAGE": pct, "LINEAMOUNT": amount,
                    "TOTALTAXAMOUNT": _money(amount * co.tax), "CURRENCYCODE": currency,
                    "DELIVERYADDRESSCITY": city, "DELIVERYADDRESSCOUNTRYREGIONISOCODE": co.country,
                    "REQUESTEDSHIPPINGDATE": requested, "CONFIRMEDSHIPPINGDATE": confirmed,
                    "SALESORDERLINESTATUS": line_status,
                    "ISLINESTOPPED": "Yes" if self.rng.random() < 0.02 else "No",
                    "SALESORDERPROMISINGMETHOD": self.weighted((("None", 70), ("ATP", 20),
                                                                ("SalesLeadTime", 10))),
                }, self.line_status(header)))
            on_erp = [ln.data for ln in lines if ln.status in ON_ERP]
            header.data["TOTALDISCOUNTAMOUNT"] = sum(
                (ln["LINEDISCOUNTAMOUNT"] for ln in on_erp), Decimal(0))
            header.data["ORDERTOTALTAXAMOUNT"] = sum(
                (ln["TOTALTAXAMOUNT"] for ln in on_erp), Decimal(0))
            header.data["ORDERTOTALAMOUNT"] = sum(
                (ln["LINEAMOUNT"] for ln in on_erp), Decimal(0)) + \
                header.data["ORDERTOTALTAXAMOUNT"]
            self.recs["sales_orders"].append(header)
            self.recs["sales_order_lines"].extend(lines)
            headers.append((header, lines, co))
        self.gen_invoices([(h, ls, co) for i, (h, ls, co) in enumerate(headers) if i in invoiced])

    def gen_invoices(self, orders: list[tuple[Rec, list[Rec], _Co]]) -> None:
        statuses = iter(self.statuses(len(orders)))
        seq = {c.code: 0 for c in _COMPANIES}
        for order, lines, co in orders:
            seq[co.code] += 1
            o = order.data
            number = f"{co.prefix}-CIV{seq[co.code]:06d}"
            day = o["REQUESTEDSHIPPINGDATE"] + dt.timedelta(days=self.rng.randint(0, 5))
            charge = Decimal(self.pick(("0", "0", "0", "15.00", "25.00", "49.50")))
            header = Rec({
                "dataAreaId": co.code, "INVOICENUMBER": number, "INVOICEDATE": day,
                "SALESORDERNUMBER": o["SALESORDERNUMBER"],
                "INVOICECUSTOMERACCOUNTNUMBER": o["ORDERINGCUSTOMERACCOUNTNUMBER"],
                "CURRENCYCODE": o["CURRENCYCODE"],
                "CUSTOMERSORDERREFERENCE": o["CUSTOMERREQUISITIONNUMBER"] or
                f"PO {self.rng.randint(1000, 99999)}",
                "INVOICEADDRESSSTREET": o["DELIVERYADDRESSSTREET"],
                "INVOICEADDRESSCITY": o["DELIVERYADDRESSCITY"],
                "INVOICEADDRESSSTATE": o["DELIVERYADDRESSSTATEID"],
                "INVOICEADDRESSZIPCODE": o["DELIVERYADDRESSZIPCODE"],
                "INVOICEADDRESSCOUNTRYREGIONISOCODE": o["DELIVERYADDRESSCOUNTRYREGIONISOCODE"],
                "LEDGERVOUCHER": f"{co.prefix}-SIV{seq[co.code]:06d}",
                "PAYMENTTERMSNAME": self.pick(("Net30", "Net45", "Net10")) if co is _USMF
                else self.pick(("30T", "14T")),
                "TOTALCHARGEAMOUNT": charge,
            }, next(statuses))
            site, warehouse, _name, _city = self.pick(co.warehouses)
            inv_lines: list[Rec] = []
            for ln in (x.data for x in lines if x.status in ON_ERP):
                inv_lines.append(Rec({
                    "dataAreaId": co.code, "INVOICENUMBER": number,
                    "LINECREATIONSEQUENCENUMBER": len(inv_lines) + 1, "INVOICEDATE": day,
                    "PRODUCTNUMBER": ln["PRODUCTNUMBER"], "PRODUCTNAME": ln["PRODUCTNAME"],
                    "INVOICEDQUANTITY": ln["ORDEREDSALESQUANTITY"],
                    "SALESUNITSYMBOL": ln["SALESUNITSYMBOL"], "SALESPRICE": ln["SALESPRICE"],
                    "LINEAMOUNT": ln["LINEAMOUNT"],
                    "LINETOTALDISCOUNTAMOUNT": ln["LINEDISCOUNTAMOUNT"],
                    "LINETOTALTAXAMOUNT": ln["TOTALTAXAMOUNT"],
                    "LINETOTALCHARGEAMOUNT": Decimal(0), "CURRENCYCODE": ln["CURRENCYCODE"],
                    "CONFIRMEDSHIPPINGDATE": ln["CONFIRMEDSHIPPINGDATE"] or day,
                    "INVENTORYSITEID": site, "INVENTORYWAREHOUSEID": warehouse,
                }, self.line_status(header)))
            on_erp = [x.data for x in inv_lines if x.status in ON_ERP]
            tax = sum((x["LINETOTALTAXAMOUNT"] for x in on_erp), Decimal(0))
            header.data["TOTALDISCOUNTAMOUNT"] = sum(
                (x["LINETOTALDISCOUNTAMOUNT"] for x in on_erp), Decimal(0))
            header.data["TOTALTAXAMOUNT"] = tax
            header.data["TOTALINVOICEAMOUNT"] = sum(
                (x["LINEAMOUNT"] for x in on_erp), Decimal(0)) + tax + charge
            self.recs["invoices"].append(header)
            self.recs["invoice_lines"].extend(inv_lines)

    def gen_work_orders(self) -> None:
        """CRM work-based orders: outside the sales orders map's right filter."""
        for i in range(1, self.n(20) + 1):
            co = self.company()
            cust = self.pick(self.customers[co.code]).data
            data = {"dataAreaId": co.code, "SALESORDERNUMBER": None,
                    "ORDERINGCUSTOMERACCOUNTNUMBER": cust["CUSTOMERACCOUNT"],
                    "CURRENCYCODE": cust["SALESCURRENCYCODE"],
                    "EMAIL": cust["PRIMARYCONTACTEMAIL"],
                    "DELIVERYADDRESSSTREET": cust["DELIVERYADDRESSSTREET"],
                    "DELIVERYADDRESSCITY": cust["DELIVERYADDRESSCITY"],
                    "DELIVERYADDRESSSTATEID": cust["DELIVERYADDRESSSTATE"],
                    "DELIVERYADDRESSZIPCODE": cust["DELIVERYADDRESSZIPCODE"],
                    "DELIVERYADDRESSCOUNTRYREGIONISOCODE": co.country,
                    "REQUESTEDSHIPPINGDATE": self.past(-30, 30),
                    "SALESORDERPROCESSINGSTATUS": "Active", "ISSALESPROCESSINGSTOPPED": "No"}
            self.recs["sales_orders"].append(Rec(
                data, CRM_ONLY, {"msdyn_ordertype": 690970000,
                                 "name": f"Maintenance visit {i:03d} - {cust['ORGANIZATIONNAME']}"},
                in_scope=False))

    def generate(self) -> None:
        self.gen_currencies()
        self.gen_customer_groups()
        self.gen_customers()
        self.gen_contacts()
        self.gen_other_accounts()
        self.gen_products()
        self.gen_purchase_orders()
        self.gen_assets()
        self.gen_inventory()
        self.gen_sales()
        self.gen_work_orders()

    # ------------------------------------------------------------------ rendering

    def index(self, table: str, column: str) -> dict[Any, str]:
        """Natural key value → GUID over the CRM rows rendered so far for ``table``."""
        got = self._index_cache.get((table, column))
        if got is None:
            pk = next(iter(self.crm_md.tables[table].primary_key.columns)).name
            got = {r[column]: r[pk] for r in self.crm_rows[table] if r[column] is not None}
            self._index_cache[(table, column)] = got
        return got

    def lookup(self, table: sa.Table, ref: FieldRef, value: Any) -> str | None:
        """The GUID a CRM lookup column holds for the natural key ``value``."""
        if value is None:
            return None
        assert ref.column is not None
        if ref.is_polymorphic:
            for target in ref.targets:
                assert target.table is not None
                real = find_table(list(self.crm_md.tables), target.table)
                if real is not None and value in self.index(real, target.key):
                    return self.index(real, target.key)[value]
            raise ValueError(f"{table.name}.{ref}: no row has key {value!r}")
        fk = next(iter(table.c[ref.column].foreign_keys))
        hit = self.index(fk.column.table.name, ref.targets[0].key).get(value)
        if hit is None:
            raise ValueError(f"{table.name}.{ref}: no {fk.column.table.name} row has key "
                             f"{value!r}")
        return hit

    def render_crm(self, m: TableMap, table: sa.Table, data: dict[str, Any]) -> dict[str, Any]:
        """What the map makes of ERP record ``data`` on the CRM side (a new GUID as id)."""
        row: dict[str, Any] = {c.name: None for c in table.columns}
        pk = next(iter(table.primary_key.columns)).name
        row[pk] = self.guid()
        if m.company:
            row[m.company.right[0]] = data[m.company.left[0]]
        for f in m.fields:
            column = f.right.column
            if column is None:
                continue
            if f.left.column is None:
                value = f.default
            else:
                value = data.get(f.left.column)
                if f.values is not None:
                    found, value = f.values.to_right(value)
                    if not found:
                        raise ValueError(f"map {m.name}: `{f.text}` has no value for "
                                         f"{data.get(f.left.column)!r}")
            if f.right.is_lookup:
                value = self.lookup(table, f.right, value)
            row[column] = value
        for c in table.columns:
            if row[c.name] is None and c.server_default is not None and c.name in _CRM_DEFAULTS:
                row[c.name] = _CRM_DEFAULTS[c.name]
        return row

    @staticmethod
    def fed(m: TableMap, side: Side) -> set[str]:
        """Columns of ``side`` that the map writes when it creates a row there."""
        out = set(m.key_columns(side))
        for f in m.fields:
            col = f.ref(side).column
            if col is not None and f.flows_to(side):
                out.add(col)
        return out

    @staticmethod
    def scoped(m: TableMap, rec: Rec, left_fed: set[str], right_fed: set[str]
               ) -> dict[str, Any]:
        """The record as a one-sided row may hold it: no values the initial sync cannot
        carry to the other side (see the module docstring)."""
        data = dict(rec.data)
        for f in m.fields:
            left, right = f.left.column, f.right.column
            if left is None:
                continue
            # CRM-only: the ERP row will get only what flows left;
            # ERP-only: a right-to-left field's CRM column will stay empty after the sync
            if (rec.status == CRM_ONLY and left not in left_fed) or (
                    rec.status == ERP_ONLY and right is not None
                    and not f.flows_to(Side.RIGHT) and right not in right_fed):
                data[left] = None
        return data

    def alternative(self, name: str, column: str, current: Any) -> Any:
        """A different, plausible value for a differing row."""
        if isinstance(current, dt.date):
            return current + dt.timedelta(days=self.pick((-14, -7, -3, -1, 1, 2, 3, 7, 14)))
        if isinstance(current, Decimal):
            changed = _money(current * Decimal(self.pick(("0.8", "0.9", "1.1", "1.25", "1.5"))))
            if changed != current:
                return changed
        pool = self.recs[name]
        for _ in range(25):
            other = self.pick(pool).data.get(column)
            if other is not None and other != current:
                return other
        return f"{current} (updated)"

    def mutate(self, m: TableMap, erp: dict[str, Any], crm: dict[str, Any]) -> None:
        """Make one or two ``=`` fields differ, each on a random side."""
        plain = {f.left.column: f.right.column for f in m.fields
                 if f.direction is Direction.BOTH and not f.left.is_lookup
                 and not f.right.is_lookup and f.left.column and f.right.column}
        candidates = [c for c in _DIFFER_FIELDS.get(m.name, ()) if c in plain]
        if not candidates:
            raise ValueError(f"map {m.name}: no `=` field to make rows differ in")
        count = 1 if len(candidates) == 1 or self.rng.random() < 0.7 else 2
        for left in self.rng.sample(candidates, count):
            right = plain[left]
            assert right is not None
            if self.rng.random() < 0.5:
                erp[left] = self.alternative(m.name, left, erp[left])
            else:
                crm[right] = self.alternative(m.name, left, crm[right])

    def render(self) -> None:
        """Fill ``erp_rows`` and ``crm_rows`` map by map, dependencies first."""
        for name in self.order:
            m = self.maps[name]
            erp_table, crm_table = self.erp_md.tables[m.left], self.crm_md.tables[m.right]
            left_fed, right_fed = self.fed(m, Side.LEFT), self.fed(m, Side.RIGHT)
            for rec in self.recs[name]:
                data = self.scoped(m, rec, left_fed, right_fed)
                erp = {c.name: data.get(c.name) for c in erp_table.columns} \
                    if rec.status in ON_ERP else None
                crm = None
                if rec.status in ON_CRM:
                    crm = self.render_crm(m, crm_table, data)
                    crm.update(rec.crm_extra)
                if rec.status == DIFFER and not rec.fixed_differ:
                    assert erp is not None and crm is not None
                    self.mutate(m, erp, crm)
                if erp is not None:
                    self.erp_rows[erp_table.name].append(erp)
                if crm is not None:
                    self.crm_rows[crm_table.name].append(crm)
            for key in [k for k in self._index_cache if k[0] == crm_table.name]:
                del self._index_cache[key]


def _write(engine: sa.Engine, md: sa.MetaData, rows: dict[str, list[dict[str, Any]]]
           ) -> dict[str, int]:
    """Create missing tables, refuse non-empty ones, insert in FK order; return counts."""
    md.create_all(engine)
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table in md.sorted_tables:
            existing = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            if existing:
                raise ValueError(f"table {table.name} of {engine.url} already has {existing} "
                                 "rows; seed needs empty tables")
        for table in md.sorted_tables:
            batch = rows.get(table.name, [])
            counts[table.name] = len(batch)
            for start in range(0, len(batch), BATCH):
                conn.execute(table.insert(), batch[start:start + BATCH])
    return counts


def seed(erp: sa.Engine, crm: sa.Engine, *, scale: int = 1, rng_seed: int = 20261125
         ) -> dict[str, dict[str, int]]:
    """Fill the demo ERP and CRM (see the module docstring); return rows written per table,
    as ``{"erp": {table: n}, "crm": {table: n}}``.

    Creates the demo tables that are missing; raises ValueError if a demo table already has
    rows. ``scale`` multiplies every volume (scale 1: about 2,000 customers, 1,500 sales
    orders with 4,500 lines, 1,000 invoices with 3,000 lines, ~16,500 rows per side). The
    result depends only on ``scale`` and ``rng_seed``.
    """
    seeder = _Seeder(scale, rng_seed)
    seeder.generate()
    seeder.render()
    return {"erp": _write(erp, seeder.erp_md, seeder.erp_rows),
            "crm": _write(crm, seeder.crm_md, seeder.crm_rows)}
