"""JSON schemas shipped with the package (package data: the manifest schema)."""
