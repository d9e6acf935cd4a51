from .base import BaseController
from .apps import AppsController
from .channels import ChannelsController
from .events import EventsController
from .subscriptions import SubscriptionsController
