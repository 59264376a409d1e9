"""Runtime: the compiled callable (and later export, caching and device loading)."""
