"""The ``dualwrite demo``: two business applications on SQLite, linked by template maps.

* :mod:`dualwrite.demo.schema` — the ERP (finance and operations style, FO entity and field
  names) and CRM (Dataverse style, GUID keys and lookups) tables;
* :mod:`dualwrite.demo.seed` — a deterministic generator that fills both applications from one
  dataset, rendered through the maps, with a known share of rows that exist on one side only
  or differ;
* ``dualwrite/demo/maps/*.yaml`` — one table map per entity pair, converted line by line from
  the published dual-write templates (:mod:`dualwrite.demo.catalog` loads them);
* :mod:`dualwrite.demo.run` — the ``dualwrite demo`` command.

Nothing here reads files from outside the package.
"""
