"""Command-line binaries (absl): train, eval, vis, export_model. Each parses flags and calls the library."""
