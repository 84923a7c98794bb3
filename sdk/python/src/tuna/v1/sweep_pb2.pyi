import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tuna.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_STATE_UNSPECIFIED: _ClassVar[SweepState]
    SWEEP_STATE_RUNNING: _ClassVar[SweepState]
    SWEEP_STATE_SUCCEEDED: _ClassVar[SweepState]
    SWEEP_STATE_FAILED: _ClassVar[SweepState]
    SWEEP_STATE_CANCELLED: _ClassVar[SweepState]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_MINIMIZE: _ClassVar[Direction]
    DIRECTION_MAXIMIZE: _ClassVar[Direction]
SWEEP_STATE_UNSPECIFIED: SweepState
SWEEP_STATE_RUNNING: SweepState
SWEEP_STATE_SUCCEEDED: SweepState
SWEEP_STATE_FAILED: SweepState
SWEEP_STATE_CANCELLED: SweepState
DIRECTION_UNSPECIFIED: Direction
DIRECTION_MINIMIZE: Direction
DIRECTION_MAXIMIZE: Direction

class Parameter(_message.Message):
    __slots__ = ("name", "scale", "min", "max", "integer", "rounding", "choices", "center", "center_choice", "search_scale", "condition")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    CENTER_CHOICE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SCALE_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: str
    min: float
    max: float
    integer: bool
    rounding: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    center: float
    center_choice: str
    search_scale: float
    condition: Condition
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., integer: _Optional[bool] = ..., rounding: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ..., center: _Optional[float] = ..., center_choice: _Optional[str] = ..., search_scale: _Optional[float] = ..., condition: _Optional[_Union[Condition, _Mapping]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("parent", "values")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, parent: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class Objective(_message.Message):
    __slots__ = ("metric", "direction")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    metric: str
    direction: Direction
    def __init__(self, metric: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ...) -> None: ...

class AshaOptions(_message.Message):
    __slots__ = ("eta", "min_resource", "max_resource", "grace", "variant")
    ETA_FIELD_NUMBER: _ClassVar[int]
    MIN_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    eta: float
    min_resource: float
    max_resource: float
    grace: int
    variant: str
    def __init__(self, eta: _Optional[float] = ..., min_resource: _Optional[float] = ..., max_resource: _Optional[float] = ..., grace: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...

class CarbsOptions(_message.Message):
    __slots__ = ("num_random_samples", "search_radius", "max_suggestion_cost", "suggest_center_first")
    NUM_RANDOM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_RADIUS_FIELD_NUMBER: _ClassVar[int]
    MAX_SUGGESTION_COST_FIELD_NUMBER: _ClassVar[int]
    SUGGEST_CENTER_FIRST_FIELD_NUMBER: _ClassVar[int]
    num_random_samples: int
    search_radius: float
    max_suggestion_cost: float
    suggest_center_first: bool
    def __init__(self, num_random_samples: _Optional[int] = ..., search_radius: _Optional[float] = ..., max_suggestion_cost: _Optional[float] = ..., suggest_center_first: _Optional[bool] = ...) -> None: ...

class Algorithm(_message.Message):
    __slots__ = ("name", "asha", "carbs", "grid_levels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ASHA_FIELD_NUMBER: _ClassVar[int]
    CARBS_FIELD_NUMBER: _ClassVar[int]
    GRID_LEVELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    asha: AshaOptions
    carbs: CarbsOptions
    grid_levels: int
    def __init__(self, name: _Optional[str] = ..., asha: _Optional[_Union[AshaOptions, _Mapping]] = ..., carbs: _Optional[_Union[CarbsOptions, _Mapping]] = ..., grid_levels: _Optional[int] = ...) -> None: ...

class SweepSpec(_message.Message):
    __slots__ = ("parameters", "objective", "cost_metric", "algorithm", "max_trials", "max_total_cost", "parallelism", "template", "seed", "final_merge")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    COST_METRIC_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FINAL_MERGE_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[Parameter]
    objective: Objective
    cost_metric: str
    algorithm: Algorithm
    max_trials: int
    max_total_cost: float
    parallelism: int
    template: _job_pb2.JobSpec
    seed: int
    final_merge: FinalMerge
    def __init__(self, parameters: _Optional[_Iterable[_Union[Parameter, _Mapping]]] = ..., objective: _Optional[_Union[Objective, _Mapping]] = ..., cost_metric: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, _Mapping]] = ..., max_trials: _Optional[int] = ..., max_total_cost: _Optional[float] = ..., parallelism: _Optional[int] = ..., template: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., seed: _Optional[int] = ..., final_merge: _Optional[_Union[FinalMerge, _Mapping]] = ...) -> None: ...

class FinalMerge(_message.Message):
    __slots__ = ("top_k", "method", "rank", "density", "export_merged")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPORT_MERGED_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    method: str
    rank: int
    density: float
    export_merged: bool
    def __init__(self, top_k: _Optional[int] = ..., method: _Optional[str] = ..., rank: _Optional[int] = ..., density: _Optional[float] = ..., export_merged: _Optional[bool] = ...) -> None: ...

class Trial(_message.Message):
    __slots__ = ("trial", "run", "job_id", "job_state", "params_json", "budget", "observed", "objective", "cost", "failed", "stopped_early", "steps", "last_value")
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_EARLY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_VALUE_FIELD_NUMBER: _ClassVar[int]
    trial: int
    run: int
    job_id: str
    job_state: _job_pb2.JobState
    params_json: str
    budget: float
    observed: bool
    objective: float
    cost: float
    failed: bool
    stopped_early: bool
    steps: int
    last_value: float
    def __init__(self, trial: _Optional[int] = ..., run: _Optional[int] = ..., job_id: _Optional[str] = ..., job_state: _Optional[_Union[_job_pb2.JobState, str]] = ..., params_json: _Optional[str] = ..., budget: _Optional[float] = ..., observed: _Optional[bool] = ..., objective: _Optional[float] = ..., cost: _Optional[float] = ..., failed: _Optional[bool] = ..., stopped_early: _Optional[bool] = ..., steps: _Optional[int] = ..., last_value: _Optional[float] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("id", "state", "spec", "message", "trials_created", "trials_finished", "trials_running", "total_cost", "best_trial", "pareto_front", "created_at", "updated_at", "finished_at", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_CREATED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TRIALS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    PARETO_FRONT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: SweepState
    spec: SweepSpec
    message: str
    trials_created: int
    trials_finished: int
    trials_running: int
    total_cost: float
    best_trial: Trial
    pareto_front: _containers.RepeatedCompositeFieldContainer[Trial]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    request_id: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[SweepState, str]] = ..., spec: _Optional[_Union[SweepSpec, _Mapping]] = ..., message: _Optional[str] = ..., trials_created: _Optional[int] = ..., trials_finished: _Optional[int] = ..., trials_running: _Optional[int] = ..., total_cost: _Optional[float] = ..., best_trial: _Optional[_Union[Trial, _Mapping]] = ..., pareto_front: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateSweepRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: SweepSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[SweepSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSweepsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSweepsResponse(_message.Message):
    __slots__ = ("sweeps", "next_page_token")
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[Sweep]
    next_page_token: str
    def __init__(self, sweeps: _Optional[_Iterable[_Union[Sweep, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTrialsRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class ListTrialsResponse(_message.Message):
    __slots__ = ("trials",)
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    def __init__(self, trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ...) -> None: ...

class CancelSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchSweepRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SweepSnapshot(_message.Message):
    __slots__ = ("sweep", "trials")
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    sweep: Sweep
    trials: _containers.RepeatedCompositeFieldContainer[Trial]
    def __init__(self, sweep: _Optional[_Union[Sweep, _Mapping]] = ..., trials: _Optional[_Iterable[_Union[Trial, _Mapping]]] = ...) -> None: ...
