"""The authorization names the operations use; defined in ``purgeproxy.security`` (see
``purgeproxy.security.authorizer`` for who may run what)."""

from purgeproxy.security.authorizer import Authorizer, Caller
from purgeproxy.security.errors import Denied

__all__ = ["Authorizer", "Caller", "Denied"]
