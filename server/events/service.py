"""Reading a user's materialized summary (GetSummary)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.orm import Session

from server.auth.service import AuthService
from server.db import Database
from server.events import repository as repo
from server.events import summary


@dataclass(frozen=True)
class SummaryView:
    summary: summary.Summary  # its activity as of now
    events_applied: int
    applied_change_seq: int
    latest_change_seq: int
    updated_at: datetime | None  # None before the first event was applied


class SummaryService:
    def __init__(self, db: Database, auth: AuthService, now: Callable[[], datetime]) -> None:
        self.db = db
        self.auth = auth
        self.now = now

    def get(self) -> tuple[SummaryView, str]:
        """The caller's summary as materialized, its streaks aged to now, with how fresh it
        is; and the caller's preferred unit. A user no event has reached yet gets zeros."""

        def work(s: Session) -> tuple[SummaryView, str]:
            user = self.auth.current_user(s)
            now = self.now()
            latest = repo.latest_change_seq(s, user.id)
            row = repo.metrics(s, user.id)
            if row is None:
                empty = summary.empty(user.time_zone, user.weekly_workout_goal, now)
                return SummaryView(empty, 0, 0, latest, None), user.preferred_unit
            stored = repo.summary_of(row)
            view = SummaryView(
                summary=replace(stored, activity=summary.activity_as_of(stored, now)),
                events_applied=row.events_applied,
                applied_change_seq=row.applied_change_seq,
                latest_change_seq=latest,
                updated_at=row.updated_at,
            )
            return view, user.preferred_unit

        return self.db.run(work, write=False)
