"""Pushi: a self-hosted real-time push server speaking the Pusher protocol."""

from .api import Pushi, PushiError

__all__ = ["Pushi", "PushiError"]

__version__ = "1.0.0.dev0"


def __getattr__(name):
    # the server side is imported on demand: a client needs none of it
    if name == "State":
        from .base.state import State

        return State
    if name == "Config":
        from .base.config import Config

        return Config
    raise AttributeError(name)
