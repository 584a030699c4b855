"""Runnable example services for actorz.

Run one from the repository root with ``python -m examples.NAME``:

- ``examples.loadbalancer``: an aiohttp server in front of a pool of backend actors,
  routed by an async ``LoadBalancer`` actor.
- ``examples.longpoll``: an async actor that long-polls another actor and still
  answers other calls, next to the threaded actor that cannot.
"""
