from .base import BaseController
from .apps import AppsController
from .keys import KeysController
from .channels import ChannelsController
from .events import EventsController
from .subscriptions import SubscriptionsController
from .console import ConsoleController
from .home import HomeController
