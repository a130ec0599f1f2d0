"""The typed shape of a Baton config. Values come from YAML in `configs/` only (no defaults here):
every field is MISSING until a YAML file sets it, so a forgotten default is an error, not a guess."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class CollapseConfig:
    steps: int = MISSING  # stop after this many steps in a row with entropy and reward both ~0 (0: off)
    entropy: float = MISSING  # mean token entropy (nats) below which the policy counts as deterministic
    reward: float = MISSING  # |mean reward| at most this counts as earning nothing


@dataclass
class TrainerConfig:
    experiment_name: str = MISSING  # names the run's output directory
    output_dir: str = MISSING  # where checkpoints, metrics.jsonl, tensorboard, plots and summary.json go
    cache_dir: str = MISSING  # shared cache (warm-start checkpoint, generated task data)
    total_steps: int = MISSING  # RL steps (one step = one batch of prompts)
    val_every: int = MISSING  # validate on the test split every N steps (0: only before and after)
    save_every: int = MISSING  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = MISSING  # how many step checkpoints to keep
    resume: bool = MISSING  # continue from output_dir/checkpoints/latest if present
    seed: int = MISSING
    loggers: list[str] = MISSING  # jsonl, tensorboard, console
    progress_bar: bool = MISSING
    torch_threads: int = MISSING  # torch threads in the driver process (workers: 1 per CPU slot)
    backend: str = MISSING  # training engine of the policy and reference: fsdp2 | megatron (set by backend=)
    on_nonfinite: str = MISSING  # stop | skip (drop such updates; stop after max_skipped_steps in a row)
    max_skipped_steps: int = MISSING
    max_update_shift: float = MISSING  # mean |change of log-prob| per token from one step's update (checked before
    # each checkpoint) above which the model counts as diverged
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    max_restarts: int = MISSING  # a dead worker or timed-out call: rebuild and resume this many times
    mode: str = MISSING  # sync | one_step_off (split placement: step k+1's rollout overlaps step k's training)


@dataclass
class DataConfig:
    train_files: list[str] = MISSING  # parquet files; empty: the task writes its own
    val_files: list[str] = MISSING
    prompt_key: str = MISSING
    answer_key: str = MISSING
    train_batch_size: int = MISSING  # prompts per step
    val_size: int = MISSING  # prompts used for validation (0: all)
    max_prompt_length: int = MISSING  # tokens
    on_overlong: str = MISSING  # error | drop
    shuffle: bool = MISSING


@dataclass
class TinyModelConfig:
    arch: str = MISSING  # qwen2 | llama
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = MISSING
    tie_word_embeddings: bool = MISSING


@dataclass
class ModelConfig:
    path: Optional[str] = MISSING  # HF checkpoint dir (AutoModelForCausalLM); the RL run starts from it
    dtype: str = MISSING  # float32 | bfloat16 (parameter dtype of the training engine)
    gradient_checkpointing: bool = MISSING
    remove_padding: bool = MISSING  # forwards skip padding (workers/engines/compaction.py, megatron/batching.py)
    share_prompts: bool = MISSING  # FSDP2 causal-LM forwards compute a prompt once for all its rows (workers/engines/prompt_sharing.py)
    attn_implementation: str = MISSING  # FSDP2 training forwards: sdpa | eager | flash_attention_2 | varlen (workers/engines/varlen.py)
    fsdp_gather_once: bool = MISSING  # FSDP2: weights gathered / grads reduced once per pass over micro-batches
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # what `baton sft` builds when it starts from scratch


@dataclass
class OptimConfig:
    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: float = MISSING
    eps: float = MISSING
    warmup_steps: int = MISSING
    schedule: str = MISSING  # constant | cosine
    min_lr_ratio: float = MISSING
    grad_clip: float = MISSING


@dataclass
class MegatronConfig:
    tensor_model_parallel_size: int = MISSING  # TP: heads, KV heads (and the vocabulary, padded) split over ranks
    pipeline_model_parallel_size: int = MISSING  # PP: decoder layers split into stages; Megatron schedules micro-batches
    sequence_parallel: bool = MISSING  # with TP > 1: norms and activations split along the sequence too


@dataclass
class PolicyLossConfig:
    name: str = MISSING  # registry key: ppo | cispo | gspo | reinforce | sapo | clip_cov | kl_cov
    clip_ratio_low: float = MISSING
    clip_ratio_high: float = MISSING
    dual_clip_c: Optional[float] = MISSING  # null disables dual-clip
    tau_pos: float = MISSING  # sapo: gate temperature for tokens with A > 0
    tau_neg: float = MISSING  # sapo: gate temperature for tokens with A <= 0
    clip_cov_ratio: float = MISSING  # clip_cov: fraction of valid tokens whose gradient is detached
    clip_cov_lb: float = MISSING  # clip_cov: covariance window [lb, ub] tokens are drawn from
    clip_cov_ub: float = MISSING
    kl_cov_ratio: float = MISSING  # kl_cov: fraction of valid tokens (largest covariance) given the KL penalty
    kl_cov_coef: float = MISSING  # kl_cov: its coefficient on |log pi - log pi_old|


@dataclass
class ActorConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo_mini_batch_size: int = MISSING  # prompts per optimizer step (x rollout.n rows)
    ppo_epochs: int = MISSING
    micro_batch_size: int = MISSING  # rows per forward/backward on one rank
    log_prob_micro_batch_size: int = MISSING
    max_tokens_per_micro_batch: Optional[int] = MISSING  # FSDP2: also cut micro-batches at this many tokens; null: rows only
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    loss_agg_mode: str = MISSING  # token-mean | token-sum | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm
    loss_norm_constant: Optional[float] = MISSING  # seq-mean-token-sum-norm divisor; null: rollout.max_new_tokens
    entropy_coeff: float = MISSING
    use_kl_loss: bool = MISSING
    kl_loss_coef: float = MISSING
    kl_loss_type: str = MISSING  # k1 | k2 | k3 | abs | k1+ | k3+
    shuffle_mini_batches: bool = MISSING
    megatron: MegatronConfig = field(default_factory=MegatronConfig)  # backend=megatron only


@dataclass
class VLLMConfig:
    kv_cache_bytes: int = MISSING
    gpu_memory_utilization: float = MISSING
    enforce_eager: bool = MISSING


@dataclass
class RolloutConfig:
    name: str = MISSING  # builtin | vllm
    n: int = MISSING  # samples per prompt
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int = MISSING  # -1 disables
    max_new_tokens: int = MISSING
    val_temperature: float = MISSING  # 0: greedy validation
    dtype: str = MISSING
    max_batch_size: int = MISSING  # rows the engine decodes at once
    kernels: str = MISSING  # builtin engine: torch | cpp (fused C++ forward, CPU only)
    sleep_level: int = MISSING  # what a sleeping rollout engine does with its weights: 0 keep, 1 offload, 2 discard
    repetition_stop_window: int = MISSING  # MiniMax-M1 early stop: K (0 disables)
    repetition_stop_prob: float = MISSING
    max_staleness: int = MISSING  # trainer.mode=async: a sample whose oldest token is more versions behind is not trained
    on_stale: str = MISSING  # async: regenerate (its prompt is generated again) | drop (counted, not trained)
    partial_rollout: str = MISSING  # async: a sequence an update interrupts continue|restart under the new weights
    async_calls: int = MISSING  # async: generate calls kept queued on the rollout pool (each one batch of prompts)
    stream: bool = MISSING  # async: request-level generation (continuous batching), else one call per batch
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class RefConfig:
    log_prob_micro_batch_size: int = MISSING
    max_tokens_per_micro_batch: Optional[int] = MISSING
    megatron: MegatronConfig = field(default_factory=MegatronConfig)  # backend=megatron: must equal the actor's


@dataclass
class TeacherConfig:
    path: Optional[str] = MISSING  # frozen teacher (HF dir or a Baton checkpoint dir); needed by algorithm=opd
    log_prob_micro_batch_size: int = MISSING
    max_tokens_per_micro_batch: Optional[int] = MISSING


@dataclass
class CriticConfig:
    model_path: Optional[str] = MISSING  # null: start the value model from model.path
    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo_epochs: int = MISSING
    micro_batch_size: int = MISSING
    max_tokens_per_micro_batch: Optional[int] = MISSING
    cliprange_value: float = MISSING
    warmup_steps: int = MISSING  # steps that update only the critic
    loss_agg_mode: str = MISSING


@dataclass
class RewardModelConfig:
    enable: bool = MISSING
    path: Optional[str] = MISSING
    weight: float = MISSING  # score = rule_weight * rule + weight * rm
    micro_batch_size: int = MISSING
    max_tokens_per_micro_batch: Optional[int] = MISSING


@dataclass
class OverlongConfig:
    enable: bool = MISSING  # DAPO soft overlong punishment
    buffer_len: int = MISSING
    penalty_factor: float = MISSING


@dataclass
class RewardConfig:
    rule_fn: str = MISSING  # registry key of orchestrator.rewards
    accuracy_fn: str = MISSING  # 0/1 reward reported as accuracy (train/accuracy, val/accuracy)
    rule_weight: float = MISSING
    rule_kwargs: dict[str, Any] = field(default_factory=dict)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)


@dataclass
class KLControlConfig:
    type: str = MISSING  # fixed | adaptive
    kl_coef: float = MISSING
    target_kl: float = MISSING
    horizon: int = MISSING


@dataclass
class DynamicSamplingConfig:
    enable: bool = MISSING  # DAPO: drop zero-variance groups, regenerate until the batch is full
    max_rounds: int = MISSING
    on_exhausted: str = MISSING  # warn | error


@dataclass
class RolloutCorrectionConfig:
    mode: str = MISSING  # none | tis (truncated IS) | mask (rejection) | bypass (rollout log-probs as old log-probs)
    #                      | auto (bypass while verified equal to the trainer's, recompute otherwise)
    is_level: str = MISSING  # token | sequence
    is_threshold: float = MISSING  # tis: weights truncated at it; mask: weights outside [1/t, t] dropped
    equal_tolerance: float = MISSING  # auto: mean |rollout - trainer log-prob| (nats) that counts as equal


@dataclass
class AlgorithmConfig:
    name: str = MISSING
    adv_estimator: str = MISSING  # registry key of orchestrator.advantages
    gamma: float = MISSING
    lam: float = MISSING
    norm_adv_by_std: bool = MISSING  # grpo: False gives Dr.GRPO
    whiten_advantages: bool = MISSING
    eps: float = MISSING  # numerical floor in advantage normalisation
    use_kl_in_reward: bool = MISSING
    kl_penalty: str = MISSING
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    passk_k: int = MISSING  # grpo_passk: the k of pass@k (<= rollout.n)
    distill_coef: float = MISSING  # opd: weight of the per-token reverse-KL-to-teacher advantage
    task_reward_coef: float = MISSING  # opd: weight of the task's group-normalised (GRPO) advantage; 0: pure distillation


@dataclass
class ClusterConfig:
    address: Optional[str] = MISSING  # null: start a local Ray cluster; "auto" or host:port to join one
    nnodes: int = MISSING
    devices_per_node: int = MISSING  # GPUs per node, or CPU worker slots when use_gpu is false
    use_gpu: bool = MISSING
    cpus_per_worker: float = MISSING
    local_num_cpus: int = MISSING  # logical CPUs of a local cluster (0 when joining one)
    object_store_bytes: int = MISSING  # object store of a local cluster (0 when joining one: `ray start` sizes it)
    placement: str = MISSING  # colocated (rollout in the actor's processes) | split (rollout in a pool of its own)
    rollout_devices_per_node: int = MISSING  # split placement: rollout pool size per node, besides devices_per_node
    rpc_timeout_s: float = MISSING  # bound on every remote call
    init_timeout_s: float = MISSING  # bound on actor start-up and process-group rendezvous
    shared_dir: Optional[str] = None  # absolute dir every node mounts: relative output/cache paths resolve under it


@dataclass
class HybridConfig:
    bucket_bytes: int = MISSING  # weight-sync bucket size
    offload_params: bool = MISSING
    offload_optimizer: bool = MISSING
    verify_every: int = MISSING  # corruption alarm on the step's own batch every N steps (0: off; the gap is always logged)
    verify_tolerance_fp32: float = MISSING  # alarm when the mean |log-prob gap| exceeds this, trainer and rollout fp32
    verify_tolerance_low_precision: float = MISSING  # ... when either computes in bf16/fp16


@dataclass
class SFTConfig:
    base_model_path: Optional[str] = MISSING  # null: build model.tiny from scratch
    output_path: str = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    micro_batch_size: int = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class RMConfig:
    base_model_path: str = MISSING  # causal-LM checkpoint the reward model starts from (a score head is added)
    output_path: str = MISSING  # where the HF sequence-classification checkpoint is written (atomically)
    train_files: list[str] = MISSING  # preference parquet files; empty: pairs generated from the task
    prompt_key: str = MISSING  # column with the prompt
    chosen_key: str = MISSING  # column with the preferred response
    rejected_key: str = MISSING  # column with the dispreferred response
    val_pairs: int = MISSING  # pairs held out for the pairwise accuracy reported at the end
    steps: int = MISSING  # optimizer steps
    batch_size: int = MISSING  # pairs per optimizer step
    micro_batch_size: int = MISSING  # rows per forward/backward on one rank (2 per pair; even)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TaskConfig:
    name: str = MISSING  # registry key of orchestrator.tasks
    params: dict[str, Any] = field(default_factory=dict)  # the task's data-generation arguments


@dataclass
class BatonConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RMConfig = field(default_factory=RMConfig)
