"""Pure protocol: no socket, no netius, no appier, no pymongo."""
