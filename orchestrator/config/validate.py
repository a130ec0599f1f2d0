"""Checks that need more than types: cross-field arithmetic, registry names, files on disk.

All run on the driver before Ray starts, and each failure names the full key path.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

from omegaconf import DictConfig

from orchestrator.config.errors import ConfigError
from orchestrator.config.model_files import check_model_dir, hf_config

Check = Callable[[DictConfig], None]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def _one_of(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not one of: {', '.join(allowed)}")


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value <= 0:
            raise ConfigError(key, f"must be > 0, got {value}")


def world_size(cfg: DictConfig) -> int:
    return cfg.cluster.nnodes * cfg.cluster.devices_per_node


def dp_world_size(cfg: DictConfig) -> int:
    """Data-parallel ranks of the policy: every rank under FSDP2, what TP x PP leaves under Megatron."""
    if cfg.trainer.backend != "megatron":
        return world_size(cfg)
    m = cfg.actor.megatron
    return max(world_size(cfg) // (m.tensor_model_parallel_size * m.pipeline_model_parallel_size), 1)


@check
def _sizes_positive(cfg: DictConfig) -> None:
    _positive(cfg, "trainer.total_steps", "data.train_batch_size", "data.max_prompt_length",
              "actor.ppo_mini_batch_size", "actor.ppo_epochs", "actor.micro_batch_size",
              "actor.log_prob_micro_batch_size", "rollout.n", "rollout.max_new_tokens", "rollout.max_batch_size",
              "cluster.nnodes", "cluster.devices_per_node", "cluster.rpc_timeout_s", "cluster.init_timeout_s",
              "hybrid.bucket_bytes")


@check
def _batch_divisibility(cfg: DictConfig) -> None:
    prompts, mini = cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size
    if prompts % mini:
        raise ConfigError("actor.ppo_mini_batch_size",
                          f"{mini} does not divide data.train_batch_size={prompts}")
    world = dp_world_size(cfg)
    rows = mini * cfg.rollout.n
    if rows % world:
        raise ConfigError("actor.ppo_mini_batch_size",
                          f"{mini} prompts x rollout.n={cfg.rollout.n} = {rows} rows is not divisible by the "
                          f"data-parallel size {world} (cluster.nnodes x cluster.devices_per_node"
                          + (" / (tensor x pipeline parallel)" if cfg.trainer.backend == "megatron" else "") + ")")


@check
def _choices(cfg: DictConfig) -> None:
    _one_of("rollout.name", cfg.rollout.name, ["builtin", "vllm"])
    _one_of("cluster.placement", cfg.cluster.placement, ["colocated", "split"])
    _one_of("data.on_overlong", cfg.data.on_overlong, ["error", "drop"])
    _one_of("model.dtype", cfg.model.dtype, ["float32", "bfloat16"])
    _one_of("rollout.dtype", cfg.rollout.dtype, ["float32", "bfloat16", "float16"])
    _one_of("rollout.kernels", cfg.rollout.kernels, ["torch", "cpp"])
    if cfg.rollout.sleep_level not in (0, 1, 2):
        raise ConfigError("rollout.sleep_level", f"must be 0 (keep), 1 (offload) or 2 (discard), got {cfg.rollout.sleep_level}")
    if cfg.rollout.kernels == "cpp" and (cfg.rollout.name != "builtin" or cfg.cluster.use_gpu):
        raise ConfigError("rollout.kernels", "cpp is the built-in engine's CPU path: needs rollout.name=builtin "
                          f"and cluster.use_gpu=false (got {cfg.rollout.name}, use_gpu={cfg.cluster.use_gpu})")
    _one_of("algorithm.kl_ctrl.type", cfg.algorithm.kl_ctrl.type, ["fixed", "adaptive"])
    _one_of("algorithm.dynamic_sampling.on_exhausted", cfg.algorithm.dynamic_sampling.on_exhausted, ["warn", "error"])
    for key, optim in (("actor.optim", cfg.actor.optim), ("critic.optim", cfg.critic.optim), ("sft.optim", cfg.sft.optim)):
        _one_of(f"{key}.schedule", optim.schedule, ["constant", "cosine"])
    for i, name in enumerate(cfg.trainer.loggers):
        _one_of(f"trainer.loggers[{i}]", name, ["jsonl", "tensorboard", "console"])


@check
def _guards_and_recovery(cfg: DictConfig) -> None:
    t = cfg.trainer
    _one_of("trainer.on_nonfinite", t.on_nonfinite, ["stop", "skip"])
    _positive(cfg, "trainer.max_skipped_steps", "trainer.max_update_shift")
    for key, value in (("trainer.max_restarts", t.max_restarts), ("trainer.collapse.steps", t.collapse.steps),
                       ("trainer.collapse.entropy", t.collapse.entropy), ("trainer.collapse.reward", t.collapse.reward)):
        if value < 0:
            raise ConfigError(key, f"must be >= 0, got {value}")


@check
def _learning_rates(cfg: DictConfig) -> None:
    """lr <= 0 trains nothing (or climbs the loss); inf/nan poisons the weights at the first step."""
    for key in ("actor.optim", "critic.optim", "sft.optim", "rm.optim"):
        optim = cfg[key.split(".")[0]].optim
        if not math.isfinite(optim.lr) or optim.lr <= 0:
            raise ConfigError(f"{key}.lr", f"must be a finite number > 0, got {optim.lr}")
        if not all(0 <= b < 1 for b in optim.betas) or len(optim.betas) != 2:
            raise ConfigError(f"{key}.betas", f"must be two numbers in [0, 1), got {list(optim.betas)}")
        if optim.eps <= 0 or optim.weight_decay < 0 or optim.grad_clip <= 0:
            bad = "eps" if optim.eps <= 0 else "weight_decay" if optim.weight_decay < 0 else "grad_clip"
            raise ConfigError(f"{key}.{bad}", f"must be {'>= 0' if bad == 'weight_decay' else '> 0'}, "
                              f"got {optim[bad]}")


@check
def _megatron_layout(cfg: DictConfig) -> None:
    """What can be checked without the model files (heads and layers: check_model_paths)."""
    _one_of("trainer.backend", cfg.trainer.backend, ["fsdp2", "megatron"])
    if cfg.trainer.backend != "megatron":
        m = cfg.actor.megatron
        if (m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.sequence_parallel) != (1, 1, False):
            raise ConfigError("actor.megatron", f"a Megatron layout is set but trainer.backend={cfg.trainer.backend} "
                              "would ignore it: add backend=megatron")
        return
    m, key = cfg.actor.megatron, "actor.megatron"
    _positive(cfg, f"{key}.tensor_model_parallel_size", f"{key}.pipeline_model_parallel_size")
    tp, pp, world = m.tensor_model_parallel_size, m.pipeline_model_parallel_size, world_size(cfg)
    if world % (tp * pp):
        raise ConfigError(f"{key}.tensor_model_parallel_size", f"tensor x pipeline parallel = {tp} x {pp} = {tp * pp} "
                          f"does not divide the {world} ranks (cluster.nnodes x cluster.devices_per_node)")
    if m.sequence_parallel and tp == 1:
        raise ConfigError(f"{key}.sequence_parallel", "sequence parallelism splits the sequence over tensor-parallel "
                          "ranks: it needs tensor_model_parallel_size > 1")
    for field in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "sequence_parallel"):
        if cfg.ref.megatron[field] != m[field]:
            raise ConfigError(f"ref.megatron.{field}", f"{cfg.ref.megatron[field]} differs from actor.megatron.{field}="
                              f"{m[field]}: the reference shares the actor's processes, so one Megatron layout")
    if pp > 1:
        rows = cfg.actor.ppo_mini_batch_size * cfg.rollout.n // dp_world_size(cfg)
        if rows % min(cfg.actor.micro_batch_size, rows):
            raise ConfigError("actor.micro_batch_size", f"the pipeline schedule runs equal micro-batches: "
                              f"{rows} rows per data-parallel group per mini-batch (actor.ppo_mini_batch_size x "
                              f"rollout.n / {dp_world_size(cfg)} data-parallel groups) do not split into micro-batches "
                              f"of {cfg.actor.micro_batch_size}")


def check_megatron_model(cfg: DictConfig) -> None:
    """Under backend=megatron: the policy's architecture converts, and its heads and layers split over TP x PP."""
    if cfg.trainer.backend != "megatron":
        return
    from workers.engines.megatron.model import UnsupportedModel, check_convertible

    conf = hf_config("model.path", cfg.model.path)
    try:
        check_convertible(conf)
    except UnsupportedModel as err:
        raise ConfigError("model.path", f"backend=megatron cannot convert '{cfg.model.path}': {err}") from None
    m = cfg.actor.megatron
    tp, pp = m.tensor_model_parallel_size, m.pipeline_model_parallel_size
    heads = conf["num_attention_heads"]
    kv_heads = conf.get("num_key_value_heads") or heads
    if heads % tp:
        raise ConfigError("actor.megatron.tensor_model_parallel_size",
                          f"{tp} does not divide the model's {heads} attention heads ({cfg.model.path})")
    if kv_heads % tp:
        raise ConfigError("actor.megatron.tensor_model_parallel_size",
                          f"{tp} does not divide the model's {kv_heads} key/value heads ({cfg.model.path}); "
                          "GQA keeps whole KV groups on a rank")
    if conf["num_hidden_layers"] % pp:
        raise ConfigError("actor.megatron.pipeline_model_parallel_size",
                          f"{pp} does not divide the model's {conf['num_hidden_layers']} layers ({cfg.model.path})")


@check
def _rollout_correction(cfg: DictConfig) -> None:
    from orchestrator.rollout_correction import LEVELS, MODES

    rc, key = cfg.algorithm.rollout_correction, "algorithm.rollout_correction"
    _one_of(f"{key}.mode", rc.mode, MODES)
    _one_of(f"{key}.is_level", rc.is_level, LEVELS)
    if not rc.is_threshold > 1.0:
        raise ConfigError(f"{key}.is_threshold", f"must be > 1 (weights are truncated at it, or kept within "
                          f"[1/t, t]), got {rc.is_threshold}")
    if not rc.equal_tolerance >= 0:
        raise ConfigError(f"{key}.equal_tolerance", f"must be >= 0, got {rc.equal_tolerance}")
    if rc.mode == "auto" and not cfg.hybrid.verify_every:
        raise ConfigError(f"{key}.mode", "auto skips the old-log-prob pass only between verify steps, which "
                          "re-check that the engines agree: it needs hybrid.verify_every > 0")
    for k in ("verify_tolerance_fp32", "verify_tolerance_low_precision"):
        if not cfg.hybrid[k] > 0:
            raise ConfigError(f"hybrid.{k}", f"must be > 0, got {cfg.hybrid[k]}")
    r = cfg.rollout
    if r.name == "vllm" and (r.top_p < 1.0 or r.top_k > 0) and r.temperature > 0:
        warnings.warn(
            f"rollout=vllm with rollout.top_p={r.top_p} / rollout.top_k={r.top_k}: vLLM returns the log-probs of the "
            "truncated, renormalised distribution it sampled from, not of softmax(logits / T); the trainer's "
            "log-probs are of the full distribution, so the two differ by design. The corruption alarm is off for "
            f"such rollouts; algorithm.rollout_correction.mode={rc.mode} "
            + ("reweights for the gap." if rc.mode in ("tis", "mask") else "does not correct for it (use tis or mask)."),
            stacklevel=2)


@check
def _placement(cfg: DictConfig) -> None:
    c = cfg.cluster
    if c.address:
        for key in ("local_num_cpus", "object_store_bytes"):
            if c[key]:
                raise ConfigError(f"cluster.{key}", f"applies to a local cluster only; cluster.address={c.address!r} "
                                  "joins one whose resources `ray start` set: use 0")
    elif c.local_num_cpus < 1 or c.object_store_bytes < 1:
        key = "local_num_cpus" if c.local_num_cpus < 1 else "object_store_bytes"
        raise ConfigError(f"cluster.{key}", f"a local cluster (cluster.address=null) needs it > 0, got {c[key]}")
    if c.placement == "split" and c.rollout_devices_per_node < 1:
        raise ConfigError("cluster.rollout_devices_per_node",
                          f"cluster.placement=split runs rollout in a pool of its own: needs >= 1 rollout "
                          f"device (or CPU slot) per node, got {c.rollout_devices_per_node}")


@check
def _sampling_ranges(cfg: DictConfig) -> None:
    r = cfg.rollout
    if r.temperature <= 0:
        raise ConfigError("rollout.temperature", f"must be > 0 for training rollouts, got {r.temperature}: greedy "
                          "samples of a prompt are all the same, so there is nothing to compare and nothing is "
                          "learned (rollout.val_temperature=0 keeps validation greedy)")
    if r.val_temperature < 0:
        raise ConfigError("rollout.val_temperature", f"must be >= 0, got {r.val_temperature}")
    if not 0 < r.top_p <= 1:
        raise ConfigError("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if r.top_k == 0 or r.top_k < -1:
        raise ConfigError("rollout.top_k", f"must be -1 (off) or >= 1, got {r.top_k}")


@check
def _registries(cfg: DictConfig) -> None:
    from orchestrator.advantages import registry as adv
    from orchestrator.rewards import registry as rewards
    from orchestrator.tasks import registry as tasks
    from workers.losses import aggregation, kl
    from workers.losses import registry as losses

    _one_of("algorithm.adv_estimator", cfg.algorithm.adv_estimator, adv.list_advantages())
    _one_of("actor.policy_loss.name", cfg.actor.policy_loss.name, losses.list_policy_losses())
    _one_of("actor.loss_agg_mode", cfg.actor.loss_agg_mode, aggregation.AGG_MODES)
    _one_of("critic.loss_agg_mode", cfg.critic.loss_agg_mode, aggregation.AGG_MODES)
    _one_of("actor.kl_loss_type", cfg.actor.kl_loss_type, kl.KL_LOSS_ESTIMATORS)
    _one_of("algorithm.kl_penalty", cfg.algorithm.kl_penalty, kl.KL_ESTIMATORS)
    _one_of("reward.rule_fn", cfg.reward.rule_fn, rewards.list_rewards())
    _one_of("reward.accuracy_fn", cfg.reward.accuracy_fn, rewards.list_rewards())
    _one_of("task.name", cfg.task.name, tasks.list_tasks())


@check
def _actor_loss_params(cfg: DictConfig) -> None:
    """Hyperparameters of the sapo / clip_cov / kl_cov losses, and the Dr.GRPO divisor (workers/losses)."""
    constant = cfg.actor.loss_norm_constant
    if constant is not None and not (math.isfinite(constant) and constant > 0):
        raise ConfigError("actor.loss_norm_constant", f"must be a finite number > 0, or null for "
                          f"rollout.max_new_tokens, got {constant}")
    p, key = cfg.actor.policy_loss, "actor.policy_loss"
    for name in ("tau_pos", "tau_neg"):
        if not p[name] > 0:
            raise ConfigError(f"{key}.{name}", f"must be > 0 (the sapo gate's temperature), got {p[name]}")
    for name in ("clip_cov_ratio", "kl_cov_ratio"):
        if not 0 < p[name] <= 1:
            raise ConfigError(f"{key}.{name}", f"must be in (0, 1] (a fraction of the valid tokens), got {p[name]}")
    if not p.clip_cov_lb < p.clip_cov_ub:
        raise ConfigError(f"{key}.clip_cov_lb", f"must be < clip_cov_ub: the covariance window "
                          f"[{p.clip_cov_lb}, {p.clip_cov_ub}] is empty")
    if not p.kl_cov_coef >= 0:
        raise ConfigError(f"{key}.kl_cov_coef", f"must be >= 0, got {p.kl_cov_coef}")


@check
def _roles_the_algorithm_needs(cfg: DictConfig) -> None:
    from orchestrator.advantages import registry as adv

    entry = adv.get_advantage_estimator(cfg.algorithm.adv_estimator)
    if entry.needs_critic and not cfg.critic.model_path:
        raise ConfigError("critic.model_path", f"algorithm '{cfg.algorithm.name}' (adv_estimator="
                          f"{cfg.algorithm.adv_estimator}) needs a critic, but no model path is set")
    if entry.uses_groups and cfg.rollout.n < 2:
        raise ConfigError("rollout.n", f"adv_estimator={cfg.algorithm.adv_estimator} compares samples of the "
                          f"same prompt: needs rollout.n >= 2, got {cfg.rollout.n}")
    if entry.needs_teacher and not cfg.teacher.path:
        raise ConfigError("teacher.path", f"adv_estimator={cfg.algorithm.adv_estimator} distils from a teacher: set "
                          "teacher.path to a model dir or a Baton checkpoint (e.g. outputs/<run>/checkpoints/latest)")
    rm = cfg.reward.reward_model
    if rm.enable and not rm.path:
        raise ConfigError("reward.reward_model.path", "reward_model.enable is true but no model path is set")
    if cfg.algorithm.dynamic_sampling.enable and cfg.rollout.n < 2:
        raise ConfigError("rollout.n", "dynamic sampling drops zero-variance groups: needs rollout.n >= 2")


# --- critic, reward model and reward-model training (`baton rm`) ---------------------------------------


@check
def _critic_and_reward_model_sizes(cfg: DictConfig) -> None:
    _positive(cfg, "critic.ppo_epochs", "critic.micro_batch_size", "critic.cliprange_value",
              "reward.reward_model.micro_batch_size", "teacher.log_prob_micro_batch_size")


@check
def _rm_sizes(cfg: DictConfig) -> None:
    _positive(cfg, "rm.steps", "rm.batch_size", "rm.micro_batch_size", "rm.val_pairs")
    _one_of("rm.optim.schedule", cfg.rm.optim.schedule, ["constant", "cosine"])
    if cfg.rm.micro_batch_size % 2:
        raise ConfigError("rm.micro_batch_size", f"must be even (a pair is 2 rows), got {cfg.rm.micro_batch_size}")
    world = world_size(cfg)  # the reward-model trainer is FSDP2 over every rank
    if cfg.rm.batch_size % world:
        raise ConfigError("rm.batch_size", f"{cfg.rm.batch_size} pairs are not divisible by the data-parallel "
                          f"size {world} (cluster.nnodes x cluster.devices_per_node)")


def check_model_paths(cfg: DictConfig) -> None:
    """Files on disk: run by `baton train` once the warm start exists, not by `--cfg job`."""
    hint = "run `baton sft` first or point it at a HF checkpoint directory"
    check_model_dir("model.path", cfg.model.path, hint, need_tokenizer=True)
    if cfg.critic.model_path and _needs_critic(cfg):
        check_model_dir("critic.model_path", cfg.critic.model_path, hint, need_tokenizer=False)
        _same_vocab("critic.model_path", cfg.critic.model_path, cfg.model.path)
    if _needs_teacher(cfg):
        check_model_dir("teacher.path", cfg.teacher.path, "point it at a model dir or a Baton checkpoint",
                        need_tokenizer=False)
        _same_vocab("teacher.path", cfg.teacher.path, cfg.model.path)
        _same_tokenizer("teacher.path", cfg.teacher.path, cfg.model.path)
    if cfg.reward.reward_model.enable:
        check_model_dir("reward.reward_model.path", cfg.reward.reward_model.path, "train one with `baton rm`",
                        need_tokenizer=False)
        _same_vocab("reward.reward_model.path", cfg.reward.reward_model.path, cfg.model.path)
    for key in ("data.train_files", "data.val_files"):
        for i, f in enumerate(cfg.data[key.split(".")[1]]):
            if not Path(f).is_file():
                raise ConfigError(f"{key}[{i}]", f"file '{f}' does not exist")
    check_megatron_model(cfg)
    max_pos = hf_config("model.path", cfg.model.path).get("max_position_embeddings")
    total = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    if max_pos is not None and total > max_pos:
        raise ConfigError("rollout.max_new_tokens", f"data.max_prompt_length + rollout.max_new_tokens = {total} "
                          f"exceeds the model's max_position_embeddings={max_pos}")


def _needs_teacher(cfg: DictConfig) -> bool:
    from orchestrator.advantages import registry as adv

    return adv.get_advantage_estimator(cfg.algorithm.adv_estimator).needs_teacher


def _needs_critic(cfg: DictConfig) -> bool:
    from orchestrator.advantages import registry as adv

    return adv.get_advantage_estimator(cfg.algorithm.adv_estimator).needs_critic


def _same_vocab(key: str, path: str, policy_path: str) -> None:
    """Critic and reward model read the policy's token ids, so they must share its vocabulary."""
    mine, policy = hf_config(key, path).get("vocab_size"), hf_config("model.path", policy_path).get("vocab_size")
    if mine != policy:
        raise ConfigError(key, f"'{path}' has vocab_size={mine} but the policy model.path has {policy}; "
                          "it must share the policy's tokenizer")


def _same_tokenizer(key: str, path: str, policy_path: str) -> None:
    """A teacher scores the student's token ids: equal vocab sizes are not enough if the ids mean other words."""
    mine, policy = Path(path) / "tokenizer.json", Path(policy_path) / "tokenizer.json"
    if mine.is_file() and policy.is_file() and json.loads(mine.read_text()) != json.loads(policy.read_text()):
        raise ConfigError(key, f"'{path}' has a different tokenizer from the policy's ({policy_path}): its log-probs "
                          "would score other tokens than the ones sampled")


def validate_config(cfg: DictConfig, *, check_files: bool) -> DictConfig:
    """Raise ConfigError on the first problem; returns cfg so calls chain."""
    for fn in CHECKS:
        fn(cfg)
    if check_files:
        check_model_paths(cfg)
    return cfg


@check
def _shared_storage(cfg: DictConfig) -> None:
    """Ranks on other machines must write where the driver reads: see orchestrator/cluster/shared_paths.py."""
    from orchestrator.cluster.shared_paths import ROOT_KEYS, is_loopback_address

    c = cfg.cluster
    if c.shared_dir is not None and not os.path.isabs(c.shared_dir):
        raise ConfigError("cluster.shared_dir", f"must be an absolute path every node mounts, got '{c.shared_dir}'")
    if c.shared_dir is None and not is_loopback_address(c.address):
        for key in ROOT_KEYS:
            value = cfg.trainer[key]
            if not os.path.isabs(value):
                raise ConfigError(f"trainer.{key}", f"'{value}' is relative and cluster.address={c.address!r} joins "
                                  "a cluster: it would resolve in each node's own copy of the job's working dir, so a "
                                  "checkpoint shard written on another node would be lost. Set cluster.shared_dir to "
                                  f"a directory every node mounts (or an absolute trainer.{key})")


@check
def _rollout_schedule(cfg: DictConfig) -> None:
    """trainer.mode: what each mode needs (orchestrator/trainer/schedules.py)."""
    mode = cfg.trainer.mode
    _one_of("trainer.mode", mode, ["sync", "one_step_off", "async"])
    r = cfg.rollout
    _one_of("rollout.on_stale", r.on_stale, ["regenerate", "drop"])
    _one_of("rollout.partial_rollout", r.partial_rollout, ["continue", "restart"])
    if r.max_staleness < 0:
        raise ConfigError("rollout.max_staleness", f"must be >= 0 policy versions, got {r.max_staleness}")
    if r.async_calls < 1:
        raise ConfigError("rollout.async_calls", f"must be >= 1, got {r.async_calls}")
    if mode == "async" and r.stream and r.name == "builtin" and r.kernels != "torch":
        raise ConfigError("rollout.stream", "continuous batching needs per-row cache slots, which only "
                          f"rollout.kernels=torch has (got {r.kernels!r}): set rollout.kernels=torch, or "
                          "rollout.stream=false for one generate call per batch")
    if mode == "sync":
        return
    if cfg.cluster.placement != "split":
        raise ConfigError("cluster.placement", f"trainer.mode={mode} overlaps rollout with training, so rollout needs "
                          "devices of its own: set cluster.placement=split")
    if cfg.algorithm.dynamic_sampling.enable:
        raise ConfigError("algorithm.dynamic_sampling.enable", f"refilling a batch round by round is not supported "
                          f"with trainer.mode={mode}: the next batch is generated in one call")
    from orchestrator.advantages.registry import get_advantage_estimator

    if get_advantage_estimator(cfg.algorithm.adv_estimator).needs_baseline_rollout:
        raise ConfigError("algorithm.adv_estimator", f"{cfg.algorithm.adv_estimator} needs a greedy baseline rollout "
                          f"of the policy being trained, which trainer.mode={mode} does not have")


@check
def _on_policy_only(cfg: DictConfig) -> None:
    """An estimator registered on_policy_only (opo) is derived for samples of the policy it updates: one
    optimizer step per batch, and a rollout of the current weights."""
    from orchestrator.advantages.registry import get_advantage_estimator

    name = cfg.algorithm.adv_estimator
    if not get_advantage_estimator(name).on_policy_only:
        return
    why = (f"adv_estimator={name} is exact on-policy (every sample must come from the policy it updates, one "
           "optimizer step per batch)")
    if cfg.actor.ppo_epochs != 1:
        raise ConfigError("actor.ppo_epochs", f"{why}: needs 1, got {cfg.actor.ppo_epochs}; later epochs reuse the "
                          "samples of an older policy")
    if cfg.actor.ppo_mini_batch_size != cfg.data.train_batch_size:
        raise ConfigError("actor.ppo_mini_batch_size", f"{why}: needs data.train_batch_size="
                          f"{cfg.data.train_batch_size}, got {cfg.actor.ppo_mini_batch_size}; later mini-batches "
                          "were sampled before the earlier updates")
    if cfg.trainer.mode != "sync":
        raise ConfigError("trainer.mode", f"{why}: trainer.mode={cfg.trainer.mode} trains on samples of the previous "
                          "step's weights; use sync")


@check
def _passk(cfg: DictConfig) -> None:
    """Estimators bound to algorithm.passk_k (grpo_passk): 1 <= k <= rollout.n, and 0/1 scores."""
    from orchestrator.advantages.registry import get_advantage_estimator

    name = cfg.algorithm.adv_estimator
    if "passk_k" not in get_advantage_estimator(name).params.values():
        return
    k, n = cfg.algorithm.passk_k, cfg.rollout.n
    if not 1 <= k <= n:
        raise ConfigError("algorithm.passk_k", f"adv_estimator={name} scores k-subsets of each prompt's rollout.n={n} "
                          f"samples: needs 1 <= passk_k <= {n}, got {k}")
    for key, on in (("algorithm.use_kl_in_reward", cfg.algorithm.use_kl_in_reward),
                    ("reward.overlong.enable", cfg.reward.overlong.enable),
                    ("reward.reward_model.enable", cfg.reward.reward_model.enable)):
        if on:
            raise ConfigError(key, f"adv_estimator={name} counts correct samples and needs 0/1 scores, which this "
                              "makes non-binary: set it to false")
    if cfg.reward.rule_weight != 1.0:
        raise ConfigError("reward.rule_weight", f"adv_estimator={name} needs 0/1 scores: the rule reward must enter "
                          f"with weight 1, got {cfg.reward.rule_weight}")


from orchestrator.config import layout_checks  # noqa: E402,F401  (registers the training-layout checks after these)
