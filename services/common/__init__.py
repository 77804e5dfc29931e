"""Code shared by every stockstreamer service: settings, database, symbols, logging, metrics."""
