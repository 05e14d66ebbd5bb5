"""buddycast: presence for buddy lists."""

__version__ = "0.1.0"
