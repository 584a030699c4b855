"""An aiohttp server in front of backend actors, routed by an async load-balancer actor.

Run it with ``python -m examples.loadbalancer`` (``--help`` for the options); see
``README.md`` beside this file.
"""
