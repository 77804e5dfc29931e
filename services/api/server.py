"""uvicorn's server for one API process, as `python -m services.api` runs it."""

from __future__ import annotations

import uvicorn


class ApiServer(uvicorn.Server):
    """uvicorn's server; what the API must do on SIGTERM beyond uvicorn's own shutdown goes here."""
