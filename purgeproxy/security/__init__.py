"""Who may run destructive operations: the pieces ``purgeproxy.auth`` composes.

One module per kind of credential (static tokens, JWTs, introspection), plus the scope policy and
the per-caller concurrency limit. None of them logs or returns a token.
"""
