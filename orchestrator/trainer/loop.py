"""The RL loop. `step` reads as the dataflow diagram in shared/ARCHITECTURE.md:

generate (+ rewards; when, relative to training, is trainer.mode: schedules.py) -> old log-probs -> ref log-probs
-> teacher log-probs -> values -> advantages (+ rollout correction)
-> critic update -> actor update -> weight sync
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from orchestrator.advantages.registry import get_advantage_estimator
from orchestrator import rollout_correction
from orchestrator.kl_control import make_kl_controller
from orchestrator.tracking import Tracker, TrainingProgress, phase_timer, throughput
from orchestrator.tracking.flops import MFU_PREFIX, phase_flops
from orchestrator.tracking.timer import timing_key
from orchestrator.trainer import checkpointing, stages
from orchestrator.trainer.data import PromptStream, prompts_to_batch
from orchestrator.run_errors import TrainingStopped
from orchestrator.trainer.guards import HealthGuard
from orchestrator.trainer.rewards import accuracy_scores, overlong_penalty, rule_scores
from orchestrator.trainer.lineage import DataLineage
from orchestrator.trainer.roles import Roles
from orchestrator.trainer.schedules import make_schedule
from orchestrator.trainer.sync_check import check_rollout_matches_trainer
from workers.batch import Batch
from workers.engines.prompt_sharing import computed_tokens
from workers.rollout.base import SamplingParams
from workers.rollout.layout import concat_rollouts

log = logging.getLogger("baton.trainer")
TRAINING_PHASES = ("old_log_prob", "ref", "values", "update_critic", "update_actor")  # whole-row forwards
POLICY_PHASES = ("old_log_prob", "ref", "update_actor")  # causal-LM forwards: they share prompts (model.share_prompts)


def mean_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    keys = per_rank[0].keys()
    return {k: float(np.mean([m[k] for m in per_rank])) for k in keys}


class RLTrainer:
    def __init__(self, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, roles: Roles,
                 train_rows: list[dict], val_rows: list[dict], tracker: Tracker):
        self.cfg, self.tok, self.roles, self.tracker = cfg, tokenizer, roles, tracker
        self.actor, self.ref, self.critic, self.rm = roles.actor, roles.ref, roles.critic, roles.reward_model
        self.teacher = roles.teacher  # a frozen model scoring the student's samples (on-policy distillation)
        self.rollout = roles.rollout  # the actor group itself when colocated, its own pool when split
        self.stream = PromptStream(train_rows, cfg.data.train_batch_size, cfg.trainer.seed, cfg.data.shuffle)
        self.val_rows = val_rows[: cfg.data.val_size] if cfg.data.val_size else val_rows
        self.estimator = get_advantage_estimator(cfg.algorithm.adv_estimator)
        self.kl_ctrl = make_kl_controller(cfg.algorithm.kl_ctrl.type, dict(cfg.algorithm.kl_ctrl))
        self.ckpt_root = Path(cfg.trainer.output_dir) / "checkpoints"
        self.guard = HealthGuard(cfg.trainer)
        self.last_batch: Batch | None = None
        self.loop_started: float | None = None
        self.step = 0
        self.flops = phase_flops(cfg.model.path, on_gpu=bool(cfg.cluster.use_gpu))
        self.rollout_matches_trainer = False  # rollout_correction.mode=auto: verified equal at the last check
        self.policy_version = 0  # updates applied to the weights the rollout engines hold
        self.schedule = make_schedule(cfg.trainer.mode, cfg.rollout.stream)
        self.lineage = DataLineage(Path(cfg.trainer.output_dir) / "lineage.jsonl")

    # --- sampling parameters ------------------------------------------------------------

    def sampling(self, *, n: int, temperature: float, seed: int) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(n=n, temperature=temperature, top_p=r.top_p if temperature > 0 else 1.0,
                              top_k=r.top_k if temperature > 0 else -1, max_new_tokens=r.max_new_tokens, seed=seed,
                              stop_token_ids=(self.tok.eos_token_id,),
                              repetition_stop_window=r.repetition_stop_window,
                              repetition_stop_prob=r.repetition_stop_prob)

    # --- stages ---------------------------------------------------------------------------

    def score(self, batch: Batch) -> Batch:
        """Sequence scores: weighted rule reward (+ reward model) (+ overlong shaping)."""
        r = self.cfg.reward
        scores = r.rule_weight * rule_scores(batch, self.cfg, self.tok)
        if self.rm is not None:
            scores = scores + r.reward_model.weight * self.rm.compute_rm_score(batch)["rm_scores"]
        if r.overlong.enable:
            scores = scores + overlong_penalty(stages.response_lengths(batch), self.cfg.rollout.max_new_tokens,
                                               r.overlong.buffer_len, r.overlong.penalty_factor)
        batch["scores"] = scores.float()
        batch["accuracy"] = accuracy_scores(batch, self.cfg, self.tok)
        return batch

    def draw_prompts(self, step: int, round_: int) -> tuple[Batch, SamplingParams]:
        """The next prompts of the stream and the sampling parameters of step `step`, round `round_`.

        Each uid names the epoch and the dataset row (`e<epoch>s<step>r<round>-<row>`), which is what
        the data lineage counts to show every prompt is trained on once per epoch.
        """
        rows = self.stream.next_rows()
        prompts = prompts_to_batch(rows, self.tok, uid_prefix=f"e{self.stream.epoch}s{step}r{round_}")
        return prompts, self.rollout_params(step, round_)

    def rollout_params(self, step: int, round_: int) -> SamplingParams:
        """Training-rollout sampling of step `step`, round `round_` (its own seed)."""
        return self.sampling(n=self.cfg.rollout.n, temperature=self.cfg.rollout.temperature,
                             seed=self.cfg.trainer.seed * 100003 + step * 101 + round_)

    def finish_rollout(self, prompts: Batch, out: Batch, version: int) -> Batch:
        """Score a generated batch and stamp it with the policy version that generated it."""
        out = self.score(out)
        if self.estimator.needs_baseline_rollout:
            out = self.baseline_rollout(prompts, out)
        out["policy_version"] = torch.full((len(out),), version, dtype=torch.long)
        return out

    def generate(self, metrics: dict[str, float]) -> Batch:
        """Roll out one batch of prompts and score it; with dynamic sampling, refill until full."""
        ds = self.cfg.algorithm.dynamic_sampling
        want = self.cfg.data.train_batch_size
        kept: list[Batch] = []
        groups_kept = groups_seen = rounds = 0
        while rounds == 0 or (ds.enable and groups_kept < want and rounds < ds.max_rounds):
            rounds += 1
            prompts, params = self.draw_prompts(self.step, rounds)
            out = self.finish_rollout(prompts, self.rollout.generate(prompts, params), self.policy_version)
            self.rollout_metrics(out, metrics)
            if ds.enable:
                out, n_kept, n_seen = stages.keep_informative_groups(out)
                groups_kept, groups_seen = groups_kept + n_kept, groups_seen + n_seen
            kept.append(out)
        batch = concat_rollouts(kept, self.tok.pad_token_id)
        if ds.enable:
            metrics.update({"dynamic_sampling/rounds": rounds, "dynamic_sampling/groups_kept": groups_kept,
                            "dynamic_sampling/groups_seen": groups_seen})
            batch = self._fill_batch(batch, groups_kept, want)
        return batch

    def _fill_batch(self, batch: Batch, groups_kept: int, want: int) -> Batch:
        rows = want * self.cfg.rollout.n
        if groups_kept >= want:
            return batch.slice(0, rows)
        message = (f"dynamic sampling kept {groups_kept} of {want} prompt groups after "
                   f"{self.cfg.algorithm.dynamic_sampling.max_rounds} rounds (algorithm.dynamic_sampling.max_rounds)")
        if self.cfg.algorithm.dynamic_sampling.on_exhausted == "error" or groups_kept == 0:
            raise RuntimeError(message)
        log.warning("%s; topping the batch up by repeating kept groups", message)
        reps = -(-rows // len(batch))
        return Batch.concat([batch] * reps).slice(0, rows)

    def baseline_rollout(self, prompts: Batch, batch: Batch) -> Batch:
        """ReMax: the score of a greedy response to each prompt, repeated over that prompt's samples."""
        greedy = self.score(self.rollout.generate(prompts, self.sampling(n=1, temperature=0.0, seed=0)))
        batch["baseline_scores"] = greedy["scores"].repeat_interleave(self.cfg.rollout.n)
        return batch

    def rollout_metrics(self, batch: Batch, metrics: dict[str, float]) -> None:
        lengths = stages.response_lengths(batch)
        metrics.update({"reward/mean": float(batch["scores"].mean()), "reward/std": float(batch["scores"].std()),
                        "train/accuracy": float(batch["accuracy"].mean()),
                        "response_length/mean": float(lengths.mean()),
                        "response_length/clip_frac": float((lengths >= self.cfg.rollout.max_new_tokens).float().mean())})
        for k, v in (batch.meta.get("rollout_stats") or {}).items():
            if isinstance(v, (int, float)):
                metrics[f"rollout/{k}"] = float(v)

    def old_log_probs(self, batch: Batch, m: dict[str, float], stale: bool = False) -> Batch:
        """pi_old of the sampled tokens, recomputed by the training engine; the gap to the rollout's log-probs is
        logged and checked. With rollout_correction.mode=bypass the rollout's log-probs are pi_old and the
        recompute runs only on verify steps (hybrid.verify_every), for the gap and the corruption alarm; with
        auto, the same while the last verified gap was within equal_tolerance (orchestrator/rollout_correction.py).
        A `stale` batch (generated by older weights, trainer.mode=one_step_off) never changes auto's verdict (its
        gap is the policy's own change, not an engine difference); while the engines are verified equal, its
        rollout log-probs are the behaviour policy's and serve as pi_old, as in textbook PPO."""
        rc = self.cfg.algorithm.rollout_correction
        every = self.cfg.hybrid.verify_every
        use_rollout = rc.mode == "bypass" or (rc.mode == "auto" and self.rollout_matches_trainer)
        if use_rollout and not (every and self.step % every == 0):
            batch["old_log_probs"] = batch["rollout_log_probs"]
            m["rollout_correction/recomputed"] = 0.0
            return batch
        with phase_timer("old_log_prob", m):
            batch = batch.union(self.actor.compute_log_prob(batch))
        m["rollout_correction/recomputed"] = 1.0
        check_rollout_matches_trainer(batch, self.cfg, self.step, m, self.roles, stale=stale)
        if rc.mode == "auto" and not stale:
            gap = m.get("sync/logprob_mean_abs_diff", math.inf)
            self.rollout_matches_trainer = math.isfinite(gap) and gap <= rc.equal_tolerance
        if rc.mode == "bypass" or (stale and use_rollout):  # measured above; pi_old stays the behaviour policy
            batch["old_log_probs"] = batch["rollout_log_probs"]
        return batch

    # --- one step -------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        m: dict[str, float] = {}
        with phase_timer("generate", m):
            batch = self.schedule.take(self, m)
        tokens = float(batch["response_mask"].sum())
        stale = self.staleness_metrics(batch, m)
        self.lineage.record(self.step, batch)
        batch = self.old_log_probs(batch, m, stale)
        if self.ref is not None:
            with phase_timer("ref", m):
                batch = batch.union(self.ref.compute_ref_log_prob(batch))
        if self.teacher is not None:
            with phase_timer("teacher", m):
                batch = batch.union(self.teacher.compute_teacher_log_prob(batch))
            m.update(stages.teacher_metrics(batch))
        if self.critic is not None:
            with phase_timer("values", m):
                batch = batch.union(self.critic.compute_values(batch))
        with phase_timer("advantage", m):
            batch, kl_metrics = stages.token_level_rewards(batch, self.cfg, self.kl_ctrl)
            batch = stages.advantages(batch, self.cfg)
            # a stale batch whose pi_old was recomputed (engines not verified equal) is weighted as tis
            batch, correction_metrics = rollout_correction.correct(batch, self.cfg.algorithm.rollout_correction,
                                                                   stale=stale and not self.rollout_matches_trainer)
        m.update(kl_metrics)
        m.update(correction_metrics)
        if self.critic is not None:
            with phase_timer("update_critic", m):
                m.update(mean_metrics(self.critic.update_critic(batch)))
        if self.critic is None or self.step > self.cfg.critic.warmup_steps:
            with phase_timer("update_actor", m):
                m.update(mean_metrics(self.actor.update_actor(batch)))
        self.schedule.before_sync(self, m)
        with phase_timer("sync", m):
            m.update(self.roles.sync_weights(self.step))
        self.policy_version = self.step
        self.record_throughput(m, generated=tokens, attended=float(batch["attention_mask"].sum()),
                               policy_computed=self.policy_tokens_computed(batch))
        self.last_batch = batch
        return m

    def staleness_metrics(self, batch: Batch, m: dict[str, float]) -> bool:
        """How many updates behind the trained weights each sample's policy is; True when any is behind."""
        behind = (self.policy_version - batch["policy_version"]).float()
        m["async/staleness_mean"], m["async/staleness_max"] = float(behind.mean()), float(behind.max())
        return bool(behind.max() > 0)

    def policy_tokens_computed(self, batch: Batch) -> float:
        """Tokens the actor's and ref's forwards compute: with prompt sharing (FSDP2) each prompt once per uid."""
        if not (self.cfg.model.share_prompts and self.cfg.trainer.backend == "fsdp2" and "uid" in batch.non_tensors):
            return float(batch["attention_mask"].sum())
        prompt_width = batch["input_ids"].shape[1] - batch["responses"].shape[1]
        return float(computed_tokens(batch["attention_mask"], prompt_width, list(batch.non_tensors["uid"])))

    def record_throughput(self, m: dict[str, float], *, generated: float, attended: float,
                          policy_computed: float | None = None) -> None:
        """`perf/tokens_per_s/<phase>` and `perf/mfu/<phase>` (see orchestrator/tracking/flops.py): generation
        counts generated tokens, training-side phases every attended token (the throughput a user gets); MFU
        counts the tokens the forwards compute, which with prompt sharing is each prompt once per uid for
        the causal-LM phases (`policy_computed`)."""
        for phase in ("generate", *TRAINING_PHASES):
            if timing_key(phase) not in m or (phase == "generate" and m.get("async/overlapped")):
                continue
            rate = throughput(m, phase, generated if phase == "generate" else attended)
            ranks = (self.rollout if phase == "generate" else self.actor).world_size
            if phase in POLICY_PHASES and policy_computed is not None and attended > 0:
                rate *= policy_computed / attended
            mfu = self.flops.mfu(phase, rate, ranks)
            if mfu is not None:
                m[f"{MFU_PREFIX}{phase}"] = mfu

    # --- validation, checkpoints, the loop ----------------------------------------------------

    def validate(self) -> dict[str, float]:
        prompts = prompts_to_batch(self.val_rows, self.tok, uid_prefix="val")
        params = self.sampling(n=1, temperature=self.cfg.rollout.val_temperature, seed=self.cfg.trainer.seed)
        out = self.score(self.rollout.generate(prompts, params))
        return {"val/accuracy": float(out["accuracy"].mean()), "val/reward": float(out["scores"].mean()),
                "val/response_length": float(stages.response_lengths(out).mean())}

    def update_shift(self) -> float:
        """Mean |log pi_new - log pi_old| per response token of a few rows of this step's batch.

        The model about to be checkpointed, scored against the log-probs the step started from:
        a healthy update moves them by a fraction of a nat; a diverged one (lr far too high) by
        orders of magnitude or to NaN, which nothing in the step's own metrics shows yet.
        """
        probe = self.last_batch.slice(0, min(len(self.last_batch), 2 * self.actor.world_size))
        new = self.actor.compute_log_prob(probe)["old_log_probs"]
        mask = probe["response_mask"].bool()
        shift = (new - probe["old_log_probs"]).abs()[mask]
        return float(shift.mean()) if shift.numel() else 0.0

    def save(self, record: dict[str, float]) -> Path:
        """A checkpoint of this step; `record` (its metrics so far) lets a resume restore its log line."""
        state = {"step": self.step, "stream": self.stream.state(), "kl_coef": self.kl_ctrl.value,
                 "guard": self.guard.state(), "metrics_record": record, "config": OmegaConf.to_container(self.cfg),
                 "rollout_matches_trainer": self.rollout_matches_trainer}

        def write_workers(tmp: Path) -> None:
            for group, name in ((self.actor, "actor"), (self.critic, "critic")):
                if group is not None:  # every rank reports what it wrote; all of it must be where we read
                    checkpointing.verify_views(tmp / name, group.save_checkpoint(str(tmp / name)), name, group.nodes)
            self.tok.save_pretrained(str(tmp / "actor"))  # a checkpoint reloads with the tokenizer that wrote it
            self.schedule.save(tmp)  # one_step_off: the batch generated for the next step

        return checkpointing.save_checkpoint(self.ckpt_root, self.step, write_workers, state,
                                             self.cfg.trainer.keep_checkpoints)

    def resume(self) -> Path | None:
        """Continue from the latest checkpoint: weights, optimizer, every RNG, the data position, the log."""
        ckpt = checkpointing.latest_checkpoint(self.ckpt_root)
        if ckpt is None:
            return None
        state = checkpointing.load_trainer_state(ckpt)
        self.actor.load_checkpoint(str(ckpt / "actor"))
        if self.critic is not None:
            self.critic.load_checkpoint(str(ckpt / "critic"))
        self.step, self.kl_ctrl.value = state["step"], state["kl_coef"]
        self.stream.restore(state["stream"])
        self.guard.restore(state["guard"])
        self.rollout_matches_trainer = bool(state.get("rollout_matches_trainer", False))
        self.policy_version = self.step
        self.schedule.load(ckpt)
        self.tracker.rewind(self.step, restore=state["metrics_record"])
        self.lineage.rewind(self.step)
        log.info("resumed from %s at step %d", ckpt, self.step)
        return ckpt

    def _stop(self, reason: str) -> TrainingStopped:
        latest = checkpointing.latest_checkpoint(self.ckpt_root)
        return TrainingStopped(self.step, reason, str(latest) if latest else None)

    def fit(self, *, resume: bool) -> dict[str, Any]:
        """Train to trainer.total_steps. `resume`: continue from the latest checkpoint if there is one."""
        cfg = self.cfg.trainer
        resumed = self.resume() if resume else None
        if resumed is None:
            self.tracker.rewind(0)  # a restart from scratch redoes every step; the step-0 record stays
            self.lineage.rewind(0)
        self.roles.sync_weights(self.step)
        self.loop_started = time.monotonic()
        if not self.tracker.has_record(self.step):  # the initial validation, once per run
            self.tracker.log(self.step, self.validate())
        progress = TrainingProgress(cfg.total_steps, self.step, self.cfg.trainer.experiment_name, "reward/mean",
                                    "val/accuracy", disable=not cfg.progress_bar, mininterval_s=1.0)
        with progress:
            while self.step < cfg.total_steps:
                self.step += 1
                step_start = time.monotonic()
                metrics = self.train_step()
                verdict = self.guard.check(metrics)
                if verdict.stop:
                    metrics["guard/stopped"] = 1.0
                    self.tracker.log(self.step, metrics)
                    raise self._stop(verdict.stop)
                final = self.step == cfg.total_steps
                if final or (cfg.val_every and self.step % cfg.val_every == 0):
                    with phase_timer("validate", metrics):
                        metrics.update(self.validate())
                if final or (cfg.save_every and self.step % cfg.save_every == 0):
                    self._checkpoint(metrics, verdict.healthy)
                metrics["timing_s/step"] = time.monotonic() - step_start
                self.tracker.log(self.step, metrics)
                progress.update(self.step, metrics)
        return {"skipped_steps": self.guard.skipped_total}

    @property
    def loop_seconds(self) -> float:
        """Wall time of this fit() since weights were synced (validation and checkpoints included)."""
        return time.monotonic() - self.loop_started if self.loop_started is not None else 0.0

    def _checkpoint(self, metrics: dict[str, float], healthy: bool) -> None:
        """Save this step, unless it is unhealthy: a non-finite or diverged model is never checkpointed."""
        if not healthy:
            metrics["checkpoint/deferred"] = 1.0
            log.warning("step %d: not checkpointed (the guards flagged this step)", self.step)
            return
        with phase_timer("save", metrics):
            shift = metrics["guard/update_shift"] = self.update_shift()
            limit = self.cfg.trainer.max_update_shift
            if not shift <= limit:  # NaN included
                self.tracker.log(self.step, {**metrics, "guard/stopped": 1.0})
                raise self._stop(f"the update moved the log-probs of this step's tokens by {shift:.3g} nats on "
                                 f"average (> trainer.max_update_shift={limit}): the model diverged and was not "
                                 "checkpointed")
            record = {**metrics, "checkpoint/step": float(self.step)}
            self.save(record)
            metrics["checkpoint/step"] = float(self.step)
