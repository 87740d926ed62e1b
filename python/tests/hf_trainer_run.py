"""A tiny Hugging Face Trainer run with TrainingJobCallback, run by
test_torch.py: SIGTERM arrives during step 3. Argument: max_steps."""

import os
import signal
import sys

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

import trainingjob as tj


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.lin(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class SigtermAtStep3(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:  # step 3 is under way
            os.kill(os.getpid(), signal.SIGTERM)


def main():
    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "labels": torch.randn(())} for _ in range(64)]
    args = TrainingArguments(
        output_dir=tj.checkpoint_dir(),
        per_device_train_batch_size=4,
        max_steps=int(sys.argv[1]),
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=Tiny(), args=args, train_dataset=data,
                      callbacks=[SigtermAtStep3(), tj.TrainingJobCallback])
    r = tj.resume()
    trainer.train(resume_from_checkpoint=r.path if r else None)
    print("stopped at", trainer.state.global_step, "signal", tj.stop_signal(), flush=True)


if __name__ == "__main__":
    main()
