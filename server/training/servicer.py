"""TrainingService: translates messages; the work is in service.py."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import numpy as np

from client_sdk import features
from client_sdk.model import SEQUENCE_PARAMETERS, STATE_NAMES
from repwise.v1 import training_pb2, training_pb2_grpc
from server.converters import timestamp
from server.errors import InvalidArgument
from server.training.service import Bundle, TrainingService

STATES = {
    "untrained": training_pb2.TRAINING_STATE_UNTRAINED,
    "queued": training_pb2.TRAINING_STATE_QUEUED,
    "running": training_pb2.TRAINING_STATE_RUNNING,
    "ready": training_pb2.TRAINING_STATE_READY,
    "failed": training_pb2.TRAINING_STATE_FAILED,
}


def _matrix(values: np.ndarray) -> training_pb2.Matrix:
    return training_pb2.Matrix(
        rows=values.shape[0], cols=values.shape[1], values=values.ravel().tolist()
    )


def _instant(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def bundle_to_pb(b: Bundle) -> training_pb2.ModelBundle:
    table = b.table
    w = b.weights
    out = training_pb2.ModelBundle(
        model_version=b.version,
        schema_version=features.SCHEMA_VERSION,
        feature_names=features.FEATURE_NAMES,
        state_names=STATE_NAMES,
        coefficients=_matrix(b.coefficients),
        weights=training_pb2.ScoreWeights(
            routine=w[0], transition=w[1], similarity=w[2], frequency=w[3], recency=w[4]
        ),
        exercise_ids=[table.ids[i] for i in b.visible],
        exercise_names=[table.names[i] for i in b.visible],
        catalog_features=_matrix(table.phi[b.visible]),
        sample_count=b.sample_count,
        metrics=b.metrics,
        is_population_model=b.population,
        sequence_parameters=training_pb2.SequenceParameters(**SEQUENCE_PARAMETERS),
    )
    setattr(out, "lambda", b.lam)  # a Python keyword
    if b.trained_at is not None:
        out.trained_at.CopyFrom(timestamp(b.trained_at))
    stats = b.stats
    if stats is not None:
        out.stats_time.CopyFrom(timestamp(_instant(stats.ref_time)))
        top = stats.decayed.max(initial=0.0)
        for i, exercise_id in enumerate(b.stats_ids):
            stat = out.exercise_stats.add(
                exercise_id=exercise_id,
                frequency=stats.decayed[i] / top if top > 0 else 0.0,
                count=int(stats.count[i]),
                decayed_count=stats.decayed[i],
            )
            stat.last_time.CopyFrom(timestamp(_instant(stats.last_time[i])))
            weight, reps = b.top_sets.get(exercise_id, (None, None))
            if weight is not None:
                stat.last_top_weight_kg = weight
            if reps is not None:
                stat.last_top_reps = reps
        for j in range(len(stats.from_exercise)):
            t = out.transitions.add(
                from_exercise_id=b.stats_ids[stats.from_exercise[j]],
                to_exercise_id=b.stats_ids[stats.to_exercise[j]],
                count=stats.transition_count[j],
                last_index=int(stats.transition_last_index[j]),
            )
            t.last_time.CopyFrom(timestamp(_instant(stats.transition_last_time[j])))
        if stats.last_exercise >= 0:
            out.last_exercise_id = b.stats_ids[stats.last_exercise]
    return out


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, training: TrainingService) -> None:
        self.training = training

    def GetModelBundle(
        self, request: training_pb2.GetModelBundleRequest, context: grpc.ServicerContext
    ) -> training_pb2.GetModelBundleResponse:
        if request.known_version < 0:
            raise InvalidArgument("known_version", "must be 0 (none) or a version you were sent")
        bundle = self.training.bundle(request.known_version)
        if bundle is None:
            return training_pb2.GetModelBundleResponse(not_modified=True)
        return training_pb2.GetModelBundleResponse(bundle=bundle_to_pb(bundle))

    def TrainNow(
        self, request: training_pb2.TrainNowRequest, context: grpc.ServicerContext
    ) -> training_pb2.TrainNowResponse:
        next_allowed = self.training.train_now()
        return training_pb2.TrainNowResponse(
            state=training_pb2.TRAINING_STATE_QUEUED, next_allowed_time=timestamp(next_allowed)
        )

    def GetTrainingStatus(
        self, request: training_pb2.GetTrainingStatusRequest, context: grpc.ServicerContext
    ) -> training_pb2.GetTrainingStatusResponse:
        label, state, model = self.training.status()
        out = training_pb2.GetTrainingStatusResponse(state=STATES[label])
        if model is not None:
            out.model_version = model.version
            out.trained_at.CopyFrom(timestamp(model.trained_at))
            out.sample_count = model.sample_count
            out.metrics.update({k: float(v) for k, v in model.metrics.items()})
        if state is not None and label == "failed":
            out.last_error = state.last_error
        return out

    def RunBatch(
        self, request: training_pb2.RunBatchRequest, context: grpc.ServicerContext
    ) -> training_pb2.RunBatchResponse:
        summary = self.training.run_batch(request.all_users)
        out = training_pb2.RunBatchResponse(
            users_trained=summary.trained,
            users_failed=summary.failed,
            users_skipped=summary.skipped,
        )
        if summary.start_time is not None:
            out.start_time.CopyFrom(timestamp(summary.start_time))
        if summary.end_time is not None:
            out.end_time.CopyFrom(timestamp(summary.end_time))
        return out
