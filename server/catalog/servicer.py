"""CatalogService: translates messages; the rules live in service.py."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from sqlalchemy.orm import Session

from client_sdk import features
from repwise.v1 import catalog_pb2, catalog_pb2_grpc
from server import idempotency
from server.catalog import converters as conv
from server.catalog.service import CatalogService
from server.errors import InvalidArgument


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self, catalog: CatalogService, is_referenced: Callable[[Session, str], bool]
    ) -> None:
        self.catalog = catalog
        self.is_referenced = is_referenced

    def ListExercises(
        self, request: catalog_pb2.ListExercisesRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.ListExercisesResponse:
        page = self.catalog.list(
            lambda viewer_id: conv.filter_from_pb(request, viewer_id),
            request.page_size,
            request.page_token,
        )
        return catalog_pb2.ListExercisesResponse(
            exercises=[conv.exercise_to_pb(e) for e in page.exercises],
            next_page_token=page.next_page_token,
            feature_names=features.FEATURE_NAMES,
        )

    def GetExercise(
        self, request: catalog_pb2.GetExerciseRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.GetExerciseResponse:
        return catalog_pb2.GetExerciseResponse(
            exercise=conv.exercise_to_pb(self.catalog.get(request.id))
        )

    def CreateExercise(
        self, request: catalog_pb2.CreateExerciseRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.CreateExerciseResponse:
        if request.exercise.visibility not in catalog_pb2.Visibility.values():
            raise InvalidArgument("exercise.visibility", "unknown value")
        exercise = self.catalog.create(
            conv.spec_from_pb(request.exercise),
            public=request.exercise.visibility == catalog_pb2.VISIBILITY_PUBLIC,
            request_id=request.request_id,
            request_digest=idempotency.request_hash(request.exercise),
        )
        return catalog_pb2.CreateExerciseResponse(exercise=conv.exercise_to_pb(exercise))

    def UpdateExercise(
        self, request: catalog_pb2.UpdateExerciseRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.UpdateExerciseResponse:
        if not request.exercise.id:
            raise InvalidArgument("exercise.id", "is required")
        changes = conv.update_changes(request.exercise, list(request.update_mask.paths))
        exercise = self.catalog.update(request.exercise.id, changes, request.exercise.etag)
        return catalog_pb2.UpdateExerciseResponse(exercise=conv.exercise_to_pb(exercise))

    def DeleteExercise(
        self, request: catalog_pb2.DeleteExerciseRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.DeleteExerciseResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        archived = self.catalog.delete(request.id, request.etag, self.is_referenced)
        return catalog_pb2.DeleteExerciseResponse(archived=archived)
