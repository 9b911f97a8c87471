"""What the tests share: waits, ports, processes, a raw HTTP server, the Node client.

The engine harness is ``tests.support.engine`` (imported on its own: it imports llmux).
"""

from .net import RawServer, free_port, read_request
from .node import install_node_client, run_node_client
from .processes import process_alive, survivors
from .waits import wait_for

__all__ = [
    "RawServer",
    "free_port",
    "install_node_client",
    "process_alive",
    "read_request",
    "run_node_client",
    "survivors",
    "wait_for",
]
