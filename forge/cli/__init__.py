"""The ``forge`` command: a thin click layer over the library."""
