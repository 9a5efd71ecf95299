"""Per-upstream strategies: what each kind of FHIR server can do to really remove data.

``base`` is the interface, ``kinds/`` holds one module per kind, ``registry`` finds them by name
or from ``metadata``. The differences between HAPI, Medplum, Firely and the rest live here and
nowhere else: the engine asks the ``ServerKind`` object.
"""
