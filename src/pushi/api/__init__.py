from .client import Pushi, PushiError

__all__ = ["Pushi", "PushiError"]
