"""The proxy's operations are listed where FHIR clients look for them."""

from __future__ import annotations

from purgeproxy.capabilities import AdvertisedOperation, advertise

PURGE = AdvertisedOperation("purge", "http://hl7.org/fhir/OperationDefinition/Patient-purge", "Patient")
EXPUNGE = AdvertisedOperation("expunge", "http://hapifhir.io/fhir/OperationDefinition/expunge")


def test_operations_go_to_their_level_and_replace_upstream_ones() -> None:
    statement = {
        "resourceType": "CapabilityStatement",
        "rest": [{"mode": "server", "operation": [{"name": "expunge", "definition": "old"}],
                  "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}],
    }
    result = advertise(statement, [PURGE, EXPUNGE])
    server = result["rest"][0]
    assert server["operation"] == [EXPUNGE.entry()]
    assert server["resource"][0]["operation"] == [PURGE.entry()]
    assert server["resource"][0]["interaction"] == [{"code": "read"}]
    assert statement["rest"][0]["operation"][0]["definition"] == "old"  # the input is untouched


def test_missing_rest_and_resource_entries_are_created() -> None:
    result = advertise({"resourceType": "CapabilityStatement"}, [PURGE])
    assert result["rest"] == [{"mode": "server", "resource": [{"type": "Patient", "operation": [PURGE.entry()]}]}]
