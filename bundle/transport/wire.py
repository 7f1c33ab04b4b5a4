"""The bytes a Globus Compute endpoint receives for one task, and what it sends back.

Both transports send the same thing: a login-node task function (by
reference: ``login_node.tasks.<name>``) serialized by the SDK's
``ComputeSerializer`` with ``(req,), {}`` as its arguments. The ``local``
transport packs it as a messagepack ``Task`` and unpacks the ``Result`` the
endpoint's own ``execute_task`` returns; the globus transport hands the same
function to the SDK, which serializes it the same way.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from bundle.errors import PayloadTooLarge, RemoteError, UsageError
from bundle.limits import TASK_LIMIT
from bundle.protocol import TASKS


def task_function(name: str) -> Callable[..., Any]:
    """The login-node function object for a task name.

    The client never runs it: it is serialized by reference and runs on the
    endpoint. Imported here, on first use, so that the client's own modules
    stay free of ``login_node`` at import time.
    """
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}")
    # Kept function-local on purpose (no import cycle forces it): the globus transport and
    # ``bundle.doctor`` import this module, and only ``transport.local`` may import
    # ``login_node`` at load; the task module also brings the login node's whole side
    # (driver, schedulers, site checks), which a client command never runs.
    from login_node import tasks

    return getattr(tasks, name)


def pack_task(fn: Callable[..., Any], req: dict[str, Any]) -> tuple[uuid.UUID, bytes]:
    """The bytes a Globus Compute endpoint receives for ``fn(req)``."""
    # The SDK's serializer loads slowly: imported when a task is packed, not with the client.
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_sdk.serialize import ComputeSerializer

    serde = ComputeSerializer()
    buffer = serde.pack_buffers([serde.serialize(fn), serde.serialize((req,)), serde.serialize({})])
    if len(buffer) > TASK_LIMIT:
        raise PayloadTooLarge(
            f"the {fn.__name__} task is {len(buffer)} bytes after serialization, above the {TASK_LIMIT}-byte limit",
            "this is a gcbundle bug: chunk sizes should keep tasks under the limit",
        )
    task_id = uuid.uuid4()
    return task_id, messagepack.pack(Task(task_id=task_id, task_buffer=buffer))


def unpack_result(packed: bytes) -> Any:
    """The value inside a packed ``Result``, or the remote error raised."""
    from globus_compute_common import messagepack
    from globus_compute_sdk.serialize import ComputeSerializer

    result = messagepack.unpack(packed)
    if result.is_error:
        details = result.error_details
        code = details.code if details else "RemoteExecutionFailed"
        text = (result.data or "").strip().splitlines()
        last = text[-1] if text else (details.user_message if details else "unknown error")
        if "MaxResultSizeExceeded" in (result.data or "") or code == "MaxResultSizeExceeded":
            raise PayloadTooLarge(
                f"the task's result exceeded the endpoint's size limit: {last}",
                "this is a gcbundle bug: chunk sizes should keep results under the limit",
            )
        raise RemoteError(
            f"the task failed on the login node: {last}",
            "see `gcbundle doctor`, or rerun with --debug for the remote traceback",
        )
    return ComputeSerializer().deserialize(result.data)
