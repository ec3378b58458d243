"""Films from the network: ``xreg listen`` (a DICOM Storage SCP) and ``xreg pull``.

``spool.py`` (no network library) makes each received instance durable in
OUT before it is acknowledged and sorts the spool with the sort's own
journal and placement; ``listen.py`` is the pynetdicom listener (the ``pacs``
extra). Nothing here is imported by ``xreg sort``.
"""
