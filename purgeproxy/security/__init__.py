"""Who may run destructive operations: ``authorizer`` decides, with one module per kind of
credential (static tokens, JWTs, introspection), plus the scope policy and the per-caller
concurrency limit. None of them logs or returns a token. ``purgeproxy.auth`` re-exports
``Authorizer``, ``Caller`` and ``Denied`` for the operations.
"""
