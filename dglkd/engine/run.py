"""Experiments: teacher (trained or from the cache), baseline and distilled student per
seed, then results.json / results.md, TensorBoard logs and the config beside them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dglkd.config import Config, ModelConfig, dump_config, load_config
from dglkd.engine.backends import Backend, make_backend
from dglkd.engine.cache import TeacherCache, matches, teacher_key
from dglkd.engine.env import environment, resolve_device, seed_everything
from dglkd.engine.io import new_run_dir, save_torch, write_json, write_text
from dglkd.engine.loop import PhaseResult, fit
from dglkd.engine.results import summarize_role, write_comparison, write_results
from dglkd.errors import DglkdError
from dglkd.methods import DistillMethod, build_method
from dglkd.methods.base import METHODS, parse_params
from dglkd.models import count_parameters

Say = Callable[[str], None]


def method_variants(config: Config, labels: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Methods to compare: entries of the config's ``compare`` section by label, or
    registered method names with their default constants."""
    chosen = {}
    for label in labels:
        if label in config.compare:
            chosen[label] = (config.compare[label].name, config.compare[label].params())
        elif label in METHODS:
            chosen[label] = (label, {})
        else:
            allowed = ", ".join([*config.compare, *METHODS.names()])
            raise DglkdError(f"--methods: unknown {label!r}; allowed: {allowed}")
    if not chosen:
        raise DglkdError("--methods: name at least one method, e.g. --methods ce,kd")
    return chosen


class Experiment:
    """One config in one run folder."""

    def __init__(self, config: Config, run_dir: Path, say: Say = print) -> None:
        self.config = config
        self.run_dir = run_dir
        self.say = say
        self.device = resolve_device(config.device)
        self.backend: Backend = make_backend(config, self.device)
        self.cache = TeacherCache(config.cache_dir or run_dir.parent / "cache")
        self.formulas: dict[str, str] = {}

    # -- folders ---------------------------------------------------------------------
    @classmethod
    def create(cls, config: Config, out: str | Path, say: Say = print) -> "Experiment":
        run_dir = new_run_dir(out, config.name)
        if config.cache_dir is None:
            config = config.model_copy(update={"cache_dir": str((Path(out) / "cache").resolve())})
        write_text(run_dir / "config.yaml", dump_config(config))
        write_json(run_dir / "environment.json",
                   environment(resolve_device(config.device), config.seeds()))
        say(f"run folder: {run_dir}")
        return cls(config, run_dir, say)

    @classmethod
    def resume(cls, run_dir: str | Path, say: Say = print) -> "Experiment":
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise DglkdError(f"--resume {run_dir}: no config.yaml there (not a dglkd run folder)")
        say(f"resuming {run_dir}")
        return cls(load_config(run_dir / "config.yaml"), run_dir, say)

    def tb_dir(self, phase: str) -> Path | None:
        return self.run_dir / "tb" / phase if self.config.log.tensorboard else None

    # -- phases ------------------------------------------------------------------------
    def _fit(self, phase_name: str, model: nn.Module, method: DistillMethod, teacher: Any,
             train_cfg, side: ModelConfig) -> PhaseResult:
        hparams = {"phase": phase_name, "model": side.model, "method": method.name,
                   "formula": method.formula(), **side.options(),
                   **{f"method.{k}": v for k, v in self.config.method.params().items()},
                   "epochs": train_cfg.epochs, "lr": train_cfg.lr}
        if method.pretrain_epochs():
            self.backend.pretrain(method, teacher, self.run_dir, phase_name)
        phase = self.backend.phase(phase_name, model, method, teacher, train_cfg, hparams)
        result = fit(phase, self.run_dir, self.tb_dir(phase_name), self.config.log.progress)
        self.say(f"  {phase_name}: best val {result.best['val_acc']:.4f} at epoch "
                 f"{result.best_epoch} → test {result.best['test_acc']:.4f} "
                 f"(last epoch test {result.last['test_acc']:.4f})")
        return result

    def teacher(self, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """The trained teacher of this seed: from the cache when its key matches."""
        cfg = self.config
        key = teacher_key(cfg.data.model_dump(mode="json"), cfg.teacher.model_dump(mode="json"),
                          cfg.teacher_train.model_dump(mode="json"), seed)
        seed_everything(seed)
        model = self.backend.new_model(cfg.teacher, "teacher")
        entry = self.cache.load(key)
        if entry is not None:
            model.load_state_dict(entry["state"])
            if matches(entry, self.backend.cache_logits(model)):
                self.say(f"teacher seed {seed}: loaded from cache {self.cache.path(key)} "
                         "(no training)")
                save_torch({"model": entry["state"]}, self.run_dir / "models" / f"teacher_seed{seed}.pt")
                return model, entry["result"]
            self.say(f"teacher seed {seed}: cache entry does not reproduce its outputs; retraining")
        self.say(f"teacher seed {seed}: training {cfg.teacher.model}")
        method = build_method("ce", self.backend.method_context(model, None))
        result = self._fit(f"teacher_seed{seed}", model, method, None, cfg.teacher_train,
                           cfg.teacher).summary()
        self.cache.save(key, model.state_dict(), self.backend.cache_logits(model), result)
        return model, result

    def student(self, role: str, seed: int, teacher: nn.Module, name: str,
                params: dict[str, Any]) -> tuple[nn.Module, DistillMethod, dict]:
        """Train a student named ``role`` with method ``name`` and its ``params``."""
        seed_everything(seed)
        model = self.backend.new_model(self.config.student, "student")
        context = self.backend.method_context(model, teacher)
        method = METHODS.get(name)(parse_params(name, params), context).to(self.device)
        knowledge = self.backend.teacher_knowledge(teacher, method)
        self.formulas[role] = method.formula()
        self.say(f"{role} seed {seed}: {method}")
        result = self._fit(f"{role}_seed{seed}", model, method, knowledge, self.config.train,
                           self.config.student).summary()
        return model, method, result

    # -- whole runs --------------------------------------------------------------------
    def train_teachers(self) -> dict[str, Any]:
        runs, teacher = [], None
        for seed in self.config.seeds():
            self.backend.load(seed)
            teacher, result = self.teacher(seed)
            runs.append(result)
        results = self._header()
        results["teacher"] = summarize_role(self.config.teacher.model,
                                            count_parameters(teacher), runs)
        return self._finish(results)

    def distill(self) -> dict[str, Any]:
        roles: dict[str, list] = {"teacher": [], "baseline": [], "student": []}
        models: dict[str, nn.Module] = {}
        for seed in self.config.seeds():
            self.backend.load(seed)
            models["teacher"], result = self.teacher(seed)
            roles["teacher"].append(result)
            for role, (name, params) in self._student_roles().items():
                models[role], _, result = self.student(role, seed, models["teacher"], name,
                                                       params)
                roles[role].append(result)
        results = self._header()
        for role, runs in roles.items():
            if runs:
                spec = self.config.teacher if role == "teacher" else self.config.student
                results[role] = summarize_role(spec.model, count_parameters(models[role]), runs)
        results["inference"] = self.backend.inference(models["teacher"], models["student"],
                                                      self.config.seed)
        return self._finish(results)

    def _student_roles(self) -> dict[str, tuple[str, dict[str, Any]]]:
        method = self.config.method
        roles = {"baseline": ("ce", {})} if self.config.baseline else {}
        return roles | {"student": (method.name, method.params())}

    def compare(self, labels: list[str]) -> dict[str, Any]:
        """Train the student with each method on the same teachers and seeds."""
        variants = method_variants(self.config, labels)
        runs: dict[str, list] = {"teacher": [], **{label: [] for label in variants}}
        params: dict[str, int] = {}
        for seed in self.config.seeds():
            self.backend.load(seed)
            teacher, result = self.teacher(seed)
            runs["teacher"].append(result)
            params["teacher"] = count_parameters(teacher)
            for label, (name, method_params) in variants.items():
                student, method, result = self.student(label, seed, teacher, name, method_params)
                runs[label].append(result)
                params[label] = count_parameters(student)
                self.formulas[label] = method.formula()
        rows = {label: summarize_role(self.config.teacher.model if label == "teacher"
                                      else self.config.student.model, params[label], seed_runs)
                for label, seed_runs in runs.items()}
        for label, row in rows.items():
            row["formula"] = self.formulas.get(label, "")
        results = {**self._header(), "methods": rows}
        self.say(write_comparison(self.run_dir, results))
        return results

    def _header(self) -> dict[str, Any]:
        cfg = self.config
        return {"name": cfg.name, "dataset": cfg.data.name, "method": cfg.method.name,
                "formula": self.formulas.get("student", ""), "n_runs": cfg.n_runs,
                "seeds": cfg.seeds(), "run_dir": str(self.run_dir)}

    def _finish(self, results: dict[str, Any]) -> dict[str, Any]:
        self.say(write_results(self.run_dir, results))
        return results


def evaluate_run(run_dir: str | Path, say: Say = print) -> dict[str, dict[str, float]]:
    """Re-evaluate every model a run saved (best-validation weights) on its splits."""
    experiment = Experiment.resume(run_dir, say=lambda _msg: None)
    scores: dict[str, dict[str, float]] = {}
    for file in sorted((experiment.run_dir / "models").glob("*_seed*.pt")):
        role, seed = file.stem.rsplit("_seed", 1)
        experiment.backend.load(int(seed))
        side = experiment.config.teacher if role == "teacher" else experiment.config.student
        model = experiment.backend.new_model(side, role)
        model.load_state_dict(torch.load(file)["model"])
        scores[file.stem] = experiment.backend.evaluate(model)
    lines = ["| model | train acc | val acc | test acc |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['train_acc']:.4f} | {s['val_acc']:.4f} | {s['test_acc']:.4f} |"
              for name, s in scores.items()]
    write_json(experiment.run_dir / "evaluation.json", scores)
    say("\n".join(lines))
    return scores
