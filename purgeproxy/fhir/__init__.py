"""FHIR building blocks that know nothing of HTTP frameworks: outcomes, references, definitions."""
