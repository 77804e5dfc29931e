"""stockstreamer: a real-time stock ticker built from small services."""
