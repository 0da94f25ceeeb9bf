"""The run schema: every option, its default and its allowed values, in one place.

A config is read from YAML, patched with ``--set dotted.key=value`` overrides and validated once
by pydantic. Any problem becomes a :class:`UserError` naming the key path and what is allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tunelab.errors import UserError
from tunelab.rates import HIGHEST_RATE, default_rate, rate_factor

log = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_true_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's true is a bool, which pydantic would take as the number 1 (batch_size: true).
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _wants_a_number(field.annotation):
            raise ValueError(f"expected a number, not {str(value).lower()}")
        return value


def _wants_a_number(annotation: Any) -> bool:
    """Whether a field takes an int or float and not a bool."""
    import typing

    kinds = set(typing.get_args(annotation)) | {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


class ModelConfig(Section):
    source: str = Field(
        "minilm",
        description="minilm | cnn | digits-cnn | a local Hugging Face folder | package.module:function",
    )
    trust_remote_code: bool = False
    pooling: Literal["auto", "head", "mean", "cls"] = Field(
        "auto",
        description="text: how token vectors become one; auto follows a sentence-transformers model's own "
        "pooling config (mean for all-MiniLM-L6-v2), else transformers' own head",
    )
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override every dropout rate")
    gradient_checkpointing: bool = False


class PrepareConfig(Section):
    """Text clean-up applied the same way to every split; what each step removed is recorded."""

    unicode_normalize: Literal["NFC", "NFKC"] | None = Field("NFC", description="Unicode normal form, or null")
    clean_whitespace: bool = Field(True, description="trim and collapse runs of whitespace")
    lowercase: bool = False
    drop_empty: bool = Field(False, description="drop rows whose text is empty instead of stopping")
    deduplicate: bool = Field(False, description="keep the first of rows with the same text (after clean-up)")


class AugmentConfig(Section):
    """Random changes to training images, drawn afresh each epoch; validation and test stay as they are."""

    horizontal_flip: bool = Field(False, description="mirror left to right with probability 0.5")
    random_crop: float | None = Field(
        None, gt=0.0, le=1.0, description="random resized crop: the smallest fraction of the image area kept"
    )
    color_jitter: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="brightness, contrast and saturation each scaled by a random factor in [1-x, 1+x]",
    )

    @property
    def enabled(self) -> bool:
        return self.horizontal_flip or self.random_crop is not None or self.color_jitter > 0


class DataConfig(Section):
    train: str = Field(..., description="a csv/tsv/jsonl/parquet file, an image folder, or 'digits'")
    validation: str | None = None
    test: str | None = None
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    image_column: str | None = Field(
        None, description="a table column of image paths (relative to the table's folder), for regression on images"
    )
    group_column: str | None = Field(
        None, description="a column naming each row's group (e.g. dialect, region): per-group metrics and the gap"
    )
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="label as written -> a phrase naming it (0: negative); lets the audit score the base model "
        "zero-shot when labels are numbers",
    )
    max_length: int = Field(128, ge=8, le=8192)
    # Token classification (task: token-classification) only.
    tag_column: int = Field(-1, description="CoNLL files: the column holding the tag (0 is the token; -1 the last)")
    tag_scheme: Literal["auto", "iob1", "iob2", "bioes"] = Field(
        "auto", description="the tags' scheme; auto detects it per file (IOB2 is used inside)"
    )
    tokens_column: str = Field("tokens", description="JSONL/Parquet: the column holding each sentence's tokens")
    tags_column: str = Field("tags", description="JSONL/Parquet: the column holding each sentence's tags")
    label_all_subtokens: bool = Field(
        False, description="the loss also learns from a word's later sub-tokens (scores stay per word)"
    )
    cache: bool = Field(
        True, description="keep tokenised text on disk (keyed by tokenizer and data) so later runs skip tokenising"
    )
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=4, le=2048)
    # Built-in digits only: which classes make the task and how many training images per class.
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    digits_classes: list[int] = Field(default_factory=lambda: list(range(10)))
    digits_train_per_class: int | None = Field(None, ge=1)
    digits_validation_per_class: int = Field(20, ge=1)
    digits_pretext: Literal["none", "dihedral"] = Field(
        "none", description="dihedral: also label each image's rotation/flip (8x the classes), a pretext task"
    )

    @field_validator("label_names", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value: Any) -> Any:
        # YAML reads `0: negative` with an integer key; labels are compared as text everywhere.
        return {str(key): name for key, name in value.items()} if isinstance(value, dict) else value

    @field_validator("tag_column")
    @classmethod
    def _tag_is_not_the_token(cls, value: int) -> int:
        if value == 0:
            raise ValueError("column 0 holds the token; the tag column is 1 or later, or -1 (the last)")
        return value

    @model_validator(mode="after")
    def _digits_classes_valid(self) -> DataConfig:
        bad = [c for c in self.digits_classes if not 0 <= c <= 9]
        if bad or len(set(self.digits_classes)) < 2:
            raise ValueError("digits_classes needs two or more distinct digits in 0..9")
        return self


def strategies() -> dict:
    """The registered strategies by name (imported here, once the schema is defined: they use it)."""
    from tunelab.strategies import STRATEGIES

    return STRATEGIES


FORGETTING_METHODS = ("ewc", "l2sp", "lwf", "replay")


def run_parts(name: str) -> tuple[str, list[str]]:
    """``full+ewc+replay`` -> ("full", ["ewc", "replay"]); ValueError naming what is unknown."""
    strategy, *methods = [part.strip() for part in name.split("+")]
    known_strategy(strategy)
    unknown = [method for method in methods if method not in FORGETTING_METHODS]
    if unknown:
        raise ValueError(
            f"'{unknown[0]}' (in {name}) is not a forgetting method; choose from {', '.join(FORGETTING_METHODS)}"
        )
    return strategy, methods


def known_strategy(name: str) -> str:
    """``name``, or ValueError listing the registered strategies."""
    if name not in strategies():
        raise ValueError(f"'{name}' is not a strategy; choose from {', '.join(strategies())}")
    return name


def wraps_with_peft(strategy: str) -> bool:
    return strategy in strategies() and strategies()[strategy].peft


# Per-layer learning rates need the model's own layout, which PEFT wraps: unset for PEFT methods.
PER_LAYER_RATES_UNSET = {"layer_lr_decay": None, "head_lr": None, "lr_groups": {}}


class ProgressiveConfig(Section):
    every: int = Field(1, ge=1, description="unfreeze one more group every this many epochs or steps")
    unit: Literal["epoch", "step"] = "epoch"
    start_blocks: int = Field(0, ge=0, description="blocks trainable from the start, besides the head")
    max_blocks: int | None = Field(None, ge=0, description="stop unfreezing at this many blocks (null: all)")
    include_embeddings: bool = Field(True, description="unfreeze what precedes the blocks once all blocks train")
    groups: list[list[str]] | None = Field(
        None, description="explicit unfreeze order: lists of name patterns, the first unfrozen first"
    )


class LoraSection(Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="module names; detected for common models")
    use_dora: bool = False
    use_rslora: bool = False


class AdapterSection(Section):
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer", description="houlsby: after attention and feed-forward; pfeiffer: after feed-forward only"
    )
    reduction_factor: int = Field(16, ge=1, description="bottleneck width = hidden size / reduction_factor")
    activation: Literal["relu", "gelu", "tanh"] = "relu"


class VirtualTokensSection(Section):
    num_virtual_tokens: int = Field(20, ge=1, le=512)


class Ia3Section(Section):
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None


class StrategyConfig(Section):
    # Sections of plugin strategies (``strategy.<name>:``) are extra keys, checked by their strategy.
    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    name: str = Field("full", description="a registered strategy: full, partial, progressive, ..., or a plugin's")
    freeze: list[str] = Field(default_factory=list, description="module-name glob patterns")
    train_last_n_blocks: int | None = Field(None, ge=0)
    freeze_norm_stats: bool = False
    # Discriminative learning rates; they combine with every strategy but the PEFT methods.
    layer_lr_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="lr factor per block from the head down (discriminative: 0.8 if unset)"
    )
    head_lr: float | None = Field(
        None, gt=0.0, le=HIGHEST_RATE, description="learning rate of the head (default: optim.lr)"
    )
    lr_groups: dict[str, float] = Field(
        default_factory=dict, description="explicit rates: parameter-name glob pattern -> lr (first match wins)"
    )
    progressive: ProgressiveConfig = Field(default_factory=ProgressiveConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    prefix: VirtualTokensSection = Field(default_factory=VirtualTokensSection)
    prompt: VirtualTokensSection = Field(default_factory=VirtualTokensSection)
    ia3: Ia3Section = Field(default_factory=Ia3Section)

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return known_strategy(value)

    @model_validator(mode="after")
    def _plugin_sections(self) -> StrategyConfig:
        for key, value in list((self.__pydantic_extra__ or {}).items()):
            section = getattr(strategies().get(key), "section", None)
            if section is None:
                allowed = ", ".join([*type(self).model_fields, *(n for n, s in strategies().items() if s.section)])
                raise ValueError(f"unknown key 'strategy.{key}'; allowed here: {allowed}")
            if not isinstance(value, section):
                try:
                    self.__pydantic_extra__[key] = section.model_validate(value or {})
                except ValidationError as error:
                    raise ValueError(_plugin_error(error, key, section)) from None
        return self

    def section(self, name: str):
        """A plugin strategy's own settings (its ``section``'s defaults when the config gives none)."""
        extra = self.__pydantic_extra__ or {}
        return extra[name] if name in extra else strategies()[name].section()

    @model_validator(mode="after")
    def _partial_needs_a_rule(self) -> StrategyConfig:
        if self.name == "partial" and not self.freeze and self.train_last_n_blocks is None:
            raise ValueError("partial needs strategy.freeze patterns or strategy.train_last_n_blocks")
        return self

    @model_validator(mode="after")
    def _rates_need_the_model_layout(self) -> StrategyConfig:
        if wraps_with_peft(self.name):
            given = [key for key, unset in PER_LAYER_RATES_UNSET.items() if getattr(self, key) != unset]
            if given:
                raise ValueError(
                    f"{given[0]} applies to full, partial, progressive, discriminative, bitfit and adapter, "
                    f"not {self.name}"
                )
        return self

    @field_validator("lr_groups")
    @classmethod
    def _rates_positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [pattern for pattern, rate in value.items() if not 0.0 < rate <= HIGHEST_RATE]
        if bad:
            raise ValueError(f"each rate must be in (0, 10]; not so for '{bad[0]}'")
        return value


class OptimConfig(Section):
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = "adamw"
    lr: float | Literal["auto"] | None = Field(
        None,
        description="the learning rate; auto: a range test on this run's model, strategy and data picks it; "
        "unset: 5e-5 at a batch of 8, times the square root of batch/8, times the strategy's factor "
        "(1e-4 for full fine-tuning at the default batch of 32, 1e-3 for LoRA)",
    )
    lr_find_start: float = Field(1e-7, gt=0.0, description="the range test's first rate")
    lr_find_end: float = Field(10.0, gt=0.0, description="the range test's last rate")
    lr_find_steps: int = Field(100, ge=10, le=10_000, description="the range test's steps (one batch each)")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False

    @field_validator("lr")
    @classmethod
    def _rate_in_range(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0.0 < value <= HIGHEST_RATE:
            raise ValueError("must be in (0, 10], or auto")
        return value

    @model_validator(mode="after")
    def _range_rises(self) -> OptimConfig:
        if self.lr_find_start >= self.lr_find_end:
            raise ValueError("lr_find_start must be below lr_find_end")
        return self


class ScheduleConfig(Section):
    name: Literal["constant", "linear", "cosine", "exponential", "one-cycle"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    gamma: float = Field(0.999, gt=0.0, le=1.0, description="per-step decay for exponential")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="floor for cosine, as lr fraction")


class EarlyStoppingConfig(Section):
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


MAX_WORKERS = 1024  # threads or dataloader processes in one run


class TrainConfig(Section):
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(
        None, ge=1, le=10**9, description="optimizer steps to train, in place of epochs (a billion at most)"
    )
    batch_size: int = Field(32, ge=1, description="global batch, split over processes")
    eval_batch_size: int = Field(64, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: Literal["epoch"] | int = "epoch"
    log_every: int = Field(10, ge=1)
    metric: str | None = Field(
        None, description="validation metric for the best model and early stopping (default: the task's own)"
    )
    early_stopping: EarlyStoppingConfig | None = None
    load_best_at_end: bool = True
    checkpoint_every: Literal["epoch"] | int | None = Field(
        "epoch", description="save a resumable checkpoint each epoch, every N steps, or never (null)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept (the best one is kept as well)")
    max_bad_steps: int = Field(10, ge=1, description="stop after this many non-finite steps in a row")
    nonfinite_check: Literal["auto", "host", "device"] = Field(
        "auto",
        description="how a step with inf/NaN gradients is skipped. host: the gradient norm is read every step "
        "(skipped steps leave the schedule where it was); device: the fused optimizer skips it with no per-step "
        "read (counted at log intervals, it keeps its place in the schedule); auto: device on a GPU",
    )
    class_weights: Literal["balanced"] | None = Field(
        None, description="balanced: weight the loss by inverse class frequency in train (imbalanced data)"
    )
    quantization_aware: bool = Field(
        False, description="train with int8 fake quantization and save the int8 model (CNNs, strategy full)"
    )
    group_by_length: bool = Field(
        True, description="text: batch rows of like length together (less padding; batches stay random)"
    )
    dataloader_workers: Literal["auto"] | int = Field(
        "auto", description="DataLoader worker processes; auto: none on a CPU, up to 4 beside a GPU"
    )
    compile: bool = Field(False, description="torch.compile the model (slower start, faster steps on GPUs)")
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="channels-last memory for convolutional models; auto: on a GPU only"
    )
    threads: Literal["auto"] | int = Field(
        "auto", description="CPU threads per process; auto: the machine's cores shared among the processes"
    )
    resample: Literal["oversample", "undersample"] | None = Field(
        None,
        description="balance train by repeating rows of smaller classes (oversample) or dropping rows of "
        "larger ones (undersample); validation and test stay as they are",
    )

    @model_validator(mode="after")
    def _one_imbalance_remedy(self) -> TrainConfig:
        if self.class_weights and self.resample:
            raise ValueError("class_weights and resample both correct class imbalance; choose one")
        return self

    @field_validator("dataloader_workers", "threads")
    @classmethod
    def _auto_or_count(cls, value: str | int, info: ValidationInfo) -> str | int:
        least, unit = {"dataloader_workers": (0, "worker processes"), "threads": (1, "threads")}[info.field_name]
        if isinstance(value, int) and value < least:
            raise ValueError(f"must be auto or {least} or more {unit}")
        if isinstance(value, int) and value > MAX_WORKERS:  # torch and the OS refuse such counts with a traceback
            raise ValueError(f"must be auto or at most {MAX_WORKERS} {unit}")
        return value

    @field_validator("eval_every", "checkpoint_every")
    @classmethod
    def _every_positive(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'epoch' or a positive number of steps")
        return value


class EvaluateConfig(Section):
    base: bool = Field(True, description="evaluate the model before training")
    cache: bool = Field(
        True,
        description="keep the base model's scores and drift features on disk, keyed by the model's weights and "
        "the data, so a rerun skips measuring them",
    )
    max_train_examples: int | None = Field(
        2000, ge=1, description="cap on train examples scored for the train/validation gap"
    )


class RetainSetConfig(Section):
    """Data of a task the base model already does, scored with the base model's own head before and
    after fine-tuning. Its test split (else validation) is scored; its train split feeds the
    Fisher estimate of ``ewc`` and the rows ``replay`` mixes in."""

    name: str = Field(..., min_length=1)
    data: DataConfig
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        description="the seed that split this data when the base model learned it (so its test rows stay "
        "unseen); default: the run's seed",
    )


class EwcSection(Section):
    strength: float = Field(100.0, gt=0.0, description="lambda: weight of the Fisher-weighted pull to the base")
    fisher_examples: int = Field(256, ge=1, description="retain train rows the diagonal Fisher is estimated on")


class L2spSection(Section):
    strength: float = Field(0.01, gt=0.0, description="alpha: weight of the squared distance to the base weights")


class LwfSection(Section):
    strength: float = Field(1.0, gt=0.0, description="weight of distillation from the base model's own head")
    temperature: float = Field(2.0, gt=0.0)


class ReplaySection(Section):
    # Rows per step, not the loss weight, is what keeps the old task: Adam's step does not grow with
    # the weight, and the old task rehearsed alone at a rate above its pretraining one loses as much
    # as it does beside the new task when its batch is small (README, "Forgetting"). Experience
    # replay's equal split of old and new rows (Chaudhry et al. 2019) is the default.
    fraction: float = Field(
        1.0, gt=0.0, le=4.0, description="retain rows added per batch, as a fraction of it (1: as many as new rows)"
    )
    weight: float = Field(1.0, gt=0.0, description="weight of the loss on those rows (Adam's step barely feels it)")


SPLIT_DIGITS = "split-digits"


class ContinualConfig(Section):
    """`tunelab continual`: tasks learned one after another, every method a whole sequence."""

    benchmark: Literal["split-digits"] | None = Field(
        None, description="split-digits: scikit-learn's digits as five tasks of two digits (0/1, 2/3, ...)"
    )
    tasks: list[RetainSetConfig] = Field(
        default_factory=list, description="the tasks in order, each a name and a data section (if no benchmark)"
    )
    scenario: Literal["task", "class"] = Field(
        "task",
        description="task: a head per task, told which task a row is from; class: one head over every class "
        "seen, never told",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["naive", "ewc", "replay"],
        description="each a whole sequence: naive, ewc, lwf, replay, or several joined by + (ewc+replay)",
    )
    memory_per_task: int = Field(40, ge=1, description="rows of each finished task kept for replay")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        for name in value:
            unknown = [part for part in name.split("+") if part not in ("naive", "ewc", "lwf", "replay")]
            if unknown:
                raise ValueError(f"'{unknown[0]}' is not a continual method; choose from naive, ewc, lwf, replay")
        if not value or len(set(value)) < len(value):
            raise ValueError("name each method once")
        return value

    @model_validator(mode="after")
    def _tasks_given(self) -> ContinualConfig:
        if self.benchmark is None and len(self.tasks) < 2:
            raise ValueError("give benchmark: split-digits, or two or more tasks")
        if self.benchmark is not None and self.tasks:
            raise ValueError("give a benchmark or tasks, not both")
        return self


class SearchRange(Section):
    """One dimension of the search: numbers between low and high (log-spaced if log), or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = Field(False, description="draw whole numbers (epochs, batch size, LoRA rank)")
    choices: list[Any] | None = Field(None, description="a list of values to choose from (strategy names, ...)")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give choices (a non-empty list) or low and high, not both")
            return self
        if self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("give low below high, or choices")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low above 0")
        return self


class DistillConfig(Section):
    """Learn from a fine-tuned teacher run as well as from the labels (`tunelab distill`)."""

    teacher: str = Field(..., description="the teacher's run directory (a finished tunelab run)")
    temperature: float = Field(2.0, gt=0.0, description="softens both models' outputs before they are compared")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the teacher's outputs; 1 - alpha on the labels")
    hidden: float = Field(0.0, ge=0.0, description="weight of matching the teacher's features, where shapes agree")


class TuneConfig(Section):
    """`tunelab tune`: an Optuna study over the config's own keys."""

    space: dict[str, SearchRange] = Field(
        default_factory=dict,
        description="dotted config key -> range or choices; empty: learning rate, weight decay, warmup, epochs",
    )
    metric: str | None = Field(None, description="the validation metric to optimise (default: train.metric)")
    second_objective: Literal["trainable_parameters", "train_seconds"] | None = Field(
        None, description="also minimise this: a Pareto front instead of one best trial (no pruning)"
    )
    pruner: Literal["median", "hyperband", "none"] = "median"
    trials: int = Field(20, ge=1, description="finished trials the study should hold (--trials)")
    heartbeat_seconds: int = Field(
        30, ge=1, description="a trial silent for twice this long (its process killed) is failed and retried"
    )


FORGETTING_SECTIONS = {"ewc": EwcSection, "l2sp": L2spSection, "lwf": LwfSection, "replay": ReplaySection}


class ForgettingConfig(Section):
    """Ways to keep what the base model knew; each is off until given (``ewc: {}`` uses defaults),
    and they combine with each other and with every strategy that trains the model's own weights."""

    ewc: EwcSection | None = None
    l2sp: L2spSection | None = None
    lwf: LwfSection | None = None
    replay: ReplaySection | None = None
    drift: bool = Field(True, description="report how far the features moved from the base model's (linear CKA)")

    @property
    def methods(self) -> list[str]:
        return [name for name in FORGETTING_METHODS if getattr(self, name) is not None]


class CompareConfig(Section):
    strategies: list[str] | None = Field(
        None,
        description="what `tunelab compare` runs when --strategies is not given: strategy names, each "
        "optionally with forgetting methods (full+ewc, lora+lwf+replay)",
    )
    lr: dict[str, float] = Field(default_factory=dict, description="strategy name -> its learning rate")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="strategy name -> strategy keys for that run (e.g. partial: {...})"
    )
    forgetting: ForgettingConfig = Field(
        default_factory=lambda: ForgettingConfig(drift=True),
        description="settings of the methods a run named strategy+method uses (full+ewc); defaults otherwise",
    )

    @field_validator("strategies")
    @classmethod
    def _known_runs(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            run_parts(name)
        return value

    @field_validator("lr", "options")
    @classmethod
    def _known_strategies(cls, value: dict) -> dict:
        for name in value:
            run_parts(name)
        return value


class RegressionConfig(Section):
    loss: Literal["mse", "huber"] = Field("mse", description="huber: squared near zero, linear beyond huber_delta")
    huber_delta: float = Field(1.0, gt=0.0, description="in normalised units when normalize is on")
    normalize: bool = Field(True, description="train on targets scaled to mean 0, sd 1 (saved with the model)")


class RunConfig(Section):
    task: str = Field("text-classification", description="text-classification, image-classification, regression")
    seed: int = Field(42, ge=0, lt=2**32, description="numpy accepts no other seeds")
    output_dir: str | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    retain: list[RetainSetConfig] = Field(
        default_factory=list, description="tasks the base model already does, measured for forgetting"
    )
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    continual: ContinualConfig | None = None
    tune: TuneConfig = Field(default_factory=TuneConfig)
    distill: DistillConfig | None = None
    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before the config is checked: they register tasks and strategies "
        "(tunelab.tasks.register_task, tunelab.strategies.register_strategy); every process of a run imports them",
    )
    regression: RegressionConfig = Field(default_factory=RegressionConfig)

    def learning_rate(self) -> float | Literal["auto"]:
        """``optim.lr``, or when unset the default for this strategy, optimizer and effective batch."""
        if self.optim.lr is not None:
            return self.optim.lr
        batch = self.train.batch_size * self.train.grad_accum_steps
        return default_rate(self.strategy.name, self.optim.name, batch)

    def optimizer_settings(self) -> OptimConfig:
        """The ``optim`` section with the rate this run trains at."""
        return self.optim.model_copy(update={"lr": self.learning_rate()})

    @model_validator(mode="before")
    @classmethod
    def _continual_data_template(cls, raw: Any) -> Any:
        # For a continual run `data` is optional: the split-digits benchmark's template by default.
        if isinstance(raw, dict) and "data" not in raw and isinstance(raw.get("continual"), dict):
            return raw | {"data": {"train": "digits"}}
        return raw

    @model_validator(mode="after")
    def _continual_rate_given(self) -> RunConfig:
        if self.continual is not None and self.optim.lr == "auto":
            raise ValueError("optim.lr: auto tests rates on one run's data; a continual sequence needs a rate")
        return self

    @model_validator(mode="after")
    def _quantization_aware_fits(self) -> RunConfig:
        if not self.train.quantization_aware:
            return self
        if self.strategy.name != "full":
            raise ValueError("train.quantization_aware trains every weight: use it with strategy full")
        if self.train.load_best_at_end or self.train.checkpoint_every is not None:
            # FX shares observer modules under several names, which weight files do not round-trip yet.
            raise ValueError(
                "train.quantization_aware: set train.load_best_at_end: false and train.checkpoint_every: null "
                "(a fake-quantized model cannot be reloaded from a checkpoint yet)"
            )
        return self

    @model_validator(mode="after")
    def _device_check_possible(self) -> RunConfig:
        if self.train.nonfinite_check != "device":
            return self
        if self.optim.name not in ("adam", "adamw"):
            raise ValueError(
                "train.nonfinite_check: device skips steps inside a fused optimizer (adam or adamw), "
                f"not {self.optim.name}"
            )
        if self.train.mixed_precision == "fp16":
            raise ValueError("train.nonfinite_check: device; fp16's gradient scaler skips steps itself: use auto")
        return self

    @model_validator(mode="after")
    def _forgetting_fits(self) -> RunConfig:
        methods = self.forgetting.methods
        weights = [name for name in ("ewc", "l2sp") if name in methods]
        if weights and wraps_with_peft(self.strategy.name):
            raise ValueError(
                f"forgetting.{weights[0]} pulls the model's own weights back, which {self.strategy.name} "
                "leaves frozen; use lwf or replay, or a strategy that trains them"
            )
        needs_data = [name for name in ("ewc", "replay") if name in methods]
        if needs_data and not self.retain and self.continual is None:  # a task sequence brings its own
            raise ValueError(f"forgetting.{needs_data[0]} needs a retain set with training rows (retain: [...])")
        names = [entry.name for entry in self.retain]
        if len(set(names)) < len(names):
            raise ValueError("retain: each set needs its own name")
        return self

    @field_validator("task")
    @classmethod
    def _task_known(cls, value: str) -> str:
        from tunelab.tasks import PLANNED_TASKS, TASKS

        if value in PLANNED_TASKS and value not in TASKS:
            raise ValueError(f"task '{value}' is planned but not available yet; use one of: {', '.join(TASKS)}")
        if value not in TASKS:
            raise ValueError(f"'{value}' is not a task; choose from {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _metrics_of_the_task(self) -> RunConfig:
        from tunelab.tasks import get_task

        task = get_task(self.task)
        if self.train.metric is None:
            self.train.metric = task.default_metric
        for key, metric in (("train.metric", self.train.metric), ("tune.metric", self.tune.metric)):
            if metric is not None and metric not in task.metrics:
                choices = ", ".join(task.metrics)
                raise ValueError(f"{key}: '{metric}' is not a {task.name} metric; choose from {choices}")
        return self

    @model_validator(mode="after")
    def _classes_needed(self) -> RunConfig:
        from tunelab.tasks import get_task

        task = get_task(self.task)
        if task.has_classes:
            return self
        per_row = {"ewc", "lwf", "replay"} if task.class_outputs else set(FORGETTING_METHODS)
        needs = {
            "train.class_weights": self.train.class_weights, "train.resample": self.train.resample,
            "data.group_column": self.data.group_column, "retain": self.retain and not task.class_outputs,
            "forgetting": [m for m in self.forgetting.methods if m in per_row], "continual": self.continual,
            "distill": self.distill and not task.class_outputs,
        }  # fmt: skip
        given = next((key for key, value in needs.items() if value), None)
        if given == "forgetting":
            given = f"forgetting.{needs['forgetting'][0]}"
        if given is not None:
            raise ValueError(f"{given}: works on one class per row, and task {self.task} has none")
        return self

    @model_validator(mode="after")
    def _augment_needs_image_files(self) -> RunConfig:
        if not self.data.augment.enabled:
            return self
        from tunelab.tasks import get_task

        if get_task(self.task).reads(self) != "image":
            raise ValueError(f"data.augment: augmentation applies to images, not to task {self.task}'s text")
        if self.data.train == "digits":
            raise ValueError("data.augment: augmentation applies to image folders, not to the built-in digits")
        return self


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read YAML (or start from ``base``), apply ``--set`` overrides, validate."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        raw = read_yaml(Path(path))
    written = _strategy_and_rate(raw)
    for override in overrides:
        apply_override(raw, override)
    if not any(override.partition("=")[0].strip() == "optim.lr" for override in overrides):
        _rescale_rate_for_new_strategy(raw, *written)
    return validate(raw, source=str(path) if path else "config")


def _strategy_and_rate(raw: dict[str, Any]) -> tuple[Any, Any]:
    strategy, optim = raw.get("strategy"), raw.get("optim")
    name = strategy.get("name", "full") if isinstance(strategy, dict) else "full"
    return name, optim.get("lr") if isinstance(optim, dict) else None


def _rescale_rate_for_new_strategy(raw: dict[str, Any], written_name: Any, written_rate: Any) -> None:
    """A rate written in the file was chosen for the file's strategy: ``--set strategy.name=lora``
    alone moves it by the strategies' factors (tunelab.rates), as ``compare`` does, and says so."""
    name, rate = _strategy_and_rate(raw)
    known = strategies()
    if not isinstance(name, str) or not isinstance(written_name, str) or name == written_name:
        return
    if written_name not in known or name not in known:
        return
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate != written_rate:
        return
    factor = rate_factor(name) / rate_factor(written_name)
    moved = min(HIGHEST_RATE, rate * factor)
    raw["optim"]["lr"] = moved
    log.warning(
        "optim.lr: the file's %g was set for %s; %s trains at %.3g (x%g, the strategies' usual ratio); "
        "--set optim.lr=... picks a rate yourself",
        rate,
        written_name,
        name,
        moved,
        factor,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the later would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"'{key}' is given twice at the same level", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


LARGEST_CONFIG = 1 << 20  # bytes; the largest example config is 3 KB


def read_yaml(path: Path) -> dict[str, Any]:
    if path.exists() and not path.is_file():  # a folder, a device such as /dev/zero, a FIFO
        raise UserError(f"{path}: not a regular file; a config is a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > LARGEST_CONFIG:
        raise UserError(f"{path}: {size / 2**20:.0f} MB is no config (they are a few KB); wrong file?")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:  # [[[[...]]]] thousands deep
        raise UserError(f"{path}: invalid YAML: nested too deeply to be a config") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = f": {error.problem}" if isinstance(error, _DuplicateKey) else ""
        raise UserError(f"{path}: invalid YAML{where}{problem}") from None
    if loaded is None:
        raise UserError(f"{path}: the config file is empty")
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values")
    return loaded


def comma_list(text: str, option: str) -> list[str]:
    """``a,b,c`` as names; an empty name (``a,,b`` or ``,,,``) is a typo, not a default."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise UserError(f"{option}: no name given")
    if not all(names):
        raise UserError(f"{option}: an empty name between commas in '{text}'")
    return names


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``dotted.key=value``; the value is parsed as YAML (so 1e-4, true, [a, b] work)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    set_key(raw, key.strip(), value, where=f"--set {key.strip()}")


def set_key(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put ``value`` at the ``dotted.key`` of a raw config, creating sections on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{where}: '{'.'.join(parts[: depth + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    import_plugins(raw.get("plugins") if isinstance(raw, dict) else None, source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"{source}: {describe_error(error)}") from None


def import_plugins(modules: Any, source: str = "config") -> None:
    """Import the modules ``plugins:`` names, so the tasks and strategies they register exist
    before the config naming them is checked. They are the user's own code, as ``model.source:
    package.module:function`` is."""
    import importlib

    if not modules:
        return
    if not isinstance(modules, list) or not all(isinstance(name, str) and name for name in modules):
        raise UserError(f"{source}: plugins: a list of module names (plugins: [my_package.tunelab_parts])")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UserError(f"{source}: plugins: cannot import '{name}': {error}") from None


def describe_error(error: ValidationError) -> str:
    """One line for the first problem: the key path, what is wrong, what is allowed."""
    first = error.errors()[0]
    path = _clean_path(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown key '{path}'" + (f"; allowed here: {allowed}" if allowed else "")
    if kind == "missing" and isinstance(first["loc"][-1], int):  # a tuple such as optim.betas
        return f"{_clean_path(first['loc'][:-1])}: too few items (got {first['loc'][-1]})"
    if kind == "missing":
        return f"missing required key '{path}'"
    message = first["msg"].removeprefix("Value error, ")
    if message.startswith(("unknown key '", f"{path}.")):  # a section checked by its owner names the whole path
        return message
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


def _plugin_error(error: ValidationError, strategy: str, section: type[BaseModel]) -> str:
    """The first problem in a plugin strategy's own section, with the whole key path."""
    first = error.errors()[0]
    path = ".".join(["strategy", strategy, *(str(part) for part in first["loc"])])
    if first["type"] == "extra_forbidden":
        return f"unknown key '{path}'; allowed here: {', '.join(section.model_fields)}"
    return f"{path}: {first['msg'].removeprefix('Value error, ')}"


def _clean_path(loc: tuple) -> str:
    # pydantic adds union-branch names like 'int' or "literal['epoch']" to the location.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "str", "bool")))]
    return ".".join(parts)


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
