"""Cairn's Python client: workers that run your functions as durable steps, and a small client
to start runs, wait for them, and answer approvals."""

from ._http import CairnError
from .client import Client
from .worker import Cancelled, Permanent, TaskContext, TaskFailed, Worker, request_hash

__all__ = ["CairnError", "Cancelled", "Client", "Permanent", "TaskContext", "TaskFailed", "Worker", "request_hash"]
