"""The REST app's controllers: importing each one registers its routes
with Appier, so they are imported here (and listed in ``__all__``) even
where nothing else names them."""

from .apps import AppsController
from .base import BaseController
from .channels import ChannelsController
from .console import ConsoleController
from .events import EventsController
from .home import HomeController
from .keys import KeysController
from .subscriptions import SubscriptionsController

__all__ = [
    "AppsController",
    "BaseController",
    "ChannelsController",
    "ConsoleController",
    "EventsController",
    "HomeController",
    "KeysController",
    "SubscriptionsController",
]
