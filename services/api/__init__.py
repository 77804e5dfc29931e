"""The HTTP API: REST for stocks and price history, Server-Sent Events for live prices."""
