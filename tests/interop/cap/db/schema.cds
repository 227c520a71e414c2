// The ERP side of the interop tests: customers with CAP's `managed` aspect, whose
// modifiedAt the OData environment polls for changes.
namespace erp;

using { managed } from '@sap/cds/common';

entity Customers : managed {
  key ID     : Integer;
      name   : String(100) not null;
      credit : Decimal(12, 2) @assert.range: [0, 1000000];
      active : Boolean;
      since  : Date;
}
