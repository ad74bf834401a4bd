"""The servers baldflow starts for itself, each owned by one object that stops it by PID.

Importing this package is cheap (no prefect, no httpx): the CLI and the launcher use it early.
"""

from baldflow.stack.process import ManagedProcess, ProcessStartError, free_port, stop_all

__all__ = ["ManagedProcess", "ProcessStartError", "free_port", "stop_all"]
