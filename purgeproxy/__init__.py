"""purgeproxy: a reverse proxy in front of any FHIR server that makes patient erasure real."""

__version__ = "0.1.0"
