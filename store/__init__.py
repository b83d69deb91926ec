"""Storage: Redis hot state (Lua scripts), and later the PostgreSQL write-behind."""
