"""The one-for-all fine-tuning recipe, as one linear class (setup / train / save_checkpoint): every step samples a
sandwich of subnets (largest, smallest, K-2 random) and distils each into a teacher's next-token distribution:

- `teacher="frozen"` (default): the original full model, adapters off, run once per batch without gradients. Every
  smaller subnet learns to match it, so the adapters keep what users want to keep (the original model's
  behaviour). At the full shape the adapters add nothing (`SMoLAdapters.adapts`): the full model with adapters is
  the original exactly, and the sandwich's largest subnet costs no pass (its loss is recorded as 0).
- `teacher="inplace"` (the AmoebaLLM paper's): the largest subnet with adapters learns the data's next tokens and
  teaches the others; it drifts toward the training text.

Loss-magnitude balancing rescales each distilled subnet's loss to a reference magnitude (the largest's loss in place;
with a frozen teacher, the mean distilled loss of the previous step), so the large losses of small subnets do not
dominate the shared adapters. All K gradients are accumulated, clipped, then one optimizer step follows a warmup +
decay schedule. Sampling, data windows and router noise are derived from (seed, step), so a resumed run takes
exactly the steps an uninterrupted one would."""

from __future__ import annotations

import dataclasses
import functools
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import LoadedModel
from ..selection.blocks import REMOVED, Shape, shapes_key
from ..selection.space import Candidate, SearchSpace, candidate_subnet
from ..selection.strategy import Strategy
from ..selection.width import heterogeneous_subnet
from ..subnet import Subnet
from ..families.base import model_dims
from .checkpoint import build_adapters, checkpoints, read_record, restore, save_checkpoint
from .smol import AdapterConfig, SMoLAdapters, subnet_fingerprint


@dataclass(frozen=True)
class TrainConfig:
    """CPU default: finishes in minutes on the embedded model; the paper's GPU recipe is lr 2e-4, 10K steps."""

    steps: int = 200
    subnets_per_step: int = 4            # K: largest + smallest + K-2 random
    heterogeneous_per_step: int = 0      # of the K-2 random ones, how many have their own shape per layer
    heterogeneous_shapes: str = "random" # how those are drawn: "random" per layer, or "solver" (SHAPE_SOURCES)
    batch_size: int = 2
    seq_len: int = 128
    lr: float = 1e-3                     # peak, after warmup
    weight_decay: float = 0.0
    balance: bool = True                 # loss-magnitude balancing (off for the ablation)
    teacher: str = "frozen"              # "frozen" (original model) or "inplace" (largest subnet with adapters)
    schedule: str = "cosine"             # any transformers.get_scheduler name
    warmup_pct: float = 5.0              # share of the steps spent warming up, %
    max_grad_norm: float = 1.0           # 0: no clipping
    seed: int = 0
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"          # "bf16" / "fp16" on GPU (Accelerate autocast)

    def __post_init__(self) -> None:
        for name in ("steps", "subnets_per_step", "batch_size", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.heterogeneous_per_step <= max(0, self.subnets_per_step - 2):
            raise UserError(f"--heterogeneous-per-step must be in 0..{max(0, self.subnets_per_step - 2)} (the random "
                            f"part of --subnets-per-step {self.subnets_per_step}), got {self.heterogeneous_per_step}")
        if self.heterogeneous_shapes not in SHAPE_SOURCES:
            raise UserError(f"--heterogeneous-shapes {self.heterogeneous_shapes!r}: choose "
                            f"{' or '.join(SHAPE_SOURCES)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"--mixed-precision {self.mixed_precision!r}: choose no, bf16 or fp16")
        if self.teacher not in TEACHERS:
            raise UserError(f"--teacher {self.teacher!r}: choose {' or '.join(TEACHERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_pct < 100 or self.max_grad_norm < 0:
            raise UserError("--warmup-pct must be in [0, 100) and --max-grad-norm >= 0")

    @property
    def warmup_steps(self) -> int:
        return round(self.steps * self.warmup_pct / 100)


def slow_precision_warning(mixed_precision: str, on_cuda: bool) -> str | None:
    """bf16 autocast on a CPU without bf16 instructions (AVX512-BF16 or AMX) is emulated: measured on a 2-core
    AVX2-only EPYC, 2 steps of the shipped recipe took 4.6 min against ~6 s per step in fp32. Said before the run
    rather than discovered an hour in; an unreadable flag list (not Linux) says nothing."""
    from ..artifacts import cpu_flags

    flags = cpu_flags()
    if mixed_precision != "bf16" or on_cuda or not flags or flags & {"avx512_bf16", "amx_bf16"}:
        return None
    return ("--mixed-precision bf16 on this CPU (no AVX512-BF16 or AMX) is emulated and can be 20x slower than "
            "fp32: use --mixed-precision no")


TEACHERS = ("frozen", "inplace")
SHAPE_SOURCES = ("random", "solver")
SOLVER_RATIOS = tuple(round(0.5 + 0.02 * i, 2) for i in range(21))    # 50..90% of the full model's latency
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


def token_stream(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    """All documents tokenized and joined with EOS: the stream training windows are cut from."""
    eos = loaded.tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def distillation_loss(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token, averaged over tokens; the teacher is detached."""
    student = F.log_softmax(student_logits.float(), dim=-1).flatten(0, -2)        # (B*T, V)
    return F.kl_div(student, teacher_logprobs.flatten(0, -2), log_target=True, reduction="batchmean")


def balanced(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rescale to the reference's magnitude (loss_ref / loss.detach()), so large losses of small subnets do not
    dominate the shared adapters; the gradient direction of each loss is unchanged."""
    return loss * (reference.detach() / loss.detach().clamp_min(1e-12))


Drawn = Candidate | tuple[Shape, ...] | Subnet        # a uniform shape, a shape per layer, or the one --subnet


def subnet_key(candidate: Drawn) -> str:
    if isinstance(candidate, Subnet):
        return "subnet-" + subnet_fingerprint(candidate)
    return candidate.key if isinstance(candidate, Candidate) else shapes_key(candidate)


class Trainer:
    def __init__(self, loaded: LoadedModel, strategy: Strategy, strategy_path: Path, data: dict[str, list[str]],
                 out_dir: Path, config: TrainConfig, adapter_config: AdapterConfig, space: SearchSpace | None = None,
                 progress: bool = True, init_from: Path | None = None, shape_profiles: list | None = None,
                 target: Subnet | None = None) -> None:
        """`target`: fine-tune for that one subnet (every step distils it alone) instead of every subnet at once:
        the most recovery per CPU-minute for a subnet already searched, and adapters that serve it only."""
        strategy.check_model(loaded.fingerprint)
        if target is not None and (config.subnets_per_step != 1 or config.heterogeneous_per_step):
            raise UserError("--subnet trains one subnet per step: use --subnets-per-step 1 and no "
                            "--heterogeneous-per-step")
        self.target = target
        self.loaded, self.strategy, self.out_dir, self.config, self.progress = loaded, strategy, Path(out_dir), config, progress
        self.dims = model_dims(loaded.model.config)
        self.space = space or SearchSpace.from_strategy(strategy, self.dims)
        alone = target if target is not None else self.space.largest if config.subnets_per_step == 1 else None
        if config.teacher == "frozen" and alone is not None and self._subnet(alone).is_full(self.dims):
            raise UserError("with --teacher frozen the full model distils into itself (KL 0): nothing would be "
                            "trained. Fine-tune a smaller --subnet, use --subnets-per-step >= 2, or --teacher "
                            "inplace to fine-tune the full model on the data")
        if config.heterogeneous_per_step and adapter_config.experts > 1:
            raise UserError("--heterogeneous-per-step needs --experts 1: the SMoL router encodes one width per "
                            "subnet, and a heterogeneous subnet has one per layer")
        self.solver_pool = self._solver_pool(shape_profiles) if config.heterogeneous_per_step and \
            config.heterogeneous_shapes == "solver" else None
        self.tokens = token_stream(loaded, [t for texts in data.values() for t in texts])
        if len(self.tokens) <= config.seq_len + 1:
            raise UserError(f"the training data has {len(self.tokens)} tokens, fewer than one --seq-len "
                            f"{config.seq_len} window: add data or shorten --seq-len")
        self.record = {"model": loaded.fingerprint,
                       "strategy": {"path": str(strategy_path), "fingerprint": strategy.fingerprint},
                       "space": self.space.to_dict(), "adapter": adapter_config.to_dict(),
                       "training": dataclasses.asdict(config), "weights_dtype": loaded.dtype_name,
                       "data": {"files": list(data), "tokens": len(self.tokens)},
                       "step": 0, "seconds": 0.0, "history": []}
        if target is not None:
            self.record["subnet"] = {"fingerprint": subnet_fingerprint(target),
                                     "summary": target.summary(self.dims), "layers": list(target.layers)}
        if self.solver_pool is not None:
            self.record["solver_shapes"] = {"ratios": list(SOLVER_RATIOS), "profiles": self.shape_profile_names,
                                            "distinct": len(self.solver_pool)}
        self.init_from = init_from
        self.setup()

    # ---- setup ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(mixed_precision=self.config.mixed_precision, cpu=not torch.cuda.is_available())
        model = self.loaded.model.to(self.accelerator.device).requires_grad_(False)
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()                  # transformers only checkpoints in train mode; LLaMA has no dropout
        with torch.random.fork_rng(devices=[]):    # the initial experts and router come from the seed too
            torch.manual_seed(self.config.seed)
            self.adapters: SMoLAdapters = build_adapters(self.loaded, self.record)
        self.adapters.to(self.accelerator.device).train()
        self.optimizer = torch.optim.AdamW(self.adapters.parameters(), lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        self.subnet = functools.lru_cache(maxsize=64)(self._subnet)
        if self.init_from is not None:
            self._initialize(Path(self.init_from))
        self._resume()
        self.scheduler = self._scheduler(self.record["step"])

    def _scheduler(self, done_steps: int):
        """Warmup + decay over the run's steps, advanced past the steps already taken (a pure function of the
        step, so a resumed run gets the learning rates an uninterrupted one would)."""
        from transformers import get_scheduler

        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", self.config.lr)
        scheduler = get_scheduler(self.config.schedule, self.optimizer, num_warmup_steps=self.config.warmup_steps,
                                  num_training_steps=self.config.steps)
        with warnings.catch_warnings():      # fast-forwarding without optimizer steps is the point here
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for _ in range(done_steps):
                scheduler.step()
        return scheduler

    def _initialize(self, path: Path) -> None:
        """Start from trained adapters (their weights, not their optimizer state or schedule), so a CPU budget
        adds to earlier training instead of repeating it, e.g. heterogeneous shapes on top of adapters trained on
        uniform ones. They must be of this model, strategy, space and adapter shape."""
        from .checkpoint import load_adapters

        start = load_adapters(self.loaded, path)
        start.check_strategy(self.strategy)
        for field in ("space", "adapter"):
            if start.record[field] != self.record[field]:
                raise UserError(f"--init-from {path}: those adapters have another {field} ({start.record[field]}) "
                                f"than this run ({self.record[field]}): pass the same adapter settings")
        self.adapters.load_state_dict({k: v.float() for k, v in start.state_dict().items()})
        self.record["initialized_from"] = {"path": str(path), "fingerprint": start.fingerprint,
                                           "step": start.record.get("step"),
                                           "training": start.record.get("training")}

    def _resume(self) -> None:
        """Continue the newest checkpoint in out_dir, if any, after checking it is the same run."""
        found = checkpoints(self.out_dir)
        if not found:
            return
        saved = read_record(found[-1])
        if saved.get("subnet") != self.record.get("subnet"):
            trained = f"subnet {saved['subnet']['summary']}" if saved.get("subnet") else "every subnet"
            raise UserError(f"{self.out_dir} holds a run for {trained}, not this one: pass the same --subnet to "
                            "resume it, or a new --out")
        if saved["strategy"]["fingerprint"] != self.record["strategy"]["fingerprint"]:    # its path may differ
            raise UserError(f"{self.out_dir} holds a run with a different strategy: pass a new --out, or the same "
                            "strategy to resume it")
        for field in ("model", "space", "adapter"):
            if saved[field] != self.record[field]:
                raise UserError(f"{self.out_dir} holds a run with a different {field}: pass a new --out, or the "
                                "same settings to resume it")
        if saved.get("weights_dtype", "float32") != self.record["weights_dtype"]:
            raise UserError(f"{self.out_dir} holds a run on {saved.get('weights_dtype', 'float32')} weights, this one "
                            f"loads {self.record['weights_dtype']}: pass the same --dtype to resume it, or a new --out")
        ignore = {"checkpoint_every"}        # the schedule depends on --steps, so a resumed run keeps them too
        defaults = dataclasses.asdict(TrainConfig())   # settings added since a saved run: its default then
        saved["training"] = {**{k: v for k, v in defaults.items() if k not in saved["training"]}, **saved["training"]}
        if {k: v for k, v in saved["training"].items() if k not in ignore} != \
                {k: v for k, v in self.record["training"].items() if k not in ignore}:
            changed = sorted(k for k in self.record["training"] if k not in ignore
                             and saved["training"].get(k) != self.record["training"][k])
            raise UserError(f"{self.out_dir} holds a run with different training settings ({', '.join(changed)}): "
                            "pass a new --out, or the same settings (only --checkpoint-every may change) to resume it")
        if saved.get("initialized_from", {}).get("fingerprint") != self.record.get("initialized_from", {}).get(
                "fingerprint"):
            raise UserError(f"{self.out_dir} holds a run started from other adapters (--init-from): pass the same "
                            "--init-from to resume it, or a new --out")
        restore(found[-1], self.adapters, self.optimizer, saved)
        self.record.update(step=saved["step"], seconds=saved["seconds"], history=saved["history"])

    def _solver_pool(self, profiles: list | None) -> list[tuple[Shape, ...]]:
        """The exact solver's shapes at 50..90% of the full model's latency on every profile (default: all this
        machine's and the shipped ones), for `--heterogeneous-shapes solver`."""
        from ..profiling.store import ProfileStore
        from ..search.heterogeneous import solver_shapes

        if self.strategy.blocks is None:
            raise UserError("--heterogeneous-shapes solver needs a strategy with block scores (`amoeba blocks`; "
                            "shipped: strategies/smollm2-135m.dp-flap-blocks.json): pass it with --strategy")
        if profiles is None:
            store = ProfileStore()
            profiles = [store.load(path.parent.name, path.name) for root in store.roots
                        for path in sorted(p.parent for p in root.glob("*/*/lut.csv"))]
        self.shape_profile_names = sorted({lut.name for lut in profiles})
        pool = solver_shapes(self.strategy.blocks, self.dims.num_layers, (self.dims.num_heads,
                             self.dims.intermediate_size), profiles, SOLVER_RATIOS)
        if not pool:
            raise UserError(f"no profile ({', '.join(self.shape_profile_names) or 'none found'}) times this model's "
                            "full block, so the solver has no shapes to offer: profile this model (`amoeba profile`) "
                            "or use --heterogeneous-shapes random")
        return pool

    def _subnet(self, candidate: Drawn) -> Subnet:
        if isinstance(candidate, Subnet):
            return candidate
        if isinstance(candidate, Candidate):
            return candidate_subnet(self.loaded.model, self.strategy, candidate)
        return heterogeneous_subnet(self.loaded.model, self.strategy.width, candidate)

    # ---- one step -------------------------------------------------------------------------------------------
    def sandwich(self, step: int) -> list[Drawn]:
        """Largest, smallest, then K-2 random subnets: uniformly random shapes of the space, the last
        `heterogeneous_per_step` of them with a random shape per layer (`random_shapes`); or the target alone."""
        if self.target is not None:
            return [self.target]
        rng = random.Random(self.config.seed * 1_000_003 + step)
        chosen: list = [self.space.largest, self.space.smallest][: self.config.subnets_per_step]
        uniform = self.config.subnets_per_step - self.config.heterogeneous_per_step
        while len(chosen) < uniform:
            chosen.append(Candidate(rng.choice(self.space.depths), rng.choice(self.space.heads),
                                    rng.choice(self.space.mlp)))
        while len(chosen) < self.config.subnets_per_step:
            chosen.append(self.random_shapes(rng))
        return chosen

    def random_shapes(self, rng: random.Random) -> tuple[Shape, ...]:
        """A subnet as `search --space heterogeneous` hands them over: each layer after the first removed with a
        probability drawn in [0, 0.4), else at its own head count (0 = MLP-only) and MLP width from the space;
        the first layer keeps attention (llama.cpp reads the head size from it). Why: adapters trained on uniform
        shapes only made heterogeneous subnets worse (WikiText-2 test ppl 42.5 -> 50.4 at 80% latency); but 400
        more steps with 2 of these per step made it worse still (68.4: see README), so it is off by default.
        With `--heterogeneous-shapes solver`, one of the exact solver's shapes instead (`_solver_pool`)."""
        if self.solver_pool is not None:
            return rng.choice(self.solver_pool)
        removal = rng.uniform(0.0, 0.4)
        heads = (0,) + tuple(self.space.heads)
        shapes = [(rng.choice(self.space.heads), rng.choice(self.space.mlp))]
        for _ in range(1, self.dims.num_layers):
            shapes.append(REMOVED if rng.random() < removal else (rng.choice(heads), rng.choice(self.space.mlp)))
        return tuple(shapes)

    def batch(self, step: int) -> torch.Tensor:
        """(B, T+1) random windows of the token stream; each process of a multi-GPU run gets its own."""
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 64
                                                  + self.accelerator.process_index)
        starts = torch.randint(0, len(self.tokens) - self.config.seq_len - 1, (self.config.batch_size,),
                               generator=generator)
        window = torch.arange(self.config.seq_len + 1)
        return self.tokens[starts[:, None] + window].to(self.accelerator.device)

    def frozen_teacher(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T, V) next-token log-probabilities of the original model: no adapters, no view, no gradients."""
        with torch.no_grad(), self.accelerator.autocast():
            logits = self.loaded.model(input_ids=inputs).logits                         # (B, T, V)
        return F.log_softmax(logits.float(), dim=-1)

    def previous_mean_loss(self) -> torch.Tensor | None:
        """The frozen-teacher balancing reference: the mean distilled loss of the previous step (from the record,
        so it survives a resume); None at the first step (no rescaling then)."""
        history = self.record["history"]
        if not history or len(history[-1]["losses"]) < 2:
            return None
        losses = history[-1]["losses"][1:]
        return torch.tensor(sum(losses) / len(losses))

    def train_step(self, step: int) -> list[float]:
        """K forward/backward passes, gradients accumulated and clipped, one optimizer step; returns each subnet's
        raw loss (cross-entropy for an in-place teacher, KL to the teacher for the others)."""
        ids = self.batch(step)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        self.optimizer.zero_grad(set_to_none=True)
        frozen = self.config.teacher == "frozen"
        teacher = self.frozen_teacher(inputs) if frozen else None
        reference = self.previous_mean_loss() if frozen else None
        raw = []
        for index, candidate in enumerate(self.sandwich(step)):
            noise = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step * 16 + index)
            if not self.adapters.adapts(self.subnet(candidate)):
                raw.append(0.0)          # the full model against itself (frozen teacher): KL 0, nothing to learn
                continue
            with self.adapters.applied(self.loaded.model, self.subnet(candidate), noise) as model, \
                    self.accelerator.autocast():
                logits = model(input_ids=inputs).logits                                  # (B, T, V)
                if teacher is None:      # in place: the largest subnet learns from the data and teaches the rest
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                    teacher = F.log_softmax(logits.detach().float(), dim=-1)
                    reference = loss.detach()
                else:
                    loss = distillation_loss(logits, teacher)
                raw.append(loss.item())
                if index and self.config.balance and reference is not None:
                    loss = balanced(loss, reference)
                self.accelerator.backward(loss)     # inside the view: gradient checkpointing re-runs the subnet
        self._sync_gradients()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.adapters.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return raw

    def _sync_gradients(self) -> None:
        """Average adapter gradients over processes (every process samples the same subnets and router noise, so
        the same experts have gradients everywhere)."""
        if self.accelerator.num_processes == 1:
            return
        for parameter in self.adapters.parameters():
            if parameter.grad is not None:
                parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")

    # ---- the loop -------------------------------------------------------------------------------------------
    def train(self) -> dict:
        start_step = self.record["step"]
        if start_step >= self.config.steps:
            return self.record
        names = ["subnet"] if self.target is not None else (
            ["full", "small"] + [f"r{i}" for i in range(1, self.config.subnets_per_step - 1)])
        bar = tqdm(range(start_step, self.config.steps), initial=start_step, total=self.config.steps,
                   desc="finetune", unit="step", disable=not self.progress)
        for step in bar:
            began = time.perf_counter()
            losses = self.train_step(step)
            self.record["seconds"] += time.perf_counter() - began
            self.record["step"] = step + 1
            self.record["history"].append({"step": step + 1, "subnets": [subnet_key(c) for c in self.sandwich(step)],
                                           "losses": [round(v, 5) for v in losses]})
            bar.set_postfix({n: f"{v:.3f}" for n, v in zip(names, losses)})
            if (step + 1) % self.config.checkpoint_every == 0 or step + 1 == self.config.steps:
                self.save_checkpoint()
        return self.record

    def save_checkpoint(self) -> Path:
        if not self.accelerator.is_main_process:
            return self.out_dir
        return save_checkpoint(self.out_dir, self.accelerator.unwrap_model(self.adapters), self.optimizer,
                               self.record)
