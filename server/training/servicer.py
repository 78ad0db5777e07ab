"""TrainingService. Its methods land with the training issue; until then every
call answers UNIMPLEMENTED."""

from repwise.v1 import training_pb2_grpc


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    pass
