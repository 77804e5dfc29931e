"""The live Bokeh dashboard, fed only by the API."""
