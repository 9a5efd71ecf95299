"""Asynchronous jobs: durable storage with leases, and the worker pool that runs them."""
