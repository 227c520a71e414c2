"""The connector compliance suite, shipped with dualwrite so that a new backend proves itself.

A backend (a new database, an OData service) is ready when this suite passes against it. Its
test module defines one pytest fixture, ``harness``, giving a :class:`Harness` (the backend's
connector and how to make the suite's tables), and imports the suite's tests::

    # tests/test_my_backend.py
    import pytest
    from dualwrite.testing import Harness
    from dualwrite.testing.connector_suite import *  # noqa: F403  (the tests)

    class MyHarness(Harness):
        def create(self, metadata): ...  # make the tables of ``metadata``, dropping old ones

    @pytest.fixture
    def harness():
        h = MyHarness(MyConnector("env", "my://..."))
        yield h
        h.connector.close()

Tests that need a capability the backend does not declare (``Connector.capabilities``:
two-phase commit, bulk export/load) are skipped with that reason, never silently; tests of
what the database enforces (lengths, CHECK constraints) follow :attr:`Harness.enforces`.

dualwrite's own tests run it against every backend of :mod:`dualwrite.testing.backends`
(tests/connectors/test_connector_suite.py): the one place a backend is registered for the
tests, which choose backends by capability (``backends(needs=...)``, ``pairs(needs=...)``),
so a backend registered there runs through the suite and every test whose needs it meets.
"""

from dualwrite.testing.harness import Harness

__all__ = ["Harness"]
