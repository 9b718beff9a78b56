"""Outputs made from an analysis result: the results table (CSV, JSON, table node), the overlay
and colour nodes, slice snapshots and plots, the report and the output folder with its scene."""
