"""Pure model: maps, notation, values, filters, schemas. No I/O here."""
