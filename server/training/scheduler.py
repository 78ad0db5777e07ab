"""The in-server training worker: trains users who asked (TrainNow) as soon as
it can, and, when the weekly scheduler is on, users who are offline, have new
logs, and whose model is older than the retraining interval."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from server.training.repository import Selection
from server.training.service import BatchTrainer

log = logging.getLogger(__name__)


class TrainingWorker:
    def __init__(
        self,
        training: BatchTrainer,
        *,
        poll_seconds: float,
        weekly: bool,
        retrain_after: timedelta,
        offline_after: timedelta,
    ) -> None:
        self.training = training
        self.poll_seconds = poll_seconds
        self.weekly = weekly
        self.retrain_after = retrain_after
        self.offline_after = offline_after
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="repwise-trainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self.training.wake.set()
        self._thread.join(timeout)

    def run_once(self) -> None:
        """Queued users first, then (weekly) the stale offline ones."""
        self.training.run_batch(Selection(queued_only=True), trigger="train_now")
        if self.weekly:
            now = self.training.now()
            self.training.run_batch(
                Selection(
                    offline_before=now - self.offline_after,
                    trained_before=now - self.retrain_after,
                ),
                trigger="scheduler",
            )

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.training.wake.wait(self.poll_seconds)
            self.training.wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.run_once()
            except Exception:  # the worker must outlive a bad round (e.g. the database restarting)
                log.exception("training round failed")
