"""Fake market-data vendors: real loopback servers answering as the vendors document."""
