"""Dev environments: the data volume, GPU claims, launching a container and migrating it.

The library never prints: progress goes through a callback, results are dataclasses, errors
are :class:`forge.errors.ForgeError` subclasses (:mod:`forge.env.errors`).
"""
