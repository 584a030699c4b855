"""Process runtimes: the fork-server template, the host entry point, and the dispatchers."""
