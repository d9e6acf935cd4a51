from .base import BaseController
from .apps import AppsController
from .channels import ChannelsController
