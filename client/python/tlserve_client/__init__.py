"""Python client for tlserve (tlserve.v1 over gRPC).

The generated stubs (`tlserve.v1.*_pb2`) are made by the normal CMake build
into build/python, next to a copy of this package:

    PYTHONPATH=build/python python3 -c 'import tlserve_client'
"""

from tlserve_client.client import (ClassScore, Client, Prediction,
                                   TlserveError)
from tlserve_client.progress import ProgressPrinter, format_progress

__all__ = ["Client", "TlserveError", "Prediction", "ClassScore",
           "ProgressPrinter", "format_progress"]
