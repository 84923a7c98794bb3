"""Where a job watch stands: the last ``seq`` seen, duplicates dropped, the end recognized.

The server numbers a job's events and metric points together with a per-job ``seq`` that
is strictly increasing and gap-free, and ``WatchJob(after_seq=n)`` replays everything after
``n``. Reconnecting with the last ``seq`` seen therefore resumes without gaps or duplicates;
:class:`JobCursor` additionally drops any update at or below that ``seq``, so even a server
that replayed too much could not make the caller see one twice.
"""

from __future__ import annotations

from tuna.enums import JobState
from tuna.types import JobEvent, JobUpdate, update_from_proto
from tuna.v1 import job_pb2

__all__ = ["JobCursor"]


class JobCursor:
    """The position of one job watch."""

    def __init__(self, job_id: str, after_seq: int = 0) -> None:
        if after_seq < 0:
            raise ValueError("after_seq must be >= 0")
        self.job_id = job_id
        #: The highest ``seq`` delivered so far (where a reconnect resumes).
        self.after_seq = after_seq
        #: The job's state as of the last event seen (``None`` before any).
        self.state: JobState | None = None

    @property
    def terminal(self) -> bool:
        """Whether the last event seen put the job in a terminal state (it is always the
        job's last event)."""
        return self.state is not None and self.state.is_terminal

    def request(self) -> job_pb2.WatchJobRequest:
        """The request that (re)opens the watch where it stands."""
        return job_pb2.WatchJobRequest(id=self.job_id, after_seq=self.after_seq)

    def accept(self, message: job_pb2.JobUpdate) -> JobUpdate | None:
        """The typed update to deliver, or ``None`` for one already delivered."""
        if message.seq <= self.after_seq:
            return None
        self.after_seq = message.seq
        update = update_from_proto(message)
        if isinstance(update, JobEvent):
            self.state = update.state
        return update

    def finished(self, job: job_pb2.Job) -> bool:
        """Whether ``job`` (fetched after the stream ended) is terminal with nothing left
        to deliver."""
        return JobState(job.state).is_terminal and self.after_seq >= job.last_seq
