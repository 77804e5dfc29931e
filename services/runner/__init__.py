"""`make run`: the whole stack natively, with an embedded PostgreSQL unless DATABASE_URL is set."""
