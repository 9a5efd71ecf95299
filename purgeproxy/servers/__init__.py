"""Per-upstream strategies: what each kind of FHIR server can do to really remove data.

The rest of the code asks the ``ServerKind`` object; the differences between HAPI, Medplum and a
generic server live here and nowhere else.
"""

from purgeproxy.servers.base import ServerKind, detect, kind_named

__all__ = ["ServerKind", "detect", "kind_named"]
