"""Framework-free references for the trainer tests: torch's AdamW arithmetic in numpy, and a tiny model whose
parameter names follow the mm layout (image_encoder.encoder / .projector, text_decoder.embedding / .decoder /
.output_layer) so freeze flags, checkpoints and resume are tested in seconds on either backend.
"""
import numpy as np

from mmx import nn, ops


def adamw_reference(params, grads_per_step, lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.AdamW's single-tensor update in float64 numpy: params {name: array} after each step (list).

    Parameters with ndim < 2 get no weight decay (the mmx convention, both backends).
    """
    beta1, beta2 = betas
    params = {name: value.astype(np.float64) for name, value in params.items()}
    exp_avg = {name: np.zeros_like(value) for name, value in params.items()}
    exp_avg_sq = {name: np.zeros_like(value) for name, value in params.items()}
    history = []
    for step, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for name, value in params.items():
            grad = grads[name].astype(np.float64)
            if value.ndim >= 2:
                value = value * (1 - lr * weight_decay)
            exp_avg[name] = exp_avg[name] + (1 - beta1) * (grad - exp_avg[name])
            exp_avg_sq[name] = exp_avg_sq[name] * beta2 + (1 - beta2) * grad * grad
            denom = np.sqrt(exp_avg_sq[name]) / np.sqrt(1 - beta2 ** step) + eps
            params[name] = value - lr / (1 - beta1 ** step) * exp_avg[name] / denom
        history.append({name: value.copy() for name, value in params.items()})
    return history


class _Encoder(nn.Module):
    def __init__(self, pixel_dim, hidden):
        super().__init__()
        self.linear_fc1 = nn.Linear(pixel_dim, hidden)


class _Projector(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.layernorm = nn.RMSNorm(hidden)
        self.linear_fc1 = nn.Linear(hidden, hidden)


class _ImageEncoder(nn.Module):
    def __init__(self, pixel_dim, hidden):
        super().__init__()
        self.encoder = _Encoder(pixel_dim, hidden)
        self.projector = _Projector(hidden)


class _Embedding(nn.Module):
    def __init__(self, vocab, hidden):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)


class _Layer(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.input_layernorm = nn.RMSNorm(hidden)
        self.linear_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.linear_proj = nn.Linear(hidden, hidden, bias=False)
        self.pre_mlp_layernorm = nn.RMSNorm(hidden)
        self.linear_fc1 = nn.Linear(hidden, 2 * hidden, bias=False)
        self.linear_fc2 = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, hidden, attention_mask):
        batch, seq, width = hidden.shape
        qkv = self.linear_qkv(self.input_layernorm(hidden))
        qkv = ops.reshape(qkv, (batch, seq, self.heads, 3 * width // self.heads))
        q, k, v = ops.split(qkv, [width // self.heads] * 3, dim=-1)
        attended = ops.attention(q, k, v, causal=True, key_padding_mask=attention_mask)
        hidden = hidden + self.linear_proj(ops.reshape(attended, (batch, seq, width)))
        return hidden + self.linear_fc2(ops.silu(self.linear_fc1(self.pre_mlp_layernorm(hidden))))


class _Decoder(nn.Module):
    def __init__(self, hidden, heads, num_layers):
        super().__init__()
        self.layers = nn.ModuleDict({str(i): _Layer(hidden, heads) for i in range(num_layers)})
        self.final_layernorm = nn.RMSNorm(hidden)


class _TextDecoder(nn.Module):
    def __init__(self, vocab, hidden, heads, num_layers):
        super().__init__()
        self.embedding = _Embedding(vocab, hidden)
        self.decoder = _Decoder(hidden, heads, num_layers)
        self.output_layer = nn.Linear(hidden, vocab, bias=False)


class TinyVLM(nn.Module):
    """input_ids (B, S), pixel_values (B, P) (one "image" vector per sample, added to every position) → logits
    (B, S, V) float32. Causal attention with key padding, so right padding never changes real tokens' logits."""

    def __init__(self, vocab=24, hidden=16, heads=2, num_layers=2, pixel_dim=6):
        super().__init__()
        self.image_encoder = _ImageEncoder(pixel_dim, hidden)
        self.text_decoder = _TextDecoder(vocab, hidden, heads, num_layers)
        self.num_layers = num_layers

    def forward(self, input_ids, attention_mask=None, pixel_values=None):
        hidden = self.text_decoder.embedding.word_embeddings(input_ids)
        if pixel_values is not None:
            image = ops.silu(self.image_encoder.encoder.linear_fc1(pixel_values))
            image = self.image_encoder.projector.linear_fc1(self.image_encoder.projector.layernorm(image))
            hidden = hidden + ops.unsqueeze(image, 1)
        for index in range(self.num_layers):
            hidden = self.text_decoder.decoder.layers[str(index)](hidden, attention_mask)
        logits = self.text_decoder.output_layer(self.text_decoder.decoder.final_layernorm(hidden))
        return ops.cast(logits, ops.float32)


def random_weights(model, seed=0, scale=0.3):
    """Deterministic random weights (norm weights near 1) for ``model``, as {name: float32 array}."""
    rng = np.random.RandomState(seed)
    weights = {}
    for name, value in sorted(nn.state_dict(model).items()):
        shape = tuple(value.shape)
        base = 1.0 if "layernorm" in name else 0.0
        weights[name] = (base + scale * rng.randn(*shape)).astype(np.float32)
    return weights


def make_model(seed=0, **sizes):
    model = TinyVLM(**sizes)
    nn.load_state_dict(model, {name: ops.tensor(value) for name, value in random_weights(model, seed).items()})
    return model


def make_dataset(num_samples=16, vocab=24, pixel_dim=6, seed=0, min_len=4, max_len=9):
    """Samples of different lengths: ids, labels supervising the second half only, an image vector, an id."""
    rng = np.random.RandomState(seed)
    samples = []
    for index in range(num_samples):
        length = rng.randint(min_len, max_len + 1)
        ids = rng.randint(1, vocab, size=length).astype(np.int64)
        labels = ids.copy()
        labels[: length // 2] = -100
        samples.append({"id": f"sample-{index}", "input_ids": ids, "labels": labels,
                        "pixel_values": rng.randn(pixel_dim).astype(np.float32)})
    return samples


def collate(samples):
    """Right-pad to the longest sample: the batch dict the trainer consumes."""
    length = max(len(s["input_ids"]) for s in samples)
    batch = {"input_ids": np.zeros((len(samples), length), np.int64),
             "labels": np.full((len(samples), length), -100, np.int64),
             "attention_mask": np.zeros((len(samples), length), np.int64),
             "pixel_values": np.stack([s["pixel_values"] for s in samples]),
             "sample_ids": [s["id"] for s in samples]}
    for row, sample in enumerate(samples):
        size = len(sample["input_ids"])
        batch["input_ids"][row, :size] = sample["input_ids"]
        batch["labels"][row, :size] = sample["labels"]
        batch["attention_mask"][row, :size] = 1
    return batch


class SampleStream:
    """A streaming source like mmx.data's StreamingLoader: seeded endless draws, ``next_batch`` / ``state_dict`` /
    ``load_state_dict`` (the state is JSON, as checkpoints store it)."""

    def __init__(self, samples, batch_size, seed=0):
        self.samples, self.batch_size = samples, batch_size
        self.rng = np.random.default_rng(seed)

    def next_batch(self):
        return collate([self.samples[i] for i in self.rng.integers(0, len(self.samples), self.batch_size)])

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
