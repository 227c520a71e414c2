"""The demo's two applications as SQLAlchemy Core metadata.

* :func:`erp_metadata` — a finance-and-operations style ERP: one table per data entity, named
  as the entity (``CustomersV3``, ``SalesOrderHeaderCDSEntity``, ...), columns in upper case as
  in the published dual-write templates, plus ``dataAreaId`` (the legal entity) on every
  company-specific entity. The primary key is the natural key, ``dataAreaId`` first. No foreign
  keys: FO entities refer to each other by natural key (a customer account, a currency code).
* :func:`crm_metadata` — a customer-engagement (Dataverse) style CRM: lower-case tables and
  columns, a GUID primary key named like Dataverse (``accountid``) that the database fills
  itself (``server_default``), a plain ``company`` column on company-specific tables, and a
  declared foreign key on every lookup column (``transactioncurrencyid`` → the currency row).
  The polymorphic ``customerid`` of salesorders and invoices holds an account's or a contact's
  GUID and has no foreign key. Line tables carry their header's natural key as a plain column
  (``msdyn_salesordernumber``) beside the lookup to the header (``salesorderid``).

Contract relied on by the demo maps and seed: every non-key column is nullable or has a server
default; natural keys used by lookups (account numbers, contact person ids, product numbers,
order and invoice numbers, currency codes, customer group ids) are unique across companies.

Both functions return a new :class:`sqlalchemy.MetaData` on each call. The GUID default is
SQLite's; the demo runs on SQLite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = [
    "COMPANIES",
    "CRM_COMPANY_COLUMN",
    "ERP_COMPANY_COLUMN",
    "GUID_DEFAULT",
    "create_crm",
    "create_erp",
    "crm_metadata",
    "erp_metadata",
]

#: the two legal entities of the demo (FO ``dataAreaId`` values)
COMPANIES: tuple[str, ...] = ("usmf", "demf")
ERP_COMPANY_COLUMN = "dataAreaId"
CRM_COMPANY_COLUMN = "company"
#: server-side GUID for CRM primary keys (SQLite): 32 lower-case hex digits
GUID_DEFAULT = sa.text("(lower(hex(randomblob(16))))")

Col = sa.Column[Any]


def _s(name: str, length: int = 60) -> Col:
    return sa.Column(name, sa.String(length), nullable=True)


def _money(name: str) -> Col:
    return sa.Column(name, sa.Numeric(32, 6), nullable=True)


def _qty(name: str) -> Col:
    return sa.Column(name, sa.Numeric(32, 6), nullable=True)


def _geo(name: str) -> Col:
    return sa.Column(name, sa.Numeric(12, 6), nullable=True)


def _int(name: str) -> Col:
    return sa.Column(name, sa.Integer, nullable=True)


def _date(name: str) -> Col:
    return sa.Column(name, sa.Date, nullable=True)


def _bool(name: str) -> Col:
    return sa.Column(name, sa.Boolean, nullable=True)


def _noyes(name: str) -> Col:
    """An FO NoYes enum, stored as its name (``No`` / ``Yes``)."""
    return sa.Column(name, sa.String(3), nullable=True)


def _enum(name: str) -> Col:
    """An FO enum, stored as its name (``Invoice``, ``Backorder``)."""
    return sa.Column(name, sa.String(30), nullable=True)


# --------------------------------------------------------------------------- ERP


def _erp(md: sa.MetaData, name: str, key: list[Col], *cols: Col,
         striped: bool = True) -> sa.Table:
    """An FO entity: primary key ``dataAreaId`` (when striped) + the natural key columns."""
    pk: list[Col] = []
    if striped:
        pk.append(sa.Column(ERP_COMPANY_COLUMN, sa.String(4), primary_key=True))
    for c in key:
        c.primary_key = True
        c.nullable = False
        pk.append(c)
    return sa.Table(name, md, *pk, *cols)


def erp_metadata() -> sa.MetaData:
    """The ERP (finance and operations) tables; see the module docstring."""
    md = sa.MetaData()
    _erp(md, "Currencies", [_s("CURRENCYCODE", 3)],
         _s("NAME", 60), _s("SYMBOL", 5), _money("GENERALROUNDINGRULE"), striped=False)
    _erp(md, "CustCustomerGroup", [_s("CUSTOMERGROUPID", 10)],
         _s("DESCRIPTION", 60), _noyes("ISSALESTAXINCLUDEDINPRICE"), _s("PAYMENTTERMID", 10),
         _s("CLEARINGPERIODPAYMENTTERMNAME", 10), _s("TAXGROUPID", 10))
    _erp(md, "CustomersV3", [_s("CUSTOMERACCOUNT", 20)],
         _enum("PARTYTYPE"), _s("PARTYNUMBER", 20), _s("ORGANIZATIONNAME", 100),
         _s("PERSONFIRSTNAME", 25), _s("PERSONLASTNAME", 25), _s("CUSTOMERGROUPID", 10),
         _s("SALESCURRENCYCODE", 3), _money("CREDITLIMIT"), _noyes("CREDITLIMITISMANDATORY"),
         _enum("ONHOLDSTATUS"), _s("PRIMARYCONTACTEMAIL", 100), _s("PRIMARYCONTACTPHONE", 30),
         _s("CONTACTPERSONID", 20), _s("DELIVERYADDRESSSTREET", 250),
         _s("DELIVERYADDRESSCITY", 60), _s("DELIVERYADDRESSSTATE", 10),
         _s("DELIVERYADDRESSZIPCODE", 10), _s("DELIVERYADDRESSCOUNTRYREGIONISOCODE", 2),
         _geo("DELIVERYADDRESSLATITUDE"), _geo("DELIVERYADDRESSLONGITUDE"))
    _erp(md, "CDSContactsV2", [_s("CONTACTPERSONID", 20)],
         _s("CONTACTPERSONPARTYNUMBER", 20), _enum("ASSOCIATEDCONTACTTYPE"),
         _s("ASSOCIATEDCONTACTNUMBER", 20), _s("FIRSTNAME", 25), _s("MIDDLENAME", 25),
         _s("LASTNAME", 25), _s("PRIMARYADDRESSSTREET", 250), _s("PRIMARYADDRESSCITY", 60),
         _s("PRIMARYADDRESSSTATEID", 10), _s("PRIMARYADDRESSZIPCODE", 10),
         _s("PRIMARYADDRESSCOUNTRYREGIONID", 3), _s("PRIMARYPHONENUMBER", 30),
         _s("PRIMARYEMAILADDRESS", 100), _s("EMPLOYMENTDEPARTMENT", 60),
         _s("EMPLOYMENTPROFESSION", 60), _enum("GENDER"), _enum("MARITALSTATUS"),
         _noyes("ISRECEIVINGDIRECTMAIL"), _s("NOTES", 500))
    _erp(md, "EcoResReleasedDistinctProductCDSEntity", [_s("PRODUCTNUMBER", 20)],
         _s("ITEMNUMBER", 20), _s("PRODUCTNAME", 100), _s("PRODUCTDESCRIPTION", 500),
         _enum("PRODUCTTYPE"), _enum("FIELDSERVICEPRODUCTTYPE"), _noyes("ISSTOCKEDPRODUCT"),
         _noyes("ISCATCHWEIGHTPRODUCT"), _s("CURRENCYCODE", 3), _s("SALESUNITSYMBOL", 10),
         _money("SALESPRICE"), _money("UNITCOST"), _int("SALESUNITDECIMALPRECISION"),
         _s("PRODUCTCOLORID", 10))
    _erp(md, "AssetManagementAssets", [_s("MAINTENANCEASSETID", 20)],
         _s("NAME", 100), _s("MAINTENANCEASSETTYPEID", 20), _s("SERIALID", 30),
         _s("MODELYEAR", 4), _money("ACQUISITIONCOST"), _date("ACQUISITIONDATE"),
         _date("ACTIVEFROM"), _date("ACTIVETO"), _s("NOTES", 500), _s("PURCHASEORDERID", 20),
         _date("REPLACEMENTDATE"), _money("REPLACEMENTVALUE"), _s("VENDACCOUNT", 20),
         _date("WARRANTYDATEFROMVEND"), _s("WRKCTRID", 10), _s("FIXEDASSETID", 20))
    _erp(md, "PurchPurchaseOrderHeaderV2Entity", [_s("PURCHASEORDERNUMBER", 20)],
         _s("ORDERVENDORACCOUNTNUMBER", 20), _s("CURRENCYCODE", 3), _s("LANGUAGEID", 7),
         _date("ACCOUNTINGDATE"), _date("REQUESTEDDELIVERYDATE"),
         _date("CONFIRMEDDELIVERYDATE"), _s("EMAIL", 100), _s("VENDORORDERREFERENCE", 30),
         _money("TOTALDISCOUNTPERCENTAGE"), _noyes("AREPRICESINCLUDINGSALESTAX"),
         _enum("DOCUMENTAPPROVALSTATUS"), _enum("PURCHASEORDERSTATUS"),
         _noyes("ISDELIVEREDDIRECTLY"), _s("DELIVERYADDRESSNAME", 100),
         _s("DELIVERYADDRESSSTREET", 250), _s("DELIVERYADDRESSCITY", 60),
         _s("DELIVERYADDRESSZIPCODE", 10), _s("DELIVERYADDRESSCOUNTRYREGIONISOCODE", 2))
    _erp(md, "PurchPurchaseOrderLineCDSEntity",
         [_s("PURCHASEORDERNUMBER", 20), _int("LINENUMBER")],
         _s("PRODUCTNUMBER", 20), _s("LINEDESCRIPTION", 100), _qty("ORDEREDPURCHASEQUANTITY"),
         _s("PURCHASEUNITSYMBOL", 10), _money("PURCHASEPRICE"), _money("LINEAMOUNT"),
         _money("LINEDISCOUNTAMOUNT"), _money("LINEDISCOUNTPERCENTAGE"),
         _date("REQUESTEDDELIVERYDATE"), _date("CONFIRMEDDELIVERYDATE"), _s("CURRENCYCODE", 3),
         _enum("PURCHASEORDERLINESTATUS"), _noyes("ISPARTIALDELIVERYPREVENTED"),
         _s("BARCODE", 20), _s("EXTERNALITEMNUMBER", 30), _s("CUSTOMERREFERENCE", 30))
    _erp(md, "InventOnHandEntryCDSEntity",
         [_s("ITEMNUMBER", 20), _s("INVENTORYSITEID", 10), _s("INVENTORYWAREHOUSEID", 10)],
         _s("PRODUCTNUMBER", 20), _s("REQUESTID", 20), _qty("ONHANDQUANTITY"),
         _qty("AVAILABLEONHANDQUANTITY"), _qty("RESERVEDONHANDQUANTITY"),
         _qty("UNAVAILABLEONHANDQUANTITY"), _qty("ORDEREDQUANTITY"),
         _qty("AVAILABLEORDEREDQUANTITY"), _qty("RESERVEDORDEREDQUANTITY"),
         _qty("ONORDERQUANTITY"), _qty("TOTALAVAILABLEQUANTITY"),
         _qty("PROJECTEDONHANDQUANTITY"), _date("ATPDATE"), _qty("ATPQUANTITY"))
    _erp(md, "SalesOrderHeaderCDSEntity", [_s("SALESORDERNUMBER", 20)],
         _s("SALESORDERNAME", 100), _s("ORDERINGCUSTOMERACCOUNTNUMBER", 20),
         _s("INVOICECUSTOMERACCOUNTNUMBER", 20), _s("CONTACTPERSONID", 20),
         _s("CURRENCYCODE", 3), _s("EMAIL", 100), _s("CUSTOMERREQUISITIONNUMBER", 30),
         _s("DELIVERYADDRESSSTREET", 250), _s("DELIVERYADDRESSCITY", 60),
         _s("DELIVERYADDRESSSTATEID", 10), _s("DELIVERYADDRESSZIPCODE", 10),
         _s("DELIVERYADDRESSCOUNTRYREGIONISOCODE", 2), _date("REQUESTEDSHIPPINGDATE"),
         _date("CONFIRMEDSHIPPINGDATE"), _enum("SALESORDERPROCESSINGSTATUS"),
         _noyes("ISSALESPROCESSINGSTOPPED"), _money("ORDERTOTALAMOUNT"),
         _money("TOTALDISCOUNTAMOUNT"), _money("ORDERTOTALTAXAMOUNT"))
    _erp(md, "SalesOrderLineCDSEntity",
         [_s("SALESORDERNUMBER", 20), _int("LINECREATIONSEQUENCENUMBER")],
         _s("PRODUCTNUMBER", 20), _s("PRODUCTNAME", 100), _s("LINEDESCRIPTION", 100),
         _qty("ORDEREDSALESQUANTITY"), _s("SALESUNITSYMBOL", 10), _money("SALESPRICE"),
         _money("LINEDISCOUNTAMOUNT"), _money("LINEDISCOUNTPERCENTAGE"), _money("LINEAMOUNT"),
         _money("TOTALTAXAMOUNT"), _s("CURRENCYCODE", 3), _s("DELIVERYADDRESSCITY", 60),
         _s("DELIVERYADDRESSCOUNTRYREGIONISOCODE", 2), _date("REQUESTEDSHIPPINGDATE"),
         _date("CONFIRMEDSHIPPINGDATE"), _enum("SALESORDERLINESTATUS"),
         _noyes("ISLINESTOPPED"), _enum("SALESORDERPROMISINGMETHOD"))
    _erp(md, "SalesInvoiceHeaderV2Entity", [_s("INVOICENUMBER", 20)],
         _date("INVOICEDATE"), _s("SALESORDERNUMBER", 20),
         _s("INVOICECUSTOMERACCOUNTNUMBER", 20), _s("CURRENCYCODE", 3),
         _s("CUSTOMERSORDERREFERENCE", 30), _s("INVOICEADDRESSSTREET", 250),
         _s("INVOICEADDRESSCITY", 60), _s("INVOICEADDRESSSTATE", 10),
         _s("INVOICEADDRESSZIPCODE", 10), _s("INVOICEADDRESSCOUNTRYREGIONISOCODE", 2),
         _s("LEDGERVOUCHER", 20), _s("PAYMENTTERMSNAME", 10), _money("TOTALCHARGEAMOUNT"),
         _money("TOTALDISCOUNTAMOUNT"), _money("TOTALTAXAMOUNT"), _money("TOTALINVOICEAMOUNT"))
    _erp(md, "SalesInvoiceLineV2Entity",
         [_s("INVOICENUMBER", 20), _int("LINECREATIONSEQUENCENUMBER")],
         _date("INVOICEDATE"), _s("PRODUCTNUMBER", 20), _s("PRODUCTNAME", 100),
         _qty("INVOICEDQUANTITY"), _s("SALESUNITSYMBOL", 10), _money("SALESPRICE"),
         _money("LINEAMOUNT"), _money("LINETOTALDISCOUNTAMOUNT"), _money("LINETOTALTAXAMOUNT"),
         _money("LINETOTALCHARGEAMOUNT"), _s("CURRENCYCODE", 3), _date("CONFIRMEDSHIPPINGDATE"),
         _s("INVENTORYSITEID", 10), _s("INVENTORYWAREHOUSEID", 10))
    return md


# --------------------------------------------------------------------------- CRM


def _fk(name: str, table: str, pk: str) -> Col:
    """A lookup column: the GUID of a row of ``table``."""
    return sa.Column(name, sa.String(36), sa.ForeignKey(f"{table}.{pk}"), nullable=True)


def _state(name: str = "statecode") -> Col:
    """An unmapped Dataverse status column the database fills (0 = active)."""
    return sa.Column(name, sa.Integer, nullable=False, server_default=sa.text("0"))


def _crm(md: sa.MetaData, name: str, pk: str, key: tuple[str, ...], *cols: Col,
         striped: bool = True) -> sa.Table:
    """A Dataverse table: GUID primary key ``pk``, ``company`` when striped, the natural key
    ``key`` unique (within the company) and indexed for lookups."""
    head: list[Any] = [sa.Column(pk, sa.String(36), primary_key=True,
                                 server_default=GUID_DEFAULT)]
    if striped:
        head.append(sa.Column(CRM_COMPANY_COLUMN, sa.String(4), nullable=True))
    table = sa.Table(name, md, *head, *cols)
    unique = ((CRM_COMPANY_COLUMN,) if striped else ()) + key
    table.append_constraint(sa.UniqueConstraint(*unique, name=f"uq_{name}_key"))
    sa.Index(f"ix_{name}_{key[0]}", table.c[key[0]])
    return table


def crm_metadata() -> sa.MetaData:
    """The CRM (Dataverse) tables; see the module docstring."""
    md = sa.MetaData()
    cur = ("transactioncurrencies", "transactioncurrencyid")
    _crm(md, "transactioncurrencies", "transactioncurrencyid", ("isocurrencycode",),
         _s("isocurrencycode", 5), _s("currencyname", 100), _s("currencysymbol", 10),
         sa.Column("exchangerate", sa.Numeric(32, 10), nullable=True),
         _int("currencyprecision"), _state(), striped=False)
    _crm(md, "msdyn_customergroups", "msdyn_customergroupid", ("msdyn_groupid",),
         _s("msdyn_groupid", 10), _s("msdyn_description", 100),
         _bool("msdyn_issalestaxincludedinprice"), _state())
    _crm(md, "contacts", "contactid", ("msdyn_contactpersonid",),
         _s("msdyn_contactpersonid", 20), _s("msdyn_partynumber", 20), _s("firstname", 50),
         _s("middlename", 50), _s("lastname", 50), _s("address1_line1", 250),
         _s("address1_city", 80), _s("address1_stateorprovince", 50),
         _s("address1_postalcode", 20), _s("address1_country", 80), _s("telephone1", 50),
         _s("emailaddress1", 100), _s("department", 100), _s("jobtitle", 100),
         _int("gendercode"), _int("familystatuscode"), _bool("donotemail"),
         _s("description", 2000))
    _crm(md, "accounts", "accountid", ("accountnumber",),
         _s("accountnumber", 20), _s("name", 160), _int("customertypecode"),
         _s("msdyn_partynumber", 20),
         _fk("msdyn_customergroupid", "msdyn_customergroups", "msdyn_customergroupid"),
         _fk("transactioncurrencyid", *cur), _money("creditlimit"),
         _bool("msdyn_creditlimitismandatory"), _int("msdyn_onholdstatus"),
         _s("emailaddress1", 100), _s("telephone1", 50),
         _fk("primarycontactid", "contacts", "contactid"), _s("address1_line1", 250),
         _s("address1_city", 80), _s("address1_stateorprovince", 50),
         _s("address1_postalcode", 20), _s("address1_country", 80),
         _geo("address1_latitude"), _geo("address1_longitude"),
         _int("address1_addresstypecode"))
    _crm(md, "products", "productid", ("msdyn_productnumber",),
         _s("msdyn_productnumber", 20), _s("msdyn_itemnumber", 20), _s("name", 100),
         _s("description", 2000), _int("producttypecode"),
         _int("msdyn_fieldserviceproducttype"), _bool("msdyn_isstockedproduct"),
         _bool("msdyn_iscatchweight"), _fk("transactioncurrencyid", *cur), _money("price"),
         _money("currentcost"), _int("quantitydecimal"), _state())
    _crm(md, "msdyn_customerassets", "msdyn_customerassetid", ("msdyn_maintenanceassetid",),
         _s("msdyn_maintenanceassetid", 20), _s("msdyn_name", 100), _s("msdyn_serialid", 30),
         _s("msdyn_modelyear", 4), _money("msdyn_acquisitioncost"),
         _date("msdyn_acquisitiondate"), _date("msdyn_activefrom"), _date("msdyn_activeto"),
         _s("msdyn_notes", 2000), _s("msdyn_purchaseorderid", 20),
         _date("msdyn_replacementdate"), _money("msdyn_replacementvalue"),
         _s("msdyn_vendaccount", 20), _date("msdyn_warrantydatefromvend"),
         _s("msdyn_wrkctrid", 10), _s("msdyn_fixedassetid", 20), _state())
    _crm(md, "msdyn_purchaseorders", "msdyn_purchaseorderid", ("msdyn_name",),
         _s("msdyn_name", 20), _fk("transactioncurrencyid", *cur), _int("msdyn_language"),
         _date("msdyn_accountingdate"), _date("msdyn_dateexpected"),
         _date("msdyn_confirmeddeliverydate"), _s("msdyn_email", 100),
         _s("msdyn_vendororderreference", 30), _money("msdyn_totaldiscountpercentage"),
         _bool("msdyn_arepriceincludingsalestax"), _int("msdyn_documentapprovalstatus"),
         _int("msdyn_purchaseorderstatus"), _bool("msdyn_isdeliverydirectly"),
         _s("msdyn_addressname", 100), _s("msdyn_address1", 250), _s("msdyn_city", 80),
         _s("msdyn_postalcode", 20), _s("msdyn_country", 80), _state())
    _crm(md, "msdyn_purchaseorderproducts", "msdyn_purchaseorderproductid",
         ("msdyn_purchaseordernumber", "msdyn_lineorder"),
         _s("msdyn_purchaseordernumber", 20), _int("msdyn_lineorder"),
         _fk("msdyn_purchaseorder", "msdyn_purchaseorders", "msdyn_purchaseorderid"),
         _fk("msdyn_product", "products", "productid"), _s("msdyn_description", 100),
         _qty("msdyn_quantity"), _money("msdyn_unitcost"), _money("msdyn_lineamount"),
         _money("msdyn_linediscountamount"), _money("msdyn_linediscountpercentage"),
         _date("msdyn_dateexpected"), _date("msdyn_confirmeddeliverydate"),
         _fk("transactioncurrencyid", *cur), _int("msdyn_purchaseorderlinestatus"),
         _bool("msdyn_ispartialdeliveryprevented"), _s("msdyn_barcode", 20),
         _s("msdyn_externalitemnumber", 30), _s("msdyn_customerreference", 30))
    _crm(md, "msdyn_inventoryonhandentries", "msdyn_inventoryonhandentryid",
         ("msdyn_itemnumber", "msdyn_siteid", "msdyn_warehouseidentifier"),
         _s("msdyn_itemnumber", 20), _s("msdyn_siteid", 10),
         _s("msdyn_warehouseidentifier", 10), _fk("msdyn_product", "products", "productid"),
         _qty("msdyn_onhandquantity"), _qty("msdyn_availableonhandquantity"),
         _qty("msdyn_reservedonhandquantity"), _qty("msdyn_unavailableonhandquantity"),
         _qty("msdyn_orderedquantity"), _qty("msdyn_availableorderedquantity"),
         _qty("msdyn_reservedorderedquantity"), _qty("msdyn_onorderquantity"),
         _qty("msdyn_totalavailablequantity"), _qty("msdyn_projectedonhandquantity"),
         _date("msdyn_atpdate"), _qty("msdyn_atpquantity"))
    _crm(md, "salesorders", "salesorderid", ("msdyn_salesordernumber",),
         _s("msdyn_salesordernumber", 20), _s("name", 300),
         sa.Column("customerid", sa.String(36), nullable=True),
         _fk("msdyn_invoicecustomer", "accounts", "accountid"),
         _fk("msdyn_contactperson", "contacts", "contactid"),
         _fk("transactioncurrencyid", *cur), _s("msdyn_isocurrencycode", 5),
         _s("emailaddress", 100), _s("msdyn_customerrequisitionnumber", 30),
         _s("shipto_line1", 250), _s("shipto_city", 80), _s("shipto_stateorprovince", 50),
         _s("shipto_postalcode", 20), _s("shipto_country", 80), _date("requestdeliveryby"),
         _date("msdyn_confirmedshippingdate"), _int("msdyn_processingstatus"),
         _bool("msdyn_issalesprocessingstopped"), _money("totalamount"),
         _money("discountamount"), _money("totaltax"), _int("statecode"), _int("statuscode"),
         _int("msdyn_ordertype"))
    _crm(md, "salesorderdetails", "salesorderdetailid",
         ("msdyn_salesordernumber", "sequencenumber"),
         _s("msdyn_salesordernumber", 20), _int("sequencenumber"),
         _fk("salesorderid", "salesorders", "salesorderid"),
         _fk("productid", "products", "productid"), _s("description", 200),
         _s("msdyn_linedescription", 100), _qty("quantity"), _money("priceperunit"),
         _money("msdyn_linediscountamount"), _money("msdyn_linediscountpercentage"),
         _money("extendedamount"), _money("baseamount"), _money("tax"),
         _fk("transactioncurrencyid", *cur), _s("shipto_city", 80), _s("shipto_country", 80),
         _date("requestdeliveryby"), _date("msdyn_confirmedshippingdate"),
         _int("msdyn_linestatus"), _bool("msdyn_islinestopped"),
         _int("msdyn_salesorderpromisingmethod"), _bool("ispriceoverridden"))
    _crm(md, "invoices", "invoiceid", ("msdyn_invoicenumber",),
         _s("msdyn_invoicenumber", 20), _date("msdyn_invoicedate"),
         _fk("salesorderid", "salesorders", "salesorderid"),
         sa.Column("customerid", sa.String(36), nullable=True),
         _fk("transactioncurrencyid", *cur), _s("description", 2000), _s("billto_line1", 250),
         _s("billto_city", 80), _s("billto_stateorprovince", 50), _s("billto_postalcode", 20),
         _s("billto_country", 80), _s("msdyn_ledgervoucher", 20), _money("freightamount"),
         _money("totaldiscountamount"), _money("totaltax"), _money("totalamount"),
         _bool("ispricelocked"), _int("statuscode"))
    _crm(md, "invoicedetails", "invoicedetailid", ("msdyn_invoicenumber", "sequencenumber"),
         _s("msdyn_invoicenumber", 20), _int("sequencenumber"),
         _fk("invoiceid", "invoices", "invoiceid"), _fk("productid", "products", "productid"),
         _s("description", 200), _qty("quantity"), _money("priceperunit"),
         _money("extendedamount"), _money("manualdiscountamount"), _money("tax"),
         _money("msdyn_totalchargeamount"), _fk("transactioncurrencyid", *cur),
         _date("msdyn_confirmedshippingdate"), _int("producttypecode"),
         _int("propertyconfigurationstatus"), _bool("ispriceoverridden"))
    return md


# --------------------------------------------------------------------------- helpers


def _engine(url_or_engine: str | sa.Engine) -> sa.Engine:
    return sa.create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine


def create_erp(url_or_engine: str | sa.Engine) -> sa.Engine:
    """Create the ERP tables that do not exist yet; return the engine (made from a URL)."""
    engine = _engine(url_or_engine)
    erp_metadata().create_all(engine)
    return engine


def create_crm(url_or_engine: str | sa.Engine) -> sa.Engine:
    """Create the CRM tables that do not exist yet; return the engine (made from a URL)."""
    engine = _engine(url_or_engine)
    crm_metadata().create_all(engine)
    return engine
