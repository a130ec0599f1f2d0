"""TRL's GRPOTrainer on Baton's default job, for `baton bench e2e`. Runs in the peers' venv (.venv-peers).

Only the standard library at import time: Baton's tests import this file (for `final_answer` and the
config mapping) from Baton's own venv, which has no TRL, and the peers' venv has no Baton dependencies.

How Baton's default job maps onto GRPOConfig (one process, both CPU threads; Baton runs 2 ranks x 1 thread):
- 32 prompts x 8 samples per RL step: generation_batch_size = per_device_train_batch_size (64 rows, Baton's
  micro_batch_size) x steps_per_generation (4) = 256 rows.
- 16 prompts per optimizer step (Baton's ppo_mini_batch_size): gradient_accumulation_steps = 2, so one RL
  step is 2 optimizer steps, and TRL recomputes old log-probs as Baton does (grad accumulation < steps per
  generation).
- KL to the reference in the loss, k3, coefficient beta = 0.001; PPO clip 0.2; advantages divided by the
  group std (scale_rewards="group"); loss_type="dapo" normalises by the tokens of the whole optimizer step,
  which is Baton's token-mean over a mini-batch.
- AdamW lr 1e-4, betas (0.9, 0.99), eps 1e-8, no weight decay, 2 warm-up steps then constant, clip 1.0.
  (HF's warm-up starts at 0: lr x 0, 0.5, 1, 1, ...; Baton's at 1/warmup: x 0.5, 1, 1, ...: TRL's
  first optimizer step does not move the weights. Left as each library does it.)
- Sampling: temperature 1, top_p 1, no top-k, at most 24 new tokens, stop at EOS; fp32 throughout.
The reward is Baton's `final_answer` rule (below, the same three lines as orchestrator/rewards/rule_rewards.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def final_answer(completion: str, ground_truth: str, marker: str = "#") -> float:
    """Baton's `final_answer` on a completion already cut at EOS: 1.0 iff the text after the last `#` is the answer."""
    answer = completion.strip()
    if marker not in answer:
        return 0.0
    return float(answer.rsplit(marker, 1)[1].strip() == ground_truth.strip())


def grpo_config_kwargs(job: dict[str, Any]) -> dict[str, Any]:
    """GRPOConfig keyword arguments for Baton's job description (see the module docstring)."""
    n, prompts, mini = job["n"], job["prompts_per_step"], job["prompts_per_update"]
    micro = job["micro_batch_rows"]
    rows_per_update = mini * n
    if rows_per_update % micro or (prompts * n) % micro or prompts % mini:
        raise ValueError(f"batch sizes do not divide: {prompts}x{n} rows, {mini}x{n} per update, {micro} per forward")
    accumulation = rows_per_update // micro
    return dict(
        output_dir=job["output_dir"], seed=job["seed"], use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=prompts * n // micro, num_generations=n, num_iterations=1,
        max_steps=job["steps"] * (prompts // mini), max_completion_length=job["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, beta=job["kl_coef"], epsilon=0.2, scale_rewards="group",
        loss_type="dapo", learning_rate=job["lr"], adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8,
        weight_decay=0.0, lr_scheduler_type="constant_with_warmup", warmup_steps=job["warmup_steps"],
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )


def greedy_accuracy(model, tok, rows: list[dict[str, str]], max_new_tokens: int, batch: int = 64) -> float:
    """Share of rows whose greedy completion earns `final_answer` 1.0 (as Baton's validation scores it)."""
    import torch

    right = 0
    model.eval()
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        right += sum(final_answer(t, r["ground_truth"]) for t, r in zip(texts, chunk))
    return right / len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", type=Path, help="job.json written by `baton bench e2e`")
    parser.add_argument("result", type=Path, help="where to write result.json")
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(job["threads"])
    tok = PreTrainedTokenizerFast.from_pretrained(job["model_path"], local_files_only=True)
    train = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["ground_truth"]} for r in job["train_rows"]])

    def reward(prompts, completions, ground_truth, **_):  # noqa: ANN001 - TRL's reward-function signature
        return [final_answer(c, g) for c, g in zip(completions, ground_truth)]

    config = GRPOConfig(**grpo_config_kwargs(job))
    trainer = GRPOTrainer(model=job["model_path"], reward_funcs=reward, args=config, train_dataset=train,
                          processing_class=tok)
    acc_before = greedy_accuracy(trainer.model, tok, job["val_rows"], job["max_new_tokens"])
    trainer.model.train()
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    acc_after = greedy_accuracy(trainer.model, tok, job["val_rows"], job["max_new_tokens"])
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    result = {"steps": job["steps"], "train_s": train_s, "seconds_per_step": train_s / job["steps"],
              "accuracy_start": acc_before, "accuracy_end": acc_after,
              "reward_start": rewards[0] if rewards else None, "reward_end": rewards[-1] if rewards else None}
    args.result.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
