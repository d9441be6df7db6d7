"""Report: metrics, tables and figures written from results."""
