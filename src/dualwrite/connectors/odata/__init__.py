"""A remote OData v4 service as an environment: everything dualwrite knows of OData as a
backend is in this package.

``connector.py``
    :class:`ODataConnector`: HTTP, ``$batch``, the wire formats of values.
``metadata.py``
    The service's ``$metadata`` (CSDL XML) as table schemas.
``changes.py``
    Change tracking against a service, decided without I/O (delta links or a modified-time
    poll); the connector drives it.
"""

from dualwrite.connectors.odata.connector import ODataConnector

__all__ = ["ODataConnector"]
