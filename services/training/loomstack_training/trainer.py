"""The ONE trainer entrypoint: LoRA fine-tuning with Unsloth + TRL's SFTTrainer.

Both runners start exactly this file (`python trainer.py CONFIG.json`): the local runner with
the trainer environment's python (make training-install), the Kubernetes runner inside the
training image. It imports only the standard library at module level and the Unsloth stack
inside `main`, so it needs nothing from Loomstack.

Progress goes to the ORIGINAL stdout as one JSON object per line (`started`, `step`,
`checkpoint`, `done`, `cancelled`); everything the libraries print is redirected to stderr,
which the runner keeps as the job's log. SIGTERM (cancel) stops training at the end of the
current step and saves a last checkpoint (before training starts it exits at once).

The loss is taken on the assistant turns only: each example is tokenized here (the base model's
chat template, as vLLM applies it) with labels -100 on the system and user turns.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from typing import Any, TextIO


class _Progress:
    """Writes progress events to the original stdout, flushing every line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        self.stream.flush()


def _load_examples(path: str) -> list[list[dict[str, str]]]:
    """Chat examples (the service validated the file and wrote it as `messages` lines)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def assistant_spans(
    render: Any, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The chat as the template renders it, and the character spans of the assistant turns.

    `render(messages, add_generation_prompt)` is the base model's chat template. A turn's span
    runs from the end of the prompt before it (rendered with the generation prompt) to the end
    of the chat through it, so it holds the answer and the template's end-of-turn marker: the
    model learns to answer and to stop, never to write the user's or the system's turns. A
    template whose renderings are not prefixes of each other gives no spans (the caller then
    trains on the whole text and says so).
    """
    text = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            return text, []
        spans.append((len(before), len(through)))
    return text, spans


def assistant_labels(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """`input_ids` where a token starts inside an assistant span, -100 (no loss) elsewhere."""
    labels = [-100] * len(input_ids)
    for index, (start, _end) in enumerate(offsets):
        if any(lo <= start < hi for lo, hi in spans):
            labels[index] = input_ids[index]
    return labels


def main(argv: list[str]) -> int:
    """Trains one adapter as the config file says; returns the exit status."""
    if len(argv) != 1:
        print("usage: trainer.py CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        config: dict[str, Any] = json.load(f)
    progress = _Progress(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)  # library chatter (Unsloth's banner, tqdm) goes to the log, not the events
    sys.stdout = sys.stderr

    stop = {"requested": False, "training": False}

    def _on_term(_signum: int, _frame: object) -> None:
        if not stop["training"]:
            os._exit(143)  # still loading: nothing trained, nothing to keep; stop at once
        stop["requested"] = True

    signal.signal(signal.SIGTERM, _on_term)

    hp: dict[str, Any] = config["hyperparameters"]
    output_dir: str = config["output_dir"]
    os.makedirs(output_dir, exist_ok=True)

    # Unsloth first: importing it patches transformers, PEFT and TRL.
    importlib.import_module("unsloth")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    dtype = torch.float32 if config.get("dtype", "float32") == "float32" else torch.bfloat16
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config["base_model_path"],
        max_seq_length=hp["max_seq_length"],
        dtype=dtype,
        load_in_4bit=False,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules=hp["lora_target_modules"],
        bias="none",
        use_gradient_checkpointing=False,
        random_state=config["seed"],
    )

    # The base model's own chat template, exactly as the engine applies it when serving; the
    # loss is taken on the assistant turns only (labels -100 on the prompt and system turns).
    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return text

    columns: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    whole_text = 0
    for messages in _load_examples(config["train_file"]):
        text, spans = assistant_spans(render, messages)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        if spans:
            labels = assistant_labels(ids, list(encoded["offset_mapping"]), spans)
        else:
            whole_text += 1
            labels = list(ids)
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
    if whole_text:
        print(
            f"the chat template's renderings are not prefixes of each other for {whole_text} "
            "example(s): those train on the whole text, not on the assistant turns only",
            file=sys.stderr,
        )
    examples = columns["input_ids"]
    example_tokens = [len(ids) for ids in examples]
    dataset = Dataset.from_dict(columns)
    batch_size: int = hp["batch_size"]
    steps_per_epoch = max(1, -(-len(examples) // batch_size))
    total_steps = hp.get("max_steps") or steps_per_epoch * hp["n_epochs"]
    mean_tokens = sum(example_tokens) / max(1, len(example_tokens))
    progress.emit("started", total_steps=total_steps, examples=len(examples))

    class _Report(TrainerCallback):  # type: ignore[misc]
        """Steps, checkpoints and the cancel request, as the trainer sees them."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.tokens = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            self.start = time.monotonic()  # tokens/s of training itself, not of the setup
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            if stop["requested"]:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> Any:
            logs = logs or {}
            if "loss" not in logs:
                return control
            tokens = logs.get("num_tokens")
            self.tokens = (
                int(tokens) if tokens else int(state.global_step * batch_size * mean_tokens)
            )
            elapsed = max(1e-9, time.monotonic() - self.start)
            progress.emit(
                "step",
                step=state.global_step,
                total_steps=total_steps,
                train_loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                epoch=float(logs.get("epoch", 0.0)),
                trained_tokens=self.tokens,
                tokens_per_second=self.tokens / elapsed,
            )
            return control

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            progress.emit("checkpoint", step=state.global_step, path=path)
            return control

    report = _Report()
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        callbacks=[report],
        args=SFTConfig(
            output_dir=os.path.join(output_dir, "checkpoints"),
            max_length=hp["max_seq_length"],
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            num_train_epochs=hp["n_epochs"],
            max_steps=hp.get("max_steps") or -1,
            learning_rate=hp["learning_rate"],
            lr_scheduler_type="linear",
            warmup_steps=0,
            logging_steps=1,
            save_strategy="steps",
            save_steps=hp.get("save_steps") or steps_per_epoch,
            save_total_limit=None,
            seed=config["seed"],
            optim="adamw_torch",
            weight_decay=0.0,
            bf16=False,
            fp16=False,
            report_to="none",
            dataloader_num_workers=0,
            packing=False,
        ),
    )
    stop["training"] = True
    trainer.train()
    if stop["requested"]:
        progress.emit("cancelled", step=trainer.state.global_step)
        return 0
    adapter_dir = os.path.join(output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    progress.emit(
        "done",
        adapter_dir=adapter_dir,
        steps=trainer.state.global_step,
        trained_tokens=report.tokens or int(trainer.state.global_step * batch_size * mean_tokens),
        seconds=time.monotonic() - report.start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
