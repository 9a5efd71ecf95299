"""The framework-free purge engine: resolve, plan, execute, verify. No aiohttp in here."""
