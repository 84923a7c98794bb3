"""Typed builders for a job's spec: the PEFT method, hyperparameters and resources.

Every field left ``None`` stays unset in the request, so the server applies its documented
default (and the job's stored spec, returned by ``jobs.get``, shows the value it chose).
Values are validated by the server, which names the offending field in
:attr:`tuna.InvalidArgument.field_violations` (``spec.method.lora.r``, ...); the builders only
check types, so the SDK never disagrees with the server about what is valid.

>>> LoRA(r=16, alpha=32, target_modules=["q_proj", "v_proj"]).to_proto().lora.r
16
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from tuna.v1 import job_pb2

__all__ = [
    "LoRA",
    "DoRA",
    "IA3",
    "PromptTuning",
    "PrefixTuning",
    "Preference",
    "BitFit",
    "Full",
    "LISA",
    "Method",
    "MethodLike",
    "Hyperparameters",
    "Resources",
    "method_to_proto",
    "build_job_spec",
]

LoraInit = Literal["default", "gaussian", "pissa", "lora_ga"]


def _set_optional(message: object, values: Mapping[str, object]) -> None:
    """Sets the fields of ``message`` whose value is not ``None``."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)


@dataclass(frozen=True)
class LoRA:
    """Low-rank adaptation (``method.type = "lora"``).

    Args:
        r: rank, 1..=1024 (server default 8).
        alpha: scaling numerator, > 0 (default ``2 * r``).
        dropout: 0 <= dropout < 1 (default 0).
        target_modules: module names (``q_proj``, ...) or ``["all-linear"]``; empty means the
            architecture's default.
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        init: PEFT's ``init_lora_weights``: default, gaussian, pissa or lora_ga.
        lr_ratio_b: LoRA+ learning-rate ratio of B to A, >= 1 (default 1).
        chain_every: Chain of LoRA: merge the adapter into the base and restart it every N
            steps; the exported adapter is the whole chain as one LoRA (LoRA only, not DoRA).
    """

    type: ClassVar[str] = "lora"

    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: Sequence[str] = ()
    use_rslora: bool = False
    init: LoraInit | None = None
    lr_ratio_b: float | None = None
    chain_every: int | None = None

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        params = job_pb2.LoraParams()
        _set_optional(
            params,
            {
                "r": self.r,
                "alpha": None if self.alpha is None else float(self.alpha),
                "dropout": None if self.dropout is None else float(self.dropout),
                "target_modules": list(self.target_modules),
                "use_rslora": self.use_rslora or None,
                "init": self.init,
                "lr_ratio_b": None if self.lr_ratio_b is None else float(self.lr_ratio_b),
                "chain_every": self.chain_every,
            },
        )
        return job_pb2.Method(type=self.type, lora=params)


@dataclass(frozen=True)
class DoRA(LoRA):
    """Weight-decomposed low-rank adaptation (``method.type = "dora"``): LoRA's parameters
    plus a learned magnitude vector. ``init`` pissa and lora_ga do not combine with DoRA."""

    type: ClassVar[str] = "dora"


@dataclass(frozen=True)
class IA3:
    """(IA)^3: learned rescaling vectors (``method.type = "ia3"``).

    Args:
        target_modules: empty means the architecture's default (k_proj, v_proj, down_proj on
            Llama).
    """

    type: ClassVar[str] = "ia3"

    target_modules: Sequence[str] = ()

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        return job_pb2.Method(
            type=self.type, ia3=job_pb2.Ia3Params(target_modules=list(self.target_modules))
        )


@dataclass(frozen=True)
class PromptTuning:
    """Soft prompt tuning (``method.type = "prompt_tuning"``).

    Args:
        num_virtual_tokens: trainable virtual tokens, 1..=512 (default 20).
    """

    type: ClassVar[str] = "prompt_tuning"

    num_virtual_tokens: int | None = None

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        params = job_pb2.PromptTuningParams()
        _set_optional(params, {"num_virtual_tokens": self.num_virtual_tokens})
        return job_pb2.Method(type=self.type, prompt_tuning=params)


@dataclass(frozen=True)
class PrefixTuning:
    """Prefix tuning, P-tuning v2 (``method.type = "prefix_tuning"``): trainable keys and values
    in every attention layer, exported as PEFT's ``PREFIX_TUNING``.

    Args:
        num_virtual_tokens: prefix length, 1..=512 (default 20).
    """

    type: ClassVar[str] = "prefix_tuning"

    num_virtual_tokens: int | None = None

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        params = job_pb2.PrefixTuningParams()
        _set_optional(params, {"num_virtual_tokens": self.num_virtual_tokens})
        return job_pb2.Method(type=self.type, prefix_tuning=params)


@dataclass(frozen=True)
class BitFit:
    """Bias-only fine-tuning (``method.type = "bitfit"``); no parameters."""

    type: ClassVar[str] = "bitfit"

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        return job_pb2.Method(type=self.type)


@dataclass(frozen=True)
class Full:
    """Full fine-tuning of every weight (``method.type = "full"``); no parameters."""

    type: ClassVar[str] = "full"

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        return job_pb2.Method(type=self.type)


@dataclass(frozen=True)
class LISA:
    """LISA (``method.type = "lisa"``): full fine-tuning of the embeddings, the head and
    ``layers`` decoder layers drawn at random every ``interval`` steps; optimizer state for
    the active layers only. ``causal_lm`` jobs only.

    Args:
        layers: decoder layers trained at a time, 1..=1024, at most the model's (default 2).
        interval: steps between draws, 1..=1000000 (default 20).
    """

    layers: int | None = None
    interval: int | None = None
    type: ClassVar[str] = "lisa"

    def to_proto(self) -> job_pb2.Method:
        """The ``tuna.v1.Method`` message."""
        params = job_pb2.LisaParams()
        _set_optional(params, {"layers": self.layers, "interval": self.interval})
        return job_pb2.Method(type=self.type, lisa=params)


Method = LoRA | DoRA | IA3 | PromptTuning | PrefixTuning | BitFit | Full | LISA
#: What ``jobs.create(method=...)`` accepts: a helper, a method name with server defaults
#: (``"lora"``, ``"ia3"``, ...) or a ``tuna.v1.Method`` message.
MethodLike = Method | str | job_pb2.Method


#: The method of ``jobs.create`` when none is given: LoRA with the server's defaults.
DEFAULT_METHOD = LoRA()


def method_to_proto(method: MethodLike) -> job_pb2.Method:
    """The ``tuna.v1.Method`` for any :data:`MethodLike`."""
    if isinstance(method, job_pb2.Method):
        return method
    if isinstance(method, str):
        return job_pb2.Method(type=method)
    if isinstance(method, (LoRA, IA3, PromptTuning, PrefixTuning, BitFit, Full, LISA)):
        return method.to_proto()
    raise TypeError(
        "method must be LoRA, DoRA, IA3, PromptTuning, PrefixTuning, BitFit, Full, LISA, a method "
        "name or a "
        f"tuna.v1.Method, not {type(method).__name__}"
    )


@dataclass(frozen=True)
class Hyperparameters:
    """Training hyperparameters; ``None`` means the server's default (in brackets).

    Args:
        learning_rate: > 0 and <= 1 [2e-4]; for ``dog`` and ``dadapt_adam`` the multiplier of
            the adapted step, > 0 and <= 10 [1]. Not set with ``auto_learning_rate``.
        epochs: passes over the training file, 1..=1000 [3]; ignored when ``max_steps`` is set.
        max_steps: optimizer steps; bounds training instead of epochs.
        batch_size: 1..=4096 [8].
        grad_accumulation: micro-batches per optimizer step, 1..=1024 [1].
        warmup_steps: linear warmup, >= 0 [0].
        schedule: ``cosine`` [default], ``linear``, ``constant``, ``cosine_with_min_lr``,
            ``wsd`` (warmup-stable-decay) or ``inverse_sqrt``.
        weight_decay: >= 0 [0].
        max_seq_len: 1..=131072 [512].
        seed: seed of every random choice [0].
        eval_every: evaluate every N steps, 0 = only at the end [0].
        checkpoint_every: checkpoint every N steps, 0 = never [100].
        max_grad_norm: global-norm clipping, > 0 [1.0].
        optimizer: ``adamw`` [default], ``lion``, ``adafactor``, ``dog``, ``dadapt_adam`` or
            ``mezo`` (zeroth order: two forward passes per step, no backward).
        auto_learning_rate: the optimizer chooses the step size (``dog`` unless
            ``dadapt_adam`` is named); each step's reported lr is the step it chose [False].
        min_lr_ratio: final lr over the peak for ``cosine_with_min_lr`` [0.1] and ``wsd`` [0].
        decay_fraction: share of the steps ``wsd`` decays over, in (0, 1] [0.2].
        decay_shape: ``wsd``'s decay: ``linear``, ``cosine`` or ``1-sqrt`` [default].
        prompt_loss_weight: weight of prompt tokens in the loss, in [0, 1]; 0 trains on the
            completion only, 1 on the whole sequence [0].
        zo_epsilon: ``mezo``'s perturbation scale, in (0, 1] [1e-3].
        gradient_checkpointing: recompute each decoder layer in the backward pass instead of
            keeping its activations: much less memory for long sequences, about one more
            forward pass of time (``causal_lm`` jobs) [False].
    """

    learning_rate: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    grad_accumulation: int | None = None
    warmup_steps: int | None = None
    schedule: (
        Literal["cosine", "linear", "constant", "cosine_with_min_lr", "wsd", "inverse_sqrt"]
        | None
    ) = None
    weight_decay: float | None = None
    max_seq_len: int | None = None
    seed: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    max_grad_norm: float | None = None
    optimizer: Literal["adamw", "lion", "adafactor", "dog", "dadapt_adam", "mezo"] | None = None
    auto_learning_rate: bool | None = None
    min_lr_ratio: float | None = None
    decay_fraction: float | None = None
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = None
    prompt_loss_weight: float | None = None
    zo_epsilon: float | None = None
    gradient_checkpointing: bool | None = None

    _FLOATS: ClassVar[frozenset[str]] = frozenset(
        {
            "learning_rate",
            "weight_decay",
            "max_grad_norm",
            "min_lr_ratio",
            "decay_fraction",
            "prompt_loss_weight",
            "zo_epsilon",
        }
    )

    def to_proto(self) -> job_pb2.Hyperparameters:
        """The ``tuna.v1.Hyperparameters`` message."""
        message = job_pb2.Hyperparameters()
        values: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in self._FLOATS:
                value = float(value)
            values[f.name] = value
        _set_optional(message, values)
        return message


@dataclass(frozen=True)
class Resources:
    """What a worker needs to run the job.

    Args:
        device: ``cpu``, ``cuda`` or ``any`` (default).
        min_memory_bytes: minimum device memory of the worker (default 0).
        dtype: the base weights' dtype on the worker: ``auto`` (default: bf16 on cuda, f32 on
            cpu and for methods that train base weights), ``f32``, ``bf16`` or ``f16``.
    """

    device: Literal["cpu", "cuda", "any"] | None = None
    min_memory_bytes: int | None = None
    dtype: Literal["auto", "f32", "bf16", "f16"] | None = None

    def to_proto(self) -> job_pb2.Resources:
        """The ``tuna.v1.Resources`` message."""
        message = job_pb2.Resources()
        _set_optional(
            message,
            {
                "device": self.device,
                "min_memory_bytes": self.min_memory_bytes,
                "dtype": self.dtype,
            },
        )
        return message


@dataclass(frozen=True)
class Preference:
    """The loss of a ``task="preference"`` job (``{"prompt"|"messages","chosen","rejected"}`` data).

    Args:
        loss: ``dpo`` (default), ``ipo`` or ``orpo``. DPO and IPO compare with the base model
            with the adapter switched off, so they need an adapter (not full, LISA, BitFit).
        beta: DPO/IPO's beta, ORPO's lambda; (0, 10], default 0.1.
        label_smoothing: DPO only: the share of labels assumed flipped, [0, 0.5).
    """

    loss: Literal["dpo", "ipo", "orpo"] | None = None
    beta: float | None = None
    label_smoothing: float | None = None

    def to_proto(self) -> job_pb2.Preference:
        """The ``tuna.v1.Preference`` message."""
        message = job_pb2.Preference()
        _set_optional(
            message,
            {
                "loss": self.loss,
                "beta": None if self.beta is None else float(self.beta),
                "label_smoothing": None
                if self.label_smoothing is None
                else float(self.label_smoothing),
            },
        )
        return message


@dataclass(frozen=True)
class Merge:
    """What a merge job (``task="merge"``) merges: the LoRA adapters of finished decoder jobs
    on one base model, merged on their deltas and re-factored as one LoRA adapter.

    Args:
        sources: 2..=16 ids (or :class:`~tuna.Job` objects) of SUCCEEDED LoRA jobs.
        method: ``average`` (default), ``model_stock``, ``task_arithmetic`` or ``ties``.
        weights: one per source, for ``task_arithmetic`` and ``ties`` (default 1 each).
        rank: the output rank; ``None`` = the sum of the sources' ranks (exact except ties).
        density: ``ties`` only: the share of each delta's entries kept, (0, 1], default 0.2.
    """

    sources: Sequence[str]
    method: Literal["average", "model_stock", "task_arithmetic", "ties"] | None = None
    weights: Sequence[float] | None = None
    rank: int | None = None
    density: float | None = None

    def to_proto(self) -> job_pb2.Merge:
        """The ``tuna.v1.Merge`` message."""
        message = job_pb2.Merge(sources=[getattr(s, "id", s) for s in self.sources])
        if self.method is not None:
            message.method = self.method
        if self.weights is not None:
            message.weights.extend(float(w) for w in self.weights)
        if self.rank is not None:
            message.rank = self.rank
        if self.density is not None:
            message.density = float(self.density)
        return message


def build_merge_spec(
    *,
    model: str,
    merge: Merge | job_pb2.Merge,
    validation_file: str | None = None,
    export_merged: Literal["f32", "bf16"] | None = None,
    hyperparameters: Hyperparameters | job_pb2.Hyperparameters | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> job_pb2.JobSpec:
    """Assembles the ``tuna.v1.JobSpec`` of a merge job (no training file, no method)."""
    spec = job_pb2.JobSpec(base_model=model, task="merge")
    spec.merge.CopyFrom(merge if isinstance(merge, job_pb2.Merge) else merge.to_proto())
    _set_common(
        spec,
        validation_file=validation_file,
        hyperparameters=hyperparameters,
        export_merged=export_merged,
        priority=priority,
        max_attempts=max_attempts,
        labels=labels,
    )
    return spec


def _set_common(
    spec: job_pb2.JobSpec,
    *,
    validation_file: str | None,
    hyperparameters: Hyperparameters | job_pb2.Hyperparameters | None,
    export_merged: Literal["f32", "bf16"] | None,
    priority: int | None,
    max_attempts: int | None,
    labels: Mapping[str, str] | None,
) -> None:
    """The fields a training job and a merge job set alike."""
    if validation_file:
        spec.validation_file = validation_file
    if hyperparameters is not None:
        spec.hyperparameters.CopyFrom(
            hyperparameters
            if isinstance(hyperparameters, job_pb2.Hyperparameters)
            else hyperparameters.to_proto()
        )
    if export_merged is not None:
        spec.export_merged = True
        spec.merged_dtype = export_merged
    if priority is not None:
        spec.priority = priority
    if max_attempts is not None:
        spec.max_attempts = max_attempts
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"labels must map str to str, got {key!r}: {value!r}")
        spec.labels[key] = value


def build_job_spec(
    *,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    method: MethodLike = DEFAULT_METHOD,
    hyperparameters: Hyperparameters | job_pb2.Hyperparameters | None = None,
    resources: Resources | job_pb2.Resources | None = None,
    task: str | None = None,
    preference: Preference | job_pb2.Preference | None = None,
    export_merged: Literal["f32", "bf16"] | None = None,
    replicas: int | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> job_pb2.JobSpec:
    """Assembles a ``tuna.v1.JobSpec`` from the typed pieces (ids already resolved)."""
    spec = job_pb2.JobSpec(base_model=model, training_file=training_file)
    spec.method.CopyFrom(method_to_proto(method))
    if resources is not None:
        spec.resources.CopyFrom(
            resources if isinstance(resources, job_pb2.Resources) else resources.to_proto()
        )
    if task:
        spec.task = task
    if replicas is not None:
        spec.replicas = replicas
    if preference is not None:
        spec.preference.CopyFrom(
            preference if isinstance(preference, job_pb2.Preference) else preference.to_proto()
        )
    _set_common(
        spec,
        validation_file=validation_file,
        hyperparameters=hyperparameters,
        export_merged=export_merged,
        priority=priority,
        max_attempts=max_attempts,
        labels=labels,
    )
    return spec
