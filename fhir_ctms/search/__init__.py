"""Search: parameters, their parsing into plain values, and index extraction at write time.

This first version supports what conditional interactions need: ``_id`` and the
``identifier`` token (``[system]|[code]``, ``|[code]``, ``[system]|``, ``[code]``)
on every resource type that has an ``identifier`` element.
"""
