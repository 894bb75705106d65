"""The ``meshlet`` command: argument parsing only; each job lives in a library."""
