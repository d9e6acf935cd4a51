from .client import Pushi, PushiError
