"""Vendor providers against fake vendor servers."""
