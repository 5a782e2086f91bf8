"""The one place the release number lives."""
VERSION = "0.1.0"
