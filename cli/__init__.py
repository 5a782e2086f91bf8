"""Command-line pieces shared by `aar` and `ams_sync`: help layout, output formats."""
