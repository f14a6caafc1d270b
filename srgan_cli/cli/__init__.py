"""Command-line interface (the only place that imports typer and rich)."""
