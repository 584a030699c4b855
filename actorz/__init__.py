"""actorz: Ray's asyncio actor model on a small ZeroMQ runtime.

Code written for Ray's actor API moves over by changing the import::

    import actorz as ray
"""

import logging

from actorz import exceptions
from actorz._api import cancel, get, get_actor, init, is_initialized, kill, shutdown, wait
from actorz._refs import ActorHandle, ObjectRef
from actorz._remote import ActorClass, RemoteFunction, remote

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "RemoteFunction",
    "cancel",
    "exceptions",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "remote",
    "shutdown",
    "wait",
]

__version__ = "0.1.0"

logging.getLogger("actorz").addHandler(logging.NullHandler())
