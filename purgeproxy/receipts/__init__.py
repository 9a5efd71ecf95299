"""Proof of erasure: signed receipts (:mod:`.receipt`), their signing keys (:mod:`.keys`), the
hash-chained ledger in the job store (:mod:`.ledger`), the one stage every destructive operation's
result passes through (:mod:`.stage`) and re-applying erasures after a restore (:mod:`.reapply`)."""
