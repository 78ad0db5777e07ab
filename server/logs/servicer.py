"""LogService: translates messages; the rules live in service.py. SyncWorkouts,
StreamHistory, GetStats and ExportData land next and answer UNIMPLEMENTED until then."""

from __future__ import annotations

import grpc

from repwise.v1 import log_pb2, log_pb2_grpc
from server.converters import from_timestamp
from server.errors import InvalidArgument
from server.logs import converters as conv
from server.logs.service import LogService


class LogServicer(log_pb2_grpc.LogServiceServicer):
    def __init__(self, logs: LogService) -> None:
        self.logs = logs

    def _units(self, requested: int, field: str = "weight_unit") -> str:
        return conv.unit(field, requested, self.logs.preferred_unit())

    def CreateWorkout(
        self, request: log_pb2.CreateWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.CreateWorkoutResponse:
        if not request.HasField("workout"):
            raise InvalidArgument("workout", "is required")
        unit = self._units(request.workout.weight_unit, "workout.weight_unit")
        view = self.logs.create(conv.workout_from_pb(request.workout, unit), request.request_id)
        return log_pb2.CreateWorkoutResponse(workout=conv.workout_to_pb(view, unit))

    def GetWorkout(
        self, request: log_pb2.GetWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetWorkoutResponse:
        unit = self._units(request.weight_unit)
        return log_pb2.GetWorkoutResponse(
            workout=conv.workout_to_pb(self.logs.get(request.id), unit)
        )

    def ListWorkouts(
        self, request: log_pb2.ListWorkoutsRequest, context: grpc.ServicerContext
    ) -> log_pb2.ListWorkoutsResponse:
        unit = self._units(request.weight_unit)
        span = request.time_range
        views, token = self.logs.list(
            from_timestamp(span.start_time) if span.HasField("start_time") else None,
            from_timestamp(span.end_time) if span.HasField("end_time") else None,
            request.page_size,
            request.page_token,
        )
        return log_pb2.ListWorkoutsResponse(
            workouts=[conv.workout_to_pb(v, unit) for v in views], next_page_token=token
        )

    def UpdateWorkout(
        self, request: log_pb2.UpdateWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.UpdateWorkoutResponse:
        if request.update_mask.paths:
            raise InvalidArgument(
                "update_mask", "partial updates are not supported yet; send the whole workout"
            )
        unit = self._units(request.workout.weight_unit, "workout.weight_unit")
        view = self.logs.update(conv.workout_from_pb(request.workout, unit), request.workout.etag)
        return log_pb2.UpdateWorkoutResponse(workout=conv.workout_to_pb(view, unit))

    def DeleteWorkout(
        self, request: log_pb2.DeleteWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.DeleteWorkoutResponse:
        self.logs.delete(request.id, request.etag)
        return log_pb2.DeleteWorkoutResponse()
