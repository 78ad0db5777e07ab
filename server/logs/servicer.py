"""LogService: translates messages; the rules live in service.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from repwise.v1 import common_pb2, log_pb2, log_pb2_grpc
from server.converters import optional_timestamp
from server.errors import DomainError, InvalidArgument
from server.events.service import SummaryService
from server.logs import converters as conv
from server.logs import exports
from server.logs.service import LogService, SyncItem, WorkoutData

EXPORT_FORMATS = {
    log_pb2.EXPORT_FORMAT_UNSPECIFIED: "json",
    log_pb2.EXPORT_FORMAT_JSON: "json",
    log_pb2.EXPORT_FORMAT_STRONG_CSV: "strong-csv",
}


class LogServicer(log_pb2_grpc.LogServiceServicer):
    def __init__(self, logs: LogService, summaries: SummaryService) -> None:
        self.logs = logs
        self.summaries = summaries

    def _units(self, requested: int, field: str = "weight_unit") -> str:
        return conv.unit(field, requested, self.logs.preferred_unit())

    def CreateWorkout(
        self, request: log_pb2.CreateWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.CreateWorkoutResponse:
        if not request.HasField("workout"):
            raise InvalidArgument("workout", "is required")

        def build(preferred: str) -> WorkoutData:
            return conv.workout_from_pb(request.workout, unit(preferred))

        def unit(preferred: str) -> str:
            return conv.unit("workout.weight_unit", request.workout.weight_unit, preferred)

        view, preferred = self.logs.create(build, request.request_id)
        return log_pb2.CreateWorkoutResponse(workout=conv.workout_to_pb(view, unit(preferred)))

    def GetWorkout(
        self, request: log_pb2.GetWorkoutRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetWorkoutResponse:
        conv.unit("weight_unit", request.weight_unit, "kg")  # a bad unit is refused first
        view, preferred = self.logs.get(request.id)
        unit = conv.unit("weight_unit", request.weight_unit, preferred)
        return log_pb2.GetWorkoutResponse(workout=conv.workout_to_pb(view, unit))

    def ListWorkouts(
        self, request: log_pb2.ListWorkoutsRequest, context: grpc.ServicerContext
    ) -> log_pb2.ListWorkoutsResponse:
        unit = self._units(request.weight_unit)
        span = request.time_range
        views, token = self.logs.list_workouts(
            optional_timestamp(span, "start_time", "time_range.start_time"),
            optional_timestamp(span, "end_time", "time_range.end_time"),
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

    def SyncWorkouts(
        self, request: log_pb2.SyncWorkoutsRequest, context: grpc.ServicerContext
    ) -> log_pb2.SyncWorkoutsResponse:
        preferred = self.logs.preferred_unit()
        items = []
        for i, workout in enumerate(request.upserts):
            try:
                unit = conv.unit(f"upserts[{i}].weight_unit", workout.weight_unit, preferred)
                items.append(
                    SyncItem(workout.id, conv.workout_from_pb(workout, unit), workout.etag)
                )
            except DomainError as error:  # reported for this item only
                items.append(SyncItem(workout.id, None, error=error))
        outcome = self.logs.sync(items, list(request.deletes), request.cursor, request.page_size)
        return log_pb2.SyncWorkoutsResponse(
            results=[conv.sync_result_to_pb(r) for r in outcome.results],
            changes=[
                log_pb2.WorkoutChange(workout=conv.workout_to_pb(v, preferred))
                for v in outcome.changes
            ],
            next_cursor=outcome.next_cursor,
            has_more=outcome.has_more,
        )

    def StreamHistory(
        self, request: log_pb2.StreamHistoryRequest, context: grpc.ServicerContext
    ) -> Iterator[log_pb2.StreamHistoryResponse]:
        if request.columnar:
            yield from self._stream_history_columns(request)
            return
        unit = self._units(request.weight_unit)
        if request.order not in common_pb2.SortOrder.values():
            raise InvalidArgument("order", "must be SORT_ORDER_ASCENDING or SORT_ORDER_DESCENDING")
        span = request.time_range
        chunks = self.logs.history(
            start=optional_timestamp(span, "start_time", "time_range.start_time"),
            end=optional_timestamp(span, "end_time", "time_range.end_time"),
            exercise_refs=list(request.exercise_ids),
            descending=request.order == common_pb2.SORT_ORDER_DESCENDING,
            chunk_size=request.chunk_size,
        )
        unit_pb = conv.UNIT_TO_PB[unit]
        for chunk in chunks:
            yield log_pb2.StreamHistoryResponse(
                entries=[conv.history_entry_to_pb(e, unit) for e in chunk], weight_unit=unit_pb
            )

    def _stream_history_columns(
        self, request: log_pb2.StreamHistoryRequest
    ) -> Iterator[log_pb2.StreamHistoryResponse]:
        """The columnar form: the same checks and chunks; the caller's preferred unit comes
        with the history, not from a read of its own."""
        conv.unit("weight_unit", request.weight_unit, "kg")  # a bad unit is refused first
        if request.order not in common_pb2.SortOrder.values():
            raise InvalidArgument("order", "must be SORT_ORDER_ASCENDING or SORT_ORDER_DESCENDING")
        span = request.time_range
        preferred, blocks = self.logs.history_columns(
            start=optional_timestamp(span, "start_time", "time_range.start_time"),
            end=optional_timestamp(span, "end_time", "time_range.end_time"),
            exercise_refs=list(request.exercise_ids),
            descending=request.order == common_pb2.SORT_ORDER_DESCENDING,
            chunk_size=request.chunk_size,
        )
        unit = conv.unit("weight_unit", request.weight_unit, preferred)
        unit_pb = conv.UNIT_TO_PB[unit]
        for block in blocks:
            response = log_pb2.StreamHistoryResponse(weight_unit=unit_pb)
            conv.history_columns_to_pb(block, unit, response.columns)
            yield response

    def GetStats(
        self, request: log_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetStatsResponse:
        as_of = optional_timestamp(request, "as_of", "as_of")
        result, preferred = self.logs.stats(as_of, request.weeks)
        unit = conv.unit("weight_unit", request.weight_unit, preferred)
        return conv.stats_to_pb(result, unit)

    def GetSummary(
        self, request: log_pb2.GetSummaryRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetSummaryResponse:
        view, preferred = self.summaries.get()
        return conv.summary_to_pb(view, conv.unit("weight_unit", request.weight_unit, preferred))

    def ExportData(
        self, request: log_pb2.ExportDataRequest, context: grpc.ServicerContext
    ) -> Iterator[log_pb2.ExportDataResponse]:
        fmt = EXPORT_FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(
                "format", "must be EXPORT_FORMAT_JSON or EXPORT_FORMAT_STRONG_CSV"
            )
        caller = self.logs.caller()
        unit = conv.unit("weight_unit", request.weight_unit, caller.preferred_unit)
        for chunk in exports.export_user(self.logs.db, caller.user_id, fmt, unit):
            yield log_pb2.ExportDataResponse(data=chunk)
