"""gamjeong.v1.ModelAdmin: operating calls (a model reload), under the server's bearer token like every call."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.reload import ReloadFailedError, ReloadInProgressError, ReloadOutcome

log = logging.getLogger(__name__)

ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelAdmin"].full_name  # "gamjeong.v1.ModelAdmin"


class ModelAdminServicer(pb_grpc.ModelAdminServicer):
    def __init__(self, reload: Callable[[str], Awaitable[ReloadOutcome]], metrics: ServerMetrics) -> None:
        self._reload = reload
        self._metrics = metrics

    async def ReloadModel(
        self, request: pb.ReloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadModelResponse:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            outcome = await self._reload("admin")
            return pb.ReloadModelResponse(
                model=outcome.model_info, changed=outcome.changed, previous_model_version=outcome.previous_version
            )
        except ReloadFailedError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        except ReloadInProgressError:
            code = grpc.StatusCode.ABORTED
            await context.abort(code, "Another reload is under way; retry when it has finished.")
        finally:
            self._metrics.requests.labels(method="ReloadModel", code=code.name).inc()
            self._metrics.request_latency.labels(method="ReloadModel").observe(time.perf_counter() - started)
        raise AssertionError("unreachable")  # context.abort raises
