"""The `gdflow` command line: options parsed into the typed config, one line per error."""
