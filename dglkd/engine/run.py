"""Experiments: teacher (trained or from the cache), baseline and distilled student per
seed, then results.json / results.md, TensorBoard logs and the config beside them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from dglkd.config import Config, ModelConfig, TrainConfig, dump_config, load_config
from dglkd.engine.backends import Backend, make_backend
from dglkd.engine.cache import TeacherArtifact, TeacherCache, matches, teacher_key
from dglkd.engine.env import (environment, resolve_device, seed_everything,
                              subnormals_flushed)
from dglkd.engine.io import (MANIFEST, load_torch_bytes, new_run_dir, remove_stray_tmp,
                             remove_unstarted, save_torch, track, verified_bytes, write_json,
                             write_text)
from dglkd.engine.loop import PhaseResult, fit
from dglkd.engine.parallel import broadcast, is_main, local_device
from dglkd.engine.results import summarize_role, write_comparison, write_results
from dglkd.engine.step import batch_terms, make_phase, pretrain, teacher_knowledge
from dglkd.errors import DglkdError, quoted
from dglkd.methods import Recipe
from dglkd.methods.base import METHODS
from dglkd.methods.recipe import build_recipe, recipe_spec
from dglkd.models import count_parameters

Say = Callable[[str], None]
TEACHER_RECIPE = {"terms": {"ce": 1.0}}
REFINED = "refined_teacher"  # the row of the teacher's predictions after teacher_refine


def method_variants(config: Config, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Recipes to compare, by label: an entry of the config's ``compare`` section; the
    config's own ``method`` (``method``, or the name it gives), with its constants; or a
    registered method's paper recipe with default constants."""
    own = config.method.raw()
    chosen = {}
    for label in labels:
        if label in config.compare:
            chosen[label] = config.compare[label].raw()
        elif label == "method" or label == own.get("name"):
            chosen[label] = own
        elif label in METHODS:
            chosen[label] = {"name": label}
        else:
            allowed = ", ".join(["method", *config.compare, *METHODS.names()])
            raise DglkdError(f"--methods: unknown {quoted(label)}; allowed: {allowed}")
    if not chosen:
        raise DglkdError("--methods: name at least one method, e.g. --methods ce,kd")
    return chosen


def run_config(run_dir: str | Path, command: str = "--resume") -> Config:
    """The config a run folder was started with (its ``imports`` are imported again);
    ``command`` (``--resume`` or ``evaluate``) is what errors name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DglkdError(f"{command} {run_dir}: no such folder; give a run folder (printed "
                         "as 'run folder: ...' when the run started)")
    if not (run_dir / "config.yaml").is_file():
        if (run_dir / MANIFEST).is_file():  # killed while its config was being written
            remove_stray_tmp(run_dir)
            raise DglkdError(f"{command} {run_dir}: the run stopped before its config.yaml "
                             "was saved, so nothing was trained; start it again from its "
                             "CONFIG")
        raise DglkdError(f"{command} {run_dir}: no config.yaml there (not a dglkd run folder)")
    _, problem = verified_bytes(run_dir, run_dir / "config.yaml")
    if problem is not None:
        raise DglkdError(f"{run_dir / 'config.yaml'}: {problem}; the run cannot be resumed "
                         "or evaluated with it; start a new run")
    track(run_dir)  # later writes (checkpoints, models, results) go into its manifest
    remove_stray_tmp(run_dir)
    return load_config(run_dir / "config.yaml")


@dataclass
class Teacher:
    """A trained teacher of one seed: the model, its phase result and its cache artifact."""

    model: nn.Module
    result: dict[str, Any]
    artifact: TeacherArtifact


class Experiment:
    """One config in one run folder."""

    def __init__(self, config: Config, run_dir: Path, say: Say = print) -> None:
        self.config = config
        self.run_dir = run_dir
        # With several ranks, rank 0 speaks and writes for all of them.
        self.say = say if is_main() else (lambda _message: None)
        self.device = local_device(resolve_device(config.device))
        self.backend: Backend = make_backend(config, self.device, say)
        self.cache = TeacherCache(config.cache_dir or run_dir.parent / "cache")
        if is_main():
            self.cache.create()
        self.formulas: dict[str, str] = {}

    # -- folders ---------------------------------------------------------------------
    @classmethod
    def create(cls, config: Config, out: str | Path, say: Say = print) -> "Experiment":
        if config.cache_dir is None:
            config = config.model_copy(update={"cache_dir": str((Path(out) / "cache").resolve())})
        run_dir = None
        if is_main():
            run_dir = new_run_dir(out, config.name)
            write_text(run_dir / "config.yaml", dump_config(config))
            write_json(run_dir / "environment.json",
                       environment(resolve_device(config.device), config.seeds()))
            say(f"run folder: {run_dir}")
        try:
            return cls(config, broadcast(run_dir), say)
        except (DglkdError, OSError, MemoryError):  # e.g. the data cannot be loaded
            if run_dir is not None and remove_unstarted(run_dir):
                say(f"removed the run folder {run_dir}: the run failed before anything "
                    "was trained")
            raise

    @classmethod
    def resume(cls, run_dir: str | Path, say: Say = print,
               command: str = "--resume") -> "Experiment":
        say(f"resuming {run_dir}")
        return cls(run_config(run_dir, command), Path(run_dir), say)

    def tb_dir(self, phase: str) -> Path | None:
        return self.run_dir / "tb" / phase if self.config.log.tensorboard else None

    # -- phases ------------------------------------------------------------------------
    def objective(self, recipe: dict[str, Any], key: str, student: nn.Module,
                  teacher: Teacher | None) -> Recipe:
        context = (self.backend.method_context(student, teacher.model, teacher.artifact)
                   if teacher is not None else self.backend.method_context(student, None))
        return build_recipe(recipe_spec(recipe, key), context, key).to(self.device)

    # -- the start-up check ------------------------------------------------------------
    def check(self, roles: dict[str, tuple[dict[str, Any], str]]) -> None:
        """Before anything trains: the teacher's phase and each student role's (``roles``:
        role → (recipe, config key)) built with untrained models and stepped once, forward
        and backward, on a small batch of the phase's kind, the teacher's knowledge of it
        computed on the spot. A combination of batch modes, models and methods that cannot
        run is refused in one line within seconds, not after the teacher has trained."""
        cfg = self.config
        self.backend.load(cfg.seed)
        teacher = self.backend.new_model(cfg.teacher, "teacher")
        self._check_phase(teacher, TEACHER_RECIPE, "teacher", None, cfg.teacher_train)
        for recipe, key in roles.values():
            student = self.backend.new_model(cfg.student, "student")
            self._check_phase(student, recipe, key, teacher, cfg.train)

    def _check_phase(self, model: nn.Module, recipe: dict[str, Any], key: str,
                     teacher: nn.Module | None, train_cfg: TrainConfig) -> None:
        context = self.backend.probe_context(model, teacher)
        objective = build_recipe(recipe_spec(recipe, key), context, key).to(self.device)
        if objective.pretrain_epochs() and teacher is None:
            raise DglkdError(f"{key}: {objective.name!r} has a first stage on the teacher; "
                             "it needs one")
        reads = teacher if objective.needs_teacher else None
        names = objective.required_features()[1] if reads is not None else []
        batch = self.backend.probe_batch(model, train_cfg, reads, names,
                                         objective.reads_graph())
        objective.set_epoch(0)
        objective.backward(batch_terms(batch, model, objective, teacher), model)
        if objective.pretrain_epochs():
            objective.pretrain_terms(teacher_knowledge(batch, teacher, names), batch.index)

    def _fit(self, phase_name: str, model: nn.Module, objective: Recipe,
             teacher: Teacher | None, train_cfg: TrainConfig,
             side: ModelConfig) -> PhaseResult:
        """Train one phase (after the objective's first stage, if it has one)."""
        hparams = {"phase": phase_name, "model": side.model, "method": objective.name,
                   "formula": objective.formula(), **side.options(),
                   **{f"method.{label}.{k}": v for label, constants in
                      objective.constants().items() for k, v in constants.items()},
                   "epochs": train_cfg.epochs, "lr": train_cfg.lr}
        knowledge, frozen = None, None
        if teacher is not None:
            knowledge = self.backend.teacher_knowledge(teacher.model, objective, teacher.artifact)
            frozen = teacher.model
        generator = self.backend.generator()
        with_graph = objective.reads_graph()
        batches = self.backend.batches(model, train_cfg, knowledge, generator, with_graph)
        if objective.pretrain_epochs():
            pretrain(objective, self.backend.batches(model, self.config.train, knowledge,
                                                     self.backend.generator(), with_graph),
                     frozen, self.config.train)
        phase = make_phase(phase_name, model, objective, batches, train_cfg,
                           lambda: self.backend.evaluate(model, train_cfg), teacher=frozen,
                           generator=generator, hparams=hparams,
                           on_end=self.backend.projector(model, objective, frozen))
        with subnormals_flushed(self.device):
            result = fit(phase, self.run_dir, self.tb_dir(phase_name), self.config.log.progress)
        self.say(f"  {phase_name}: best val {result.best['val_acc']:.4f} at epoch "
                 f"{result.best_epoch} → test {result.best['test_acc']:.4f} "
                 f"(last epoch test {result.last['test_acc']:.4f})")
        return result

    def teacher(self, seed: int) -> Teacher:
        """The trained teacher of this seed: from the cache when its key matches."""
        cfg = self.config
        key = teacher_key(cfg.data.applicable(), cfg.teacher.model_dump(mode="json"),
                          cfg.teacher_train.model_dump(mode="json"), seed)
        seed_everything(seed)
        model = self.backend.new_model(cfg.teacher, "teacher")
        artifact = self.cache.artifact(key)
        entry = self.cache.load(key, self.say)
        if entry is not None:
            model.load_state_dict(entry["state"])
            if matches(entry, self.backend.cache_logits(model)):
                self.say(f"teacher seed {seed}: loaded from cache {self.cache.path(key)} "
                         "(no training)")
                if is_main():
                    save_torch({"model": entry["state"]},
                               self.run_dir / "models" / f"teacher_seed{seed}.pt")
                return Teacher(model, entry["result"], artifact)
            self.say(f"teacher seed {seed}: cache entry does not reproduce its outputs; "
                     "retraining from a fresh initialisation")
            seed_everything(seed)  # never from the entry's weights, just loaded above
            model = self.backend.new_model(cfg.teacher, "teacher")
        done = (self.run_dir / "phases" / f"teacher_seed{seed}.json").is_file()
        self.say(f"teacher seed {seed}: " + ("finished in this run folder, loading it" if done
                                             else f"training {cfg.teacher.model}"))
        objective = self.objective(TEACHER_RECIPE, "teacher", model, None)
        result = self._fit(f"teacher_seed{seed}", model, objective, None, cfg.teacher_train,
                           cfg.teacher).summary()
        logits = self.backend.cache_logits(model)
        if is_main():
            self.cache.save(key, model.state_dict(), logits, result)
        return Teacher(model, result, artifact)

    def student(self, role: str, seed: int, teacher: Teacher, recipe: dict[str, Any],
                key: str = "method") -> tuple[nn.Module, Recipe, dict]:
        """Train a student named ``role`` with the objective ``recipe`` (a config section)."""
        seed_everything(seed)
        model = self.backend.new_model(self.config.student, "student")
        objective = self.objective(recipe, key, model, teacher)
        self.formulas[role] = objective.formula()
        self.say(f"{role} seed {seed}: {objective}")
        result = self._fit(f"{role}_seed{seed}", model, objective, teacher, self.config.train,
                           self.config.student).summary()
        return model, objective, result

    def teachers(self, seed: int, runs: dict[str, list]) -> Teacher:
        """Load the data of ``seed`` and its teacher; its scores go to ``runs["teacher"]``
        and, with ``teacher_refine``, its refined predictions' to ``runs["refined_teacher"]``."""
        self.backend.load(seed)
        teacher = self.teacher(seed)
        runs["teacher"].append(teacher.result)
        if self.config.teacher_refine is not None:
            refined = self.backend.refined_teacher(teacher.model, teacher.artifact)
            self.say(f"  teacher seed {seed} + correct and smooth: val {refined['val_acc']:.4f}"
                     f" → test {refined['test_acc']:.4f}")
            runs.setdefault(REFINED, []).append(refined)
        return teacher

    def _teacher_rows(self, teacher: Teacher, runs: dict[str, list]) -> dict[str, Any]:
        params = count_parameters(teacher.model)
        model = self.config.teacher.model
        return {role: summarize_role(model if role == "teacher" else f"{model} + C&S", params,
                                     runs[role])
                for role in ("teacher", REFINED) if runs.get(role)}

    # -- whole runs --------------------------------------------------------------------
    def train_teachers(self) -> dict[str, Any]:
        self.check({})
        runs: dict[str, list] = {"teacher": []}
        for seed in self.config.seeds():
            teacher = self.teachers(seed, runs)
        return self._finish({**self._header(), **self._teacher_rows(teacher, runs)})

    def distill(self) -> dict[str, Any]:
        self.check({role: (recipe, "method") for role, recipe in self._student_roles().items()})
        roles: dict[str, list] = {"teacher": [], "baseline": [], "student": []}
        models: dict[str, nn.Module] = {}
        for seed in self.config.seeds():
            teacher = self.teachers(seed, roles)
            for role, recipe in self._student_roles().items():
                models[role], _, result = self.student(role, seed, teacher, recipe)
                roles[role].append(result)
        results = {**self._header(), **self._teacher_rows(teacher, roles)}
        for role in ("baseline", "student"):
            if roles[role]:
                results[role] = summarize_role(self.config.student.model,
                                               count_parameters(models[role]), roles[role])
        results["inference"] = self.backend.inference(teacher.model, models["student"],
                                                      self.config.seed)
        return self._finish(results)

    def _student_roles(self) -> dict[str, dict[str, Any]]:
        roles = {"baseline": {"terms": {"ce": 1.0}}} if self.config.baseline else {}
        return roles | {"student": self.config.method.raw()}

    def compare(self, labels: list[str]) -> dict[str, Any]:
        """Train the student with each method on the same teachers and seeds."""
        variants = method_variants(self.config, labels)
        self.check({label: (recipe, f"compare.{label}") for label, recipe in variants.items()})
        runs: dict[str, list] = {"teacher": [], **{label: [] for label in variants}}
        params: dict[str, int] = {}
        constants: dict[str, Any] = {}
        for seed in self.config.seeds():
            teacher = self.teachers(seed, runs)
            for label, recipe in variants.items():
                student, objective, result = self.student(label, seed, teacher, recipe,
                                                          f"compare.{label}")
                runs[label].append(result)
                params[label] = count_parameters(student)
                constants[label] = objective.constants()
        rows = {**self._teacher_rows(teacher, runs),
                **{label: summarize_role(self.config.student.model, params[label], runs[label])
                   for label in variants}}
        for label, row in rows.items():
            row["formula"] = self.formulas.get(label, "")
            row["constants"] = constants.get(label, {})
        results = {**self._header(), "methods": rows}
        if is_main():
            self.say(write_comparison(self.run_dir, results))
        return results

    def _header(self) -> dict[str, Any]:
        cfg = self.config
        method = "+".join(recipe_spec(cfg.method.raw()))
        return {"name": cfg.name, "dataset": cfg.data.name, "method": method,
                "formula": self.formulas.get("student", ""), "n_runs": cfg.n_runs,
                "seeds": cfg.seeds(), "run_dir": str(self.run_dir)}

    def _finish(self, results: dict[str, Any]) -> dict[str, Any]:
        if is_main():
            self.say(write_results(self.run_dir, results))
        return results


def evaluate_run(run_dir: str | Path, say: Say = print) -> dict[str, dict[str, float]]:
    """Re-evaluate every model a run saved (best-validation weights) on its splits."""
    experiment = Experiment.resume(run_dir, say=lambda _msg: None, command="evaluate")
    scores: dict[str, dict[str, float]] = {}
    for file in sorted((experiment.run_dir / "models").glob("*_seed*.pt")):
        role, seed = file.stem.rsplit("_seed", 1)
        experiment.backend.load(int(seed))
        side = experiment.config.teacher if role == "teacher" else experiment.config.student
        model = experiment.backend.new_model(side, role)
        data, problem = verified_bytes(experiment.run_dir, file)
        if problem is not None:
            raise DglkdError(f"{file}: {problem}; not evaluated; resume the run (--resume "
                             f"{experiment.run_dir}) to train that phase again")
        model.load_state_dict(load_torch_bytes(data)["model"])
        scores[file.stem] = experiment.backend.evaluate(model)
    lines = ["| model | train acc | val acc | test acc |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['train_acc']:.4f} | {s['val_acc']:.4f} | {s['test_acc']:.4f} |"
              for name, s in scores.items()]
    write_json(experiment.run_dir / "evaluation.json", scores)
    say("\n".join(lines))
    return scores
