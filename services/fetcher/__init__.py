"""The market-data fetcher: provider → validation → buffer → one batch writer → PostgreSQL."""
