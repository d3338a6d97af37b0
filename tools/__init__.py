"""Developer tools of the walnet repository (run from a checkout; not part of the package)."""
