"""ipamd: IP address management for container hosts."""

__version__ = "0.1.0"
