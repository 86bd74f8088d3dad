"""Repository-level pytest settings: the pytester plugin for the self-tests (the suite itself is the installed plugin)."""

pytest_plugins = ["pytester"]
