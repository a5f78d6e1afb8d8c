"""DistillationTrainer on tiny randomly initialised Hugging Face models (no downloads)."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers: run scripts/install.sh")

from slimkit.distill import Term, kd  # noqa: E402
from slimkit.distill.hf import DistillationTrainer  # noqa: E402
from slimkit.errors import SlimkitError  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int, causal: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=g)
        self.mask = torch.ones(n, seq, dtype=torch.long)
        self.mask[::2, -2:] = 0  # some padding
        self.labels = self.ids.clone() if causal else (self.ids[:, 0] % 2)
        if causal:
            self.labels[self.mask == 0] = -100

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _args(tmp_path):
    return transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                                          learning_rate=5e-3, report_to=[], save_strategy="no", use_cpu=True,
                                          logging_steps=100, disable_tqdm=True)


def test_bert_student_learns_from_teacher_with_hidden_state_cosine(tmp_path):
    cfg = dict(vocab_size=50, max_position_embeddings=16, num_attention_heads=2, num_labels=2)
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **cfg))
    student = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, intermediate_size=32, **cfg))
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = [kd(1.0, 2.0), Term("ce", 0.5), Term("hidden_cosine", 1.0, student_layer="bert.encoder.layer.0",
                                                 teacher_layer="bert.encoder.layer.1")]
    trainer = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_Rows(24, 8, 50, False),
                                  teacher=teacher, losses=terms)
    adapter = trainer.adapters["bert_encoder_layer_0__bert_encoder_layer_1"]
    assert adapter.weight.shape == (32, 16)
    a_before = adapter.weight.detach().clone()
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(a_before, adapter.weight)  # adapters are optimised with the student
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())


def test_llama_causal_kd_reduces_the_gap_to_the_teacher(tmp_path):
    common = dict(vocab_size=64, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **common))
    student = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, **common))
    data = _Rows(32, 10, 64, True)
    batch = {"input_ids": data.ids[:8], "attention_mask": data.mask[:8]}

    def gap() -> float:
        from slimkit.distill import soft_target_kl
        with torch.no_grad():
            keep = batch["attention_mask"].bool()
            return soft_target_kl(student(**batch).logits[keep], teacher(**batch).logits[keep], 1.0).item()

    before = gap()
    args = _args(tmp_path)
    args.max_steps = 20
    DistillationTrainer(model=student, args=args, train_dataset=data, teacher=teacher, losses=[kd(1.0, 1.0)]).train()
    assert gap() < 0.8 * before


def test_adapters_travel_with_hf_checkpoints_and_resume(tmp_path):
    cfg = dict(vocab_size=50, max_position_embeddings=16, num_attention_heads=2, num_labels=2)

    def models():
        torch.manual_seed(0)
        t = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **cfg))
        s = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, intermediate_size=32, **cfg))
        return t, s

    def trainer(out, student, teacher):
        args = transformers.TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=4,
                                              learning_rate=5e-3, report_to=[], save_strategy="steps", save_steps=3,
                                              use_cpu=True, logging_steps=100, disable_tqdm=True, seed=0,
                                              weight_decay=0.01)
        terms = [kd(1.0, 2.0), Term("hint", 1.0, student_layer="bert.encoder.layer.0", teacher_layer="bert.encoder.layer.1")]
        return DistillationTrainer(model=student, args=args, train_dataset=_Rows(24, 8, 50, False), teacher=teacher, losses=terms)

    teacher, student = models()
    straight = trainer(tmp_path / "a", student, teacher)
    straight.train()
    assert (tmp_path / "a" / "checkpoint-3" / "slimkit_adapters.safetensors").is_file()
    groups = straight.optimizer.param_groups  # adapter weights decay like the Trainer's own weights
    adapter = straight.adapters["bert_encoder_layer_0__bert_encoder_layer_1"].weight
    assert [g["weight_decay"] for g in groups if any(p is adapter for p in g["params"])] == [0.01]
    saved = load_file(str(tmp_path / "a" / "checkpoint-3" / "slimkit_adapters.safetensors"))
    teacher, student = models()
    resumed = trainer(tmp_path / "b", student, teacher)
    key = "bert_encoder_layer_0__bert_encoder_layer_1"
    assert not torch.equal(saved[f"{key}.weight"], resumed.adapters[key].weight)
    resumed._load_from_checkpoint(str(tmp_path / "a" / "checkpoint-3"))  # what train(resume_from_checkpoint=) calls
    assert torch.equal(saved[f"{key}.weight"], resumed.adapters[key].weight)
    other = trainer(tmp_path / "c", *reversed(models()))
    other.adapters[key] = torch.nn.Linear(8, 32)  # adapters of other feature terms are refused, not half-loaded
    with pytest.raises(SlimkitError, match="other feature terms"):
        other._load_from_checkpoint(str(tmp_path / "a" / "checkpoint-3"))
