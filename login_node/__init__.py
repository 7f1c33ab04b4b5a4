"""The site side of gcbundle: task functions run by a Globus Compute endpoint, and the detached driver."""
from __future__ import annotations
