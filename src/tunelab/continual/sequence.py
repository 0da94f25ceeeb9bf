"""One method learning the whole task sequence: train task after task, score every task after each,
carry what the method keeps (EWC's Fisher and anchor, the replay memory, the LwF teacher) forward.

State is saved after every task: the weights with every head and EWC's tensors under names that
carry the task count, then state.json (the matrix so far, the replay memory, those names), each
written whole and renamed. A kill at any moment leaves state.json naming a complete set; the
sequence resumes at the task it was learning, which starts over from the end of the task before
with the same seed, so the finished matrix is the one an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from tunelab.config import EwcSection, LwfSection, ReplaySection
from tunelab.continual.heads import HeadSwitch, install
from tunelab.continual.metrics import summarise
from tunelab.continual.tasks import Task
from tunelab.continual.terms import EarlierHeads, MemoryReplay
from tunelab.engine.callbacks import ProgressBar
from tunelab.engine.data_loading import OnDevice, eval_loader, train_loader
from tunelab.engine.lean import stepped_optimizer
from tunelab.engine.loop import Trainee, fit
from tunelab.engine.optim import build_optimizer
from tunelab.engine.schedules import build_scheduler
from tunelab.evaluate import evaluate_split, output_logits
from tunelab.forgetting.regularizers import WeightPull, diagonal_fisher
from tunelab.forgetting.terms import Pull
from tunelab.io import give_usual_permissions, write_json
from tunelab.loss import TrainingLoss
from tunelab.models import load_model
from tunelab.strategies import build_strategy
from tunelab.strategies.anatomy import anatomy
from tunelab.tasks import get_task

STATE = "state.json"


class Sequence:
    """The model, its heads and what the method carries from task to task."""

    def __init__(self, config, method: str, tasks: list[Task], folder: Path, accelerator):
        self.config, self.tasks, self.folder, self.accelerator = config, tasks, Path(folder), accelerator
        self.parts = set(method.split("+")) - {"naive"}
        self.class_incremental = config.continual.scenario == "class"
        set_seed(config.seed)
        self.loaded = load_model(config, tasks[0].labels, tasks[0].raw.channels)
        head = anatomy(self.loaded.model).head
        heads = {"all": self.loaded.model.get_submodule(head[0])}
        if not self.class_incremental:  # a fresh head per task, each drawn from its own seed
            heads = {}
            for index, task in enumerate(tasks):
                set_seed(config.seed + index)
                fresh = load_model(config, task.labels, task.raw.channels).model
                heads[self.key(index)] = fresh.get_submodule(head[0])
        self.switch: HeadSwitch = install(self.loaded.model, head[0], heads)
        self.model = accelerator.prepare(self.loaded.model)
        self.collate = get_task(config).collate(self.loaded, config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.memory: dict[int, list[int]] = {}
        self.teacher = None
        self.matrix: list[list[float]] = []
        self.initial: list[float] = []
        self.seconds = 0.0
        self.scored_loaders = None

    def key(self, index: int) -> str:
        return "all" if self.class_incremental else f"task{index}"

    # -- the sequence -----------------------------------------------------------------------------

    def run(self, console=None, show: bool = False) -> dict:
        if not self._restore():
            self.initial = self.score_all()
        for index in range(len(self.matrix), len(self.tasks)):
            if show:
                console.print(f"  task {index + 1}/{len(self.tasks)}: {self.tasks[index].name}")
            started = time.perf_counter()
            self.learn(index, console if show else None)
            self.seconds += time.perf_counter() - started
            self.matrix.append(self.score_all())
            self.carry(index)
            self._save()
        return self.summary()

    def learn(self, index: int, console) -> None:
        config = self.config
        set_seed(config.seed + 1000 * (index + 1))  # the same draws whether or not the run was resumed
        self.switch.active = self.key(index)
        task = self.tasks[index]
        loader, sampler = train_loader(
            task.datasets["train"], config.train.batch_size, self.collate, config.seed + index
        )
        strategy = build_strategy(config.strategy)
        optim = config.optimizer_settings()
        optimizer = build_optimizer(strategy.parameter_groups(self.model, optim), optim)
        optimizer, loader = self.accelerator.prepare(optimizer, loader)
        steps_per_epoch = -(-len(loader) // config.train.grad_accum_steps)
        total_steps = config.train.max_steps or steps_per_epoch * config.train.epochs
        scheduler = build_scheduler(stepped_optimizer(optimizer, self.accelerator), config.schedule, total_steps)
        bar = ProgressBar(console, console is not None, config.train.metric)
        train = config.train.model_copy(update={"eval_every": 10**9, "early_stopping": None})
        trainee = Trainee(
            self.model, optimizer, scheduler, loader, self.loss_for(index), strategy.train_mode, sampler=sampler
        )
        fit(trainee, self.accelerator, train, [bar])

    def score_all(self) -> list[float]:
        """Accuracy on every task's scored split, each through its own head (or the shared one)."""
        if self.scored_loaders is None:  # prepared once: Accelerate's gathering needs loaders it prepared
            size = self.config.train.eval_batch_size
            self.scored_loaders = [
                self.accelerator.prepare(eval_loader(task.scored, size, self.collate)) for task in self.tasks
            ]
        row = []
        for index, (task, loader) in enumerate(zip(self.tasks, self.scored_loaders, strict=True)):
            self.switch.active = self.key(index)
            score = get_task(self.config).scorer(task.labels)
            row.append(evaluate_split(self.model, loader, self.accelerator, score)["accuracy"])
        return row

    def carry(self, index: int) -> None:
        """What the method keeps from the task just learned."""
        config, task = self.config, self.tasks[index]
        if "ewc" in self.parts:
            self.switch.active = self.key(index)
            examples = config.forgetting.ewc.fisher_examples if config.forgetting.ewc else 256
            size, rows = config.train.eval_batch_size, task.datasets["train"]
            loader = eval_loader(rows, size, self.collate, longest_first=False)  # the Fisher reads the first rows
            names = [name for name, _ in self.model.named_parameters()]
            fisher = diagonal_fisher(
                self.model, lambda model, inputs: output_logits(model(**inputs)),
                OnDevice(loader, self.accelerator.device), names, examples, config.seed + index,
            )  # fmt: skip
            # Online EWC (Schwarz et al., 2018): the Fishers add up, the anchor is the latest weights.
            self.fisher = {name: self.fisher.get(name, 0) + value for name, value in fisher.items()}
            self.anchor = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        if "replay" in self.parts:
            generator = torch.Generator().manual_seed(config.seed + index)
            rows = torch.randperm(len(task.datasets["train"]), generator=generator)[: config.continual.memory_per_task]
            self.memory[index] = sorted(rows.tolist())
        if "lwf" in self.parts:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()

    # -- the loss ---------------------------------------------------------------------------------

    def loss_for(self, index: int) -> TrainingLoss:
        """The task's loss plus the method's terms, each set as the run's forgetting sections say."""
        settings = self.config.forgetting
        terms = []
        if "replay" in self.parts and self.memory:
            replay = settings.replay or ReplaySection()
            per_batch = max(1, round(replay.fraction * self.config.train.batch_size))
            terms.append(MemoryReplay(self, index, per_batch, replay.weight))
        if "lwf" in self.parts and self.teacher is not None and index > 0:
            lwf = settings.lwf or LwfSection()
            terms.append(EarlierHeads(self, self.teacher, list(range(index)), lwf.strength, lwf.temperature))
        if "ewc" in self.parts and self.fisher:
            pull = WeightPull(self.anchor, (settings.ewc or EwcSection()).strength, self.fisher)
            terms.append(Pull("ewc", pull, self.model))
        pad_token_id = getattr(self.loaded.tokenizer, "pad_token_id", 0) or 0
        return TrainingLoss(get_task(self.config), terms, pad_token_id=pad_token_id)

    # -- results and state ------------------------------------------------------------------------

    def summary(self) -> dict:
        return {
            "tasks": [task.name for task in self.tasks],
            "matrix": self.matrix,
            "initial": self.initial,
            **summarise(self.matrix, self.initial),
            "train_seconds": self.seconds,
        }

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        done = len(self.matrix)
        files = {"weights": f"model-after-{done}.safetensors"}
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        _save_tensors(weights, self.folder / files["weights"])
        if self.fisher:
            files["ewc"] = f"ewc-after-{done}.safetensors"
            tensors = {f"fisher/{k}": v.cpu() for k, v in self.fisher.items()}
            tensors |= {f"anchor/{k}": v.cpu() for k, v in self.anchor.items()}
            _save_tensors(tensors, self.folder / files["ewc"])
        state = {"matrix": self.matrix, "initial": self.initial, "memory": self.memory, "seconds": self.seconds}
        write_json(self.folder / STATE, state | {"files": files})  # last: from here on it names the files above
        for old in self.folder.glob("*-after-*.safetensors"):
            if old.name not in files.values():
                old.unlink()

    def _restore(self) -> bool:
        state_file = self.folder / STATE
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text(encoding="utf-8"))
        device = self.accelerator.device
        files = state["files"]
        self.model.load_state_dict({k: v.to(device) for k, v in load_file(self.folder / files["weights"]).items()})
        if "ewc" in files:
            tensors = load_file(self.folder / files["ewc"])
            self.fisher = {
                k.removeprefix("fisher/"): v.to(device) for k, v in tensors.items() if k.startswith("fisher/")
            }
            self.anchor = {
                k.removeprefix("anchor/"): v.to(device) for k, v in tensors.items() if k.startswith("anchor/")
            }
        self.memory = {int(task): rows for task, rows in state["memory"].items()}
        self.matrix, self.initial, self.seconds = state["matrix"], state["initial"], state["seconds"]
        if "lwf" in self.parts and self.matrix:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        return True


def _save_tensors(tensors: dict, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial))
    give_usual_permissions(partial)
    partial.replace(path)
