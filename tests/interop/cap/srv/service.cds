using { erp } from '../db/schema';

@path: '/odata/v4/erp'
@requires: 'authenticated-user'
service ErpService {
  entity Customers as projection on erp.Customers;
}
