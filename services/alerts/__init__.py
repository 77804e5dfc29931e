"""The alerts service: live ticks → price alerts → firings, delivered through Apprise."""
